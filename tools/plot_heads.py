"""Plot induction heads forming: every head's induction score, and the in-context score, against the step.

    python train.py config/induction_shakespeare_char.py       # logs them (head_probe=True)
    python tools/plot_heads.py out-induction -o heads.png      # a run folder or its metrics.jsonl

Left: each head's induction score on repeated random tokens (thin lines) and the largest (thick black),
the largest on repeated validation text (thick green, when logged); previous-token max dashed.
Right: the in-context score (late-context loss minus early-context loss) and the val loss. Needs matplotlib.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.plot_metrics import PlotError, read_metrics  # noqa: E402


def plot(records: list[dict], out_path: str, title: str) -> None:
    """Draw head scores and the in-context score against iterations; save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["iter"] for r in records]
    heads = sorted({k for r in records for k in r if k.startswith("induction/")})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in heads:
        left.plot(steps, [r.get(name, float("nan")) for r in records], lw=0.8, alpha=0.6, label=name.split("/")[1])
    left.plot(steps, [r["induction_max"] for r in records], "k-", lw=2, label="induction max (random tokens)")
    if any("induction_text_max" in r for r in records):
        left.plot(steps, [r.get("induction_text_max", float("nan")) for r in records], "C2-", lw=2,
                  label="induction max (repeated val text)")
    left.plot(steps, [r.get("previous_token_max", float("nan")) for r in records], "k--", lw=1.2,
              label="previous-token max")
    left.set_ylabel("detector score (share of attention)")
    left.set_ylim(0, 1)
    right.plot(steps, [r["icl_score"] for r in records], "C3-", lw=2, label="in-context score")
    right.set_ylabel("late minus early loss (nats)", color="C3")
    loss = right.twinx()
    loss.plot(steps, [r["val_loss"] for r in records], "C0--", label="val loss")
    loss.set_ylabel("val loss", color="C0")
    for ax in (left, right):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Plot head detector scores and the in-context score of a run.")
    parser.add_argument("path", help="metrics.jsonl or a run folder (out_dir) trained with head_probe=True")
    parser.add_argument("-o", "--output", default="heads.png", help="PNG file to write (default heads.png)")
    args = parser.parse_args(argv)
    records = [r for r in read_metrics(args.path) if "induction_max" in r and "icl_score" in r]
    if not records:
        raise PlotError(f"{args.path} has no head scores; train with --head_probe=True.")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("matplotlib is not installed; pip install matplotlib") from None
    try:
        plot(records, args.output, os.path.basename(os.path.abspath(args.path)))
    except ValueError as e:
        raise PlotError(f"cannot write {args.output}: {e}") from None
    print(f"wrote {args.output} ({len(records)} evaluations)")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (PlotError, OSError) as e:
        sys.exit(f"error: {e}")
