"""Edge attribution patching's cost beside the forward and backward passes it is made of.

    nice -n 10 python benchmarks/eap.py                    # GPT-2-small sizes (12 x 12 x 768), 32 pairs of 32 tokens
    python benchmarks/eap.py --n_layer=2 --n_embd=64 --n_head=4 --vocab=512     # a quick run

A random GPT-2-sized GPT (bias, LayerNorm, GELU, tied head, vocabulary 50257), 32 clean/corrupted pairs of
random tokens, metric logit(a) - logit(b) at the last position. Timed on one batch of all pairs:
- EAP over every edge (one corrupted forward, one clean forward and backward) against 3 forward+backward
  passes of the model on the batch (the plain model: logits, mean cross-entropy, backward);
- EAP-IG with 5 steps against 6 forward+backward passes;
- a faithfulness curve at 20 sizes (0.1% .. 100% of the edges, top-n circuits) against 20 forward passes.
Times are process CPU seconds (--clock=wall for wall time) with --threads threads: on a shared machine CPU
time moves less with the load than wall time. Only the ratios of one run mean anything.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not this folder
from lens.circuit import faithfulness_curve  # noqa: E402
from lens.eap import eap, eap_ig  # noqa: E402
from lens.edges import EdgeGraph, Pairs  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def timed(fn, clock: str):
    """(result, seconds) of fn() by the chosen clock."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    start = now()
    result = fn()
    return result, now() - start


def forward_backward(model, tokens: torch.Tensor) -> None:
    """One forward and backward pass of the plain model (next-token cross-entropy on the batch)."""
    logits, _ = model(tokens)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    model.zero_grad(set_to_none=True)


def forward(model, tokens: torch.Tensor) -> None:
    """One forward pass without gradients."""
    with torch.no_grad():
        model(tokens)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_layer", type=int, default=12)
    parser.add_argument("--n_head", type=int, default=12)
    parser.add_argument("--n_embd", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab,
                       block_size=max(64, args.tokens), bias=True, dropout=0.0, activation="gelu_tanh")
    model = GPT(config).eval()
    clean = torch.randint(0, args.vocab, (args.pairs, args.tokens))
    pairs = Pairs(clean, torch.randint(0, args.vocab, (args.pairs, args.tokens)))
    rows = torch.arange(args.pairs)
    metric = lambda logits, batch: logits[rows, batch.lengths - 1, 1] - logits[rows, batch.lengths - 1, 2]  # noqa: E731
    graph = EdgeGraph(model)
    print(f"{args.n_layer} layers x {args.n_head} heads x {args.n_embd} wide, vocabulary {args.vocab}: {len(graph)} "
          f"edges; {args.pairs} pairs of {args.tokens} tokens; {args.threads} thread(s), {args.clock} seconds")
    forward_backward(model, clean)  # warm-up
    _, fb = timed(lambda: forward_backward(model, clean), args.clock)
    _, fwd = timed(lambda: forward(model, clean), args.clock)
    scores, t_eap = timed(lambda: eap(model, pairs, metric=metric, batch_size=args.pairs, graph=graph), args.clock)
    _, t_ig = timed(lambda: eap_ig(model, pairs, metric=metric, steps=5, batch_size=args.pairs, graph=graph), args.clock)
    sizes = tuple(np.geomspace(0.001, 1.0, 20))
    _, t_curve = timed(lambda: faithfulness_curve(model, pairs, metric=metric, scores=scores, sizes=sizes,
                                                  batch_size=args.pairs), args.clock)
    rows_out = [("EAP, every edge", t_eap, "3 forward+backward", 3 * fb),
                ("EAP-IG, 5 steps", t_ig, "6 forward+backward", 6 * fb),
                ("faithfulness curve, 20 sizes", t_curve, "20 forwards", 20 * fwd)]
    print(f"\none forward+backward {fb:.2f} s, one forward {fwd:.2f} s\n")
    print("| method | s | budget | budget s | ratio (goal <= 1) |")
    print("|---|---|---|---|---|")
    for name, t, budget, t_budget in rows_out:
        print(f"| {name} | {t:.2f} | {budget} | {t_budget:.2f} | {t / t_budget:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
