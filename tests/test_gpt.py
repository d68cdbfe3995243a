import dataclasses

import pytest
import torch

from model import GPT, GPTConfig
from model.sampling import Sampling


def tiny(**kw):
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=23, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def test_logits_and_loss_shapes():
    model = tiny()
    idx = torch.randint(0, 23, (3, 10))
    logits, none = model(idx)
    assert logits.shape == (3, 10, 23) and none is None
    logits2, loss = model(idx, idx)
    assert torch.equal(logits, logits2)
    assert abs(loss.item() - torch.log(torch.tensor(23.0)).item()) < 0.5  # near-uniform at init


def test_future_tokens_do_not_change_the_past():
    model = tiny()
    idx = torch.randint(0, 23, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 5) % 23
    (a, _), (b, _) = model(idx), model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("prompt_len,new", [(1, 15), (5, 11), (9, 7)])
def test_cached_greedy_equals_uncached(prompt_len, new):
    model = tiny(bias=True)
    idx = torch.randint(0, 23, (2, prompt_len))
    cached = model.generate(idx, new, top_k=1, use_cache=True)
    uncached = model.generate(idx, new, top_k=1, use_cache=False)
    assert cached.shape == (2, prompt_len + new)
    assert torch.equal(cached, uncached)


def test_generation_past_the_context_window_and_long_prompts():
    model = tiny()
    prompt = torch.randint(0, 23, (1, 40))  # longer than block_size (16)
    out = model.generate(prompt, 30, top_k=5)
    assert out.shape == (1, 70) and torch.equal(out[:, :40], prompt)
    assert ((out >= 0) & (out < 23)).all()
    # greedy, token by token: without the cache each step reads the last 16 tokens; with it, the window is
    # the last 16 tokens at first and, whenever it is full, restarts from the last 8 (positions from 0 again)
    for use_cache in (False, True):
        ids, start = prompt[0].tolist(), 40 - 16
        for _ in range(30):
            if not use_cache or len(ids) - start > 16:
                start = len(ids) - (16 if not use_cache else 8)
            ids.append(model(torch.tensor([ids[start:]]))[0][0, -1].argmax().item())
        assert model.generate(prompt, 30, top_k=1, use_cache=use_cache)[0].tolist() == ids, use_cache


def test_sampling_controls():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert Sampling(temperature=0).sample(logits).item() == 1
    assert Sampling(top_k=1).sample(logits).item() == 1
    gen = torch.Generator().manual_seed(0)
    draws = {Sampling(top_k=2).sample(logits, gen).item() for _ in range(200)}
    assert draws == {1, 3}
    draws = {Sampling(top_p=0.5).sample(logits, gen).item() for _ in range(200)}
    assert draws == {1}  # the top token alone has more than half of the mass


def test_top_p_samples_the_whole_nucleus_in_proportion():
    probs = torch.tensor([0.05, 0.40, 0.10, 0.30, 0.15])
    gen = torch.Generator().manual_seed(0)
    # top_p=0.8: 0.40 + 0.30 reach 0.70 < 0.8, so the nucleus is {1, 3, 4} (mass 0.85); 0 and 2 are out
    draws = Sampling(top_p=0.8).sample(probs.log().repeat(4000, 1), gen).flatten()
    assert set(draws.tolist()) == {1, 3, 4}
    share = torch.bincount(draws, minlength=5).float() / 4000
    assert torch.allclose(share[[1, 3, 4]], torch.tensor([0.40, 0.30, 0.15]) / 0.85, atol=0.03)  # renormalised
    assert set(Sampling(top_p=0.69).sample(probs.log().repeat(500, 1), gen).flatten().tolist()) == {1, 3}
    assert set(Sampling(top_p=0.71).sample(probs.log().repeat(500, 1), gen).flatten().tolist()) == {1, 3, 4}



