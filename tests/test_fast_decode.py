"""The static KV cache and the compiled one-token step give the tokens of GPT.generate."""

import pytest
import torch

from model.fast_decode import StaticDecoder
from model.generation import pack
from test_batched_generation import prompts, tiny_gpt


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_static_cache_gives_todays_greedy_tokens(pos_emb):
    model = tiny_gpt(pos_emb)
    idx = torch.randint(0, 48, (3, 5))
    decoder = StaticDecoder(model, batch_size=3)
    for n_new in (30, 4):  # 30 > block_size 16: the window moves on twice; the decoder is reused
        assert torch.equal(decoder.generate(idx, n_new, temperature=0), model.generate(idx, n_new, temperature=0))
    seeded = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    again = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    assert torch.equal(decoder.generate(idx, 20, top_k=10, generator=seeded),
                       model.generate(idx, 20, top_k=10, generator=again))
    with pytest.raises(ValueError, match="batches of 3"):
        decoder.generate(idx[:1], 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 buffers under autocast
        assert decoder.generate(idx, 4, temperature=0).shape == (3, 9)
    assert decoder.caches[0].k.dtype == torch.bfloat16


def test_compiled_decode_step_gives_todays_greedy_tokens():
    model = tiny_gpt("learned")
    idx = torch.randint(0, 48, (1, 5))
    decoder = StaticDecoder(model, batch_size=1, compile=True)
    for n_new in (30, 6):  # the compiled step is reused by the second call
        assert torch.equal(decoder.generate(idx, n_new, temperature=0), model.generate(idx, n_new, temperature=0))


@pytest.mark.parametrize("pos_emb,compile", [("learned", False), ("rope", False), ("learned", True)])
def test_padded_prompts_get_the_tokens_each_gets_alone(pos_emb, compile):
    model = tiny_gpt(pos_emb)
    rows = prompts()  # lengths 1 to the context limit (16)
    idx, mask = pack(rows)
    decoder = StaticDecoder(model, batch_size=len(rows), compile=compile)
    n_new = 24  # more than the window: every row's context moves on, at different steps
    out = decoder.generate(idx, n_new, temperature=0, attention_mask=mask)
    assert torch.equal(out, model.generate(idx, n_new, temperature=0, attention_mask=mask))
    for i, row in enumerate(rows):
        alone = model.generate(row[None], n_new, temperature=0)
        assert torch.equal(out[i, idx.size(1):], alone[0, len(row):]), i
    seeds = [10, 11, 12, 13]
    sampled = decoder.generate(idx, 12, top_k=20, top_p=0.9, attention_mask=mask,
                               generator=[torch.Generator().manual_seed(s) for s in seeds])
    reference = model.generate(idx, 12, top_k=20, top_p=0.9, attention_mask=mask,
                               generator=[torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(sampled, reference)
    assert torch.equal(decoder.generate(idx[:, -3:], 5, temperature=0),  # reused unpadded: as today
                       model.generate(idx[:, -3:], 5, temperature=0))


def test_stop_token_as_gpt_generate():
    model = tiny_gpt("learned")
    rows = prompts()
    idx, mask = pack(rows)
    free = model.generate(idx, 20, temperature=0, attention_mask=mask)[:, idx.size(1):]
    stop = int(free[1, 3])  # row 1 emits it at step 3 (maybe others earlier): they then repeat it
    decoder = StaticDecoder(model, batch_size=len(rows))
    ours = decoder.generate(idx, 20, temperature=0, attention_mask=mask, stop_token=stop)
    reference = model.generate(idx, 20, temperature=0, attention_mask=mask, stop_token=stop)
    assert torch.equal(ours, reference)
    assert (ours[1, idx.size(1) + 3:] == stop).all()


def test_an_empty_prompt_is_a_clear_error():
    decoder = StaticDecoder(tiny_gpt("learned"), batch_size=2)
    with pytest.raises(ValueError, match="at least one token"):  # the loop's own check, as GPT.generate's
        decoder.generate(torch.zeros(2, 0, dtype=torch.long), 3)
