"""Hook points, run_with_cache, interventions and attention recorded during generation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import GPT, GPTConfig
from model.attention import make_mask
from lens.recorder import AttentionRecorder, head_stats, head_stats_all, stats_table
from model.config import ConfigError
from model.hooks import HookedModel
from lens.interventions import ablate_heads, head_means, parse_heads, replace_pattern, scale_heads
from model.layers import Block

CFG = dict(n_layer=2, n_head=3, n_embd=24, block_size=16, vocab_size=19, dropout=0.0)


def tiny(**kw):
    return GPT(GPTConfig(**{**CFG, **kw})).eval()


class TinyEncoderDecoder(HookedModel, nn.Module):
    """An encoder-decoder made directly of the shared blocks, to prove cross-attention hooks."""

    def __init__(self, config):
        super().__init__()
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.blocks = nn.ModuleList(Block(config) for _ in range(2))
        self.decoder.blocks = nn.ModuleList(Block(config, cross=True) for _ in range(2))

    def forward(self, source, target, source_pad):
        S, T = source.size(1), target.size(1)
        enc_mask = make_mask(S, S, causal=False, key_padding_mask=source_pad)
        cross_mask = make_mask(T, S, causal=False, key_padding_mask=source_pad)
        for block in self.encoder.blocks:
            source = block(source, mask=enc_mask)
        for block in self.decoder.blocks:
            target = block(target, causal=True, source=source, source_mask=cross_mask)
        return target


def recompute(q, k, mask):
    """softmax(mask(q k^T / sqrt(d))), rows with no allowed key set to zero."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def hooks_attached(model):
    return [name for name, point in model.hook_points().items() if point._forward_hooks]


def test_hook_names_follow_the_module_tree():
    names = tiny().hook_names()
    for layer in (0, 1):
        for point in ("q", "k", "v", "scores", "pattern", "z", "result", "out"):
            assert f"blocks.{layer}.attn.{point}" in names
        for point in ("resid_pre", "resid_mid", "resid_post", "mlp.post", "mlp.out"):
            assert f"blocks.{layer}.{point}" in names
    assert names[:2] == ["embed", "pos_embed"] and len(names) == 2 + 2 * 13


def test_captured_pattern_equals_softmax_of_captured_q_k():
    model = tiny()
    idx = torch.randint(0, 19, (2, 11))
    plain, _ = model(idx)
    (logits, _), cache = model.run_with_cache(idx, names_filter=["*.attn.q", "*.attn.k", "*.attn.pattern"])
    assert torch.allclose(logits, plain, atol=1e-5)  # looking changes nothing
    assert len(cache) == 6
    causal = make_mask(11, 11, causal=True)
    for layer in (0, 1):
        pattern = cache[f"blocks.{layer}.attn.pattern"]
        assert pattern.shape == (2, 3, 11, 11) and not pattern.requires_grad
        expected = recompute(cache[f"blocks.{layer}.attn.q"], cache[f"blocks.{layer}.attn.k"], causal)
        assert torch.allclose(pattern, expected, atol=1e-6)
        assert torch.allclose(pattern.sum(-1), torch.ones(2, 3, 11), atol=1e-5)
        assert (pattern.triu(diagonal=1) == 0).all()


def test_only_hooked_layers_leave_sdpa(monkeypatch):
    model = tiny(n_layer=3)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    idx = torch.randint(0, 19, (1, 8))
    model(idx)
    assert len(calls) == 3
    calls.clear()
    model.run_with_cache(idx, names_filter="blocks.1.attn.pattern")
    assert len(calls) == 2  # layers 0 and 2 stay on the fused path
    calls.clear()
    model.run_with_cache(idx, names_filter=["*.z", "*.q", "*.resid_post"])  # no weights asked for
    assert len(calls) == 3


def test_cache_device_option_and_gradients_flow_to_output():
    model = tiny().train()
    idx = torch.randint(0, 19, (2, 6))
    (logits, loss), cache = model.run_with_cache(idx, idx, names_filter="blocks.0.resid_mid", device="meta")
    loss.backward()  # the output keeps its graph; the cache is detached
    assert model.wte.weight.grad is not None
    stored = cache["blocks.0.resid_mid"]
    assert stored.device.type == "meta" and stored.shape == (2, 6, 24) and not stored.requires_grad  # moved


