"""Every attention variant (score x weighting) under every mask: weights, paths, gradients, learning."""

import math
import os
import subprocess
import sys

import pytest
import torch

from model.attention import SCORES, Attention, PastKeyValues, make_mask
from model.scores import Additive
from model.config import ConfigError, GPTConfig, RNNConfig, Seq2SeqConfig, from_flat
from model.hard_attention import check_options_apply
from model.gpt import GPT
from model.layers import Block
from weights.common import IGNORE_INDEX

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = [(score, weighting) for score in ("scaled_dot", "dot", "general", "additive")
            for weighting in ("softmax", "hard")]
MASKS = ["causal", "bidirectional", "padding", "cross"]
B, T, S, C = 3, 6, 5, 32


def config(score="scaled_dot", weighting="softmax", **kw) -> GPTConfig:
    """A tiny config with the given self-attention variant (and the same for cross-attention)."""
    return from_flat(GPTConfig, dict(n_layer=2, n_head=4, n_embd=C, block_size=16, vocab_size=11, attn_score=score,
                                     attn_weighting=weighting, cross_attn_score=score, cross_attn_weighting=weighting,
                                     **kw))


def setup(case: str, cfg: GPTConfig):
    """An attention module, its input, the keyword arguments for this mask case, and the full mask."""
    att = Attention(cfg, cross=(case == "cross"))
    with torch.no_grad():  # move learned scores away from their initial values (general starts as scaled_dot)
        for p in att.scorer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(B, T, C)
    if case == "causal":
        return att, x, {"causal": True}, make_mask(T, T, causal=True)
    if case == "bidirectional":
        return att, x, {}, None
    keys = S if case == "cross" else T
    pad = torch.ones(B, keys, dtype=torch.bool)
    pad[0, -2:] = False  # right padding
    pad[1, :1] = False  # left padding
    pad[2, :] = False  # every key is padding: those rows must get zero weights
    mask = make_mask(T, keys, causal=False, key_padding_mask=pad)
    kw = {"mask": mask}
    if case == "cross":
        kw["source"] = torch.randn(B, S, C)
    return att, x, kw, mask


