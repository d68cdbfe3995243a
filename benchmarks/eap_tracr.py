"""EAP, EAP-IG and exact edge patching on models compiled from RASP programs by tracr, whose circuits are known.

    python -m venv /tmp/eapvenv --system-site-packages && /tmp/eapvenv/bin/pip install tracr-pypi
    /tmp/eapvenv/bin/python benchmarks/eap_tracr.py

tracr (Lindner et al. 2023) compiles a RASP program into transformer weights: the residual stream is cut into
named subspaces (`tokens:a`, `indices:3`, `prev:b`, `one`), and each head and MLP reads and writes only the
subspaces of the operations it implements. Each compiled model is copied into headscope's GPT (no norms, ReLU
MLPs, heads and widths padded with zeros, the queries scaled to tracr's 1 / sqrt(key_size)) and checked
against tracr's own forward pass (the stream at the output subspace, and the decoded outputs).

The true edges come from the weights: sender s -> receiver r is an edge of the circuit when s writes a subspace
r reads and r's node lies on such a path to the logits. The input embedding counts only with its token
subspaces other than BOS's: the positions (`indices`), the constant `one` and BOS (always at position 0) are the same in a clean and a corrupted run, so no
patching method (exact included) can see an edge that carries only them. Clean and corrupted inputs are BOS and
random tokens; metric: the mean over positions 1 .. T-1 of the logit of the clean run's output (categorical),
or the output value (numerical). Printed: TPR, FPR (top |true| edges), ROC area, ranks of the true edges.
"""

import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not this folder
from lens.edges import EdgeGraph, Pairs  # noqa: E402
from lens.eap import eap, eap_ig, edge_patching  # noqa: E402
from lens.ground_truth import recovery  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

try:
    from tracr.compiler import compiling, lib
    from tracr.rasp import rasp
except ImportError as error:  # jax and tracr are not test dependencies
    sys.exit(f"error: tracr is not installed ({error}); install it in a virtual environment, see the docstring.")


def programs() -> dict:
    """name -> (RASP program, vocabulary, max_seq_len): three circuits of different shapes."""
    prev = rasp.Select(rasp.indices, rasp.indices, lambda key, query: query == key + 1)
    shifted = rasp.categorical(rasp.Aggregate(prev, rasp.tokens)).named("prev")
    two_back = rasp.categorical(rasp.Aggregate(prev, shifted)).named("two_back")  # attention -> attention's value
    mapped = rasp.categorical(rasp.Map(lambda t: {"a": "b", "b": "c", "c": "a"}.get(t, "a"), shifted)).named("next")
    frac = lib.make_frac_prevs(rasp.numerical(rasp.Map(lambda t: t == "a", rasp.tokens)).named("is_a"))  # MLP -> attn
    return {"two back (attn -> attn value)": (two_back, {"a", "b", "c"}, 6),
            "previous token, mapped (attn -> MLP)": (mapped, {"a", "b", "c"}, 6),
            "fraction of a so far (MLP -> attn value)": (frac, {"a", "b", "c"}, 6)}


def layer_params(params: dict, layer: int, part: str) -> dict | None:
    """tracr's weights of one layer's attention ('attn') or MLP ('mlp'), as numpy arrays (None if absent)."""
    prefix = f"transformer/layer_{layer}/{part}/"
    found = {k[len(prefix):]: {n: np.asarray(a) for n, a in v.items()} for k, v in params.items() if k.startswith(prefix)}
    return found or None


