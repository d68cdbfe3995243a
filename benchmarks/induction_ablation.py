"""Is the induction head of an induction run causal? Zero-ablate each head and compare the loss on the
copied half of doubled lines (targets a model can predict from the line's first copy) with the rest.

    python train.py config/induction_shakespeare_repeats.py
    python benchmarks/induction_ablation.py out-induction-repeats        # --data_dir=data/shakespeare_repeats

An induction head (layer 1 of a 2-layer model) hurts the copied half much more than the rest when
ablated; docs/induction_heads.md records the result.
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository, not benchmarks/

from data.loader import read_meta  # noqa: E402
from data.tokens import load_tokens  # noqa: E402
from lens.interventions import ablate_heads  # noqa: E402
from training.families import model_from_checkpoint  # noqa: E402
from weights.checkpoint import load_checkpoint  # noqa: E402


def copied_targets(seq: list[int], newline: int) -> torch.Tensor:
    """(len(seq) - 1,) bool: targets seq[1:] inside a line equal to the line before it (after its first char)."""
    mask = torch.zeros(len(seq), dtype=torch.bool)
    lines, start = [], 0
    for i, t in enumerate(seq):
        if t == newline:
            lines.append((start, i))
            start = i + 1
    for (a0, a1), (b0, b1) in zip(lines, lines[1:]):
        if b1 > b0 and seq[a0:a1] == seq[b0:b1]:
            mask[b0 + 1:b1] = True
    return mask[1:]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="a run folder of a GPT trained on data/shakespeare_repeats")
    parser.add_argument("--data_dir", default="data/shakespeare_repeats")
    parser.add_argument("--sequences", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = model_from_checkpoint(load_checkpoint(args.out_dir)).eval()
    meta = read_meta(args.data_dir)
    if "\n" not in meta.get("chars", ""):
        sys.exit(f"error: {args.data_dir} is not a character dataset with lines; give --data_dir of shakespeare_repeats.")
    if meta["vocab_size"] != model.config.vocab_size:
        sys.exit(f"error: {args.data_dir} has {meta['vocab_size']} tokens and the model {model.config.vocab_size}; "
                 "give the --data_dir the model was trained on.")
    val = torch.from_numpy(load_tokens(os.path.join(args.data_dir, "val.bin")).astype(np.int64))  # after its header
    T = model.config.block_size
    starts = torch.randint(0, len(val) - T - 1, (args.sequences,), generator=torch.Generator().manual_seed(0))
    x = torch.stack([val[i:i + T] for i in starts])
    y = torch.stack([val[i + 1:i + T + 1] for i in starts])
    copied = torch.stack([copied_targets(val[i:i + T + 1].tolist(), meta["chars"].index("\n")) for i in starts])

    if not copied.any():
        sys.exit(f"error: no line of {args.data_dir}'s samples repeats the line before it; use data/shakespeare_repeats.")

    def losses(hooks) -> tuple[float, float]:
        with torch.no_grad(), model.hooks(hooks):
            loss = F.cross_entropy(model(x)[0].transpose(1, 2), y, reduction="none")
        return loss[copied].mean().item(), loss[~copied].mean().item()

    base = losses([])
    print(f"{int(copied.sum())} of {copied.numel()} targets are in a copied line; "
          f"loss there {base[0]:.3f}, elsewhere {base[1]:.3f}")
    print("| head ablated | loss, copied lines | loss, elsewhere |\n|---|---|---|")
    for layer in range(model.config.n_layer):
        for head in range(model.config.n_head):
            c, o = losses(ablate_heads([(f"blocks.{layer}.attn", head)]))
            print(f"| L{layer}H{head} | {c:.3f} ({c - base[0]:+.3f}) | {o:.3f} ({o - base[1]:+.3f}) |")


if __name__ == "__main__":
    main(sys.argv[1:])
