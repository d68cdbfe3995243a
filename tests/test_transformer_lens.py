"""Against TransformerLens itself: one small random GPT-2 (3 heads) loaded into both gives the same numbers.

TransformerLens 4 boots a local Hugging Face folder with TransformerBridge.boot_transformers (offline).
Its bridge does not fold the norms' gains into the next weights, so its apply_ln_to_stack and
logit_attrs leave the final norm's gain out while headscope's apply it: the final gain is set to 1
here, where the two conventions agree (every other gain and bias, the final bias included, is random).
"""

import os

import pytest
import torch
from transformer_lens import patching as tl_patching
from transformer_lens.head_detector import compute_head_attention_similarity_score as tl_score
from transformer_lens.head_detector import get_induction_head_detection_pattern as tl_induction
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.utilities import test_prompt as tl_test_prompt
from transformers import GPT2Config, GPT2LMHeadModel

from data.tokenizer import CharTokenizer, GPT2Tokenizer
from lens import detectors, path_patching, patching, patching_stats
from lens.folding import fold_weights
from lens.interventions import ablate_heads
from lens.tl import HookedTransformer, get_act_name
from lens.tl import test_prompt as run_test_prompt  # not collected as a test
from lens.weight_space import WeightSpace, head_weights
from model import BERT, GPT, BERTConfig, GPTConfig
from lens.cache import ActivationCache, HookNameError, LensError

TOL = dict(atol=1e-4, rtol=0)


def random_gpt2_pair(folder, unit_final_gain: bool = True, attn_std: float | None = None, **sizes):
    """(headscope GPT, TransformerLens bridge) of one random GPT-2 with random norms and biases (the final
    norm's gain 1 unless unit_final_gain is False; attention weights of std attn_std: sharp patterns)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_positions=32, bos_token_id=0, eos_token_id=0, **sizes)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln" in name:  # GPT-2's init leaves gains 1 and biases 0: draw them instead
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif attn_std is not None and "attn" in name:
                p.normal_(0.0, attn_std)
        if unit_final_gain:
            hf.transformer.ln_f.weight.fill_(1.0)
    hf.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, device="cpu")
    return GPT.from_pretrained(str(folder)).eval(), bridge


def assert_patching_matches(ours, bridge, vocab: int, length: int, kinds) -> None:
    """Each get_act_patch_KIND table equals TransformerLens' when one token of a random clean prompt changes."""
    clean = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(3))
    corrupted = clean.clone()
    corrupted[0, 3] = (corrupted[0, 3] + 1) % vocab
    metric = lambda logits: logits[0, -1, 5] - logits[0, -1, 7]  # noqa: E731
    _, tl_clean = bridge.run_with_cache(clean)
    _, clean_cache = ours.run_with_cache(clean)
    for kind in kinds:
        ours_table = getattr(patching, f"get_act_patch_{kind}")(ours, corrupted, clean_cache, metric)
        tl_table = getattr(tl_patching, f"get_act_patch_{kind}")(bridge, corrupted, tl_clean, metric)
        torch.testing.assert_close(ours_table, tl_table.float(), **TOL)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return random_gpt2_pair(tmp_path_factory.mktemp("gpt2tiny"), n_layer=2, n_head=3, n_embd=48, vocab_size=101)