@pytest.mark.parametrize("case", MASKS)
@pytest.mark.parametrize("score,weighting", VARIANTS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_weights_are_distributions_or_one_hot(score, weighting, case, training):
    att, x, kw, mask = setup(case, config(score, weighting))
    att.train(training)
    y, weights = att(x, need_weights=True, **kw)
    assert torch.isfinite(y).all()
    assert weights.shape == (B, 4, T, S if case == "cross" else T)
    visible = torch.ones_like(weights, dtype=torch.bool) if mask is None else mask.expand_as(weights)
    assert (weights >= 0).all()
    assert (weights[~visible] == 0).all()  # masked keys get exactly zero weight
    has_key = visible.any(-1)
    rows = weights.sum(-1)
    assert (rows[~has_key] == 0).all()  # rows that can see no key attend to nothing
    assert torch.allclose(rows[has_key], torch.ones_like(rows[has_key]), atol=1e-5)
    if weighting == "hard":
        assert ((weights == 0) | (weights == 1)).all()
        assert ((weights == 1).sum(-1)[has_key] == 1).all()  # exactly one key per query


@pytest.mark.parametrize("case", MASKS)
@pytest.mark.parametrize("score", ["scaled_dot", "dot", "general"])
def test_fast_and_explicit_paths_agree(score, case):
    att, x, kw, mask = setup(case, config(score))
    att.eval()
    fast = att(x, **kw)
    explicit, weights = att(x, need_weights=True, **kw)
    assert torch.allclose(fast, explicit, atol=1e-5)
    # and both equal softmax(score) computed here from the module's own parameters
    source = kw.get("source", x)
    q = att.split_heads(att.q_attn(x) if att.cross else att.c_attn(x)[..., :C])
    k = att.split_heads(att.kv_attn(source)[..., :C] if att.cross else att.c_attn(x)[..., C:2 * C])
    if score == "scaled_dot":
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // 4)
    elif score == "dot":
        scores = q @ k.transpose(-2, -1)
    else:
        scores = torch.einsum("bhtd,hde,bhse->bhts", q, att.scorer.weight, k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    reference = torch.softmax(scores, -1).nan_to_num(0.0)
    assert torch.allclose(weights, reference, atol=1e-5)


def test_additive_score_matches_its_formula_and_chunks_do_not_change_it():
    score = Additive(n_head=2, head_dim=8)
    q = torch.randn(3, 2, 7, 8, requires_grad=True)
    k = torch.randn(3, 2, 5, 8, requires_grad=True)
    # v^T tanh(W_q q + W_k k), one (head, query, key) at a time
    expected = torch.empty(3, 2, 7, 5)
    with torch.no_grad():
        for b in range(3):
            for h in range(2):
                for t in range(7):
                    for s in range(5):
                        hidden = torch.tanh(q[b, h, t] @ score.w_q[h] + k[b, h, s] @ score.w_k[h])
                        expected[b, h, t, s] = score.v[h] @ hidden
    whole = score(q, k)
    assert torch.allclose(whole, expected, atol=1e-5)
    params = [q, k, score.w_q, score.w_k, score.v]
    grads_whole = torch.autograd.grad((whole * expected).sum(), params)
    score.chunk_elements = 2 * 5 * 8  # two queries per chunk, recomputed in the backward pass
    chunked = score(q, k)
    grads_chunked = torch.autograd.grad((chunked * expected).sum(), params)
    assert torch.allclose(chunked, whole, atol=1e-6)
    for g1, g2 in zip(grads_whole, grads_chunked):
        assert torch.allclose(g1, g2, atol=1e-5)


ESTIMATORS = [(s, w, {}) for s, w in VARIANTS] + [
    (s, "hard", {"hard_attention_estimator": "straight_through"}) for s in ("scaled_dot", "additive")]


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("score,weighting,extra", ESTIMATORS)
def test_gradients_reach_every_parameter(score, weighting, extra, cross):
    cfg = config(score, weighting, **extra)
    att = Attention(cfg, cross=cross).train()
    x = torch.randn(B, T, C)
    kw = {"source": torch.randn(B, S, C)} if cross else {"causal": True}
    target = torch.randn(B, T, C)
    ((att(x, **kw) - target) ** 2).mean().backward()
    for name, p in att.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_hard_attention_samples_from_the_softmax_and_never_picks_a_masked_key():
    cfg = config("dot", "hard", hard_attention_eval="sample")
    hard = Attention(cfg).weighting
    scores = torch.tensor([0.0, 1.0, 2.0, float("-inf")]).expand(20000, 4)
    for training in (True, False):  # training (Gumbel forward) and evaluation with eval='sample'
        hard.train(training)
        picks = hard(scores).sum(0) / 20000
        assert picks[3] == 0
        assert torch.allclose(picks, torch.softmax(scores[0], -1), atol=0.02)
    greedy = Attention(config("dot", "hard")).weighting.eval()
    assert (greedy(scores)[:, 2] == 1).all()  # eval='argmax': always the best key


@pytest.mark.parametrize("score,weighting", [("general", "softmax"), ("additive", "softmax"),
                                             ("additive", "hard"), ("general", "hard")])
def test_kv_cache_matches_full_pass(score, weighting):
    att = Attention(config(score, weighting)).eval()
    x = torch.randn(2, 7, C)
    full = att(x, causal=True)
    cache = PastKeyValues(16)
    steps = [att(x[:, :3], causal=True, cache=cache)] + [att(x[:, t:t + 1], causal=True, cache=cache)
                                                         for t in range(3, 7)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_cross_attention_has_its_own_variant():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=C, attn_score="dot", cross_attn_score="additive",
                    cross_attn_weighting="hard")
    block = Block(cfg, cross=True)
    assert block.attn.scorer.name == "dot" and block.attn.weighting.name == "softmax"
    assert block.cross_attn.scorer.name == "additive" and block.cross_attn.weighting.name == "hard"


@pytest.mark.parametrize("key,value,match", [
    ("attn_score", "luong", "attn_score must be one of scaled_dot, dot, general, additive"),
    ("attn_weighting", "sparsemax", "attn_weighting must be one of softmax, hard"),
    ("cross_attn_score", "concat", "cross_attn_score must be one of"),
    ("cross_attn_weighting", "argmax", "cross_attn_weighting must be one of"),
    ("hard_attention_temperature", 0.0, "hard_attention_temperature must be > 0"),
    ("hard_attention_temperature", float("inf"), "hard_attention_temperature must be > 0 and finite"),
    ("hard_attention_estimator", "score_function", "hard_attention_estimator must be one of gumbel, straight_through, reinforce"),
    ("hard_attention_baseline", "median", "hard_attention_baseline must be one of batch, moving_average, samples, learned, none"),
    ("hard_attention_baseline_momentum", 1.0, "hard_attention_baseline_momentum must be in"),
    ("hard_attention_entropy", -0.1, "hard_attention_entropy must be >= 0"),
    ("hard_attention_eval", "beam", "hard_attention_eval must be one of argmax, sample"),
    # values of the wrong type (from Python; the command line converts them): the same sentence, no TypeError
    ("attn_weighting", ["softmax"], "attn_weighting must be one of softmax, hard, got \\['softmax'\\]"),
    ("hard_attention_estimator", {"gumbel": 1}, "hard_attention_estimator must be one of"),
    ("hard_attention_temperature", "0.5", "hard_attention_temperature must be > 0 and finite, got '0.5'"),
    ("hard_attention_temperature", None, "hard_attention_temperature must be > 0"),
    ("hard_attention_temperature", True, "hard_attention_temperature must be > 0"),
    ("hard_attention_baseline_momentum", "0.9", "hard_attention_baseline_momentum must be in"),
    ("hard_attention_entropy", None, "hard_attention_entropy must be >= 0"),
    ("hard_attention_credit", "token", "hard_attention_credit must be one of query, own, sequence"),
    ("hard_attention_samples", 0, "hard_attention_samples must be a positive integer"),
    ("hard_attention_samples", 2.0, "hard_attention_samples must be a positive integer"),
    ("hard_attention_normalize", "yes", "hard_attention_normalize must be True or False"),
])
def test_invalid_variants_are_config_errors(key, value, match):
    with pytest.raises(ConfigError, match=match):
        from_flat(GPTConfig, {key: value})


@pytest.mark.parametrize("options,match", [
    (dict(hard_attention_estimator="reinforce"), "hard_attention_estimator applies to hard attention only"),
    (dict(hard_attention_temperature=0.5), "hard_attention_temperature applies to hard attention only"),
    (dict(attn_weighting="hard", hard_attention_entropy=0.1), "hard_attention_entropy applies to "
                                                                "hard_attention_estimator=reinforce only"),
    (dict(attn_weighting="hard", hard_attention_estimator="straight_through", hard_attention_baseline="none"),
     "hard_attention_baseline applies to hard_attention_estimator=reinforce only"),
])
def test_hard_attention_options_that_would_be_ignored_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):  # what train.py checks for a new run
        check_options_apply(from_flat(GPTConfig, options))  # the config itself builds: a checkpoint with it still loads
    with pytest.raises(ConfigError, match=match):
        check_options_apply(from_flat(RNNConfig, options))
    # where they apply, the same options are accepted
    check_options_apply(from_flat(GPTConfig, {**options, "attn_weighting": "hard", "hard_attention_estimator": "reinforce"}))
    check_options_apply(from_flat(Seq2SeqConfig, {**options, "cross_attn_weighting": "hard",
                                         "hard_attention_estimator": "reinforce"}))


def test_train_refuses_a_hard_attention_option_with_soft_attention():
    proc = subprocess.run([sys.executable, "train.py", "--hard_attention_estimator=reinforce", "--max_iters=1"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: hard_attention_estimator applies to hard attention only, and no "
                                                "attention here is hard; set attn_weighting=hard (or "
                                                "cross_attn_weighting=hard) or drop it."], proc.stderr


@pytest.mark.parametrize("score,weighting,extra", ESTIMATORS)
def test_small_gpt_learns_with_every_variant(score, weighting, extra):
    """A one-layer GPT must learn y_t = x_{t-2}: only attention can fetch an earlier token."""
    V, L, lag, batch = 8, 10, 2, 16
    torch.manual_seed(0)
    cfg = from_flat(GPTConfig, dict(n_layer=1, n_head=2, n_embd=C, block_size=L, vocab_size=V, attn_score=score,
                                    attn_weighting=weighting, **extra))
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)

    def batch_of(n):
        x = torch.randint(V, (n, L), generator=gen)
        y = torch.full_like(x, IGNORE_INDEX)
        y[:, lag:] = x[:, :-lag]
        return x, y

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and kinder to a shared machine
    try:
        for _ in range(150):
            _, loss = model(*batch_of(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            _, val_loss = model(*batch_of(256))
    finally:
        torch.set_num_threads(threads)
    assert val_loss.item() < 0.6  # chance is log(8) = 2.08
