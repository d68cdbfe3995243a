"""Probes of what keeps a small char-level BERT on the unigram plateau, at fixed iteration counts.

    python benchmarks/bert_probes.py --variant=baseline --iters=1000 --eval_at=250,500,1000
    python benchmarks/bert_probes.py --list

Each variant changes the shipped config's model or schedule; the loop is train.py's (AdamW with weight
decay on matrices, linear warmup and cosine decay, gradient clipping 1.0) on the built-in plays, with
masked-token accuracy on the same validation batches at each listed iteration. Accuracy at an iteration
count does not depend on the machine's load; ms/iteration does (compare variants run side by side).
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from data.mlm import MLMBatches  # noqa: E402
from data.tokenizer import from_meta  # noqa: E402
from data.loader import read_meta  # noqa: E402
from model import BERT, BERTConfig  # noqa: E402

# the shipped config before issue 17 (2 post-norm layers, 64 wide, block 32, batch 32, lr 1e-3)
BASE = dict(model=dict(n_layer=2, n_head=2, n_embd=64, block_size=32, dropout=0.0),
            batch_size=32, lr=1e-3, min_lr=1e-4, warmup=100, weight_decay=0.01, mask_prob=0.15)
VARIANTS = {
    "baseline": {},
    "lr3e-3": dict(lr=3e-3, min_lr=3e-4),
    "prenorm": dict(model=dict(post_norm=False)),
    "prenorm_lr3e-3": dict(model=dict(post_norm=False), lr=3e-3, min_lr=3e-4),
    "rope": dict(model=dict(pos_emb="rope")),
    "rope_prenorm_lr3e-3": dict(model=dict(pos_emb="rope", post_norm=False), lr=3e-3, min_lr=3e-4),
    "block64_batch16": dict(model=dict(block_size=64), batch_size=16),
    "mask25": dict(mask_prob=0.25),
    "wide128_4l": dict(model=dict(n_layer=4, n_head=4, n_embd=128)),
    "wide128_4l_rope_prenorm_lr3e-3": dict(model=dict(n_layer=4, n_head=4, n_embd=128, pos_emb="rope",
                                                      post_norm=False), lr=3e-3, min_lr=3e-4),
    "wide128_4l_rope_lr2e-3": dict(model=dict(n_layer=4, n_head=4, n_embd=128, pos_emb="rope"), lr=2e-3, min_lr=2e-4),
    "wide128_4l_prenorm_lr3e-3": dict(model=dict(n_layer=4, n_head=4, n_embd=128, post_norm=False),
                                      lr=3e-3, min_lr=3e-4),
}


def settings(variant: str) -> dict:
    """The base settings with the variant's changes merged in."""
    change = VARIANTS[variant]
    return {**BASE, **change, "model": {**BASE["model"], **change.get("model", {})}}


def lr_at(it: int, s: dict, total: int) -> float:
    """train.py's schedule: linear warmup, cosine decay to min_lr at `total`."""
    if it < s["warmup"]:
        return s["lr"] * (it + 1) / (s["warmup"] + 1)
    progress = min(1.0, (it - s["warmup"]) / max(1, total - s["warmup"]))
    return s["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s["lr"] - s["min_lr"])


@torch.no_grad()
def accuracy(model, batches, val: list[dict]) -> float:
    """Masked-token accuracy over the fixed validation batches."""
    model.eval()
    hits = total = 0
    for batch in val:
        logits, _ = model(batch["input_ids"], batch["attention_mask"])
        selected = batch["labels"] != -100
        hits += (logits.argmax(-1)[selected] == batch["labels"][selected]).sum().item()
        total += selected.sum().item()
    model.train()
    return hits / total


def probe(variant: str, iters: int, eval_at: list[int], data_dir: str, eval_batches: int) -> dict:
    """Train one variant for `iters` iterations; its accuracy at each of `eval_at` and its ms/iteration."""
    s = settings(variant)
    tokenizer = from_meta(read_meta(data_dir)).with_specials(MLMBatches.specials)
    torch.manual_seed(1337)
    config = BERTConfig(vocab_size=tokenizer.vocab_size, **s["model"])
    batches = MLMBatches(data_dir, config, s["batch_size"], "cpu", tokenizer)
    batches.mask_prob = s["mask_prob"]
    val_gen = torch.Generator().manual_seed(0)
    val = [batches.get("val", val_gen) for _ in range(eval_batches)]
    batches.mask_prob = s["mask_prob"]
    model = BERT(config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": s["weight_decay"]},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=s["lr"], betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(1337)
    result, seconds = {"variant": variant, "settings": s}, 0.0
    for it in range(1, iters + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it - 1, s, iters)
        batch = batches.get("train", gen)
        start = time.perf_counter()
        _, loss = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seconds += time.perf_counter() - start
        if it in eval_at:
            result[str(it)] = round(accuracy(model, batches, val), 3)
            print(json.dumps({"variant": variant, "iter": it, "acc": result[str(it)],
                              "ms_per_iter": round(1000 * seconds / it, 1)}), flush=True)
    result["ms_per_iter"] = round(1000 * seconds / iters, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="baseline")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--eval_at", default="250,500,1000")
    parser.add_argument("--eval_batches", type=int, default=10)
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                           "data", "shakespeare_char"))
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args()
    if args.list or args.variant not in VARIANTS:
        if not args.list:
            print(f"error: unknown variant {args.variant!r}; pick one of the following.")
        print("\n".join(f"{name}: {change}" for name, change in VARIANTS.items()))
        sys.exit(0 if args.list else 2)
    eval_at = sorted({int(x) for x in args.eval_at.split(",")})
    print(json.dumps(probe(args.variant, args.iters, eval_at, args.data_dir, args.eval_batches)))


if __name__ == "__main__":
    main()
