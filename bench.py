"""Throughput benchmark: training tokens/s, MFU and peak memory, and sampling tokens/s with and without
the KV cache, for named model sizes. Prints a Markdown table (docs/benchmarks.md keeps the results).

    python bench.py                                   # every config on the default device (CPU: a few minutes)
    python bench.py --configs=cpu_char,char --steps=10
    python bench.py --configs=gpt2 --device=cuda --compile --batch_size=16

Each config runs in a fresh process, so peak memory is its own. Training steps are forward, backward
and AdamW on random tokens (the model's speed, not the data loader's); the first --warmup steps
(and torch.compile's compilation) are not timed; ms/step is the median of the timed steps.
Sampling generates --new_tokens tokens for one sequence from a one-token prompt. --batched adds
16 prompts of mixed lengths (1 to block_size / 2 tokens) continued in one left-padded batch vs one
at a time (greedy, KV cache): new tokens per second over all 16. --fast_decode adds sampling with
the static KV cache and compiled one-token step (model/fast_decode.py; compilation not timed), and
with --batched the 16 prompts' padded batch through it.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from model.config import ConfigError
from training.system import pick_device

# name -> model sizes, and training batch per device type
CONFIGS = {
    "cpu_char": dict(model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),
                     batch={"cpu": 12, "cuda": 12},
                     about="config/shakespeare_char_cpu.py sizes"),
    "char": dict(model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2),
                 batch={"cpu": 8, "cuda": 64},
                 about="config/shakespeare_char.py: 6x384, context 256, dropout 0.2"),
    "gpt2": dict(model=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True,
                            activation="gelu_tanh"),
                 batch={"cpu": 1, "cuda": 16},
                 about="GPT-2 124M, context 1024"),
}


def sync(device: str) -> None:
    """Wait for queued device work, so that a clock read is real."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sampling_speed(model, device: str, amp, new_tokens: int) -> dict[bool, float]:
    """Greedy sampling speed in tokens/s, with the KV cache (True) and without (False)."""
    sampling = {}
    for use_cache in (True, False):
        prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
        with amp:
            model.generate(prompt, 4, top_k=1, use_cache=use_cache)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            model.generate(prompt, new_tokens, top_k=1, use_cache=use_cache)
            sync(device)
        sampling[use_cache] = new_tokens / (time.perf_counter() - t0)
    return sampling


def bench_one(name: str, args) -> dict:
    """Measure one config in this process; return a row of the table."""
    from model import GPT, GPTConfig
    from training.config import TrainConfig
    from training.mfu import device_peak, flops_per_token, mfu
    from training.system import autocast, enable_tf32, pick_device, pick_dtype
    from train import make_optimizer

    spec = CONFIGS[name]
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cuda":
        enable_tf32()
    torch.manual_seed(0)
    config = GPTConfig(**spec["model"])
    model = GPT(config).to(device)
    batch = args.batch_size or spec["batch"][device_type]
    T = config.block_size
    optimizer = make_optimizer(model, TrainConfig(), device)  # AdamW as train.py builds it (fused on CUDA)
    train_model = torch.compile(model) if args.compile else model  # model itself stays eager for sampling
    amp = autocast(device, dtype)
    idx = torch.randint(0, config.vocab_size, (batch, T + 1), device=device)
    times = []
    for step in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        with amp:
            _, loss = train_model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    tokens_per_s = batch * T / dt
    peak, gpu = device_peak(device)
    if device_type == "cuda":
        memory = torch.cuda.max_memory_allocated() / 2**30
        utilisation = f"{100 * mfu(tokens_per_s, flops_per_token(model, T), peak):.1f}%" if peak \
            else f"unknown for {gpu}"
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        utilisation = "-"
    del optimizer, loss, idx

    sampling = sampling_speed(model.eval(), device, amp, args.new_tokens)
    extra = bench_batched(model, amp, device, args.new_tokens, args.fast_decode) if args.batched else {}
    if args.fast_decode:
        extra["sample tok/s (static, compiled)"] = f"{bench_static(model, amp, device, args.new_tokens):.3g}"
    return {"config": name, "params": f"{model.num_params() / 1e6:.1f}M", "device": gpu if device_type == "cuda"
            else "cpu", "dtype": dtype, "compile": args.compile, "batch x T": f"{batch} x {T}",
            "ms/step": f"{dt * 1000:.0f}", "train tokens/s": f"{tokens_per_s:,.0f}", "MFU": utilisation,
            "peak memory": f"{memory:.2f} GiB", "sample tok/s (KV cache)": f"{sampling[True]:.3g}",
            "sample tok/s (no cache)": f"{sampling[False]:.3g}", **extra}


