"""Compare the attention variants: the same training budget for each, one table.

    python benchmarks/attention_variants.py                       # all 8 variants, 300 iterations each (both tasks)
    python benchmarks/attention_variants.py --max_iters=2000 --variants=scaled_dot/softmax,additive/hard
    python benchmarks/attention_variants.py --max_iters=0        # the reversal task only

Each variant trains a char-level GPT on the built-in Shakespeare corpus with train.py in a fresh
process (nanoGPT's CPU settings, config/shakespeare_char_cpu.py, cut to --max_iters), so the peak
memory is that process's own. Columns: val loss at the end, median training tokens/s, peak RSS.
When the encoder-decoder exists (model_type "seq2seq" and config/seq2seq_reverse.py), each variant
also trains the reversal task with the variant in self- and cross-attention and reports the held-out
exact match. Timings on a shared machine are noisy: compare the ratios of one run, and read the
load averages printed with the table.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
ALL_VARIANTS = [f"{score}/{weighting}" for weighting in ("softmax", "hard")
                for score in ("scaled_dot", "dot", "general", "additive")]


def run_train(args: list[str], out_dir: str, threads: int) -> dict:
    """Run train.py with args; return its last metrics record, median tokens/s and peak RSS (MiB)."""
    cmd = [sys.executable, "train.py", *args, f"--out_dir={out_dir}", "--overwrite=True", "--device=cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads)})
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{output[-2000:]}")
    tokens_per_iter = int(re.search(r"([\d,]+) tokens per iteration", output).group(1).replace(",", ""))
    speeds = [tokens_per_iter / float(ms) * 1000 for ms in re.findall(r"([\d.]+) ms/iter", output)]
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    return {**last, "median_tokens_per_s": statistics.median(speeds) if speeds else float("nan"),
            "peak_rss_mib": usage.ru_maxrss / 1024}  # ru_maxrss is in KiB on Linux


def interleaved_step_times(variants: list[str], rounds: int, threads: int) -> dict:
    """Median ms per training step of the default GPT with each variant, the variants taken in turn.

    Round-robin timing in one process: a load change on a shared machine hits every variant alike,
    so these ratios are steadier than the tokens/s of runs made one after another.
    """
    import time

    import torch

    from model.config import GPTConfig
    from model.gpt import GPT

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    runs = {}
    for v in variants:
        score, weighting = v.split("/")
        model = GPT(GPTConfig(vocab_size=80, attn_score=score, attn_weighting=weighting))
        runs[v] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), [])
    idx = torch.randint(80, (12, 64))
    for r in range(rounds + 1):
        for v, (model, optimizer, times) in runs.items():
            start = time.perf_counter()
            _, loss = model(idx, idx)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if r > 0:  # the first round warms up
                times.append((time.perf_counter() - start) * 1000)
    return {v: statistics.median(times) for v, (_, _, times) in runs.items()}


def seq2seq_available() -> bool:
    """True when the encoder-decoder model and its reversal config exist in this checkout."""
    from training.families import FAMILIES

    return "seq2seq" in FAMILIES and os.path.exists(os.path.join(REPO, "config", "seq2seq_reverse.py"))


def parse_options():
    """The command line: this script's options, with train.py's --key=value overrides in args.extra."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS), help="comma-separated score/weighting")
    parser.add_argument("--max_iters", type=int, default=300, help="training iterations per variant (GPT); 0 skips the GPT runs")
    parser.add_argument("--config", default="config/shakespeare_char_cpu.py")
    parser.add_argument("--seq2seq_iters", type=int, default=300,
                        help="iterations of the reversal task (0: the config's own 900; docs/attention_variants.md used 300)")
    parser.add_argument("--no_seq2seq", action="store_true", help="skip the reversal task")
    parser.add_argument("--speed_rounds", type=int, default=10,
                        help="rounds of the interleaved step timing (0 skips it)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (on a busy shared machine, 1 is several times faster than 2)")
    args, extra = parser.parse_known_args()  # the rest: --key=value overrides passed on to train.py
    args.extra = extra
    for arg in extra:
        if not arg.startswith("--"):
            sys.exit(f"error: unexpected argument {arg!r}; pass train.py overrides as --key=value.")
    return args


def check_options(args) -> list[str]:
    """The variants to run, after checking the options (exits with one error line on a bad one)."""
    from model.config import ConfigError, GPTConfig

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        sys.exit("error: --variants names no variant; give score/weighting pairs, e.g. additive/hard.")
    for v in variants:
        if v.count("/") != 1:
            sys.exit(f"error: variant {v!r} must be score/weighting, e.g. additive/hard.")
        try:
            score, weighting = v.split("/")
            GPTConfig(attn_score=score, attn_weighting=weighting)  # its rule table checks both against the registries
        except ConfigError as e:
            sys.exit(f"error: variant {v!r}: {e}")
    if args.threads < 1 or args.seq2seq_iters < 0:
        sys.exit("error: --threads must be at least 1 and --seq2seq_iters at least 0.")
    return variants


