"""What looking inside costs: forward passes with no hooks, with hook points bypassed, and with maps asked for.

    python benchmarks/hooks.py                    # both sizes, CPU
    python benchmarks/hooks.py --size=small --repeats=5 --device=cuda
    python benchmarks/hooks.py --threads=1 --clock=cpu   # on a shared, busy CPU: count CPU time, not wall time

"bare" replaces every HookPoint call by a plain `return x` (no nn.Module dispatch): the model as
if it had no hook points at all. "no hooks" is the model as shipped. Variants are measured in
turn, several rounds, and the median is reported, so that a busy machine slows all of them alike.
"""

import argparse
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import GPT, GPTConfig  # noqa: E402
from model.config import ConfigError  # noqa: E402
from model.hooks import HookPoint  # noqa: E402
from lens.interventions import ablate_heads  # noqa: E402
from training.system import pick_device  # noqa: E402

SIZES = {  # name -> (model config, batch size)
    "small": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64), 16),
    "medium": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256), 8),
}


@contextmanager
def bare_hook_points():
    """Bypass nn.Module.__call__ for every HookPoint (as if the model had none)."""
    call = HookPoint.__call__
    HookPoint.__call__ = lambda self, x: x
    try:
        yield
    finally:
        HookPoint.__call__ = call


def variants(model, idx):
    """name -> a function running one forward pass."""
    last = model.config.n_layer - 1
    return {
        "bare (hook points bypassed)": lambda: _bare(model, idx),
        "no hooks (as shipped)": lambda: model(idx),
        "cache resid_post, all layers": lambda: model.run_with_cache(idx, names_filter="*.resid_post"),
        "ablate one head (z hook)": lambda: _with(model, ablate_heads([(last, 0)]), idx),
        "pattern, one layer": lambda: model.run_with_cache(idx, names_filter=f"blocks.{last}.attn.pattern"),
        "pattern, all layers": lambda: model.run_with_cache(idx, names_filter="*.attn.pattern"),
        "cache everything": lambda: model.run_with_cache(idx),
    }


def _bare(model, idx):
    with bare_hook_points():
        return model(idx)


def _with(model, hooks, idx):
    with model.hooks(hooks):
        return model(idx)


def measure(size: str, device: str, repeats: int, passes: int, clock) -> list[tuple[str, float]]:
    """Median ms per forward pass of each variant."""
    config, batch = SIZES[size]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, **config)).to(device).eval()
    idx = torch.randint(0, 65, (batch, config["block_size"]), device=device)
    runs = variants(model, idx)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm up
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                sync()
                start = clock()
                for _ in range(passes):
                    fn()
                sync()
                times[name].append((clock() - start) / passes * 1000)
    return [(name, statistics.median(ms)) for name, ms in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=[*SIZES, "all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    if args.repeats < 1 or args.passes < 1 or args.threads < 0:
        sys.exit("error: --repeats and --passes must be at least 1, --threads at least 0.")
    try:
        args.device = pick_device(args.device)  # auto -> cuda, mps or cpu
    except ConfigError as e:
        sys.exit(f"error: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, {args.clock} clock; "
          f"median of {args.repeats} rounds of {args.passes} forward passes")
    for size in SIZES if args.size == "all" else [args.size]:
        config, batch = SIZES[size]
        print(f"\n{size}: {config['n_layer']} layers, {config['n_head']} heads, {config['n_embd']} wide, "
              f"batch {batch} x {config['block_size']} tokens\n")
        results = measure(size, args.device, args.repeats, args.passes, clock)
        bare = results[0][1]
        print("| variant | ms / forward | vs bare |\n|---|---:|---:|")
        for name, ms in results:
            print(f"| {name} | {ms:.2f} | {ms / bare:.2f}x |")


if __name__ == "__main__":
    main()
