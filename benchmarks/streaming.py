"""sample.py's streaming: tokens/s for a short and a long sample; equal rates mean time linear in length.

    python benchmarks/streaming.py                         # 2,000 and 16,000 new tokens, GPT-2 BPE
    python benchmarks/streaming.py --lengths=2000,16000 --clock=cpu --threads=1   # on a busy machine

A small random GPT (GPT-2's 50,257-token vocabulary, so each token's text comes from byte-level BPE) samples
through training/decoding.py's sample_gpt, which prints each token's text as it comes (into a buffer here).
The model's own work per token is constant (a KV cache, a fixed window), so tokens/s should not depend on
the length; decoding the whole text at every token made it fall with the length (5.7 s for 2,000 tokens,
55.9 s for 16,000 before). The lengths run in turn, `--rounds` times, and the median is reported.
"""

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.tokenizer import GPT2Tokenizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from training.config import SampleConfig  # noqa: E402
from training.decoding import sample_gpt  # noqa: E402


def seconds(model, tokenizer, n: int, clock) -> float:
    """Seconds (by clock) that sample_gpt takes for one sample of n new tokens, its output buffered."""
    cfg = SampleConfig(start="ROMEO:", num_samples=1, max_new_tokens=n, temperature=1.0, top_k=None, seed=1)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        start = clock()
        sample_gpt(model, tokenizer, cfg, "cpu", "float32")
        took = clock() - start
    if len(out.getvalue()) < n // 4:
        sys.exit(f"error: the sample of {n} tokens printed only {len(out.getvalue())} characters.")
    return took


def main() -> None:
    """Measure each length in turn, rounds times; print the median tokens/s and the ratio to the first length."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2000,16000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu", help="cpu: process time (busy machines)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    lengths = [int(n) for n in args.lengths.split(",")]
    torch.manual_seed(0)
    tokenizer = GPT2Tokenizer()
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64)).eval()
    times = {n: [] for n in lengths}
    for _ in range(args.rounds):
        for n in lengths:
            times[n].append(seconds(model, tokenizer, n, clock))
    rates = {n: n / statistics.median(times[n]) for n in lengths}
    print(f"| new tokens | median s ({args.clock}) | tokens/s | vs {lengths[0]:,} |")
    print("|---|---|---|---|")
    for n in lengths:
        print(f"| {n:,} | {statistics.median(times[n]):.2f} | {rates[n]:,.0f} | {rates[n] / rates[lengths[0]]:.2f} |")


if __name__ == "__main__":
    main()