def test_cache_methods_match_transformer_lens(models):
    ours, bridge = models
    tokens = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(1))
    tl_logits, tl_cache = bridge.run_with_cache(tokens)
    (logits, _), cache = ours.run_with_cache(tokens)
    torch.testing.assert_close(logits, tl_logits, **TOL)
    for apply_ln in (False, True):
        torch.testing.assert_close(cache.accumulated_resid(apply_ln=apply_ln, incl_mid=True),
                                   tl_cache.accumulated_resid(apply_ln=apply_ln, incl_mid=True), **TOL)
    ours_heads, labels = cache.stack_head_results(return_labels=True)
    tl_heads, tl_labels = tl_cache.stack_head_results(return_labels=True)
    assert labels == tl_labels
    torch.testing.assert_close(ours_heads, tl_heads, **TOL)
    parts, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
    tl_parts, tl_labels = tl_cache.decompose_resid(pos_slice=-1, return_labels=True)
    assert labels == tl_labels
    torch.testing.assert_close(parts, tl_parts, **TOL)
    for target, wrong in ((tokens[:, -1], None), (tokens[:, 0], tokens[:, 1])):
        torch.testing.assert_close(cache.logit_attrs(parts, target, wrong, pos_slice=-1),
                                   tl_cache.logit_attrs(tl_parts, target, wrong, pos_slice=-1), **TOL)
    full, labels = cache.get_full_resid_decomposition(return_labels=True)
    tl_full, tl_labels = tl_cache.get_full_resid_decomposition(return_labels=True)
    assert labels == tl_labels
    torch.testing.assert_close(full, tl_full, **TOL)


def test_detectors_and_patching_match_transformer_lens(models):
    ours, bridge = models
    tokens = detectors.repeated_random_tokens(101, 6, batch=1, seed=2)  # (1, 12)
    _, tl_cache = bridge.run_with_cache(tokens)
    expected = torch.tensor([[tl_score(tl_cache[f"blocks.{l}.attn.hook_pattern"][0, h], tl_induction(tokens[0]),
                                       exclude_bos=False, exclude_current_token=False, error_measure="mul")
                              for h in range(3)] for l in range(2)])
    torch.testing.assert_close(detectors.detect_head(ours, tokens, "induction_head"), expected, **TOL)
    assert_patching_matches(ours, bridge, 101, 8, ("resid_pre", "attn_head_out_all_pos"))


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """3 layers, 3 heads of 15 dims (not a power of two), an MLP of 70 (not 4 x 45); random norms and biases."""
    return random_gpt2_pair(tmp_path_factory.mktemp("gpt2odd"), n_layer=3, n_head=3, n_embd=45, n_inner=70,
                            vocab_size=53)


def test_odd_sizes_hooks_ablation_and_patching_match_transformer_lens(odd_models):
    ours, bridge = odd_models
    assert ours.config.head_dim == 15 and ours.config.mlp_width == 70
    tokens = torch.randint(0, 53, (2, 11), generator=torch.Generator().manual_seed(1))
    tl_logits, tl_cache = bridge.run_with_cache(tokens)
    (logits, _), cache = ours.run_with_cache(tokens)
    torch.testing.assert_close(logits, tl_logits, **TOL)
    for layer in range(3):
        for name, tl_name in (("attn.pattern", "attn.hook_pattern"), ("attn.z", "attn.hook_z"), ("attn.q", "attn.hook_q"),
                              ("attn.v", "attn.hook_v"), ("resid_mid", "hook_resid_mid"), ("mlp.post", "mlp.hook_post")):
            expected = tl_cache[f"blocks.{layer}.{tl_name}"]  # TransformerLens: (B, T, nh, hs) per head
            got = cache[f"blocks.{layer}.{name}"]
            torch.testing.assert_close(got, expected.transpose(1, 2) if got.shape != expected.shape else expected, **TOL)
    parts = cache.get_full_resid_decomposition(pos_slice=-1)
    torch.testing.assert_close(parts, tl_cache.get_full_resid_decomposition(pos_slice=-1), **TOL)
    torch.testing.assert_close(cache.logit_attrs(parts, tokens[:, -1], tokens[:, 0], pos_slice=-1),
                               tl_cache.logit_attrs(tl_cache.get_full_resid_decomposition(pos_slice=-1), tokens[:, -1],
                                                    tokens[:, 0], pos_slice=-1), **TOL)

    def zero_head(head):
        def hook(z, hook):
            z = z.clone()
            z[:, :, head] = 0.0  # TransformerLens' z is (B, T, nh, hs)
            return z
        return hook

    with ours.hooks(ablate_heads([(0, 0), (2, 1)])):
        ablated, _ = ours(tokens)
    tl_ablated = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head(0)),
                                                          ("blocks.2.attn.hook_z", zero_head(1))])
    torch.testing.assert_close(ablated, tl_ablated, **TOL)
    assert_patching_matches(ours, bridge, 53, 9, ("mlp_out", "attn_head_out_by_pos", "attn_head_k_all_pos", "attn_head_pattern_by_pos"))


