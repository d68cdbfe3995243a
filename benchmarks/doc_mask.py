"""What document masking costs in attention: SDPA with a bool mask vs compiled FlexAttention block masks.

    python benchmarks/doc_mask.py                    # CPU, one thread
    python benchmarks/doc_mask.py --device=cuda

Forward, then forward and backward (FlexAttention has no backward pass on the CPU in torch 2.13).

For each size, rows of documents of random lengths (mean `T / 4`), the time of one attention call
(the mask built from doc_ids included, as the model builds it once per forward pass): plain causal SDPA
(no document mask, the floor), SDPA with document_mask's bool mask, and compiled flex_attention with its
BlockMask. Ratios to the bool-mask SDPA; the ways take turns, so read the ratios.
"""

import argparse
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.documents import compiled_flex_attention, document_mask  # noqa: E402

SIZES = [(12, 4, 64, 32), (8, 6, 256, 64), (2, 12, 1024, 64)]  # (B, n_head, T, head_dim): CPU config .. GPT-2


def random_documents(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) document ids: documents of 1 .. T / 2 tokens one after another."""
    lengths = torch.randint(1, max(2, T // 2), (B, T), generator=generator)  # more than enough documents
    starts = torch.zeros(B, T, dtype=torch.long)
    ends = lengths.cumsum(dim=1)
    for b in range(B):
        starts[b, ends[b][ends[b] < T]] = 1
    return starts.cumsum(dim=1)


def timed(ways: dict, rounds: int, sync) -> dict:
    """Per way, the best over `rounds` of the mean time of 5 calls, in seconds; the ways take turns within
    each round (after 3 warm-up calls each), so a change in the machine's load touches them alike."""
    for fn in ways.values():
        for _ in range(3):
            fn()
    best = {name: float("inf") for name in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            sync()
            start = time.perf_counter()
            for _ in range(5):
                fn()
            sync()
            best[name] = min(best[name], (time.perf_counter() - start) / 5)
    return best


def measure(B: int, H: int, T: int, D: int, device: str, backward: bool, rounds: int) -> dict:
    """Seconds per call of each way, for one size (FlexAttention left out of a backward pass on the CPU)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=generator).to(device).requires_grad_(backward) for _ in range(3))
    doc_ids = random_documents(B, T, generator).to(device)

    def run(attend):
        def call():
            out = attend()
            if backward:
                out.sum().backward()
        return call

    ways = {"SDPA causal, no document mask": run(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
            "SDPA + bool document mask": run(lambda: F.scaled_dot_product_attention(
                q, k, v, attn_mask=document_mask(doc_ids, T, causal=True)))}
    if device.startswith("cuda") or not backward:  # FlexAttention has no backward pass on the CPU (torch 2.13)
        ways["FlexAttention (compiled) + BlockMask"] = run(lambda: compiled_flex_attention(
            q, k, v, block_mask=document_mask(doc_ids, T, causal=True, flex=True).block_mask))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return timed(ways, rounds, sync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per way (the best counts)")
    args = parser.parse_args()
    if args.device.split(":")[0] not in ("cpu", "cuda") or (args.device.startswith("cuda") and not torch.cuda.is_available()):
        sys.exit(f"error: --device must be cpu, or cuda on a machine with a GPU; got {args.device!r}.")
    if args.threads < 1 or args.repeats < 1:
        sys.exit("error: --threads and --repeats must be positive integers.")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # FlexAttention's notes on compiling
    columns = ["SDPA causal, no document mask", "SDPA + bool document mask", "FlexAttention (compiled) + BlockMask"]
    for backward in (False, True):
        torch.set_grad_enabled(backward)
        print(f"\n{args.device}, {'forward and backward' if backward else 'forward'}: time per attention call "
              "(ratio to SDPA with the bool mask)\n")
        print("| B, heads, T, head_dim | " + " | ".join(columns) + " |")
        print("|---|---|---|---|")
        for B, H, T, D in SIZES:
            times = measure(B, H, T, D, args.device, backward, args.repeats)
            base = times["SDPA + bool document mask"]
            cells = [f"{1000 * times[c]:.2f} ms ({times[c] / base:.2f}x)" if c in times else "no CPU backward"
                     for c in columns]
            print(f"| {B}, {H}, {T}, {D} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