def test_extreme_temperatures_sample_valid_tokens():
    logits = torch.tensor([[0.0, 30.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    for temperature in (1e-40, 1e-8):  # logits / temperature would overflow float32 to inf - inf = nan
        assert Sampling(temperature).sample(logits, gen).flatten().tolist() == [1, 0]
    assert set(Sampling(1e30).sample(logits.repeat(100, 1), gen).flatten().tolist()) == {0, 1, 2, 3}
    from training.config import ConfigError, SampleConfig

    with pytest.raises(ConfigError, match="temperature"):
        SampleConfig(temperature=float("nan"))

@pytest.mark.parametrize("sampling, message", [
    (dict(temperature=-1.0), r"temperature must be >= 0 \(0 is greedy\), got -1.0"),
    (dict(temperature=float("nan")), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be a positive integer or None, got 0"),
    (dict(top_k=-2), "top_k must be a positive integer or None"),
    (dict(top_k=2.5), "top_k must be a positive integer or None"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_bad_sampling_arguments_are_config_errors(sampling, message):
    from model import ConfigError
    from model.generation import pack

    model, idx = tiny().eval(), torch.randint(0, 23, (2, 4))
    with pytest.raises(ConfigError, match=message):
        model.generate(idx, 3, **sampling)
    padded, mask = pack([idx[0], idx[1, :1]])
    with pytest.raises(ConfigError, match=message):  # a padded batch, one generator per row
        model.generate(padded, 3, **sampling, attention_mask=mask, generator=[torch.Generator(), torch.Generator()])


def test_an_empty_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one token"):
        tiny().generate(torch.zeros(2, 0, dtype=torch.long), 3)


def test_two_layer_model_overfits_one_batch():
    torch.manual_seed(0)
    model = tiny().train()
    idx = torch.randint(0, 23, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < 0.1, losses[-10:]  # from log(23) = 3.1


def test_sequence_longer_than_block_size_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_config_validation():
    from model import ConfigError

    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="attn_score"):
        GPTConfig(attn_score="nope")


@pytest.mark.parametrize("change, message", [
    (dict(n_embd=7.5, n_head=1), "n_embd must be a positive integer, got 7.5"),
    (dict(n_head=2.0), "n_head must be a positive integer, got 2.0"),
    (dict(block_size="64"), "block_size must be a positive integer, got '64'"),
    (dict(n_layer=None), "n_layer must be a positive integer, got None"),
    (dict(vocab_size=True), "vocab_size must be a positive integer, got True"),
    (dict(norm_eps=-1e-5), "norm_eps must be a positive number"),
    (dict(norm_eps=None), "norm_eps must be a positive number"),
    (dict(dropout=None), r"dropout must be a number in \[0, 1\), got None"),
])
def test_sizes_of_the_wrong_type_are_config_errors(change, message):
    from model import BERTConfig, ConfigError, RNNConfig, Seq2SeqConfig

    with pytest.raises(ConfigError, match=message):
        GPTConfig(**change)
    with pytest.raises(ConfigError, match="n_encoder_layer must be a positive integer, or 0"):
        Seq2SeqConfig(n_encoder_layer=1.5)
    with pytest.raises(ConfigError, match="source_block_size must be a positive integer, or 0"):
        Seq2SeqConfig(source_block_size=None)
    with pytest.raises(ConfigError, match="n_embd must be a positive integer, got 8.0"):
        RNNConfig(n_embd=8.0)
    with pytest.raises(ConfigError, match="type_vocab_size must be 0"):
        BERTConfig(type_vocab_size=None)


def test_odd_head_counts():
    model = tiny(n_head=3, n_embd=24)
    idx = torch.randint(0, 23, (2, 5))
    assert torch.equal(model.generate(idx, 8, top_k=1), model.generate(idx, 8, top_k=1, use_cache=False))


def hf_filtered_probs(logits, temperature, top_k, top_p):
    """The distribution Hugging Face's generate samples from: its warpers in its order (temperature, top-k, top-p)."""
    warpers = pytest.importorskip("transformers.generation.logits_process")
    ids, scores = torch.zeros(logits.size(0), 1, dtype=torch.long), logits.float()
    chain = [warpers.TemperatureLogitsWarper(temperature)]
    chain += [warpers.TopKLogitsWarper(top_k)] if top_k is not None else []
    chain += [warpers.TopPLogitsWarper(top_p)] if top_p is not None else []
    for warper in chain:
        scores = warper(ids, scores)
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("V", [2, 3, 50, 50257])
def test_the_filtered_distribution_is_hugging_faces(V):
    gen = torch.Generator().manual_seed(1)
    for scale in (1.0, 3.0, 10.0):
        logits = torch.randn(16, V, generator=gen) * scale  # no ties: HF and we break them differently
        logits[torch.rand(16, V, generator=gen) < 0.2] = float("-inf")
        logits[:, 0] = 0.0  # every row keeps a finite logit
        for temperature in (1e-6, 0.7, 1.0, 2.0):
            for top_k in (None, 2, 50, V + 5):
                for top_p in (None, 0.5, 0.9, 0.95):
                    ours = Sampling(temperature, top_k, top_p).probs(logits)
                    theirs = hf_filtered_probs(logits, temperature, top_k, top_p)
                    setting = (scale, temperature, top_k, top_p)
                    assert torch.equal(ours > 0, theirs > 0), setting  # the same tokens kept
                    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), setting


def test_ties_at_the_top_p_edge_keep_the_lowest_ids():
    for V in (4, 64, 1000):  # torch.sort breaks ties one way for a short row, another for a long one
        probs = Sampling(top_p=0.5).probs(torch.zeros(1, V))
        assert (probs[0] > 0).nonzero().flatten().tolist() == list(range(V // 2)), V
    probs = Sampling(top_k=2).probs(torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]]))  # top-k keeps a whole tie
    assert (probs[0] > 0).tolist() == [True, True, True, True, False]
    assert Sampling(temperature=0).probs(torch.tensor([[1.0, 3.0, 3.0]])).tolist() == [[0.0, 1.0, 0.0]]


def test_sampling_settings_are_one_value_validated_once(monkeypatch):
    from model import ConfigError

    with pytest.raises(ConfigError, match="top_k must be a positive integer"):
        Sampling(top_k=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Sampling().top_k = 3  # a value: settings cannot change between validation and use
    built = []
    original = Sampling.__post_init__
    monkeypatch.setattr(Sampling, "__post_init__", lambda self: built.append(self) or original(self))
    tiny().eval().generate(torch.randint(0, 23, (2, 4)), 12, top_k=5, generator=torch.Generator().manual_seed(0))
    assert [(s.temperature, s.top_k, s.top_p) for s in built] == [(1.0, 5, None)]  # once per call, not per token