def sorted_eigenvalues(eig: torch.Tensor) -> torch.Tensor:
    """Complex eigenvalues in a fixed order (by real part, then imaginary part) as (..., n, 2) reals."""
    order = torch.argsort(eig.real * 1e3 + eig.imag, dim=-1)
    return torch.view_as_real(eig.gather(-1, order))


def test_weight_space_matches_transformer_lens(models):
    ours, bridge = models
    ws = WeightSpace(ours)
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_E", "W_pos", "W_U", "W_in", "W_out",
                 "b_in", "b_out"):
        torch.testing.assert_close(getattr(ws, name), getattr(bridge, name), **TOL, msg=name)
    for ours_circuit, tl_circuit in ((ws.QK, bridge.QK), (ws.OV, bridge.OV)):
        torch.testing.assert_close(ours_circuit.AB, tl_circuit.AB, **TOL)
        torch.testing.assert_close(ours_circuit.norm(), tl_circuit.norm(), **TOL)
        torch.testing.assert_close(ours_circuit.S, tl_circuit.S, **TOL)
        torch.testing.assert_close(sorted_eigenvalues(ours_circuit.eigenvalues),
                                   sorted_eigenvalues(tl_circuit.eigenvalues), **TOL)
        U, S, V = ours_circuit[1, 2].svd()  # indexing by (layer, head)
        torch.testing.assert_close(U @ torch.diag(S) @ V.T, tl_circuit.AB[1, 2], **TOL)
    vector = torch.randn(48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ws.QK @ vector, bridge.QK @ vector, **TOL)
    torch.testing.assert_close((ws.OV @ ws.W_U).AB, (bridge.OV @ bridge.W_U).AB, **TOL)
    for mode in "QKV":
        torch.testing.assert_close(ws.all_composition_scores(mode), bridge.all_composition_scores(mode).scores, **TOL)
    eig = ((bridge.W_E @ bridge.OV) @ bridge.W_U).eigenvalues  # TransformerLens' full OV circuit (vocab x vocab)
    torch.testing.assert_close(ws.copying_scores(), eig.sum(-1).real / eig.abs().sum(-1), **TOL)


def test_weight_views_write_through_and_errors(models):
    ours, _ = models
    views = head_weights(ours.blocks[1].attn)
    assert views["W_Q"].data_ptr() == ours.blocks[1].attn.c_attn.weight.data_ptr()  # a view, not a copy
    torch.testing.assert_close(views["W_O"][2], ours.blocks[1].attn.c_proj.weight[:, 32:48].T)
    rope = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, pos_emb="rope", block_size=8))
    with pytest.raises(LensError, match="no W_pos"):
        WeightSpace(rope).W_pos
    with pytest.raises(LensError, match="mode must be"):
        WeightSpace(ours).all_composition_scores("X")
    with pytest.raises(LensError, match="leading dims"):
        WeightSpace(ours).QK[0, 0, 0]
    additive = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, attn_score="additive", block_size=8))
    with pytest.raises(LensError, match="no QK circuit"):
        WeightSpace(additive).QK
    with pytest.raises(LensError, match="decoder-only"):
        fold_weights(BERT(BERTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=8)))