def test_cache_holds_copies_that_later_in_place_edits_do_not_reach():
    model = tiny()
    idx = torch.randint(0, 19, (2, 6))
    _, plain = model.run_with_cache(idx, names_filter="blocks.0.resid_post")
    expected = plain["blocks.0.resid_post"].clone()
    # blocks.1.resid_pre carries the very tensor blocks.0.resid_post does; a hook edits it in place
    for device in (None, "cpu"):
        _, cache = model.run_with_cache(idx, names_filter="blocks.0.resid_post", device=device,
                                        fwd_hooks=[("blocks.1.resid_pre", lambda t, name: t.mul_(0.0))])
        assert torch.equal(cache["blocks.0.resid_post"], expected), device


def test_scores_out_and_residual_values_equal_an_explicit_computation():
    model = tiny(bias=True)
    B, T, C, nh, hs = 2, 7, 24, 3, 8
    idx = torch.randint(0, 19, (B, T))
    (logits, _), cache = model.run_with_cache(idx)  # every hook point
    causal = make_mask(T, T, causal=True)
    with torch.no_grad():
        x = model.wte(idx) + model.wpe(torch.arange(T))
        for layer, block in enumerate(model.blocks):
            name = f"blocks.{layer}"
            assert torch.allclose(cache[f"{name}.resid_pre"], x, atol=1e-6)
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            scores = (q @ k.transpose(-2, -1) / math.sqrt(hs)).masked_fill(~causal, float("-inf"))  # (B, nh, T, T)
            assert torch.allclose(cache[f"{name}.attn.scores"], scores, atol=1e-5)  # -inf where masked
            z = torch.softmax(scores, dim=-1) @ v  # (B, nh, T, hs)
            out = block.attn.c_proj(z.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
            assert torch.allclose(cache[f"{name}.attn.out"], out, atol=1e-5)
            x = x + out
            assert torch.allclose(cache[f"{name}.resid_mid"], x, atol=1e-5)
            x = x + block.mlp(block.ln_2(x))
            assert torch.allclose(cache[f"{name}.resid_post"], x, atol=1e-5)
        assert torch.allclose(model.lm_head(model.ln_f(x)), logits, atol=1e-5)


def test_hooks_are_removed_after_the_block_and_after_an_exception():
    model = tiny()
    seen = []
    with model.hooks([("*.attn.pattern", lambda t, name: seen.append(name))]):
        assert len(hooks_attached(model)) == 2 and model.blocks[0].attn.pattern.active
        model(torch.randint(0, 19, (1, 4)))
    assert seen == ["blocks.0.attn.pattern", "blocks.1.attn.pattern"]
    assert hooks_attached(model) == [] and not model.blocks[0].attn.pattern.active
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([("blocks.1.attn.z", lambda t, name: None)]):
            raise RuntimeError("boom")
    assert hooks_attached(model) == []

    def failing(tensor, name):
        raise ValueError("inside the hook")

    with pytest.raises(ValueError, match="inside the hook"):
        model.run_with_cache(torch.randint(0, 19, (1, 4)), fwd_hooks=[("blocks.0.attn.out", failing)])
    assert hooks_attached(model) == []


def test_unknown_hook_name_is_a_clear_error():
    model = tiny()
    with pytest.raises(KeyError, match="blocks.0.attn.q"):
        with model.hooks([("blocks.9.attn.pattern", lambda t, n: None)]):
            pass
    assert hooks_attached(model) == []


def test_cross_attention_names_shapes_and_padding():
    config = GPTConfig(**CFG)
    model = TinyEncoderDecoder(config).eval()
    B, S, T = 2, 7, 5
    source, target = torch.randn(B, S, 24), torch.randn(B, T, 24)
    pad = torch.ones(B, S, dtype=torch.bool)
    pad[1, -3:] = False
    names = model.hook_names()
    assert "decoder.blocks.1.cross_attn.pattern" in names and "encoder.blocks.0.attn.pattern" in names
    _, cache = model.run_with_cache(source, target, pad, names_filter=lambda n: n.endswith((".q", ".k", "pattern")))
    cross = cache["decoder.blocks.1.cross_attn.pattern"]
    assert cross.shape == (B, 3, T, S)
    cross_mask = make_mask(T, S, causal=False, key_padding_mask=pad)
    expected = recompute(cache["decoder.blocks.1.cross_attn.q"], cache["decoder.blocks.1.cross_attn.k"], cross_mask)
    assert torch.allclose(cross, expected, atol=1e-6)
    assert (cross[1, :, :, -3:] == 0).all()
    assert torch.allclose(cross.sum(-1), torch.ones(B, 3, T), atol=1e-5)
    assert cache["encoder.blocks.0.attn.pattern"].shape == (B, 3, S, S)
    dec_self = cache["decoder.blocks.0.attn.pattern"]
    assert dec_self.shape == (B, 3, T, T) and (dec_self.triu(diagonal=1) == 0).all()
    stats = head_stats_all(cache)
    assert math.isnan(stats["decoder.blocks.0.cross_attn"]["distance"][0])
    assert not math.isnan(stats["decoder.blocks.0.attn"]["distance"][0])


def test_ablation_equals_zeroing_z_by_hand():
    model = tiny(bias=True)
    idx = torch.randint(0, 19, (2, 9))
    layer, head = 0, 1
    (plain, _), cache = model.run_with_cache(idx, names_filter=[f"blocks.{layer}.attn.z", f"blocks.{layer}.resid_pre"])
    # by hand: zero the head's output, then run the rest of the network on the changed residual stream
    z = cache[f"blocks.{layer}.attn.z"].clone()
    z[:, head] = 0
    block = model.blocks[layer]
    x = cache[f"blocks.{layer}.resid_pre"] + block.attn.c_proj(z.transpose(1, 2).reshape(2, 9, 24))
    x = x + block.mlp(block.ln_2(x))
    for later in model.blocks[layer + 1:]:
        x = later(x, causal=True)
    by_hand = model.lm_head(model.ln_f(x))
    with model.hooks(ablate_heads([(layer, head)])):
        ablated, _ = model(idx)
    assert torch.allclose(ablated, by_hand, atol=1e-5)
    assert not torch.allclose(ablated, plain, atol=1e-3)
    with model.hooks(scale_heads([(layer, head)], 0.0)):
        assert torch.allclose(model(idx)[0], ablated, atol=1e-6)
    with model.hooks(scale_heads([(layer, head)], 1.0)):
        assert torch.allclose(model(idx)[0], plain, atol=1e-6)


def test_mean_ablation_uses_reference_means():
    model = tiny()
    reference, idx = torch.randint(0, 19, (4, 12)), torch.randint(0, 19, (2, 5))
    heads = parse_heads("1.0,1.2", model)
    means = head_means(model, reference, heads=heads)
    assert means["blocks.1.attn"].shape == (3, 8)
    _, cache = model.run_with_cache(idx, names_filter="blocks.1.attn.z", fwd_hooks=ablate_heads(heads, "mean", means))
    z = cache["blocks.1.attn.z"]
    for head in (0, 2):
        assert torch.allclose(z[:, head], means["blocks.1.attn"][head].expand(2, 5, 8))
    _, plain = model.run_with_cache(idx, names_filter="blocks.1.attn.z")
    assert torch.equal(z[:, 1], plain["blocks.1.attn.z"][:, 1])  # other heads untouched
    _, cache = model.run_with_cache(idx, names_filter="blocks.1.attn.z", fwd_hooks=ablate_heads(heads, "mean"))
    batch_mean = plain["blocks.1.attn.z"][:, 0].mean(dim=(0, 1))
    assert torch.allclose(cache["blocks.1.attn.z"][:, 0], batch_mean.expand(2, 5, 8), atol=1e-6)


def test_replace_pattern_sets_the_weights_used_for_z():
    model = tiny()
    idx = torch.randint(0, 19, (2, 6))
    first_token = torch.zeros(6, 6)
    first_token[:, 0] = 1.0  # every query attends to token 0
    _, cache = model.run_with_cache(idx, names_filter=["blocks.1.attn.pattern", "blocks.1.attn.v", "blocks.1.attn.z"],
                                    fwd_hooks=replace_pattern((1, 2), first_token))
    assert torch.equal(cache["blocks.1.attn.pattern"][:, 2], first_token.expand(2, 6, 6))
    assert torch.allclose(cache["blocks.1.attn.z"][:, 2], cache["blocks.1.attn.v"][:, 2, :1].expand(2, 6, 8))
    with pytest.raises(ValueError, match="replacement"):
        model.run_with_cache(torch.randint(0, 19, (1, 4)), fwd_hooks=replace_pattern((1, 2), first_token))
    with pytest.raises(ValueError, match="replacement"):  # one pattern per batch row: 3 rows for a batch of 2
        model.run_with_cache(idx, fwd_hooks=replace_pattern((1, 2), first_token.expand(3, 6, 6)))


def test_parse_heads_errors():
    model = tiny()
    assert parse_heads("1.2, 0.0", model) == [("blocks.1.attn", 2), ("blocks.0.attn", 0)]
    assert parse_heads("blocks.1.attn.1", model) == [("blocks.1.attn", 1)]
    for bad, message in [("3.0", "no layer 3"), ("0.3", "heads 0..2"), ("zero", "LAYER.HEAD"), ("", "no heads"),
                         ("0.\u00b2", "LAYER.HEAD"), ("\u00b2.0", "LAYER.HEAD")]:  # a superscript 2 is no number
        with pytest.raises(ConfigError, match=message):
            parse_heads(bad, model)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_maps_equal_a_full_pass(use_cache):
    model = tiny()
    idx = torch.randint(0, 19, (2, 4))
    with AttentionRecorder(model) as recorder:
        out = model.generate(idx, 7, top_k=1, use_cache=use_cache)
    maps = recorder.maps(start_len=4)
    assert set(maps) == {"blocks.0.attn.pattern", "blocks.1.attn.pattern"}
    _, cache = model.run_with_cache(out[:, :-1], names_filter="*.pattern")  # the last token is never fed
    for name, full in cache.items():
        assert maps[name].shape == (2, 3, 10, 10)
        assert torch.allclose(maps[name], full, atol=1e-5)
    assert hooks_attached(model) == []


def test_generation_maps_across_a_cache_rebuild():
    model = tiny(block_size=8)
    idx = torch.randint(0, 19, (1, 6))
    with AttentionRecorder(model, "blocks.0.attn.pattern") as recorder:
        model.generate(idx, 9, top_k=1)  # the window is full at tokens 8 and 13: the cache restarts from 4 tokens
    pattern = recorder.maps(start_len=6)["blocks.0.attn.pattern"]
    assert pattern.shape == (1, 3, 14, 14)
    assert torch.allclose(pattern.sum(-1), torch.ones(1, 3, 14), atol=1e-5)
    assert (pattern.triu(diagonal=1) == 0).all()
    assert (pattern[0, :, 12, :5] == 0).all() and (pattern[0, :, 12, 5:13] > 0).all()  # rows see their window only
    assert (pattern[0, :, 13, :10] == 0).all() and (pattern[0, :, 13, 10:] > 0).all()


def test_head_stats_on_known_patterns():
    T = 5
    identity = torch.eye(T)[None].expand(2, T, T)  # head 0 and 1: each token to itself
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    stats = head_stats(torch.stack([identity[0], uniform]))
    assert torch.allclose(stats["entropy"], torch.tensor([0.0, sum(math.log(i) for i in range(1, T + 1)) / T]))
    assert torch.allclose(stats["max"], torch.tensor([1.0, sum(1 / i for i in range(1, T + 1)) / T]))
    assert torch.allclose(stats["distance"], torch.tensor([0.0, sum(i / 2 for i in range(T)) / T]))
    padded = torch.stack([uniform, torch.zeros(T, T)])[None]  # head 1: no weights at all
    assert torch.allclose(head_stats(padded)["entropy"][0], stats["entropy"][1])
    table = stats_table({"blocks.0.attn": stats})
    assert "blocks.0.attn.1" in table and "entropy" in table and len(table.splitlines()) == 3


def test_recorded_cross_attention_during_cached_decoding():
    from model.attention import PastKeyValues

    model = TinyEncoderDecoder(GPTConfig(**CFG)).eval()
    B, S, T = 2, 6, 4
    source, target = torch.randn(B, S, 24), torch.randn(B, T, 24)
    pad = torch.ones(B, S, dtype=torch.bool)
    pad[0, -2:] = False
    _, full = model.run_with_cache(source, target, pad, names_filter="decoder.*pattern")
    encoded = source
    for block in model.encoder.blocks:
        encoded = block(encoded, mask=make_mask(S, S, causal=False, key_padding_mask=pad))
    caches, cross_caches = [PastKeyValues(T) for _ in range(2)], [PastKeyValues(S) for _ in range(2)]
    with AttentionRecorder(model, "decoder.*pattern") as recorder:
        for t in range(T):  # one target position per step, as a decoder generates
            x = target[:, t:t + 1]
            for i, block in enumerate(model.decoder.blocks):
                x = block(x, causal=True, source=encoded, source_mask=pad[:, None, None, :],
                          cache=caches[i], cross_cache=cross_caches[i])
    maps = recorder.maps(start_len=1)
    assert maps["decoder.blocks.1.cross_attn.pattern"].shape == (B, 3, T, S)
    for name, pattern in full.items():
        assert torch.allclose(maps[name], pattern, atol=1e-5), name


def test_recorder_on_seq2seq_generate_with_the_default_filter():
    from model import Seq2Seq, Seq2SeqConfig

    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(vocab_size=11, n_layer=2, n_encoder_layer=1, n_head=3, n_embd=24,
                                  block_size=8, source_block_size=6)).eval()
    src = torch.randint(3, 11, (2, 6))
    with AttentionRecorder(model) as recorder:  # every pattern: encoder, decoder self and cross
        out = model.generate(src, 1, 2, max_new_tokens=5)
    maps = recorder.maps(start_len=1)  # the decoder is fed BOS, then one token per step
    _, cache = model.run_with_cache(src, torch.ones(2, 1, dtype=torch.long), names_filter="encoder.*pattern")
    assert torch.allclose(maps["encoder.blocks.0.attn.pattern"], cache["encoder.blocks.0.attn.pattern"], atol=1e-6)
    steps = max(len(o) for o in out)  # tokens the decoder was fed: BOS + all but the last output
    assert maps["decoder.blocks.1.cross_attn.pattern"].shape[-2:] == (steps, 6)
    assert maps["decoder.blocks.0.attn.pattern"].shape[-2:] == (steps, steps)


