"""Path patching from MLPs and the embeddings (TransformerLens' direct path patching has head senders
only): each value against a by-hand computation from the clean and corrupted runs."""

import pytest
import torch

from lens import path_patching
from lens.cache import LensError
from lens.path_patching import FINAL, PathPatch
from model import GPT, GPTConfig

TOL = dict(atol=1e-5, rtol=0)


def sharp_gpt(**options) -> GPT:
    """A random 3-layer GPT with learned positions whose weights are large enough for sharp attention."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**dict(vocab_size=13, n_layer=3, n_head=2, n_embd=16, block_size=8), **options})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.4)
    return model


def by_hand_delta(model, sender, clean, corrupted, clean_cache, corrupted_cache) -> torch.Tensor:
    """A sender's clean-minus-corrupted write into the residual stream, (B, T, C)."""
    if sender == "embed":
        return model.wte(clean) - model.wte(corrupted)  # the position embeddings are the same in both runs
    name = f"blocks.{sender[0]}.mlp.out"
    return clean_cache[name] - corrupted_cache[name]


def by_hand_receiver(model, corrupted, corrupted_cache, delta, layer: int, head: int, component: str, metric):
    """The metric when head (layer, head)'s `component` reads the corrupted stream plus delta: that input
    computed from the weights, put in place in an otherwise corrupted run."""
    block = model.blocks[layer]
    stream = block.ln_1(corrupted_cache[f"blocks.{layer}.resid_pre"] + delta)  # (B, T, C)
    inputs = (stream @ block.attn.c_attn.weight.T).split(stream.size(-1), dim=-1)  # q, k, v: (B, T, C) each
    hs = stream.size(-1) // block.attn.n_head
    new = inputs["qkv".index(component)][..., head * hs:(head + 1) * hs]  # (B, T, hs)

    def put(value, name):
        value = value.clone()
        value[:, head] = new  # ours: (B, nh, T, hs)
        return value

    with model.hooks([(f"blocks.{layer}.attn.{component}", put)]):
        return float(metric(model(corrupted)[0]))


def test_mlp_and_embedding_senders_equal_a_by_hand_computation():
    model = sharp_gpt()
    clean = torch.tensor([[1, 5, 2, 7, 3, 4], [6, 2, 9, 1, 8, 0]])
    corrupted = clean.clone()
    corrupted[:, 1] = (corrupted[:, 1] + 3) % 13
    metric = lambda logits: (logits[:, -1, 4] - logits[:, -1, 2]).sum()  # noqa: E731
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
        senders = ["embed", (0, "mlp"), (1, "mlp")]
        for component in ("q", "k", "v"):
            table = path_patching.direct_path_table(model, corrupted, clean_cache, corrupted_cache, metric, senders,
                                                    component)
            expected = torch.zeros(3, 3, 2)
            for i, sender in enumerate(senders):
                delta = by_hand_delta(model, sender, clean, corrupted, clean_cache, corrupted_cache)
                first = 0 if sender == "embed" else sender[0] + 1
                for layer in range(first, 3):
                    for head in range(2):
                        expected[i, layer, head] = by_hand_receiver(model, corrupted, corrupted_cache, delta, layer,
                                                                    head, component, metric)
            torch.testing.assert_close(table, expected, **TOL)
            base = float(metric(model(corrupted)[0]))
            assert all(float((table[i, 1:] - base).abs().max()) > 1e-3 for i in range(3))  # each sender matters
            assert float((table[1:, :1] != 0).sum()) == 0  # no MLP reaches a head of its own layer or before
        delta = by_hand_delta(model, (2, "mlp"), clean, corrupted, clean_cache, corrupted_cache)
        direct = metric(model.lm_head(model.ln_f(corrupted_cache["blocks.2.resid_post"] + delta)))
        value = path_patching.path_patch(model, corrupted, clean_cache, corrupted_cache, metric,
                                         [PathPatch([(2, "mlp")], [FINAL])])
        torch.testing.assert_close(value, direct.reshape(1), **TOL)
        assert abs(float(direct) - float(metric(model(corrupted)[0]))) > 1e-3  # the patch changed something


def test_sender_errors_are_one_sentence():
    model = sharp_gpt()
    tokens = torch.tensor([[1, 2, 3, 4]])
    _, cache = model.run_with_cache(tokens)
    metric = lambda logits: logits[0, -1, 0]  # noqa: E731
    run = lambda patch: path_patching.path_patch(model, tokens, cache, cache, metric, [patch])  # noqa: E731
    with pytest.raises(LensError, match="write \\(layer, head\\), \\(layer, 'mlp'\\) or 'embed'"):
        run(PathPatch([("mlp", 0)]))
    with pytest.raises(LensError, match="sender \\(3, 'mlp'\\) does not exist"):
        run(PathPatch([(3, "mlp")]))
    with pytest.raises(LensError, match="is not after sender layer 1"):
        run(PathPatch([(1, "mlp")], [(1, 0, "q")]))
    with pytest.raises(LensError, match="this table's sources are heads"):
        path_patching.get_act_patch_direct_path_all_sources(model, tokens, cache, cache, metric, sources=[(0, "mlp")])
    attn_only = sharp_gpt(attn_only=True)
    _, cache = attn_only.run_with_cache(tokens)
    with pytest.raises(LensError, match="no MLPs"):
        path_patching.direct_path_table(attn_only, tokens, cache, cache, metric, [(0, "mlp")])