def test_folded_weights_match_transformer_lens(tmp_path):
    ours, bridge = random_gpt2_pair(tmp_path, unit_final_gain=False, n_layer=2, n_head=3, n_embd=48, vocab_size=101)
    tokens = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(1))
    logits, _ = ours(tokens)
    kept, _ = fold_weights(ours, center_unembed=False)(tokens)
    torch.testing.assert_close(kept, logits, **TOL)  # folding and centring the writers keep the logits
    folded = fold_weights(ours)
    torch.testing.assert_close(folded(tokens)[0].log_softmax(-1), logits.log_softmax(-1), **TOL)
    torch.testing.assert_close(ours(tokens)[0], logits, rtol=0, atol=0)  # the original is untouched
    bridge.enable_compatibility_mode(disable_warnings=True)  # TransformerLens' fold_ln + centring + value biases
    torch.testing.assert_close(folded(tokens)[0], bridge(tokens), **TOL)
    ws = WeightSpace(folded)
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_E", "W_pos", "W_U", "b_U", "W_in", "b_in"):
        torch.testing.assert_close(getattr(ws, name), getattr(bridge, name), **TOL, msg=name)
    for mode in "QKV":
        torch.testing.assert_close(ws.all_composition_scores(mode), bridge.all_composition_scores(mode).scores, **TOL)


@pytest.fixture(scope="module")
def sharp_models(tmp_path_factory):
    """3 layers, 3 heads of 15 dims, attention weights large enough for patterns far from uniform."""
    return random_gpt2_pair(tmp_path_factory.mktemp("gpt2sharp"), attn_std=0.3, n_layer=3, n_head=3, n_embd=45,
                            vocab_size=53)


def test_direct_path_patching_matches_transformer_lens(sharp_models):
    ours, bridge = sharp_models
    clean = torch.randint(0, 53, (2, 9), generator=torch.Generator().manual_seed(3))
    corrupted = clean.clone()
    corrupted[:, 3] = (corrupted[:, 3] + 1) % 53
    metric = lambda logits: (logits[:, -1, 5] - logits[:, -1, 7]).mean()  # noqa: E731
    (_, tl_clean), (_, tl_corrupted) = bridge.run_with_cache(clean), bridge.run_with_cache(corrupted)
    (_, clean_cache), (_, corrupted_cache) = ours.run_with_cache(clean), ours.run_with_cache(corrupted)
    runs = (ours, corrupted, clean_cache, corrupted_cache, metric)
    table = path_patching.get_act_patch_direct_path_all_sources(*runs, "k", batch_size=5)
    expected = tl_patching.get_act_patch_direct_path_all_sources(bridge, corrupted, tl_clean, tl_corrupted, metric, "k",
                                                                 verbose=False)
    torch.testing.assert_close(table, expected, **TOL)
    base = float(metric(ours(corrupted)[0].detach()))
    assert (table[0, :, 1:] - base).abs().min() > 1e-4  # every path from layer 0 changes the metric
    for component, (layer, head) in (("q", (0, 1)), ("v", (1, 2))):
        torch.testing.assert_close(path_patching.get_act_patch_direct_path(*runs, layer, head, component),
                                   tl_patching.get_act_patch_direct_path(bridge, corrupted, tl_clean, tl_corrupted,
                                                                         metric, layer, head, component, verbose=False),
                                   **TOL)
    # the final residual as the receiver: the senders' direct effect on the logits
    patch = path_patching.PathPatch(senders=[(0, 1), (1, 2)], receivers=[path_patching.FINAL])
    delta = sum((clean_cache[f"blocks.{l}.attn.z"][:, h] - corrupted_cache[f"blocks.{l}.attn.z"][:, h])
                @ ours.blocks[l].attn.c_proj.weight[:, 15 * h:15 * (h + 1)].T for l, h in patch.senders)
    direct = ours.lm_head(ours.ln_f(corrupted_cache["blocks.2.resid_post"] + delta))
    torch.testing.assert_close(path_patching.path_patch(*runs, [patch]), metric(direct).reshape(1), **TOL)


