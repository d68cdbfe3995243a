"""Where train.py's step spends its time, eager against compiled (#34 item 5), on the CPU config.

    python benchmarks/compile_loop.py                 # config/shakespeare_char_cpu.py, one thread, CPU time
    python benchmarks/compile_loop.py --threads=2 --rounds=8

Both models are built by train.py's own functions (the same data, weights and AdamW) and stepped in turn,
round by round. Each piece of a step (the batch, forward, backward, loss.item(), gradient clipping, the lr
setter, optimizer.step, zero_grad) is timed on its own, then train.py's train_step as a whole. With one
thread the clock is the thread's CPU time (time.thread_time), which a busy host barely moves; with more,
wall time. Print a table of median milliseconds per piece.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402
from data.loader import batch_generator  # noqa: E402
from training.logger import RunLogger  # noqa: E402

PIECES = ("get batch", "forward", "backward", "loss.item()", "clip_grad_norm_", "lr setter", "optimizer.step",
          "zero_grad")


def build(compile: bool, config: str, out_dir: str):
    """(run, model, train_model, optimizer, scaler) as train.py builds them, nothing written to out_dir."""
    argv = [config, f"--compile={compile}", f"--out_dir={out_dir}", "--overwrite=True"]
    cfg, model_cfg, _ = train.load_config(argv, train.read_config(argv))
    ranks, dtype, autocast = train.setup_system(cfg, None)
    tokenizer, batches, model_cfg = train.setup_data(cfg, model_cfg, None, ranks)
    run = train.Run(cfg, model_cfg, ranks, dtype, autocast, tokenizer, batches, RunLogger(cfg, False))
    return (run, *train.build_model(run))


def pieces(run, model, train_model, optimizer, clock, times: dict) -> None:
    """One step of train_step's work, each piece timed into times[piece]."""
    marks = [clock()]
    batch = run.batches.get("train", batch_generator(run.cfg.seed, "train", run.iter_num, 0))
    marks.append(clock())
    with run.autocast:
        _, loss = train_model(**batch)
    marks.append(clock())
    loss.backward()
    marks.append(clock())
    loss.detach().item()
    marks.append(clock())
    float(torch.nn.utils.clip_grad_norm_(model.parameters(), run.cfg.grad_clip))
    marks.append(clock())
    for group in optimizer.param_groups:
        group["lr"] = train.lr_at(run.iter_num, run.cfg)
    marks.append(clock())
    optimizer.step()
    marks.append(clock())
    optimizer.zero_grad(set_to_none=True)
    marks.append(clock())
    for name, start, end in zip(PIECES, marks, marks[1:]):
        times[name].append(end - start)
    run.iter_num += 1


def whole_step(setup, clock) -> float:
    """Seconds of one train.py train_step."""
    started = clock()
    train.train_step(*setup)
    setup[0].iter_num += 1
    return clock() - started


def main() -> None:
    """Build both, warm up (compile), time them in turn, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/shakespeare_char_cpu.py")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per mode and round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    setups = {mode: build(mode == "compiled", args.config, f"/tmp/compile_loop_{mode}") for mode in ("eager", "compiled")}
    times = {mode: {name: [] for name in (*PIECES, "train_step")} for mode in setups}
    for mode, (run, model, train_model, optimizer, scaler) in setups.items():
        started = time.perf_counter()
        for _ in range(3):
            pieces(run, model, train_model, optimizer, clock, {name: [] for name in PIECES})
        print(f"{mode}: first 3 steps {time.perf_counter() - started:.1f} s (compilation included)", flush=True)
    for _ in range(args.rounds):
        for mode, (run, model, train_model, optimizer, scaler) in setups.items():
            for _ in range(args.steps):
                pieces(run, model, train_model, optimizer, clock, times[mode])
            times[mode]["train_step"] += [whole_step(setups[mode], clock) for _ in range(args.steps)]
    load = os.getloadavg()[0]
    print(f"\n{args.config}, {args.threads} thread(s), clock {clock.__name__}, {args.rounds * args.steps} steps of "
          f"each, load average {load:.1f}\n\n| piece | eager ms | compiled ms | eager / compiled |\n|---|---|---|---|")
    for name in (*PIECES, "train_step"):
        eager, compiled = (statistics.median(times[mode][name]) * 1000 for mode in setups)
        print(f"| {name} | {eager:.2f} | {compiled:.2f} | {eager / compiled:.2f}x |")


if __name__ == "__main__":
    main()
