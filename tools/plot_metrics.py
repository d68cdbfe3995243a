"""Plot train and val loss of one or more runs from their metrics.jsonl files into one PNG.

    python tools/plot_metrics.py out/metrics.jsonl out-big/metrics.jsonl -o loss.png
    python tools/plot_metrics.py out out-big            # a run folder stands for its metrics.jsonl

Left: loss against iterations; right: against wall-clock seconds since the run began (elapsed_s).
Each run has one colour; val loss is drawn solid, train loss dashed. Needs matplotlib.
"""

import argparse
import json
import os
import sys


class PlotError(ValueError):
    """A missing or unreadable metrics file."""


def read_metrics(path: str) -> list[dict]:
    """The evaluation records of a metrics.jsonl file (a line cut by a crash is skipped)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        raise PlotError(f"no metrics file at {path}; give a run's metrics.jsonl or its out_dir.")
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:  # bytes that are not text: lines skipped below
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and all(isinstance(record.get(k), (int, float)) for k in ("iter", "val_loss")):
                records.append(record)
    if not records:
        raise PlotError(f"{path} holds no evaluations yet; train until the first eval_interval.")
    return records


def run_label(path: str) -> str:
    """A short name for a run: its folder (metrics.jsonl always has the same file name)."""
    path = os.path.normpath(path)
    if os.path.basename(path) == "metrics.jsonl":
        path = os.path.dirname(path) or "."
    return os.path.basename(os.path.abspath(path))


def plot(runs: dict[str, list[dict]], out_path: str) -> None:
    """Draw every run's losses against iterations and against elapsed seconds; save a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, (by_iter, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for n, (label, records) in enumerate(runs.items()):
        colour = f"C{n % 10}"
        for key, style in (("val_loss", "-"), ("train_loss", "--")):
            rows = [r for r in records if key in r]
            split = key.split("_")[0]
            by_iter.plot([r["iter"] for r in rows], [r[key] for r in rows], style, color=colour,
                         label=f"{label} {split}")
            timed = [r for r in rows if "elapsed_s" in r]
            by_time.plot([r["elapsed_s"] for r in timed], [r[key] for r in timed], style, color=colour)
    by_iter.set_xlabel("iteration")
    by_time.set_xlabel("wall-clock seconds since the run began (elapsed_s)")
    by_iter.set_ylabel("loss")
    for ax in (by_iter, by_time):
        ax.grid(alpha=0.3)
    by_iter.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Plot train/val loss of runs from metrics.jsonl files.")
    parser.add_argument("paths", nargs="+", help="metrics.jsonl files or run folders (out_dir)")
    parser.add_argument("-o", "--output", default="loss.png", help="PNG file to write (default loss.png)")
    args = parser.parse_args(argv)
    runs = {}
    for path in args.paths:
        label = run_label(path)
        while label in runs:  # two folders with the same name in different places
            label += "'"
        runs[label] = read_metrics(path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("matplotlib is not installed; pip install matplotlib") from None
    try:
        plot(runs, args.output)
    except ValueError as e:  # matplotlib: an unknown file type
        raise PlotError(f"cannot write {args.output}: {e}") from None
    print(f"wrote {args.output} ({', '.join(runs)})")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (PlotError, OSError) as e:
        sys.exit(f"error: {e}")