def test_path_patching_errors(models):
    ours, _ = models
    tokens = torch.randint(0, 101, (1, 6), generator=torch.Generator().manual_seed(0))
    _, cache = ours.run_with_cache(tokens)
    runs = (ours, tokens, cache, cache, lambda logits: logits[0, -1, 0])
    for patch, message in ((path_patching.PathPatch([(0, 3)]), "sender \\(0, 3\\) does not exist"),
                           (path_patching.PathPatch([(1, 0)], [(1, 0, "q")]), "is not after sender layer 1"),
                           (path_patching.PathPatch([(0, 0)], [(1, 0, "z")]), "write \\(layer, head")):
        with pytest.raises(LensError, match=message):
            path_patching.path_patch(*runs, [patch])
    with pytest.raises(LensError, match="component must be"):
        path_patching.get_act_patch_direct_path(*runs, 0, 0, "o")
    with pytest.raises(LensError, match="same shape"):
        path_patching.get_act_patch_direct_path(ours, tokens[:, :5], cache, cache, runs[-1], 0, 0)


def test_patching_over_pairs_matches_transformer_lens_statistics(sharp_models):
    ours, bridge = sharp_models
    generator = torch.Generator().manual_seed(5)
    clean_prompts = [torch.randint(0, 53, (n,), generator=generator).tolist() for n in (7, 9, 6, 9, 8, 5)]
    corrupted_prompts = [p[:2] + [(p[2] + 1) % 53] + p[3:] for p in clean_prompts]
    clean, corrupted, last = patching_stats.pad_pairs(clean_prompts, corrupted_prompts)
    rows = torch.arange(6)
    metric = lambda logits: logits[rows, last, 5] - logits[rows, last, 7]  # noqa: E731
    result = patching_stats.patch_pairs(ours, clean, corrupted, metric, "attn_head_out_all_pos", batch_size=4)
    _, tl_clean = bridge.run_with_cache(clean)
    expected = tl_patching.get_act_patch_attn_head_out_all_pos(bridge, corrupted, tl_clean, metric, reduce="none",
                                                               baseline=True)
    torch.testing.assert_close(result.values, expected.values, **TOL)  # (layer, head, example)
    torch.testing.assert_close(result.baseline, expected.baseline, **TOL)
    torch.testing.assert_close(result.stderr(), expected.stderr(), **TOL)
    torch.testing.assert_close(result.permutation_pvalue(), expected.permutation_pvalue(), **TOL)  # exact: N <= 12
    torch.testing.assert_close(result.normalized(), expected.normalized(result.clean), atol=1e-3, rtol=1e-3)
    low, high = result.bootstrap_ci(n_resamples=20000)
    tl_low, tl_high = expected.bootstrap_ci(n_resamples=20000)  # other random draws: the same interval within 10%
    assert ((low - tl_low).abs() < 0.1 * (high - low)).all() and ((high - tl_high).abs() < 0.1 * (high - low)).all()
    assert (low < result.mean()).all() and (result.mean() < high).all()
    for i, (a, b) in enumerate(zip(clean_prompts, corrupted_prompts)):  # padding changes no example's values
        alone = patching_stats.patch_pairs(ours, torch.tensor([a]), torch.tensor([b]),
                                           lambda logits: logits[:, -1, 5] - logits[:, -1, 7], "attn_head_out_all_pos")
        torch.testing.assert_close(alone.values[..., 0], result.values[..., i], **TOL)
    attribution = patching_stats.attribution_pairs(ours, clean, corrupted, metric, "attn_head_out_all_pos")
    one = patching.get_attr_patch_attn_head_out_all_pos(ours, corrupted[2:3], ActivationCache(
        {k: v[2:3] for k, v in ours.run_with_cache(clean)[1].items()}, ours), lambda logits: metric(
            torch.cat([logits] * 6))[2])  # example 2 alone
    torch.testing.assert_close(attribution.effect()[..., 2], one, **TOL)


def test_patching_over_pairs_errors(models):
    ours, _ = models
    with pytest.raises(LensError, match="pair 1: the clean prompt has 3 tokens and the corrupted one 2"):
        patching_stats.pad_pairs([[1, 2], [1, 2, 3]], [[1, 3], [1, 2]])
    clean, corrupted, last = patching_stats.pad_pairs([[1, 2, 4], [5, 6]], [[1, 3, 4], [5, 7]])
    with pytest.raises(LensError, match="one value per example"):
        patching_stats.patch_pairs(ours, clean, corrupted, lambda logits: logits[0, -1, 0], "resid_pre")
    with pytest.raises(LensError, match="unknown patching kind"):
        patching_stats.patch_pairs(ours, clean, corrupted, lambda logits: logits[:, -1, 0], "resid")
    with pytest.raises(LensError, match="pad the pairs together"):
        patching_stats.patch_pairs(ours, clean, corrupted[:, :2], lambda logits: logits[:, -1, 0], "resid_pre")


