"""Activation patching (batched) against a one-pass-per-patch loop, its identities, attribution patching."""

import inspect

import pytest
import torch

from lens import patching
from model import GPT, GPTConfig, Seq2Seq, Seq2SeqConfig
from lens.cache import LensError


def random_gpt(**overrides):
    torch.manual_seed(2)
    config = dict(n_layer=2, n_head=3, n_embd=24, vocab_size=50, block_size=16, bias=True)
    model = GPT(GPTConfig(**{**config, **overrides}))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def prompts():
    clean = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(3))
    corrupted = clean.clone()
    corrupted[:, [2, 6]] = (corrupted[:, [2, 6]] + 7) % 50
    return clean, corrupted


def metric(logits):
    return logits[:, -1, 3].mean() - logits[:, -1, 5].mean()


def naive(model, corrupted, clean_cache, patches, metric=metric):
    """One forward pass per patch, each with its own hook."""
    values = []
    for patch in patches:
        def setter(activation, name, patch=patch):
            activation = activation.clone()
            for site_name, index in patch:
                if site_name == name:
                    activation[(slice(None), *index)] = clean_cache[name][(slice(None), *index)]
            return activation

        with torch.no_grad(), model.hooks([(sorted({n for n, _ in patch}), setter)] if patch else []):
            values.append(float(metric(model(corrupted)[0])))
    return torch.tensor(values)


@pytest.mark.parametrize("kind", ["resid_pre", "attn_out", "mlp_out", "attn_head_out_by_pos",
                                  "attn_head_v_all_pos", "attn_head_pattern_by_pos"])
def test_batched_patching_equals_a_loop_of_single_patches(kind):
    model = random_gpt()
    clean, corrupted = prompts()
    _, clean_cache = model.run_with_cache(clean)
    indices, patches = patching.kind_sites(model, kind, clean_cache)
    expected = naive(model, corrupted, clean_cache, patches)
    for batch_size in (None, 5):  # default chunking, and chunks that do not divide the count
        got = patching.activation_patch(model, corrupted, clean_cache, metric, patches, batch_size=batch_size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    table = getattr(patching, f"get_act_patch_{kind}")(model, corrupted, clean_cache, metric)
    assert table[indices[-1]] == pytest.approx(expected[-1].item(), abs=1e-5)
    assert table.numel() == len(patches)


def test_every_kind_has_written_out_exact_and_attribution_functions_that_patch_that_kind():
    """get_act_patch_KIND and get_attr_patch_KIND: a `def` of that name (grep finds it), in __all__, the kind's table."""
    source = inspect.getsource(patching)
    model = random_gpt()
    clean, corrupted = prompts()
    _, clean_cache = model.run_with_cache(clean)
    approx = patching.attribution_patch(model, corrupted, clean_cache, metric, list(patching.KINDS))
    for kind in patching.KINDS:
        exact, attr = getattr(patching, f"get_act_patch_{kind}"), getattr(patching, f"get_attr_patch_{kind}")
        for function in (exact, attr):
            assert f"\ndef {function.__name__}(" in source and function.__name__ in patching.__all__
            assert function.__name__.endswith(kind) and function.__doc__
        indices, patches = patching.kind_sites(model, kind, clean_cache)
        values = patching.activation_patch(model, corrupted, clean_cache, metric, patches)
        table = exact(model, corrupted, clean_cache, metric, batch_size=7)
        torch.testing.assert_close(table[tuple(torch.tensor(indices).T)], values)
        torch.testing.assert_close(attr(model, corrupted, clean_cache, metric), approx[kind])
        assert table.shape == approx[kind].shape


@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "attn_out", "attn_head_out_by_pos", "attn_head_q_by_pos"])
def test_passes_that_start_late_equal_the_loop_with_rotary_positions_and_odd_sizes(kind):
    # a GPT's pass starts at the patches' first block and position (the positions before come from the
    # corrupted run's keys and values): rotary offsets, QK-norm, a soft cap, 3 layers, odd head size
    model = random_gpt(n_layer=3, n_head=5, n_embd=30, pos_emb="rope", qk_norm=True, logit_softcap=9.0,
                       block_size=11)
    clean = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(4))
    corrupted = clean.clone()
    corrupted[:, [1, 8]] = (corrupted[:, [1, 8]] + 3) % 50
    _, clean_cache = model.run_with_cache(clean)
    metric_all = lambda logits: (logits[:, :, 3] - logits[:, :, 5]).mean()  # noqa: E731  every position counts
    _, patches = patching.kind_sites(model, kind, clean_cache)
    expected = naive(model, corrupted, clean_cache, patches, metric_all)  # the plain model, one pass per patch
    for batch_size in (None, 4):
        got = patching.activation_patch(model, corrupted, clean_cache, metric_all, patches, batch_size=batch_size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    starts = {patching.Corrupted(model, corrupted).start([patch]) for patch in patches}
    assert max(position for _, position in starts) == 10 and max(layer for layer, _ in starts) == 2


def test_patching_a_whole_stream_restores_clean_and_patching_nothing_keeps_corrupted():
    model = random_gpt()
    clean, corrupted = prompts()
    (clean_logits, _), clean_cache = model.run_with_cache(clean)
    with torch.no_grad():
        corrupted_metric = float(metric(model(corrupted)[0]))
    clean_metric = float(metric(clean_logits.detach()))
    assert abs(clean_metric - corrupted_metric) > 0.05  # the corruption matters (1e4 x the tolerance)
    whole = [[(f"blocks.{layer}.{hook}", (slice(None),))] for layer in range(2) for hook in ("resid_pre", "resid_post")]
    values = patching.activation_patch(model, corrupted, clean_cache, metric, whole + [[]])
    torch.testing.assert_close(values[:-1], torch.full((4,), clean_metric), atol=1e-5, rtol=0)
    assert values[-1].item() == pytest.approx(corrupted_metric, abs=1e-6)
    table = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    unchanged = [0, 1, 3, 4, 5, 7]  # block 0's input differs only at the corrupted tokens
    assert table[0, unchanged].sub(corrupted_metric).abs().max() < 1e-5
    assert table[0, [2, 6]].sub(corrupted_metric).abs().min() > 1e-3


def test_seq2seq_decoder_patching_with_tuple_inputs():
    torch.manual_seed(4)
    model = Seq2Seq(Seq2SeqConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=20, block_size=8)).eval()
    src, tgt = torch.randint(0, 20, (1, 6)), torch.randint(0, 20, (1, 5))
    bad_src = src.clone()
    bad_src[0, 1] = (bad_src[0, 1] + 3) % 20
    (clean_logits, _), clean_cache = model.run_with_cache(src, tgt)
    # the decoder's last stream, or the encoder's (which every cross-attention reads): clean again
    whole = [[(f"{stack}.blocks.1.resid_post", (slice(None),))] for stack in ("decoder", "encoder")]
    values = patching.activation_patch(model, (bad_src, tgt), clean_cache, metric, whole)
    torch.testing.assert_close(values, torch.full((2,), float(metric(clean_logits.detach()))), atol=1e-5, rtol=0)
    table = patching.get_act_patch_attn_head_out_all_pos(model, (bad_src, tgt), clean_cache, metric)
    assert table.shape == (2, 2)