def test_head_means_leave_padding_out_when_asked():
    from model import BERT, BERTConfig

    torch.manual_seed(0)
    model = BERT(BERTConfig(vocab_size=19, n_layer=2, n_head=3, n_embd=24, block_size=12)).eval()
    rows = [torch.randint(0, 19, (n,)) for n in (9, 4, 12)]
    ids = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = row, 1
    heads = [(1, 0), (1, 2)]
    padded = head_means(model, ids, attention_mask=mask, position_mask=mask, heads=heads)["blocks.1.attn"]
    real = torch.cat([model.run_with_cache(row[None], names_filter="blocks.1.attn.z")[1]["blocks.1.attn.z"][0]
                      for row in rows], dim=1)  # (nh, 25 real positions, hs), each row alone
    assert torch.allclose(padded, real.mean(dim=1), atol=1e-5)
    everything = head_means(model, ids, attention_mask=mask, heads=heads)["blocks.1.attn"]
    assert not torch.allclose(everything, padded, atol=1e-3)  # padding positions pull the plain mean
    with pytest.raises(ValueError, match="position_mask"):
        head_means(model, ids, attention_mask=mask, position_mask=mask[:, :5], heads=heads)


def test_interventions_on_heads_that_do_not_exist_are_clear_errors():
    model = tiny()
    idx = torch.randint(0, 19, (1, 4))
    for hooks in (ablate_heads([(0, 3)]), scale_heads([(1, 5)], 2.0), replace_pattern((0, 3), torch.eye(4))):
        with pytest.raises(ConfigError, match=r"heads 0\.\.2"):
            with model.hooks(hooks):
                model(idx)
    with pytest.raises(ConfigError, match="whole numbers"):
        ablate_heads([(0, -1)])  # not read as "the last head"
    for means in ({"blocks.1.attn": torch.zeros(3, 8)}, {"blocks.0.attn": torch.zeros(2, 8)}):
        with pytest.raises(ConfigError, match="head_means"):
            with model.hooks(ablate_heads([(0, 1)], "mean", means)):
                model(idx)
    assert hooks_attached(model) == []


