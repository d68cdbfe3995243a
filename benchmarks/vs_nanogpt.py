"""train.py against nanoGPT's training loop on nanoGPT's CPU settings, side by side; prints a table.

    python data/shakespeare_char/prepare.py --input input.txt --out_dir /tmp/tsc   # tiny shakespeare
    python benchmarks/vs_nanogpt.py --data_dir=/tmp/tsc --seeds=1337,1,2

nanoGPT itself cannot be installed from a package registry, so this file holds a minimal reference
written for the comparison: nanoGPT's model (GPT-2 layout, bias-free LayerNorm, tied head, its
initialisation), its loop (one global random stream for initialisation and batches, batches drawn
with `randint(len - block_size)`, warmup then cosine, AdamW with decay on matrices, clipping at 1)
and its estimator (eval_iters random batches per split). Given the same weights and batches it
computes the same loss as headscope's GPT, and the two optimizer steps agree to float rounding.

For each seed both trainers start at the same moment with one thread each, so they see the same
load and their times compare as a ratio. Besides each trainer's own 20-batch estimate at iteration
2000 (nanoGPT's published 1.886 is one such estimate; its spread is about 0.013), the final model of
each is evaluated on the whole val split (non-overlapping windows), a far less noisy number.
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data.tokens import load_tokens  # noqa: E402

# nanoGPT's documented CPU run (config/shakespeare_char_cpu.py holds the same values for train.py)
SETTINGS = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000,
                lr_decay_iters=2000, warmup_iters=100, learning_rate=1e-3, min_lr=1e-4, beta2=0.99,
                weight_decay=0.1, eval_interval=250, eval_iters=20)


class ReferenceGPT(nn.Module):
    """nanoGPT's GPT at bias=False and dropout=0 (GPT-2's layout: learned positions, pre-LayerNorm, tied head)."""

    def __init__(self, vocab_size: int, n_layer: int, n_head: int, n_embd: int, block_size: int):
        super().__init__()
        self.n_head = n_head
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln_1=nn.LayerNorm(n_embd, bias=False), c_attn=nn.Linear(n_embd, 3 * n_embd, bias=False),
            attn_proj=nn.Linear(n_embd, n_embd, bias=False), ln_2=nn.LayerNorm(n_embd, bias=False),
            c_fc=nn.Linear(n_embd, 4 * n_embd, bias=False), mlp_proj=nn.Linear(4 * n_embd, n_embd, bias=False),
        )) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for m in self.modules():  # N(0, 0.02), the residual projections scaled by 1/sqrt(2 n_layer)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        for block in self.blocks:
            for name in ("attn_proj", "mlp_proj"):
                nn.init.normal_(block[name].weight, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.blocks:
            q, k, v = b.c_attn(b.ln_1(x)).view(B, T, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b.attn_proj(y.transpose(1, 2).reshape(B, T, -1))
            x = x + b.mlp_proj(F.gelu(b.c_fc(b.ln_2(x))))
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def full_split_loss(loss_fn, data: np.ndarray, block_size: int) -> float:
    """Mean next-token loss over a whole split, in non-overlapping windows of block_size."""
    d = torch.from_numpy(np.asarray(data).astype(np.int64))
    n = (len(d) - 1) // block_size
    x, y = d[:n * block_size].view(n, block_size), d[1:n * block_size + 1].view(n, block_size)
    with torch.no_grad():
        return sum(loss_fn(x[i:i + 256], y[i:i + 256]).item() * x[i:i + 256].numel()
                   for i in range(0, n, 256)) / x.numel()


def run_reference(data_dir: str, seed: int) -> dict:
    """nanoGPT's loop, in this process; returns its estimate at the end, the full val loss, timings."""
    s = SETTINGS
    train, val = load_tokens(os.path.join(data_dir, "train.bin")), load_tokens(os.path.join(data_dir, "val.bin"))
    with open(os.path.join(data_dir, "meta.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    torch.manual_seed(seed)
    model = ReferenceGPT(vocab_size, s["n_layer"], s["n_head"], s["n_embd"], s["block_size"])
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": s["weight_decay"]},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=s["learning_rate"], betas=(0.9, s["beta2"]))

    def get_batch(split):
        data, T = (train if split == "train" else val), s["block_size"]
        ix = torch.randint(len(data) - T, (s["batch_size"],))
        x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    def lr_at(it):
        if it < s["warmup_iters"]:
            return s["learning_rate"] * (it + 1) / (s["warmup_iters"] + 1)
        ratio = (it - s["warmup_iters"]) / (s["lr_decay_iters"] - s["warmup_iters"])
        return s["min_lr"] + 0.5 * (1 + math.cos(math.pi * min(ratio, 1.0))) * (s["learning_rate"] - s["min_lr"])

    @torch.no_grad()
    def estimate():
        model.eval()
        out = {sp: statistics.fmean(model(*get_batch(sp)).item() for _ in range(s["eval_iters"])) for sp in ("train", "val")}
        model.train()
        return out

    X, Y = get_batch("train")
    start, step_ms = time.perf_counter(), []
    for it in range(s["max_iters"] + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        if it % s["eval_interval"] == 0 or it == s["max_iters"]:
            est = estimate()
        if it == s["max_iters"]:
            break
        t0 = time.perf_counter()
        loss = model(X, Y)
        X, Y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        step_ms.append(1000 * (time.perf_counter() - t0))
    wall = time.perf_counter() - start
    model.eval()
    return {"val_est": est["val"], "train_est": est["train"], "wall_s": wall, "ms_per_iter": statistics.median(step_ms),
            "full_val": full_split_loss(model, val, s["block_size"])}


def run_pair(data_dir: str, seed: int, out: str) -> dict:
    """Start the reference and train.py at once (one thread each); wait for both; collect their numbers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out_dir = os.path.join(out, f"headscope-{seed}")
    ref = subprocess.Popen([sys.executable, __file__, "--reference", f"--data_dir={data_dir}", f"--seeds={seed}"],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    ours = subprocess.run([sys.executable, "train.py", "config/shakespeare_char_cpu.py", f"--data_dir={data_dir}",
                           f"--out_dir={out_dir}", f"--seed={seed}", "--overwrite=True", "--always_save_checkpoint=True"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    ref_out, _ = ref.communicate()
    if ours.returncode != 0 or ref.returncode != 0:
        sys.exit(f"error: a run failed:\n{ours.stdout[-1500:]}{ours.stderr[-1500:]}")
    from training.families import model_from_checkpoint
    from weights.checkpoint import load_checkpoint

    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    model = model_from_checkpoint(load_checkpoint(os.path.join(out_dir, "ckpt.pt"))).eval()
    full = full_split_loss(lambda x, y: model(x, y)[1], load_tokens(os.path.join(data_dir, "val.bin")),
                           model.config.block_size)
    ms = [float(m) for m in re.findall(r"([\d.]+) ms/iter", ours.stdout)]
    return {"seed": seed, "reference": json.loads(ref_out.strip().splitlines()[-1]),
            "headscope": {"val_est": last["val_loss"], "train_est": last["train_loss"], "wall_s": last["elapsed_s"],
                          "ms_per_iter": statistics.median(ms), "full_val": full}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="tiny shakespeare prepared by data/shakespeare_char/prepare.py")
    parser.add_argument("--seeds", default="1337", help="comma-separated seeds, one pair of runs each")
    parser.add_argument("--out", default="bench-vs-nanogpt", help="folder for train.py's out_dirs")
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"error: --seeds must be comma-separated integers, got {args.seeds!r}.")
    if not seeds:
        sys.exit("error: --seeds names no seed; give comma-separated integers, e.g. --seeds=1337,1338.")
    args.data_dir, args.out = os.path.abspath(args.data_dir), os.path.abspath(args.out)  # the runs start in the repo
    if not os.path.exists(os.path.join(args.data_dir, "meta.json")):
        sys.exit(f"error: no prepared dataset in {args.data_dir}; run data/shakespeare_char/prepare.py --out_dir there first.")
    if args.reference:
        torch.set_num_threads(1)
        print(json.dumps(run_reference(args.data_dir, seeds[0])))
        return
    rows = []
    for seed in seeds:
        rows.append(run_pair(args.data_dir, seed, args.out))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nnanoGPT's CPU settings, 2000 iterations, both trainers at once with one thread each "
          f"({os.cpu_count()} CPUs); val est = the trainer's own 20-batch estimate at iteration 2000\n")
    print("| seed | trainer | val est | full val | ms/iter (median) | wall s | wall vs reference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("reference", "headscope"):
            x = r[name]
            print(f"| {r['seed']} | {name} | {x['val_est']:.4f} | {x['full_val']:.4f} | {x['ms_per_iter']:.1f} | "
                  f"{x['wall_s']:.0f} | {x['wall_s'] / r['reference']['wall_s']:.2f} |")
    for name in ("reference", "headscope"):
        full = [r[name]["full_val"] for r in rows]
        est = [r[name]["val_est"] for r in rows]
        print(f"| mean | {name} | {statistics.fmean(est):.4f} | {statistics.fmean(full):.4f} | | "
              f"{statistics.fmean(r[name]['wall_s'] for r in rows):.0f} | |")


if __name__ == "__main__":
    main()
