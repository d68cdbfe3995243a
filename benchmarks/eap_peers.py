"""headscope's EAP and EAP-IG beside auto-circuit's (Miller et al. 2024) on one small GPT-2 and one metric.

    python -m venv /tmp/eapvenv --system-site-packages
    /tmp/eapvenv/bin/pip install auto-circuit "transformer-lens>=2.10,<3" "transformers>=4.40,<5" "datasets<3" \
        "pyarrow>=15,<19"        # auto-circuit needs TransformerLens' HookedTransformer, which 4.0 removed
    /tmp/eapvenv/bin/python benchmarks/eap_peers.py

A random GPT-2 (2 layers, 4 heads, 64 wide, vocabulary 101, every norm gain and bias random) is saved as a
Hugging Face folder and loaded into TransformerLens' HookedTransformer (its GPT-2 weight conversion, no weight
processing); the logits are checked equal. 32 pairs of 12 random tokens, metric logit(1) - logit(2) at the
last position, corrupted = other random tokens. auto-circuit: `mask_gradient_prune_scores` with
grad_function="logit", answer_function="avg_diff" and mask_val=0 (its EAP), and with integrated_grad_samples=5
(its EAP-IG, which integrates along the edge masks rather than the input embeddings: the scores of a different
path). Its scores are gradients of minus the metric, so the signed correlation is with minus ours.
Printed: Spearman correlation over the 110 edges (signed and |score|), the largest difference of EAP scores,
and the top 5 edges of each.
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not this folder
from lens.eap import eap, eap_ig  # noqa: E402
from lens.edges import EdgeGraph, Pairs  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

try:
    import transformers
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.utils.graph_utils import patchable_model
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
except ImportError as error:
    sys.exit(f"error: auto-circuit and TransformerLens < 3 are needed ({error}); see the docstring for the venv.")

N_LAYER, N_HEAD, N_EMBD, VOCAB, PAIRS, TOKENS = 2, 4, 64, 101, 32, 12


def random_gpt2() -> GPT:
    """A GPT-2-shaped model (LayerNorm, biases, tanh GELU, tied head) with every parameter random."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, vocab_size=VOCAB, block_size=16, bias=True,
                          dropout=0.0, activation="gelu_tanh"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                nn.init.normal_(p, std=0.2 if p.dim() > 1 else 0.05)
    return model.eval()


def to_hooked(model: GPT) -> HookedTransformer:
    """The same weights in TransformerLens' HookedTransformer, through a Hugging Face GPT-2 folder."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder + "/gpt2", overwrite=True)
        hf = transformers.GPT2LMHeadModel.from_pretrained(folder + "/gpt2").eval()
    cfg = HookedTransformerConfig(n_layers=N_LAYER, d_model=N_EMBD, n_ctx=16, d_head=N_EMBD // N_HEAD, n_heads=N_HEAD,
                                  d_mlp=4 * N_EMBD, d_vocab=VOCAB, act_fn="gelu_new", normalization_type="LN",
                                  default_prepend_bos=False)
    hooked = HookedTransformer(cfg)
    hooked.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    hooked.set_use_attn_result(True)  # what auto-circuit's factorised graph reads: each head's output,
    hooked.set_use_split_qkv_input(True)  # each head's own q/k/v input,
    hooked.set_use_hook_mlp_in(True)  # and each MLP's input
    return hooked.eval()


def edge_name(name: str) -> str:
    """auto-circuit's edge name (`A0.1->A1.2.K`, `MLP 0->Resid End`, `Resid Start->...`) in headscope's."""
    def node(part: str) -> str:
        if part == "Resid Start":
            return "input"
        if part == "Resid End":
            return "logits"
        if part.startswith("MLP "):
            return f"m{part[4:]}"
        layer, head, *qkv = part[1:].split(".")
        return f"a{layer}.h{head}" + (f"<{qkv[0].lower()}>" if qkv else "")
    sender, receiver = name.split("->")
    return f"{node(sender)}->{node(receiver)}"


def auto_circuit_scores(hooked, clean, corrupted, graph: EdgeGraph, **options) -> torch.Tensor:
    """auto-circuit's mask-gradient scores in the order of graph.edges."""
    patchable = patchable_model(hooked, factorized=True, slice_output="last_seq", separate_qkv=True)
    data = PromptDataset(clean, corrupted, [torch.tensor([1])] * PAIRS, [torch.tensor([2])] * PAIRS)
    loader = PromptDataLoader(data, seq_len=None, diverge_idx=0, batch_size=PAIRS, shuffle=False)
    scores = mask_gradient_prune_scores(patchable, loader, None, grad_function="logit", answer_function="avg_diff",
                                        **options)
    out = torch.full((len(graph),), float("nan"))
    for edge in patchable.edges:
        out[graph.edge(edge_name(edge.name))] = float(scores[edge.dest.module_name][edge.patch_idx])
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's correlation of two score vectors."""
    ranks = [torch.argsort(torch.argsort(v)).double() for v in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def main() -> None:
    model = random_gpt2()
    hooked = to_hooked(model)
    g = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randint(0, VOCAB, (PAIRS, TOKENS), generator=g), torch.randint(0, VOCAB, (PAIRS, TOKENS), generator=g)
    with torch.no_grad():
        parity = float((model(clean)[0] - hooked(clean)).abs().max())
    graph = EdgeGraph(model)
    pairs = Pairs(clean, corrupted)
    metric = lambda logits, batch: logits[:, -1, 1] - logits[:, -1, 2]  # noqa: E731
    ours = {"EAP": eap(model, pairs, metric=metric, graph=graph),
            "EAP-IG, 5 steps": eap_ig(model, pairs, metric=metric, steps=5, graph=graph)}
    theirs = {"EAP": auto_circuit_scores(hooked, clean, corrupted, graph, mask_val=0.0),
              "EAP-IG, 5 steps": auto_circuit_scores(hooked, clean, corrupted, graph, integrated_grad_samples=5)}
    print(f"{N_LAYER} layers x {N_HEAD} heads x {N_EMBD} wide, {len(graph)} edges, {PAIRS} pairs of {TOKENS} tokens; "
          f"logits of headscope and HookedTransformer differ by at most {parity:.1e}")
    print("\n| method | Spearman (signed, ours vs -auto-circuit) | Spearman (abs) | max abs difference (EAP scale) |")
    print("|---|---|---|---|")
    for name in ours:
        a, b = ours[name].values, -theirs[name]
        diff = f"{float((a - b).abs().max()):.1e}" if name == "EAP" else "(different path and scale)"
        print(f"| {name} | {spearman(a, b):.4f} | {spearman(a.abs(), b.abs()):.4f} | {diff} |")
    for name in ours:
        top_theirs = [graph.names[i] for i in theirs[name].abs().argsort(descending=True)[:5].tolist()]
        print(f"\n{name}: headscope top 5 {', '.join(ours[name].top(5))}; auto-circuit top 5 {', '.join(top_theirs)}")


if __name__ == "__main__":
    main()