def bench_static(model, amp, device: str, new_tokens: int) -> float:
    """Greedy tokens/s of StaticDecoder (static KV cache, compiled step), compilation excluded."""
    from model.fast_decode import StaticDecoder

    decoder = StaticDecoder(model, batch_size=1, compile=True)
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    with amp:
        decoder.generate(prompt, 4, temperature=0)  # compiles the step
        sync(device)
        t0 = time.perf_counter()
        decoder.generate(prompt, new_tokens, temperature=0)
        sync(device)
    return new_tokens / (time.perf_counter() - t0)


def bench_batched(model, amp, device: str, new_tokens: int, fast: bool = False, n_prompts: int = 16) -> dict:
    """Greedy tokens/s for n_prompts prompts of mixed lengths: one padded batch vs one prompt at a time
    (and, with fast, the padded batch through StaticDecoder's compiled step, compilation excluded)."""
    from model.fast_decode import StaticDecoder
    from model.generation import pack

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, model.config.block_size // 2 + 1, (n_prompts,), generator=g).tolist()
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g).to(device) for n in lengths]
    idx, mask = pack(prompts)
    speeds = {}
    with amp:
        model.generate(idx, 2, temperature=0, attention_mask=mask)  # warm-up
        for batched in (True, False):
            sync(device)
            t0 = time.perf_counter()
            if batched:
                model.generate(idx, new_tokens, temperature=0, attention_mask=mask)
            else:
                for prompt in prompts:
                    model.generate(prompt[None], new_tokens, temperature=0)
            sync(device)
            speeds[batched] = n_prompts * new_tokens / (time.perf_counter() - t0)
        if fast:
            decoder = StaticDecoder(model, batch_size=n_prompts, compile=True)
            decoder.generate(idx, 4, temperature=0, attention_mask=mask)  # compiles the step
            sync(device)
            t0 = time.perf_counter()
            decoder.generate(idx, new_tokens, temperature=0, attention_mask=mask)
            sync(device)
            speeds["fast"] = n_prompts * new_tokens / (time.perf_counter() - t0)
    rows = {f"{n_prompts} prompts batched tok/s": f"{speeds[True]:.3g}",
            f"{n_prompts} prompts one at a time tok/s": f"{speeds[False]:.3g}"}
    if fast:
        rows[f"{n_prompts} prompts batched, static compiled tok/s"] = f"{speeds['fast']:.3g}"
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Training and sampling throughput of named model sizes.")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--batch_size", type=int, default=0, help="override every config's batch size")
    parser.add_argument("--new_tokens", type=int, default=100, help="tokens generated per sampling run")
    parser.add_argument("--fast_decode", action="store_true", help="add sampling with the static cache, compiled")
    parser.add_argument("--batched", action="store_true", help="add 16 mixed-length prompts, batched vs one at a time")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(bench_one(args.one, args)))
        return
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS] or ([] if names else [args.configs])
    if unknown or args.steps < 1 or args.warmup < 0 or args.new_tokens < 1 or args.batch_size < 0:
        sys.exit(f"error: unknown config {unknown[0]!r}; pick from {', '.join(CONFIGS)}." if unknown else
                 "error: --steps and --new_tokens must be at least 1, --warmup and --batch_size at least 0.")
    try:
        pick_device(args.device)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    for n, name in enumerate(names):
        print(f"{name}: {CONFIGS[name]['about']} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, f"--one={name}", *argv], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: {name} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if n == 0:  # the table grows a row per config, as each finishes
            print("| " + " | ".join(row) + " |")
            print("|" + "---|" * len(row))
        print("| " + " | ".join(str(v) for v in row.values()) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
