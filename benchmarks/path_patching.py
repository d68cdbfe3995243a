"""Direct path patching (batched) beside TransformerLens' per-patch loop (get_act_patch_direct_path).

    python benchmarks/path_patching.py                                 # 6 layers x 8 heads x 256, 32 tokens
    python benchmarks/path_patching.py --n_layer=12 --n_head=12 --n_embd=768 --vocab=50257 --sources=2

One random GPT-2 is loaded into headscope and into TransformerLens 4's TransformerBridge. Both sweep the
direct path from each of the first --sources source heads into the keys of every later head (one patch
per (source, destination) pair); TransformerLens runs one whole forward pass per patch, headscope runs
the patches in batches that start at the destination's block. Times are process CPU seconds (--clock=wall
for wall time) with --threads threads; only ratios measured in one run mean anything.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])
from benchmarks.patching import make_models, timed  # noqa: E402
from lens import path_patching  # noqa: E402


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_layer", type=int, default=6)
    parser.add_argument("--n_head", type=int, default=8)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sources", type=int, default=4, help="source heads swept (from L0H0 on)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(args.threads)
    import tempfile

    from transformer_lens import patching as tl_patching

    with tempfile.TemporaryDirectory() as folder:
        ours, bridge = make_models(args, folder)
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, args.vocab, (1, args.tokens), generator=generator)
    corrupted = clean.clone()
    corrupted[0, 2] = (corrupted[0, 2] + 1) % args.vocab
    target = int(clean[0, -1])
    metric = lambda logits: logits[0, -1, target] - logits[0, -1].mean()  # noqa: E731
    _, clean_cache = ours.run_with_cache(clean)
    _, corrupted_cache = ours.run_with_cache(corrupted)
    _, tl_clean = bridge.run_with_cache(clean)
    _, tl_corrupted = bridge.run_with_cache(corrupted)
    sources = [(l, h) for l in range(args.n_layer) for h in range(args.n_head)][:args.sources]
    n_patches = sum((args.n_layer - 1 - l) * args.n_head for l, _ in sources)
    ours_table, t_ours = timed(lambda: path_patching.get_act_patch_direct_path_all_sources(
        ours, corrupted, clean_cache, corrupted_cache, metric, "k", sources=sources), args.clock)
    tl_tables, t_tl = timed(lambda: [tl_patching.get_act_patch_direct_path(
        bridge, corrupted, tl_clean, tl_corrupted, metric, l, h, "k", verbose=False) for l, h in sources], args.clock)
    agree = max((ours_table[l, h] - table.float()).abs().max().item() for (l, h), table in zip(sources, tl_tables))
    print(f"GPT-2 sizes {args.n_layer} layers x {args.n_head} heads x {args.n_embd}, vocab {args.vocab}, "
          f"{args.tokens} tokens, {len(sources)} source heads, {args.threads} thread(s), {args.clock} clock, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'method':<48} {'patches':>8} {'seconds':>9} {'s/patch':>9}")
    print(f"{'headscope get_act_patch_direct_path (batched)':<48} {n_patches:>8} {t_ours:>9.2f} {t_ours / n_patches:>9.4f}")
    print(f"{'TransformerLens get_act_patch_direct_path':<48} {n_patches:>8} {t_tl:>9.2f} {t_tl / n_patches:>9.4f}")
    print(f"TransformerLens / headscope: {t_tl / t_ours:.1f}x")
    print(f"largest difference from TransformerLens: {agree:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
