"""CPU speed side by side in one process: training steps in float32 eager, bf16 autocast and compiled;
decoding with today's KV cache, the static cache, and the static cache with a compiled step, beside
the floor of any decoder made of torch's matrix products (the step's matrix-vector products alone).

    python benchmarks/cpu_speed.py                       # both parts (many minutes on 2 busy cores)
    python benchmarks/cpu_speed.py --part=train --rounds=5
    python benchmarks/cpu_speed.py --part=decode --new_tokens=200

The variants run interleaved, round by round, so that a busy machine slows them alike: compare the
ratios, not the absolute figures, and note the load (printed). Training steps are forward, backward
and AdamW on random tokens; compile time (first call) is reported separately and not in ms/step.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import GPT, GPTConfig  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from model.fast_decode import StaticDecoder  # noqa: E402
from train import make_optimizer  # noqa: E402

TRAIN_SIZES = {  # name -> (model sizes, batch size)
    "default (python train.py)": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 16),
    "config/shakespeare_char_cpu.py": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 12),
}
DECODE_SIZE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65)  # config/shakespeare_char.py
MODES = ("float32 eager", "bf16 autocast", "float32 compiled", "bf16 compiled")


def train_variants(sizes: dict, batch: int):
    """mode -> (step function, its model); the same initial weights for each."""
    variants = {}
    for mode in MODES:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**sizes))
        optimizer = make_optimizer(model, TrainConfig(), "cpu")
        call = torch.compile(model) if "compiled" in mode else model
        dtype = torch.bfloat16 if "bf16" in mode else None
        idx = torch.randint(0, sizes["vocab_size"], (batch, sizes["block_size"] + 1))

        def step(model=model, call=call, optimizer=optimizer, dtype=dtype, idx=idx):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                _, loss = call(idx[:, :-1], idx[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        variants[mode] = step
    return variants


def timed(fn) -> float:
    """Seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_train(rounds: int, steps: int) -> None:
    """Print ms/step (median), tokens/s and compile time per mode, for each training size."""
    print("| size | mode | first call (compile) s | ms/step | tokens/s | vs float32 eager |\n|---|---|---|---|---|---|")
    for name, (sizes, batch) in TRAIN_SIZES.items():
        variants = train_variants(sizes, batch)
        first = {mode: timed(step) for mode, step in variants.items()}
        times = {mode: [] for mode in variants}
        for _ in range(rounds):  # interleaved: mode A, B, C, D, A, B, ...
            for mode, step in variants.items():
                times[mode].append(timed(lambda: [step() for _ in range(steps)]) / steps)
        base = statistics.median(times["float32 eager"])
        for mode in variants:
            dt = statistics.median(times[mode])
            print(f"| {name} | {mode} | {first[mode]:.1f} | {dt * 1000:.1f} | {batch * sizes['block_size'] / dt:,.0f} "
                  f"| {base / dt:.2f}x |", flush=True)


def matvec_floor(model):
    """n -> None: n times every weight matrix one decoding step multiplies by (every nn.Linear, the head
    included), each on one vector, and nothing else: no attention, norms or Python around them. Every
    decoder built on torch's matrix products needs at least this time per token (it reads every weight)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(1, m.in_features) for m in layers]

    def run(n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                for layer, x in zip(layers, inputs):
                    torch.nn.functional.linear(x, layer.weight, layer.bias)
    return run


def bench_decode(rounds: int, new_tokens: int) -> None:
    """Print greedy tokens/s at config/shakespeare_char.py's size: today, static cache, static + compiled."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**DECODE_SIZE)).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    eager, compiled = StaticDecoder(model, 1), StaticDecoder(model, 1, compile=True)
    variants = {"GPT.generate (KV cache)": lambda n: model.generate(prompt, n, temperature=0),
                "static cache, eager": lambda n: eager.generate(prompt, n, temperature=0),
                "static cache, compiled step": lambda n: compiled.generate(prompt, n, temperature=0),
                "floor: the step's matrix-vector products alone": matvec_floor(model)}
    first = {name: timed(lambda: fn(4)) for name, fn in variants.items()}
    same = torch.equal(variants["GPT.generate (KV cache)"](new_tokens), compiled.generate(prompt, new_tokens, temperature=0))
    same = same and torch.equal(model.generate(prompt, new_tokens, temperature=0), eager.generate(prompt, new_tokens, temperature=0))
    speeds = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            speeds[name].append(new_tokens / timed(lambda: fn(new_tokens)))
    base = statistics.median(speeds["GPT.generate (KV cache)"])
    print(f"\ngreedy decoding, {DECODE_SIZE}, {new_tokens} new tokens; same tokens as GPT.generate: {same}")
    print("| decoder | first call (compile) s | tokens/s (median) | vs GPT.generate |\n|---|---|---|---|")
    for name in variants:
        s = statistics.median(speeds[name])
        print(f"| {name} | {first[name]:.1f} | {s:.0f} | {s / base:.2f}x |", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="CPU speed of precision and compile variants, side by side.")
    parser.add_argument("--part", choices=["train", "decode", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    parser.add_argument("--new_tokens", type=int, default=200)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.new_tokens < 1:
        sys.exit("error: --rounds, --steps and --new_tokens must be at least 1.")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average at start "
          f"{os.getloadavg()[0]:.1f}")
    if args.part in ("train", "both"):
        bench_train(args.rounds, args.steps)
    if args.part in ("decode", "both"):
        bench_decode(args.rounds, args.new_tokens)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