def test_attribution_patching_is_the_gradient_linearisation_in_one_pass():
    model = random_gpt()
    clean, corrupted = prompts()
    _, clean_cache = model.run_with_cache(clean)
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    tables = patching.attribution_patch(model, corrupted, clean_cache, metric, ["resid_pre", "attn_head_out_all_pos"])
    handle.remove()
    assert len(calls) == 1  # every site of both kinds from one forward (and one backward) pass
    # reference for one site: (clean - corrupted) . grad, by hand
    _, corrupted_cache = model.run_with_cache(corrupted)
    z = corrupted_cache["blocks.1.attn.z"].clone().requires_grad_()
    with model.hooks([("blocks.1.attn.z", lambda a, n: z)]):
        grad, = torch.autograd.grad(metric(model(corrupted)[0]), z)
    expected = ((clean_cache["blocks.1.attn.z"] - z.detach()) * grad).sum(dim=(0, 2, 3))  # (nh,)
    torch.testing.assert_close(tables["attn_head_out_all_pos"][1], expected, atol=1e-5, rtol=1e-4)
    exact = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    with torch.no_grad():
        base = float(metric(model(corrupted)[0]))
    both = torch.stack([(exact - base).flatten(), tables["attn_head_out_all_pos"].flatten()])
    assert torch.corrcoef(both)[0, 1] > 0.9  # a good approximation on this small model (measured 0.9997)
    assert tables["resid_pre"].shape == (2, 8)


def test_bad_patching_inputs_are_clear_errors():
    model = random_gpt()
    clean, corrupted = prompts()
    _, clean_cache = model.run_with_cache(clean)
    with pytest.raises(LensError, match="same shape"):
        patching.get_act_patch_resid_pre(model, corrupted[:, :6], clean_cache, metric)
    with pytest.raises(LensError, match="same shape"):
        patching.attribution_patch(model, corrupted[:1], clean_cache, metric, ["resid_pre"])
    with pytest.raises(LensError, match="unknown patching kind"):
        patching.patch_table(model, corrupted, clean_cache, metric, "resid_final")
    with pytest.raises(LensError, match="metric"):
        patching.attribution_patch(model, corrupted, clean_cache, lambda logits: float(metric(logits)), ["attn_out"])
    attn_only = random_gpt(attn_only=True)
    _, attn_cache = attn_only.run_with_cache(clean)
    with pytest.raises(LensError, match="attention-only"):
        patching.get_act_patch_mlp_out(attn_only, corrupted, attn_cache, metric)


def test_sites_outside_the_run_and_metrics_that_are_not_one_number_are_clear_errors():
    model = random_gpt()
    clean, corrupted = prompts()
    _, clean_cache = model.run_with_cache(clean)
    for site in (("blocks.0.resid_pre", (8,)), ("blocks.1.attn.z", (3, 0))):  # position 8 of 8; head 3 of 3
        with pytest.raises(LensError, match="outside"):
            patching.activation_patch(model, corrupted, clean_cache, metric, [[site]])
    vector = lambda logits: logits[:, -1, 3]  # noqa: E731  one value per batch row
    with pytest.raises(LensError, match="one number"):
        patching.get_act_patch_resid_pre(model, corrupted, clean_cache, vector)
    with pytest.raises(LensError, match="one number"):
        patching.get_attr_patch_resid_pre(model, corrupted, clean_cache, vector)
