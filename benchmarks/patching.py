"""Exact activation patching (batched) and attribution patching beside TransformerLens' per-patch loop.

    python benchmarks/patching.py                          # GPT-2-small sizes (12 x 12 x 768), 64 tokens, CPU
    python benchmarks/patching.py --tl_patches=768         # TransformerLens over every patch too (slow)
    python benchmarks/patching.py --n_layer=4 --n_embd=256 --n_head=4 --vocab=8192   # a quick run

One random GPT-2 (Hugging Face weights written to a temporary folder) is loaded into headscope and into
TransformerLens 4's TransformerBridge. headscope patches the residual stream before every block at
every position (layer x position patches); TransformerLens' get_act_patch_resid_pre runs one forward
pass per patch, so it is timed on its first --tl_patches patches (its generic_activation_patch with the
same setter and an index_df) and compared per patch. Times are
process CPU seconds (--clock=wall for wall time) with --threads threads: on a shared machine CPU time
moves less with the load than wall time. Only ratios measured in one run mean anything.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

# the repository instead of this folder, whose bottleneck.py would shadow pandas' optional `bottleneck`
sys.path[0] = str(Path(__file__).resolve().parents[1])
from lens import patching  # noqa: E402
from model import GPT  # noqa: E402


def timed(fn, clock: str):
    """(result, seconds) of fn() by the chosen clock."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    start = now()
    result = fn()
    return result, now() - start


def make_models(args, folder: str):
    """(headscope GPT, TransformerBridge) holding the same random GPT-2 weights."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                    n_positions=max(64, args.tokens), vocab_size=args.vocab,
                                    bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, device="cpu")
    return GPT.from_pretrained(folder).eval(), bridge


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_layer", type=int, default=12)
    parser.add_argument("--n_head", type=int, default=12)
    parser.add_argument("--n_embd", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--tl_patches", type=int, default=48, help="patches TransformerLens is timed on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(args.threads)
    import pandas as pd  # TransformerLens' index_df (pandas comes with it)
    from transformer_lens import patching as tl_patching

    with tempfile.TemporaryDirectory() as folder:
        ours, bridge = make_models(args, folder)
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, args.vocab, (1, args.tokens), generator=generator)
    corrupted = clean.clone()
    corrupted[0, args.tokens // 2] = (corrupted[0, args.tokens // 2] + 1) % args.vocab
    target = int(clean[0, -1])
    metric = lambda logits: logits[0, -1, target] - logits[0, -1].mean()  # noqa: E731
    _, clean_cache = ours.run_with_cache(clean)
    _, tl_clean = bridge.run_with_cache(clean)
    n_patches = args.n_layer * args.tokens
    exact, t_exact = timed(lambda: patching.get_act_patch_resid_pre(ours, corrupted, clean_cache, metric), args.clock)
    approx, t_attr = timed(lambda: patching.get_attr_patch_resid_pre(ours, corrupted, clean_cache, metric), args.clock)
    k = min(args.tl_patches, n_patches)
    index = pd.DataFrame([(l, p) for l in range(args.n_layer) for p in range(args.tokens)][:k], columns=["layer", "pos"])
    tl_values, t_tl = timed(lambda: tl_patching.generic_activation_patch(  # get_act_patch_resid_pre on k patches
        bridge, corrupted, tl_clean, metric, tl_patching.layer_pos_patch_setter, "resid_pre", index_df=index), args.clock)
    with torch.no_grad():
        base = float(metric(ours(corrupted)[0]))
    agree = (exact.flatten()[:k] - tl_values.flatten().float()).abs().max().item()
    corr = torch.corrcoef(torch.stack([(exact - base).flatten(), approx.flatten()]))[0, 1].item()
    per_ours, per_tl = t_exact / n_patches, t_tl / k
    print(f"GPT-2 sizes {args.n_layer} layers x {args.n_head} heads x {args.n_embd}, vocab {args.vocab}, "
          f"{args.tokens} tokens, {args.threads} thread(s), {args.clock} clock, load {os.getloadavg()[0]:.1f}")
    print(f"{'method':<44} {'patches':>8} {'seconds':>9} {'s/patch':>9}")
    print(f"{'headscope exact (batched)':<44} {n_patches:>8} {t_exact:>9.2f} {per_ours:>9.4f}")
    print(f"{'headscope attribution (1 fwd + 1 bwd)':<44} {n_patches:>8} {t_attr:>9.2f} {t_attr / n_patches:>9.5f}")
    print(f"{'TransformerLens get_act_patch_resid_pre':<44} {k:>8} {t_tl:>9.2f} {per_tl:>9.4f}")
    print(f"exact patching, TransformerLens / headscope per patch: {per_tl / per_ours:.1f}x")
    print(f"attribution patching vs exact, whole sweep: {t_exact / t_attr:.0f}x faster; "
          f"correlation with exact {corr:.3f}")
    print(f"largest difference from TransformerLens on the shared patches: {agree:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
