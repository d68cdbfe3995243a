"""Measure a trained encoder-decoder on its held-out pairs: exact match (greedy, beam), cross-attention
alignment on the reversal task, and decoding speed with and without the KV caches. Prints a table.

    python benchmarks/seq2seq.py --out_dir=out-seq2seq [--pairs=500] [--data_dir=data/reverse]
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.loader import dataset_dir  # noqa: E402
from data.tokenizer import from_meta  # noqa: E402
from data.tokens import TokenFileError  # noqa: E402
from model import CheckpointError, load_checkpoint  # noqa: E402
from training.families import FAMILIES, model_from_checkpoint  # noqa: E402
from model.seq2seq import cross_attention  # noqa: E402


def alignment(model, batches, pairs) -> dict:
    """Share of output positions i whose cross-attention argmax is source position n-1-i, per layer and head."""
    batch = batches.collate(pairs)
    maps = cross_attention(model, batch["src"], batch["tgt"], batch["src_mask"])
    lengths = batch["src_mask"].sum(1).tolist()
    out = {}
    for layer, weights in enumerate(maps):  # (B, nh, T, S)
        for head in ["mean", *range(weights.size(1))]:
            w = weights.mean(1) if head == "mean" else weights[:, head]
            good = sum((w[b, :n, :n].argmax(-1) == torch.arange(n - 1, -1, -1)).sum().item()
                       for b, n in enumerate(lengths))
            out[f"layer {layer} head {head}"] = good / sum(lengths)
    return out


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="out-seq2seq")
    parser.add_argument("--data_dir", default="", help="default: the checkpoint's dataset")
    parser.add_argument("--pairs", type=int, default=500, help="held-out pairs to decode")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        sys.exit(f"error: --pairs must be at least 1, got {args.pairs}.")
    ckpt = load_checkpoint(args.out_dir)
    if ckpt.get("model_type") != "seq2seq":
        raise CheckpointError(f"{args.out_dir} does not hold an encoder-decoder checkpoint.")
    model = model_from_checkpoint(ckpt).eval()
    tokenizer = from_meta(ckpt["tokenizer"])
    train_cfg = ckpt["train_config"]
    folder = dataset_dir(train_cfg["dataset"], args.data_dir or train_cfg["data_dir"])
    batches = FAMILIES["seq2seq"].batches(folder, model.config, 64, "cpu", tokenizer)
    pairs = batches.pairs["val"][:args.pairs]
    batch = batches.collate(pairs)
    targets = [t for _, t in pairs]
    rows = [("iterations trained", ckpt["iter_num"])]
    for name, run in [("greedy, cached", lambda: model.generate(batch["src"], batches.bos, batches.eos, batch["src_mask"])),
                      ("greedy, no cache", lambda: model.generate(batch["src"], batches.bos, batches.eos,
                                                                  batch["src_mask"], use_cache=False)),
                      ("beam 4, cached", lambda: model.beam_search(batch["src"], batches.bos, batches.eos,
                                                                   batch["src_mask"], beam_size=4))]:
        start = time.perf_counter()
        outputs = run()
        seconds = time.perf_counter() - start
        tokens = sum(len(o) + 1 for o in outputs)
        exact = sum(o == t for o, t in zip(outputs, targets)) / len(pairs)
        rows.append((f"{name}: exact match / tokens per s", f"{exact:.4f} / {tokens / seconds:,.0f}"))
    for key, value in alignment(model, batches, pairs).items():
        rows.append((f"alignment n-1-i, {key}", f"{value:.4f}"))
    print(f"| {len(pairs)} held-out pairs of {folder} | value |\n|---|---|")
    for key, value in rows:
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (CheckpointError, TokenFileError) as e:
        sys.exit(f"error: {e}")
