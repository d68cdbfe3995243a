import math

import pytest
import torch

from model.attention import Attention, PastKeyValues, make_mask
from model.config import GPTConfig

CFG = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=11)


def both_paths(att, x, **kw):
    """Output of the SDPA path and of the explicit path, with the explicit weights."""
    fast = att(x, **kw)
    slow, weights = att(x, need_weights=True, **kw)
    return fast, slow, weights


def reference(att, x, source, mask):
    """softmax(mask(q k^T / sqrt(d))) v, computed here from the module's own projections."""
    C, nh = x.size(-1), att.n_head
    if att.cross:
        q, (k, v) = att.q_attn(x), att.kv_attn(source).split(C, dim=2)
    else:
        q, k, v = att.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(t.size(0), t.size(1), nh, C // nh).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // nh)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, -1).nan_to_num(0.0)
    y = (w @ v).transpose(1, 2).reshape(x.shape)
    return att.c_proj(y), w


@pytest.mark.parametrize("case", ["causal", "bidirectional", "padding", "causal_padding", "cross"])
def test_explicit_and_sdpa_agree(case):
    att = Attention(CFG, cross=(case == "cross")).eval()
    B, T, S = 3, 7, 5
    x = torch.randn(B, T, 32)
    source = torch.randn(B, S, 32) if case == "cross" else None
    kw, mask = {}, None
    if case == "causal":
        kw["causal"] = True
        mask = make_mask(T, T, causal=True)
    if case in ("padding", "causal_padding", "cross"):
        pad = torch.ones(B, S if case == "cross" else T, dtype=torch.bool)
        pad[0, -2:] = False
        pad[1, :1] = False  # left padding too
        mask = make_mask(T, pad.size(1), causal=(case == "causal_padding"), key_padding_mask=pad)
        kw["mask"] = mask
    if source is not None:
        kw["source"] = source
    fast, slow, weights = both_paths(att, x, **kw)
    ref, ref_w = reference(att, x, source, mask)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(slow, ref, atol=1e-5)
    assert torch.allclose(weights, ref_w, atol=1e-6)
    assert weights.shape == (B, 4, T, S if case == "cross" else T)
    if mask is not None:
        assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()
    rows = weights.sum(-1)
    assert torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]), atol=1e-5)


def test_fully_masked_row_gives_zeros_not_nan():
    att = Attention(CFG).eval()
    x = torch.randn(1, 4, 32)
    pad = torch.tensor([[False, False, True, True]])
    mask = make_mask(4, 4, causal=True, key_padding_mask=pad)  # queries 0 and 1 see only padding
    fast, slow, weights = both_paths(att, x, mask=mask)
    assert torch.isfinite(fast).all() and torch.isfinite(slow).all()
    assert (weights[0, :, :2] == 0).all()
    assert torch.allclose(fast[0, 2:], slow[0, 2:], atol=1e-5)


@pytest.mark.parametrize("chunks", [[7], [1] * 7, [3, 1, 2, 1]])
def test_kv_cache_matches_full_pass(chunks):
    att = Attention(CFG).eval()
    x = torch.randn(2, 7, 32)
    full = att(x, causal=True)
    cache, outs, t = PastKeyValues(16), [], 0
    for n in chunks:
        outs.append(att(x[:, t:t + n], causal=True, cache=cache))
        t += n
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def test_cross_cache_computes_source_once():
    att = Attention(CFG, cross=True).eval()
    x, source = torch.randn(2, 3, 32), torch.randn(2, 5, 32)
    cache = PastKeyValues(5)
    first = att(x, source=source, cache=cache)
    calls = []
    att.kv_attn.register_forward_hook(lambda *a: calls.append(1))
    again = att(x, cache=cache)  # no source needed: keys and values come from the cache
    assert torch.allclose(first, again) and not calls


def test_cross_attention_without_source_is_an_error():
    with pytest.raises(ValueError, match="source"):
        Attention(CFG, cross=True)(torch.randn(1, 2, 32))


class OwnKernel:
    """A mask that brings its own kernel (as model/documents.py's FlexMask does): here SDPA, counting its calls."""

    def __init__(self, mask: torch.Tensor):
        self.mask, self.calls = mask, 0

    def attend(self, q, k, v, scale):
        self.calls += 1
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scale)

    def dense(self):
        return self.mask


def test_a_mask_with_its_own_kernel_runs_it_on_the_fast_path_and_its_dense_mask_where_weights_are_asked():
    torch.manual_seed(0)
    att, x = Attention(CFG).eval(), torch.randn(2, 6, 32)
    mask = (torch.rand(2, 1, 6, 6) > 0.4) | torch.eye(6, dtype=torch.bool)  # every row keeps its own key
    kernel = OwnKernel(mask)
    torch.testing.assert_close(att(x, mask=kernel), att(x, mask=mask))
    assert kernel.calls == 1
    y, weights = att(x, mask=kernel, need_weights=True)  # the explicit path: the dense mask, not the kernel
    assert kernel.calls == 1 and not weights.masked_select(~mask.expand_as(weights)).any()
    torch.testing.assert_close(y, att(x, mask=mask))
    dropping = Attention(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=11, dropout=0.1)).train()
    dropping(x, mask=kernel)  # the kernel has no dropout: training with dropout takes the dense mask to SDPA
    assert kernel.calls == 1
