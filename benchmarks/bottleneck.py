"""The fixed-size bottleneck, measured: RNN encoder-decoders with and without attention, and a Transformer,
reversing Shakespeare snippets of 1 to 50 characters; then hard attention trained three ways.

    python benchmarks/bottleneck.py --quick          # 300 iterations per model (10.6 min at load 11 on 2 cores)
    python benchmarks/bottleneck.py --jobs=5         # the documented run (docs/bottleneck.md), 1,500 iterations
    python benchmarks/bottleneck.py --only=hard --iters=3000 --out=bench-hard

Every model gets the same budget: the same number of training iterations of the same batches (snippets
drawn at random positions of the first 90% of the corpus; a batch's longest length is uniform in
1..max_len and the others are at most 4 shorter, so batches carry little padding), AdamW with the same
schedule. Held-out snippets come from the last 10%; each length bucket is decoded greedily and
scored by exact match and per-character accuracy (position by position against the target, missing
characters wrong). Budgets are iterations, not seconds, so the results do not depend on the machine's load.
Writes into --out: results.json, bottleneck.png (Bahdanau et al.'s Figure 2 for this task), one
alignment heatmap per attention model, hard_estimators.png (training curves of the estimators) and
hard_by_length.png (their exact match and per-character accuracy against length).
"""

import argparse
import json
import math
import multiprocessing
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.corpus import shakespeare_text  # noqa: E402
from model.config import from_flat  # noqa: E402
from training.families import FAMILIES  # noqa: E402
from weights.common import IGNORE_INDEX  # noqa: E402

BUCKETS = [(1, 10), (11, 20), (21, 30), (31, 40), (41, 50), (51, 60)]
SPECIALS = ("[PAD]", "[BOS]", "[EOS]")
RNN = dict(n_embd=64, n_layer=1, cell="gru", bidirectional=True)
MODELS = {  # name -> (family, config); sizes picked for comparable parameter counts (printed)
    "rnn, no attention": ("rnn", dict(RNN, attention=False)),
    "rnn + additive": ("rnn", dict(RNN, attn_score="additive")),
    "rnn + dot": ("rnn", dict(RNN, attn_score="dot")),
    "rnn + general": ("rnn", dict(RNN, attn_score="general")),
    "transformer": ("seq2seq", dict(n_layer=2, n_encoder_layer=2, n_head=4, n_embd=40)),
    "transformer + qk_norm": ("seq2seq", dict(n_layer=2, n_encoder_layer=2, n_head=4, n_embd=40, qk_norm=True)),
}
HARD = {f"rnn + hard ({e})": ("rnn", dict(RNN, attn_score="general", attn_weighting="hard",
                                          hard_attention_estimator=e))
        for e in ("reinforce", "gumbel", "straight_through")}


class Snippets:
    """Reversal pairs cut from the corpus: train from the first 90% of the text, held out from the rest."""

    def __init__(self, max_len: int):
        text = " ".join(line.strip() for line in shakespeare_text().splitlines() if line.strip())
        chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.pad, self.bos, self.eos = len(chars), len(chars) + 1, len(chars) + 2
        self.vocab_size = len(chars) + 3
        ids = torch.tensor([self.stoi[c] for c in text])
        cut = int(0.9 * len(ids))
        self.train, self.val, self.max_len = ids[:cut], ids[cut:], max_len

    def draw(self, split: str, lengths: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """Snippets of the given lengths at random positions of a split."""
        ids = self.train if split == "train" else self.val
        starts = torch.randint(len(ids) - self.max_len, (len(lengths),), generator=gen)
        return [ids[s:s + n] for s, n in zip(starts.tolist(), lengths.tolist())]

    def batch(self, sources: list[torch.Tensor]) -> dict:
        """Padded src/src_mask, tgt = BOS + reversed source, targets = reversed source + EOS (IGNORE_INDEX after)."""
        B, S = len(sources), max(len(s) for s in sources)
        src = torch.full((B, S), self.pad)
        tgt = torch.full((B, S + 1), self.pad)
        targets = torch.full((B, S + 1), IGNORE_INDEX)
        for b, s in enumerate(sources):
            n = len(s)
            src[b, :n] = s
            tgt[b, 0], tgt[b, 1:n + 1] = self.bos, s.flip(0)
            targets[b, :n], targets[b, n] = s.flip(0), self.eos
        return {"src": src, "src_mask": src != self.pad, "tgt": tgt, "targets": targets}


def build(family: str, options: dict, data: Snippets):
    """A model of the family with the options, sized for the task's vocabulary and lengths."""
    entry = FAMILIES[family]  # training/families.py: "rnn" or "seq2seq"
    return entry.model(from_flat(entry.config, dict(vocab_size=data.vocab_size, block_size=data.max_len + 1,
                                                    source_block_size=data.max_len, **options)))


def lr_at(it: int, iters: int, peak: float) -> float:
    """Linear warmup over 5% of the run, cosine decay to a tenth of the peak."""
    warmup = max(1, iters // 20)
    if it < warmup:
        return peak * (it + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (it - warmup) / max(1, iters - warmup))))