def run_variant(v: str, args, tmp: str, with_seq2seq: bool) -> dict:
    """Train the GPT and (with_seq2seq) the reversal task with one variant; return its row."""
    score, weighting = v.split("/")
    row = {"variant": v, "val_loss": None, "tokens_per_s": None, "peak_rss_mib": None, "exact_match": None}
    if args.max_iters > 0:
        gpt = run_train([args.config, f"--attn_score={score}", f"--attn_weighting={weighting}",
                         f"--max_iters={args.max_iters}", f"--lr_decay_iters={args.max_iters}",
                         f"--eval_interval={args.max_iters}", f"--log_interval={min(10, args.max_iters)}",
                         *args.extra],
                        os.path.join(tmp, v.replace("/", "-")), args.threads)
        row.update(val_loss=gpt["val_loss"], tokens_per_s=gpt["median_tokens_per_s"],
                   peak_rss_mib=gpt["peak_rss_mib"])
    if with_seq2seq:
        s2s_args = ["config/seq2seq_reverse.py", f"--attn_score={score}", f"--attn_weighting={weighting}",
                    f"--cross_attn_score={score}", f"--cross_attn_weighting={weighting}"]
        if args.seq2seq_iters:
            s2s_args += [f"--max_iters={args.seq2seq_iters}", f"--lr_decay_iters={args.seq2seq_iters}",
                         f"--eval_interval={args.seq2seq_iters}",
                         f"--log_interval={min(25, args.seq2seq_iters)}"]  # a short run logs its speed too
        s2s = run_train(s2s_args, os.path.join(tmp, "s2s-" + v.replace("/", "-")), args.threads)
        row.update(exact_match=s2s.get("val_exact_match"), s2s_val_loss=s2s["val_loss"],
                   s2s_tokens_per_s=s2s["median_tokens_per_s"], s2s_wall_s=s2s["elapsed_s"])
    return row


def main() -> None:
    """Run every variant, then print the tables and the interleaved step timing."""
    args = parse_options()
    variants = check_options(args)
    with_seq2seq = not args.no_seq2seq and seq2seq_available()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="variants-bench-") as tmp:
        for v in variants if args.max_iters > 0 or with_seq2seq else []:
            rows.append(run_variant(v, args, tmp, with_seq2seq))
            print(json.dumps(rows[-1]), flush=True)
    load_after = os.getloadavg()

    if rows:
        print_table(rows, args, load_before, load_after)
    if args.speed_rounds > 0:
        load_before = os.getloadavg()
        ms = interleaved_step_times(variants, args.speed_rounds, args.threads)
        load_after = os.getloadavg()
        print(f"\nInterleaved timing: one training step of the default GPT (4 layers, 128 wide, block 64, "
              f"batch 12), median of {args.speed_rounds} rounds; load average {load_before[0]:.1f} before, "
              f"{load_after[0]:.1f} after\n")
        print("| variant | ms/step | tokens/s | time vs first |")
        print("|---|---|---|---|")
        first = ms[variants[0]]
        for v, t in ms.items():
            print(f"| {v} | {t:.0f} | {12 * 64 / t * 1000:,.0f} | {t / first:.2f} |")


def print_table(rows: list[dict], args, load_before, load_after) -> None:
    """The training runs' tables (markdown): the char-level GPT, then the reversal task."""
    print(f"\n{args.threads} thread(s); load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} CPUs)")
    if rows[0]["val_loss"] is not None:
        base = rows[0]["tokens_per_s"]
        print(f"\n{args.max_iters} iterations of {args.config} {' '.join(args.extra)} per variant\n")
        print("| variant (score/weighting) | val loss | tokens/s | speed vs first | peak RSS (MiB) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['val_loss']:.4f} | {r['tokens_per_s']:,.0f} | "
                  f"{r['tokens_per_s'] / base:.2f} | {r['peak_rss_mib']:,.0f} |")
    if rows[0]["exact_match"] is not None:
        iters = args.seq2seq_iters or "the config's"
        print(f"\nReversal task: config/seq2seq_reverse.py, {iters} iterations, the variant in the encoder's and "
              "decoder's self-attention and in the cross-attention; exact match (greedy) on 1,000 held-out lines\n")
        print("| variant (score/weighting) | exact match | val loss | tokens/s | wall s |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {100 * r['exact_match']:.1f}% | {r['s2s_val_loss']:.4f} | "
                  f"{r['s2s_tokens_per_s']:,.0f} | {r['s2s_wall_s']:.0f} |")


if __name__ == "__main__":
    main()
