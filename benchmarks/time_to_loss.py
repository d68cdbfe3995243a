"""Time to a target loss by the speedrun's rules: N seeds of two configs, side by side, on the same data.

    python benchmarks/time_to_loss.py --data_dir=/tmp/tsc        # classic vs modern CPU configs, 5 seeds
    python benchmarks/time_to_loss.py --a=config/shakespeare_char_cpu_modern.py --b=config/shakespeare_char_cpu_modern.py \
        --b_set=norm=layernorm --seeds=3 --max_iters=600 --lr_decay_iters=600 --target=1.9
    python benchmarks/time_to_loss.py --table bench-ttl        # the table of finished runs in that folder

For each seed, A and B train at once (one thread each), so both see the same machine load; the seeds run
one after another. Every run evaluates the whole val split (--eval_iters=all: every token once, not a
20-batch estimate) every --eval_interval iterations. The target is a number, or `a`: A's mean final val
loss over the seeds (the classic config's loss at its last iteration).

Per config, over the seeds: the mean and standard error of the iterations, tokens and training seconds
(train_s: wall time of the training steps, evaluations left out) at the first evaluation at or below the
target; the mean final val loss; and a one-sided t-test of the final val losses against the target
(H0: their mean is at or above it; a small p says the config ends below the target). Steps and tokens do
not depend on the machine; seconds compare only as a ratio of runs made side by side.
Extra --key=value arguments go to both configs' train.py; --a_set / --b_set (key=value,key=value) to one.
"""

import argparse
import json
import math
import os
import subprocess
import sys

from modern_recipe import read_metrics  # the evaluations of a finished run (benchmarks/ is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"a": "config/shakespeare_char_cpu.py", "b": "config/shakespeare_char_cpu_modern.py"}


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer df >= 1 (Abramowitz and Stegun 26.7.3-4, exact sums)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: (2/pi) (theta + sin(theta) (c + 2/3 c^3 + 2.4/(3.5) c^5 + ...))
        term, total = c, 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        inside = 2 / math.pi * (theta + s * total)
    else:  # even: sin(theta) (1 + 1/2 c^2 + 1.3/(2.4) c^4 + ...)
        term, total = 1.0, 0.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c * c * (2 * k - 1) / (2 * k)
        inside = s * total
    return 0.5 + 0.5 * inside if t >= 0 else 0.5 - 0.5 * inside


def below_target_p(values: list[float], target: float) -> float:
    """One-sided one-sample t-test: p of values whose mean is at or above target (H0) giving these values."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if sd == 0:
        return 0.0 if mean < target else 1.0
    return student_t_cdf((mean - target) / (sd / math.sqrt(n)), n - 1)


def mean_se(values: list[float]) -> str:
    """'mean +- standard error' (the error left out for one value), or '-' for none."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    text = f"{mean:,.0f}" if abs(mean) >= 1e4 else f"{mean:.4g}"  # token counts in full
    if len(values) == 1:
        return text
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return f"{text} +- {se:,.0f}" if se >= 1e4 else f"{text} +- {se:.2g}"


def reach(rows: list[dict], target: float) -> dict | None:
    """The first evaluation at or below the target, or None."""
    return next((r for r in rows if r["val_loss"] <= target), None)


