"""Exact match and per-character accuracy against source length for trained reversal checkpoints
(config/seq2seq_reverse.py with hard cross-attention), and how peaked their cross-attention is.

    python benchmarks/reinforce_reversal.py gumbel=OUT_DIR reinforce=OUT_DIR [--plot=hard_reversal.png]

Every held-out pair of the reverse dataset (2,000) is decoded greedily (argmax attention, as evaluation
does) and scored per source-length bucket: exact match (the whole line) and characters right (position
by position against the target; a missing character counts wrong). `peak` is the mean probability of the
most likely key of each hard head (teacher-forced, on the same pairs): what a training-time sample hits.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bottleneck import plot  # noqa: E402
from data.pairs import PairBatches  # noqa: E402
from model import Seq2Seq, Seq2SeqConfig  # noqa: E402
from model.config import from_flat  # noqa: E402
from reinforce_variance import reversal_setup  # noqa: E402
from weights.checkpoint import load_checkpoint  # noqa: E402
from weights.errors import UserError  # noqa: E402

BUCKETS = [(1, 10), (11, 20), (21, 30), (31, 40)]


@torch.no_grad()
def by_length(model, batches: PairBatches, chunk: int = 250) -> dict:
    """{'1-10': {'exact_match', 'char_accuracy', 'pairs'}, ...} over every held-out pair, and 'peak'."""
    counts = {f"{lo}-{hi}": [0, 0, 0, 0] for lo, hi in BUCKETS}  # exact, chars right, chars, pairs
    peaks = []
    pairs = batches.pairs["val"]
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        batch = batches.collate(part)
        outputs = model.generate(batch["src"], batches.bos, batches.eos, batch["src_mask"],
                                 max_new_tokens=max(len(t) for _, t in part) + 1)
        for (source, target), output in zip(part, outputs):
            cell = next(counts[f"{lo}-{hi}"] for lo, hi in BUCKETS if lo <= len(source) <= hi)
            cell[0] += output == target
            cell[1] += sum(o == t for o, t in zip(output, target))
            cell[2] += len(target)
            cell[3] += 1
        peaks.append(peak(model, batch))
    out = {name: {"exact_match": e / max(n, 1), "char_accuracy": c / max(total, 1), "pairs": n}
           for name, (e, c, total, n) in counts.items()}
    return {"buckets": out, "peak": sum(peaks) / len(peaks)}


def peak(model, batch: dict) -> float:
    """Mean top probability of the hard cross-attention heads over the real target positions."""
    scores = []
    with model.hooks([("*cross_attn.scores", lambda s, name: scores.append(s.float()))]):
        model(**batch)
    real = (batch["targets"] >= 0).unsqueeze(1)  # (B, 1, T)
    tops = [torch.softmax(s, -1).nan_to_num(0.0).amax(-1) for s in scores]  # (B, nh, T) each
    return torch.stack([t.masked_select(real.expand_as(t)).mean() for t in tops]).mean().item()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=OUT_DIR of a reversal checkpoint")
    parser.add_argument("--plot", default="", help="write exact match and characters against length here (.png)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoints = {}
    for run in args.runs:  # every argument checked before the dataset is read
        name, _, out_dir = run.partition("=")
        if not name or not out_dir:
            sys.exit(f"error: {run!r} is not NAME=OUT_DIR; name each run, e.g. reinforce=out-seq2seq-reinforce.")
        try:
            checkpoints[name] = load_checkpoint(out_dir)
        except UserError as e:
            sys.exit(f"error: {e}")
    _, folder, tokenizer = reversal_setup()
    results = []
    for name, ckpt in checkpoints.items():
        model = Seq2Seq(from_flat(Seq2SeqConfig, ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        model.eval()
        batches = PairBatches(folder, model.config, 64, "cpu", tokenizer)
        results.append({"name": name, "iter": ckpt["iter_num"], **by_length(model, batches)})
    header = " | ".join(f"len {b}" for b in results[0]["buckets"])
    print(f"| run | iter | {header} | all | peak |\n|---|---|{'---|' * (len(BUCKETS) + 2)}")
    for r in results:
        cells = [f"{100 * v['exact_match']:.1f}% / {100 * v['char_accuracy']:.1f}%" for v in r["buckets"].values()]
        n = sum(v["pairs"] for v in r["buckets"].values())
        exact = sum(v["exact_match"] * v["pairs"] for v in r["buckets"].values()) / n
        print(f"| {r['name']} | {r['iter']} | {' | '.join(cells)} | {100 * exact:.1f}% | {r['peak']:.2f} |")
    print("pairs per bucket:", {b: v["pairs"] for b, v in results[0]["buckets"].items()})
    if args.plot:
        plot(results, args.plot, "reversal config, hard cross-attention: greedy decoding of the held-out lines")


if __name__ == "__main__":
    main(sys.argv[1:])