def to_gpt(compiled, output: str) -> tuple[GPT, list[int], list[str]]:
    """headscope's GPT with the compiled weights; the residual indices the logits read (those of the operation
    named `output`), and their labels."""
    params, config = compiled.params, compiled.model_config
    D = params["token_embed"]["embeddings"].shape[1]
    n_head, ks = config.num_heads, config.key_size
    hs = max(ks, math.ceil(D / n_head))
    C = n_head * hs
    hidden = max([1] + [layer_params(params, l, "mlp")["linear_1"]["w"].shape[1] for l in range(config.num_layers)
                        if layer_params(params, l, "mlp")])
    labels = [str(label) for label in compiled.residual_labels]
    output_dims = [i for i, label in enumerate(labels) if label.split(":")[0] == output]
    vocab_in = params["token_embed"]["embeddings"].shape[0]
    gpt = GPT(GPTConfig(n_layer=config.num_layers, n_head=n_head, n_embd=C, vocab_size=max(vocab_in, len(output_dims)),
                        block_size=params["pos_embed"]["embeddings"].shape[0], bias=True, dropout=0.0,
                        tie_embeddings=False, mlp_hidden=hidden, activation="gelu")).eval()
    pad = lambda a, rows, cols: np.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))  # noqa: E731
    with torch.no_grad():
        for p in gpt.parameters():
            p.zero_()
        gpt.wte.weight.copy_(torch.tensor(pad(params["token_embed"]["embeddings"], gpt.wte.weight.size(0), C)))
        gpt.wpe.weight.copy_(torch.tensor(pad(params["pos_embed"]["embeddings"], gpt.wpe.weight.size(0), C)))
        for l, block in enumerate(gpt.blocks):
            block.ln_1, block.ln_2, block.mlp.act = nn.Identity(), nn.Identity(), nn.ReLU()
            copy_attention(block.attn, layer_params(params, l, "attn"), n_head, ks, hs, C)
            mlp = layer_params(params, l, "mlp")
            if mlp is None:
                continue
            block.mlp.c_fc.weight.copy_(torch.tensor(pad(mlp["linear_1"]["w"], C, hidden).T))
            block.mlp.c_fc.bias[:mlp["linear_1"]["b"].shape[0]] = torch.tensor(mlp["linear_1"]["b"])
            block.mlp.c_proj.weight.copy_(torch.tensor(pad(mlp["linear_2"]["w"], hidden, C).T))
            block.mlp.c_proj.bias[:D] = torch.tensor(mlp["linear_2"]["b"])
        gpt.ln_f = nn.Identity()
        for j, i in enumerate(output_dims):
            gpt.lm_head.weight[j, i] = 1.0
    return gpt, output_dims, [labels[i] for i in output_dims]


def copy_attention(attn, weights: dict, n_head: int, ks: int, hs: int, C: int) -> None:
    """tracr's query/key/value/linear (haiku: x @ w + b, heads side by side) into c_attn and c_proj, each head
    padded from ks to hs dims; queries scaled by sqrt(hs / ks) so scaled-dot scores equal tracr's."""
    if weights is None:
        return
    D = weights["query"]["w"].shape[0]
    for j, name in enumerate(("query", "key", "value")):
        scale = math.sqrt(hs / ks) if name == "query" else 1.0
        for h in range(n_head):
            rows = slice(j * C + h * hs, j * C + h * hs + ks)
            attn.c_attn.weight[rows, :D] = torch.tensor(weights[name]["w"][:, h * ks:(h + 1) * ks].T) * scale
            attn.c_attn.bias[rows] = torch.tensor(weights[name]["b"][h * ks:(h + 1) * ks]) * scale
    for h in range(n_head):
        attn.c_proj.weight[:D, h * hs:h * hs + ks] = torch.tensor(weights["linear"]["w"][h * ks:(h + 1) * ks].T)
    attn.c_proj.bias[:D] = torch.tensor(weights["linear"]["b"])


def parity(compiled, gpt: GPT, output_dims: list[int], inputs: list[list[str]]) -> float:
    """The largest difference between tracr's stream at the output subspace and headscope's logits, over the
    inputs (each BOS + tokens); a SystemExit if a decoded output differs."""
    worst = 0.0
    for tokens in inputs:
        out = compiled.apply(tokens)
        ids = torch.tensor([compiled.input_encoder.encode(tokens)])
        with torch.no_grad():
            logits = gpt(ids)[0][0, :, :len(output_dims)]
        theirs = torch.tensor(np.asarray(out.transformer_output)[0][:, output_dims])
        worst = max(worst, float((logits - theirs).abs().max()))
        if compiled.output_encoder is not None and hasattr(compiled.output_encoder, "decoding_map"):
            ours = [compiled.output_encoder.decoding_map[int(i)] for i in logits.argmax(-1)[1:]]
            if ours != list(out.decoded[1:]):
                sys.exit(f"error: decoded outputs differ on {tokens}: tracr {out.decoded[1:]}, headscope {ours}")
    return worst