@torch.no_grad()
def evaluate(model, data: Snippets, per_bucket: int) -> dict:
    """Greedy decoding of per_bucket held-out snippets per length bucket: exact match, per-char accuracy."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)  # the same held-out snippets for every model
    out = {}
    for low, high in BUCKETS:
        if low > data.max_len:
            break
        sources = data.draw("val", torch.randint(low, min(high, data.max_len) + 1, (per_bucket,), generator=gen), gen)
        batch = data.batch(sources)
        outputs = model.generate(batch["src"], data.bos, data.eos, batch["src_mask"], max_new_tokens=data.max_len + 1)
        exact = chars = total = 0
        for source, output in zip(sources, outputs):
            target = source.flip(0).tolist()
            exact += output == target
            chars += sum(o == t for o, t in zip(output, target))
            total += len(target)
        out[f"{low}-{high}"] = {"exact_match": exact / len(sources), "char_accuracy": chars / total}
    model.train()
    return out


def score_gradient_variance(model, data: Snippets, samples: int = 16) -> dict:
    """Variance of d loss / d scores over repeated passes on one batch (the estimator's noise), and the mean's size."""
    gen = torch.Generator().manual_seed(99)
    low, high = min(20, data.max_len), min(30, data.max_len)  # lengths 20-30 (fewer under a small --max_len)
    batch = data.batch(data.draw("val", torch.randint(low, high + 1, (32,), generator=gen), gen))
    grads = []

    def keep(scores, name):
        scores.register_hook(lambda g: grads.append(g.detach().nan_to_num(0.0)))

    for _ in range(samples):
        with model.hooks([("*cross_attn.scores", keep)]):
            _, loss = model(**batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
    g = torch.stack(grads)  # (samples, B, nh, T, S)
    return {"variance": g.var(0).mean().item(), "mean_squared": g.mean(0).pow(2).mean().item()}


def alignment(model, data: Snippets, length: int = 30) -> tuple[list, float, int]:
    """Cross-attention of one held-out snippet (last layer, heads averaged); the share of held-out output
    positions i whose most-attended source position is n-1-i+d, for the offset d (-3..3) that fits best."""
    length = min(length, data.max_len)
    gen = torch.Generator().manual_seed(7)
    sources = data.draw("val", torch.full((64,), length), gen)
    batch = data.batch(sources)
    model.eval()
    with torch.no_grad():
        _, cache = model.run_with_cache(batch["src"], batch["tgt"], src_mask=batch["src_mask"],
                                        names_filter="*cross_attn.pattern")
    model.train()
    pattern = cache[sorted(cache)[-1]].mean(1)[:, :length, :length]  # (B, T, S): last layer, heads averaged
    # a bidirectional state also carries its neighbours' characters: the diagonal may be shifted
    shares = {d: (pattern.argmax(-1) == torch.arange(length - 1, -1, -1) + d).float().mean().item()
              for d in range(-3, 4)}
    offset = max(shares, key=shares.get)
    return pattern[0].tolist(), shares[offset], offset


def train_one(job: dict) -> dict:
    """Train one model for job['iters'] iterations; return its measurements."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = Snippets(job["max_len"])
    model = build(job["family"], job["options"], data)
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    init_gradients = score_gradient_variance(model, data) if job.get("gradient_variance") else None
    curve, start = [], time.perf_counter()
    for it in range(job["iters"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(it, job["iters"], job["lr"])
        gen = torch.Generator().manual_seed(it)  # iteration it draws the same batch for every model
        longest = torch.randint(1, data.max_len + 1, (1,), generator=gen)  # similar lengths: little padding
        lengths = (longest - torch.randint(0, 5, (job["batch_size"],), generator=gen)).clamp(min=1)
        _, loss = model(**data.batch(data.draw("train", lengths, gen)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if it % 25 == 0 or it == job["iters"] - 1:
            curve.append((it, loss.item()))
        if it % 250 == 0:
            print(f"  {job['name']}: iter {it}, loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    result = {"name": job["name"], "params": sum(p.numel() for p in model.parameters()), "curve": curve,
              "train_s": time.perf_counter() - start, "buckets": evaluate(model, data, job["per_bucket"])}
    if any(n.endswith("cross_attn.pattern") for n in model.hook_names()):
        result["alignment_map"], result["mirror_alignment"], result["mirror_offset"] = alignment(model, data)
    if job.get("gradient_variance"):
        result["score_gradients"] = {"init": init_gradients, "trained": score_gradient_variance(model, data)}
    print(f"  {job['name']}: {result['train_s']:.0f} s", flush=True)
    return result


def table(results: list[dict]) -> str:
    """Markdown: one row per model, exact match / per-char accuracy per length bucket."""
    buckets = list(results[0]["buckets"])
    lines = ["| model | params | " + " | ".join(f"len {b}" for b in buckets) + " | on the anti-diagonal n-1-i+d |",
             "|---|---|" + "---|" * len(buckets) + "---|"]
    for r in results:
        cells = [f"{100 * r['buckets'][b]['exact_match']:.0f}% / {100 * r['buckets'][b]['char_accuracy']:.0f}%"
                 for b in buckets]
        mirror = f"{100 * r['mirror_alignment']:.0f}% (d={r['mirror_offset']:+d})" if "mirror_alignment" in r else "-"
        lines.append(f"| {r['name']} | {r['params'] / 1e3:.0f}k | " + " | ".join(cells) + f" | {mirror} |")
    return "\n".join(lines)


def gradient_table(results: list[dict]) -> str:
    """Markdown: the estimators' score-gradient noise at initialisation and after training."""
    lines = ["| estimator | var at init | mean^2 at init | var / mean^2 at init | var trained | mean^2 trained "
             "| var / mean^2 trained | final train loss |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = []
        for when in ("init", "trained"):
            g = r["score_gradients"][when]
            cells += [f"{g['variance']:.2e}", f"{g['mean_squared']:.2e}", f"{g['variance'] / g['mean_squared']:.2f}"]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['curve'][-1][1]:.3f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: str, title: str) -> None:
    """Exact match and per-char accuracy against source length, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = list(results[0]["buckets"])
    x = [sum(map(int, b.split("-"))) / 2 for b in buckets]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for r in results:
        for ax, key in zip(axes, ("exact_match", "char_accuracy")):
            ax.plot(x, [100 * r["buckets"][b][key] for b in buckets], marker="o", label=r["name"])
    for ax, label in zip(axes, ("exact match (%)", "characters right (%)")):
        ax.set_xlabel("source length (characters)")
        ax.set_ylabel(label)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_alignment(result: dict, path: str) -> None:
    """Heatmap of one held-out snippet's cross-attention: output position down, source position across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(result["alignment_map"], cmap="Greys", vmin=0, vmax=1)
    ax.set_xlabel("source position")
    ax.set_ylabel("output position")
    ax.set_title(f"{result['name']} ({100 * result['mirror_alignment']:.0f}% at d={result['mirror_offset']:+d})",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def plot_curves(results: list[dict], path: str) -> None:
    """Training loss against iteration, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in results:
        ax.plot(*zip(*r["curve"]), label=r["name"])
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 iterations, 50 snippets per bucket (unless given)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations per model (default 1500)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max_len", type=int, default=50, help="longest snippet (buckets of 10 up to it)")
    parser.add_argument("--per_bucket", type=int, default=None, help="held-out snippets per length bucket (default 100)")
    parser.add_argument("--only", choices=("all", "bottleneck", "hard"), default="all")
    parser.add_argument("--jobs", type=int, default=4, help="models trained at once (one thread each)")
    parser.add_argument("--out", default="bench-bottleneck")
    args = parser.parse_args(argv)
    args.iters = args.iters if args.iters is not None else 300 if args.quick else 1500
    args.per_bucket = args.per_bucket if args.per_bucket is not None else 50 if args.quick else 100
    if min(args.iters, args.batch_size, args.per_bucket, args.jobs) < 1 or not 10 <= args.max_len <= 60:
        sys.exit("error: --iters, --batch_size, --per_bucket and --jobs must be positive and --max_len in 10..60.")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: cannot create {args.out} ({e.strerror}); pick a writable --out.")
    models = {**(MODELS if args.only != "hard" else {}), **(HARD if args.only != "bottleneck" else {})}
    jobs = [dict(name=name, family=family, options=options, iters=args.iters, batch_size=args.batch_size,
                 lr=args.lr, max_len=args.max_len, per_bucket=args.per_bucket, gradient_variance=name in HARD)
            for name, (family, options) in models.items()]
    print(f"{len(jobs)} models, {args.iters} iterations of {args.batch_size} snippets each, {args.jobs} at once",
          flush=True)
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(train_one, jobs, chunksize=1)
    wall = time.perf_counter() - start
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "wall_s": wall, "load_average": os.getloadavg(), "results": results}, f)
    budget = f"{args.iters} iterations x {args.batch_size} snippets, lengths 1-{args.max_len}"
    main_results = [r for r in results if r["name"] in MODELS]
    hard_results = [r for r in results if r["name"] in HARD]
    if main_results:
        print(f"\nexact match / per-char accuracy, greedy, {args.per_bucket} held-out snippets per bucket ({budget})")
        print(table(main_results))
        plot(main_results, os.path.join(args.out, "bottleneck.png"), f"reversal, {budget}")
    for r in results:
        if "alignment_map" in r:
            name = r["name"].replace(" + ", "_").replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
            plot_alignment(r, os.path.join(args.out, f"alignment_{name}.png"))
    if hard_results:
        print(f"\nhard attention, general score ({budget})")
        print(table(hard_results))
        print("\nscore gradients over 16 passes on one batch: variance per element, squared mean per element")
        print(gradient_table(hard_results))
        plot_curves(hard_results, os.path.join(args.out, "hard_estimators.png"))
        plot(hard_results, os.path.join(args.out, "hard_by_length.png"), f"hard attention, {budget}")
    print(f"\n{wall:.0f} s wall, load average {os.getloadavg()[0]:.1f}; files in {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
