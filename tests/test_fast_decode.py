"""The static KV cache and the compiled one-token step give the tokens of GPT.generate."""

import pytest
import torch

from model.fast_decode import StaticDecoder
from test_batched_generation import tiny_gpt


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