def true_edges(compiled, gpt: GPT, graph: EdgeGraph, output_dims: list[int]) -> list[str]:
    """The edges along which the compiled program's information flows (see the module docstring)."""
    labels = [str(label) for label in compiled.residual_labels]
    D = len(labels)
    bos = f"tokens:{compiled.input_encoder.bos_token}"  # at position 0 of every run, so the same in both
    token_dims = {i for i, label in enumerate(labels) if label.split(":")[0] == "tokens" and label != bos}
    writes = {"input": token_dims}
    reads = {"logits": set(output_dims)}
    C, hs = gpt.config.n_embd, gpt.config.n_embd // gpt.config.n_head
    nonzero = lambda w: {i for i in range(D) if bool(w[..., i].abs().max() > 1e-6)}  # noqa: E731
    for l, block in enumerate(gpt.blocks):
        for h in range(gpt.config.n_head):
            for j, part in enumerate("qkv"):
                reads[f"a{l}.h{h}<{part}>"] = nonzero(block.attn.c_attn.weight[j * C + h * hs:j * C + (h + 1) * hs])
            writes[f"a{l}.h{h}"] = nonzero(block.attn.c_proj.weight[:, h * hs:(h + 1) * hs].T)
        reads[f"m{l}"] = nonzero(block.mlp.c_fc.weight)
        writes[f"m{l}"] = nonzero(block.mlp.c_proj.weight.T)
    linked = [(s, r) for s, r in (name.split("->") for name in graph.names) if writes[s] & reads[r]]
    useful, changed = {"logits"}, True
    while changed:  # nodes with a path to the logits
        changed = False
        for s, r in linked:
            if r.split("<")[0] in useful and s not in useful:
                useful.add(s)
                changed = True
    return [f"{s}->{r}" for s, r in linked if r.split("<")[0] in useful]


def task(compiled, gpt: GPT, output_dims: list[int], vocab: list[str], length: int, n_pairs: int = 32):
    """Clean/corrupted pairs (BOS + random tokens) and the metric."""
    g = torch.Generator().manual_seed(0)
    encode = lambda row: compiled.input_encoder.encode([compiled.input_encoder.bos_token] + row)  # noqa: E731
    draw = lambda: [[vocab[i] for i in torch.randint(0, len(vocab), (length,), generator=g).tolist()]  # noqa: E731
                    for _ in range(n_pairs)]
    clean_tokens = draw()
    clean = torch.tensor([encode(row) for row in clean_tokens])
    corrupted = torch.tensor([encode(row) for row in draw()])
    with torch.no_grad():
        answers = gpt(clean)[0][:, :, :len(output_dims)].argmax(-1)  # (N, T)
    numerical = len(output_dims) == 1

    def metric(logits, batch):
        picked = logits[..., :1] if numerical else logits.gather(-1, answers[batch.rows].unsqueeze(-1))
        return picked[:, 1:, 0].mean(1)
    return Pairs(clean, corrupted), metric, [[compiled.input_encoder.bos_token] + row for row in clean_tokens[:8]]


def main() -> None:
    print("| program | edges | true edges | parity (max diff) | method | TPR | FPR | ROC AUC | ranks of the true edges |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (program, vocab, max_len) in programs().items():
        compiled = compiling.compile_rasp_to_model(program, vocab=vocab, max_seq_len=max_len, compiler_bos="BOS",
                                                   causal=True)
        gpt, output_dims, _ = to_gpt(compiled, program.label)
        graph = EdgeGraph(gpt)
        pairs, metric, samples = task(compiled, gpt, output_dims, sorted(vocab), max_len)
        diff = parity(compiled, gpt, output_dims, samples)
        truth = true_edges(compiled, gpt, graph, output_dims)
        for method, scores in (("EAP", eap(gpt, pairs, metric=metric, graph=graph)),
                               ("EAP-IG, 5 steps", eap_ig(gpt, pairs, metric=metric, steps=5, graph=graph)),
                               ("exact", edge_patching(gpt, pairs, metric=metric, graph=graph))):
            found = recovery(scores, truth)
            ranks = ", ".join(str(r) for r in sorted(found["ranks"].values()))
            print(f"| {name} | {len(graph)} | {len(truth)} | {diff:.1e} | {method} | {found['tpr']:.2f} | "
                  f"{found['fpr']:.3f} | {found['auc']:.3f} | {ranks} |")
        print(f"|  true edges: {', '.join(truth)} |")


if __name__ == "__main__":
    main()