def test_a_hook_that_returns_the_wrong_shape_or_type_is_named():
    model = tiny()
    idx = torch.randint(0, 19, (1, 4))
    for fn, message in [(lambda z, name: z[:, :, :-1], r"blocks\.0\.attn\.z returned \(1, 3, 3, 8\)"),
                        (lambda z, name: 1.0, r"blocks\.0\.attn\.z returned a float")]:
        with pytest.raises(ValueError, match=message):
            with model.hooks([("blocks.0.attn.z", fn)]):
                model(idx)
    with pytest.raises(TypeError, match="names_filter"):
        model.run_with_cache(idx, names_filter=3)
    assert hooks_attached(model) == []


def test_head_stats_leave_padding_queries_out():
    from model import BERT, BERTConfig

    bert = BERT(BERTConfig(vocab_size=19, n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 9, 4, 3, 0, 0, 0]])
    mask = (ids != 0).long()  # BERT's padding queries attend to the real keys: full rows of weights
    _, cache = bert.run_with_cache(ids, attention_mask=mask, names_filter="*.pattern")
    stats = head_stats_all(cache, query_mask=mask)["blocks.0.attn"]
    alone = [bert.run_with_cache(ids[i:i + 1, :n], names_filter="*.pattern")[1]["blocks.0.attn.pattern"]
             for i, n in enumerate((5, 4))]
    for stat in ("entropy", "max", "distance"):  # the mean over the 9 real query rows of both runs alone
        rows = [head_stats(p)[stat] * p.size(2) for p in alone]
        torch.testing.assert_close(stats[stat], sum(rows) / 9)
    with pytest.raises(ValueError, match="query_mask"):
        head_stats(cache["blocks.0.attn.pattern"], query_mask=mask[:, :5])