def table(runs: dict[str, list[str]], target: float) -> str:
    """Markdown table: per config, over its seeds, the steps, tokens and seconds to the target and the final loss."""
    head = ["config", "seeds reaching", f"iter to {target:.4f}", f"tokens to {target:.4f}",
            f"train s to {target:.4f}", "final val loss", f"p(final >= {target:.4f})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, dirs in runs.items():
        evaluations = [read_metrics(d) for d in dirs]
        hits = [h for h in (reach(rows, target) for rows in evaluations) if h is not None]
        seconds = [h["train_s"] for h in hits if "train_s" in h]
        finals = [rows[-1]["val_loss"] for rows in evaluations]
        cells = [name, f"{len(hits)}/{len(dirs)}", mean_se([h["iter"] for h in hits]),
                 mean_se([h["tokens"] for h in hits]), mean_se(seconds), mean_se(finals),
                 f"{below_target_p(finals, target):.2g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings(text: str) -> list[str]:
    """'key=value,key=value' -> ['--key=value', ...]; exits on a piece without '='."""
    pieces = [p for p in text.split(",") if p]
    bad = [p for p in pieces if "=" not in p]
    if bad:
        sys.exit(f"error: --a_set/--b_set take key=value pieces separated by commas; {bad[0]!r} has no '='.")
    return [f"--{p}" for p in pieces]


def train_both(args, extra: list[str], seed: int) -> None:
    """Train A and B with one seed at once (one thread each); exits if either fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    data = [f"--data_dir={args.data_dir}"] if args.data_dir else []
    procs = []
    for name in ("a", "b"):
        out_dir = os.path.join(args.out, name, f"seed_{seed}")
        os.makedirs(out_dir, exist_ok=True)
        cmd = [sys.executable, "train.py", getattr(args, name), *data, f"--out_dir={out_dir}", f"--seed={seed}",
               f"--eval_interval={args.eval_interval}", "--eval_iters=all", "--always_save_checkpoint=False",
               "--overwrite=True", *extra, *settings(getattr(args, f"{name}_set"))]
        print(" ".join(cmd[1:]), flush=True)
        log = open(os.path.join(args.out, name, f"seed_{seed}.log"), "w")
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env))
    if any(p.wait() != 0 for p in procs):
        sys.exit(f"error: a run of seed {seed} failed; see the logs in {args.out}/a and {args.out}/b.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default=CONFIGS["a"], help="config A (the reference)")
    parser.add_argument("--b", default=CONFIGS["b"], help="config B (the candidate)")
    parser.add_argument("--a_set", default="", help="key=value,... for A only")
    parser.add_argument("--b_set", default="", help="key=value,... for B only")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per config (1337, 1338, ...)")
    parser.add_argument("--target", default="a", help="val loss to reach, or 'a': A's mean final val loss")
    parser.add_argument("--eval_interval", type=int, default=25, help="iterations between whole-split evaluations")
    parser.add_argument("--data_dir", default="", help="a prepared dataset folder (default: the configs' own)")
    parser.add_argument("--out", default="bench-ttl", help="folder for the runs (OUT/a/seed_N, OUT/b/seed_N)")
    parser.add_argument("--table", metavar="OUT", help="only print the table of the finished runs in OUT")
    args, extra = parser.parse_known_args()
    if args.target != "a":
        try:
            float(args.target)
        except ValueError:
            sys.exit(f"error: --target must be a number or 'a', got {args.target!r}.")
    if args.seeds < 2 and not args.table:
        sys.exit(f"error: --seeds must be at least 2 for a standard error and a t-test, got {args.seeds}.")
    if args.table:
        args.out = args.table
        runs = {name: sorted(os.path.join(args.out, name, d) for d in os.listdir(os.path.join(args.out, name))
                             if os.path.isdir(os.path.join(args.out, name, d))) if os.path.isdir(os.path.join(args.out, name))
                else [] for name in ("a", "b")}
        if not runs["a"] or not runs["b"]:
            sys.exit(f"error: {args.out} holds no runs (a/seed_N and b/seed_N); run the benchmark first.")
    else:
        args.out = os.path.abspath(args.out)  # train.py runs in the repository, the caller may not
        args.data_dir = args.data_dir and os.path.abspath(args.data_dir)
        for seed in range(1337, 1337 + args.seeds):
            train_both(args, extra, seed)
        runs = {name: [os.path.join(args.out, name, f"seed_{s}") for s in range(1337, 1337 + args.seeds)]
                for name in ("a", "b")}
    finals = [read_metrics(d)[-1]["val_loss"] for d in runs["a"]]
    target = sum(finals) / len(finals) if args.target == "a" else float(args.target)
    names = ("A", "B") if args.table else (f"A: {args.a} {args.a_set}".strip(), f"B: {args.b} {args.b_set}".strip())
    print(table(dict(zip(names, (runs["a"], runs["b"]))), target))


if __name__ == "__main__":
    main()
