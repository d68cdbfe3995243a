"""Classic (nanoGPT) recipe vs the modern preset on the same data, run side by side; prints a table.

    python data/shakespeare_char/prepare.py --input input.txt --out_dir /tmp/tsc
    python benchmarks/modern_recipe.py --data_dir=/tmp/tsc                 # both runs at once, then the table
    python benchmarks/modern_recipe.py --table /tmp/bench/classic /tmp/bench/modern   # table of finished runs
    # other settings: extra --key=value go to both runs; --target=classic times the modern run to the
    # classic run's final val loss (the built-in BPE corpus, 300 iterations):
    python benchmarks/modern_recipe.py --dataset=shakespeare --max_iters=300 --lr_decay_iters=300 --target=classic
    # the default char size (6 layers, 384 wide, context 256), a short run at a CPU-sized batch:
    python benchmarks/modern_recipe.py --classic=config/shakespeare_char.py --modern=config/shakespeare_char_modern.py \
        --device=cpu --batch_size=8 --max_iters=200 --lr_decay_iters=200 --eval_iters=10 --target=classic

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
    """The evaluations a run wrote to out_dir/metrics.jsonl (a line cut by a killed run is skipped)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"error: no metrics file at {path}; give the out_dir of a finished run.")
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    rows = [r for r in rows if isinstance(r, dict) and {"iter", "val_loss", "elapsed_s"} <= r.keys()]
    if not rows:
        sys.exit(f"error: {path} holds no evaluations; train until the first eval_interval.")
    return rows


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
    head = (["recipe", "iterations", "wall s", f"iter to {target:.4g}", f"s to {target:.4g}"]
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
    parser.add_argument("--data_dir", default="", help="a prepared dataset folder (default: the configs' built-in one)")
    parser.add_argument("--out", default="bench-modern", help="folder for the runs' out_dirs")
    parser.add_argument("--eval_interval", type=int, default=50, help="finer than the configs' 250, for time to target")
    parser.add_argument("--target", default="1.886",
                        help="val loss to time (default: what nanoGPT's CPU config reaches at iteration 2000), "
                             "or 'classic': the classic run's final val loss")
    parser.add_argument("--classic", default=RECIPES["classic"], help="the classic recipe's config file")
    parser.add_argument("--modern", default=RECIPES["modern"], help="the modern recipe's config file")
    parser.add_argument("--table", nargs="+", metavar="OUT_DIR", help="only print the table of finished runs")
    args, extra = parser.parse_known_args()
    if args.target != "classic":  # checked before the runs, not after them
        try:
            float(args.target)
        except ValueError:
            sys.exit(f"error: --target must be a number or 'classic', got {args.target!r}.")
    if args.table:
        runs = {os.path.basename(os.path.normpath(d)): d for d in args.table}
    else:
        args.out = os.path.abspath(args.out)  # train.py runs in the repository, the caller may not
        args.data_dir = args.data_dir and os.path.abspath(args.data_dir)
        runs = {name: os.path.join(args.out, name) for name in RECIPES}
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        procs = []
        for name, config in {"classic": args.classic, "modern": args.modern}.items():
            data = [f"--data_dir={args.data_dir}"] if args.data_dir else []
            cmd = [sys.executable, "train.py", config, *data, f"--out_dir={runs[name]}",
                   f"--eval_interval={args.eval_interval}", "--always_save_checkpoint=False", "--overwrite=True", *extra]
            print(" ".join(cmd[1:]))
            log = open(os.path.join(args.out, f"{name}.log"), "w") if os.makedirs(args.out, exist_ok=True) is None else None
            procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env))
        if any(p.wait() != 0 for p in procs):
            sys.exit(f"error: a run failed; see the logs in {args.out}.")
    common = sorted(set.intersection(*({r["iter"] for r in read_metrics(d)} for d in runs.values())) - {0})
    # val loss at 1/8, 1/4, 1/2, 3/4 and all of the run (250, 500, 1000, 1500, 2000 for 2000 iterations)
    iters = sorted({min(common, key=lambda i: abs(i - f * common[-1])) for f in (1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)}
                   if common else set())
    if args.target == "classic":  # the run named classic, or the first one given to --table
        target = read_metrics(runs.get("classic", next(iter(runs.values()))))[-1]["val_loss"]
    else:
        target = float(args.target)
    print(table(runs, target, iters))


if __name__ == "__main__":
    main()