def test_transformer_lens_hook_functions_run_unchanged(models):
    ours, bridge = models
    tokens = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(4))

    # as TransformerLens' docs write them: z is (batch, pos, head, d_head), the hook has .name and .layer()
    def head_ablation_hook(value, hook):
        value[:, :, 1, :] = 0.0
        return value

    patterns = {}

    def store_pattern(pattern, hook):
        patterns[hook.layer()] = pattern.clone()
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

    fwd_hooks = [("blocks.0.attn.hook_z", head_ablation_hook), (lambda name: name.endswith("hook_pattern"), store_pattern)]
    model = HookedTransformer(ours)
    torch.testing.assert_close(model.run_with_hooks(tokens, fwd_hooks=fwd_hooks),
                               bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks), **TOL)
    model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
    assert sorted(patterns) == [0, 1] and ours.blocks[1].attn.pattern.ctx["calls"] == 2  # ctx persists across runs
    model.add_hook("blocks.0.attn.hook_z", head_ablation_hook)  # kept until reset_hooks()
    torch.testing.assert_close(model(tokens), bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks[:1]), **TOL)
    model.reset_hooks()
    torch.testing.assert_close(model(tokens), bridge(tokens), **TOL)
    assert ours.blocks[1].attn.pattern.ctx == {}  # reset_hooks clears the contexts
    logits, cache = model.run_with_cache(tokens)
    _, tl_cache = bridge.run_with_cache(tokens)
    for name in ("blocks.1.attn.hook_z", "blocks.0.attn.hook_q", "blocks.1.hook_resid_mid", "blocks.0.attn.hook_pattern"):
        torch.testing.assert_close(cache[name], tl_cache[name], **TOL, msg=name)  # TL's names and layout
    assert cache["blocks.1.attn.z"].shape == (2, 3, 8, 16)  # ours: (batch, head, pos, d_head)


def test_backward_hooks_and_incl_bwd_match_transformer_lens(models):
    ours, bridge = models
    tokens = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(4))
    model = HookedTransformer(ours)
    loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True, names_filter="blocks.*.hook_resid_pre")
    tl_loss, tl_cache = bridge.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    torch.testing.assert_close(loss, tl_loss, **TOL)
    for layer in (0, 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_pre_grad"], tl_cache[f"blocks.{layer}.hook_resid_pre_grad"],
                                   **TOL)
    grads = {}
    bwd = [("blocks.1.attn.hook_z", lambda grad, hook: grads.setdefault(hook.name, grad.clone()))]
    model.run_with_hooks(tokens, return_type="loss", bwd_hooks=bwd).backward()
    torch.testing.assert_close(grads["blocks.1.attn.hook_z"], tl_cache["blocks.1.attn.hook_z_grad"], **TOL)  # (B, T, nh, hs)
    torch.testing.assert_close(model(tokens, return_type="loss", loss_per_token=True),
                               bridge(tokens, return_type="loss", loss_per_token=True), **TOL)


