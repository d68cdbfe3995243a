"""Classic (nanoGPT) recipe vs the modern preset on the same data, run side by side; prints a table.

    python data/shakespeare_char/prepare.py --input input.txt --out_dir /tmp/tsc
    python benchmarks/modern_recipe.py --data_dir=/tmp/tsc                 # both runs at once, then the table
    python benchmarks/modern_recipe.py --table /tmp/bench/classic /tmp/bench/modern   # table of finished runs

Both runs train at the same time (one thread each), so on a shared machine they see the same load
and their wall-clock times compare as a ratio. Extra --key=value arguments go to both runs.
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"classic": "config/shakespeare_char_cpu.py", "modern": "config/shakespeare_char_cpu_modern.py"}


def read_metrics(out_dir: str) -> list[dict]:
    """The evaluations a run wrote to out_dir/metrics.jsonl."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def first_reaching(rows: list[dict], target: float) -> dict | None:
    """The first evaluation with val_loss <= target, or None."""
    return next((r for r in rows if r["val_loss"] <= target), None)


def at_time(rows: list[dict], seconds: float) -> dict:
    """The last evaluation made within `seconds` of the run's start."""
    return [r for r in rows if r["elapsed_s"] <= seconds][-1]


def table(runs: dict[str, str], target: float, iters: list[int]) -> str:
    """Markdown table: per recipe, time to target, val loss at fixed iterations and at fixed times
    (when a run reached the target, or else when the shortest run ended)."""
    rows = {name: read_metrics(d) for name, d in runs.items()}
    reach = {name: first_reaching(r, target) for name, r in rows.items()}
    times = sorted({r["elapsed_s"] for r in reach.values() if r is not None})
    times = times or [min(r[-1]["elapsed_s"] for r in rows.values())]
    head = (["recipe", "iterations", "wall s", f"iter to {target}", f"s to {target}"]
            + [f"val @ it {i}" for i in iters] + [f"val @ {t:.0f} s" for t in times])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        hit = reach[name]
        by_iter = {x["iter"]: x["val_loss"] for x in r}
        cells = [name, str(r[-1]["iter"]), f"{r[-1]['elapsed_s']:.0f}",
                 str(hit["iter"]) if hit else "not reached", f"{hit['elapsed_s']:.0f}" if hit else "-"]
        cells += [f"{by_iter[i]:.4f}" if i in by_iter else "-" for i in iters]
        cells += [f"{at_time(r, t)['val_loss']:.4f}" for t in times]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", help="prepared char-level tiny shakespeare")
    parser.add_argument("--out", default="bench-modern", help="folder for the runs' out_dirs")
    parser.add_argument("--eval_interval", type=int, default=50, help="finer than the configs' 250, for time to target")
    parser.add_argument("--target", type=float, default=1.886, help="val loss nanoGPT's CPU config reaches at iteration 2000")
    parser.add_argument("--table", nargs="+", metavar="OUT_DIR", help="only print the table of finished runs")
    args, extra = parser.parse_known_args()
    if args.table:
        runs = {os.path.basename(os.path.normpath(d)): d for d in args.table}
    else:
        if not args.data_dir:
            sys.exit("error: pass --data_dir=<folder made by data/shakespeare_char/prepare.py>, or --table OUT_DIR ...")
        runs = {name: os.path.join(args.out, name) for name in RECIPES}
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        procs = []
        for name, config in RECIPES.items():
            cmd = [sys.executable, "train.py", config, f"--data_dir={args.data_dir}", f"--out_dir={runs[name]}",
                   f"--eval_interval={args.eval_interval}", "--always_save_checkpoint=False", "--overwrite=True", *extra]
            print(" ".join(cmd[1:]))
            log = open(os.path.join(args.out, f"{name}.log"), "w") if os.makedirs(args.out, exist_ok=True) is None else None
            procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env))
        if any(p.wait() != 0 for p in procs):
            sys.exit(f"error: a run failed; see the logs in {args.out}.")
    iters = sorted({250, 500, 1000, 1500, 2000} & {r["iter"] for d in runs.values() for r in read_metrics(d)})
    print(table(runs, args.target, iters))


if __name__ == "__main__":
    main()