def test_stop_and_start_at_layer_and_per_head_results(models):
    ours, bridge = models
    tokens = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(4))
    model = HookedTransformer(ours)
    for layer in (0, 1, -1):
        resid = model(tokens, stop_at_layer=layer)
        torch.testing.assert_close(resid, bridge(tokens, stop_at_layer=layer), **TOL)
        torch.testing.assert_close(model(resid, start_at_layer=layer), bridge(tokens), **TOL)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(model(tokens, stop_at_layer=2), cache.final_resid())  # after the last block
    logits, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_result", "blocks.0.attn.z"])
    torch.testing.assert_close(logits, model(tokens), **TOL)  # summing the heads by hand changes nothing
    torch.testing.assert_close(cache["blocks.0.attn.hook_result"], cache.head_results(0).permute(1, 2, 0, 3), **TOL)
    assert "blocks.0.attn.result" not in model.run_with_cache(tokens)[1]  # opt-in: the default leaves it out
    with pytest.raises(LensError, match="stop_at_layer=3 is out of range"):
        model(tokens, stop_at_layer=3)
    with pytest.raises(LensError, match="return_type must be"):
        model(tokens, return_type="logit")
    with pytest.raises(HookNameError, match="no hook point matches 'blocks.0.attn.hook_zz'"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_zz", lambda value, hook: None)])
    assert get_act_name("z", 1) == "blocks.1.attn.hook_z" and get_act_name("embed") == "hook_embed"


def test_tokenizer_methods_and_test_prompt_match_transformer_lens(capsys):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50257, n_layer=1, n_head=2, n_embd=8, block_size=32)).eval()
    gpt.tokenizer = GPT2Tokenizer()
    model = HookedTransformer(gpt)
    assert model.to_tokens("When Mary").tolist() == [[50256, 2215, 5335]]  # GPT-2's BOS by default, as TL
    assert model.to_tokens("When Mary", prepend_bos=False).tolist() == [[2215, 5335]]
    assert model.to_tokens(["Hi", "When Mary"]).tolist() == [[50256, 17250, 50256], [50256, 2215, 5335]]
    assert model.to_str_tokens("When Mary") == ["<|endoftext|>", "When", " Mary"]
    assert model.to_string(torch.tensor([2215, 5335])) == "When Mary" and model.to_single_token(" Mary") == 5335
    ranks = run_test_prompt(model, "The Eiffel Tower is in", "Paris is", top_k=3)
    ours = capsys.readouterr().out
    tl_test_prompt("The Eiffel Tower is in", "Paris is", model, top_k=3)  # TransformerLens' own, on our model
    assert ours == capsys.readouterr().out
    logits = model(model.to_tokens("The Eiffel Tower is in Paris"))[0, -2]
    assert ranks[0] == [(" Paris", int((logits > logits[6342]).sum()))]
    run_test_prompt(model, "The Eiffel Tower is in", ["Paris", "Rome"], top_k=2)
    ours = capsys.readouterr().out
    tl_test_prompt("The Eiffel Tower is in", ["Paris", "Rome"], model, top_k=2)
    assert ours == capsys.readouterr().out
    with pytest.raises(LensError, match="exactly one token"):
        model.to_single_token(" Eiffel")
    chars = HookedTransformer(GPT(GPTConfig(vocab_size=3, n_layer=1, n_head=1, n_embd=4, block_size=8)))
    chars.tokenizer = CharTokenizer("abc")
    assert chars.to_tokens("cab").tolist() == [[2, 0, 1]]  # no BOS token: none prepended
    with pytest.raises(LensError, match="no BOS token"):
        chars.to_tokens("cab", prepend_bos=True)
    with pytest.raises(LensError, match="has no tokenizer"):
        HookedTransformer(GPT(GPTConfig(vocab_size=3, n_layer=1, n_head=1, n_embd=4, block_size=8))).to_tokens("a")


def test_families_where_the_notion_does_not_apply_are_clear_errors():
    bert = BERT(BERTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=8, block_size=8, post_norm=False)).eval()
    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    _, cache = bert.run_with_cache(tokens)
    with pytest.raises(LensError, match="decoder-only models"):
        path_patching.path_patch(bert, tokens, cache, cache, lambda out: out[0].sum(), [path_patching.PathPatch([(0, 0)])])
    with pytest.raises(LensError, match="causal"):
        patching_stats.patch_pairs(bert, tokens, tokens, lambda out: out[:, 0, 0], "resid_pre")
    with pytest.raises(LensError, match="no linear unembedding"):
        WeightSpace(bert).W_U
    with pytest.raises(LensError, match="wraps a headscope model"):
        HookedTransformer(torch.nn.Linear(2, 2))
