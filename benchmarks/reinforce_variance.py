"""Noise of the hard cross-attention's score gradient on the reversal task, for each estimator and option.

    python benchmarks/reinforce_variance.py                             # at initialisation
    python benchmarks/reinforce_variance.py --checkpoint=out-seq2seq    # a trained model's weights

The encoder-decoder of config/seq2seq_reverse.py with hard cross-attention; one fixed batch of 32
held-out pairs; `--passes` forward-backward passes per setting, each with new samples (the baselines'
running statistics warmed up first on other passes). For every setting: the variance of d loss / d scores
over the passes and the squared mean, each averaged over the score elements, and their ratio (the
noise-to-signal of one pass). Every REINFORCE setting estimates the same gradient (that of the expected
loss), so their variances compare directly; Gumbel's and straight-through's are gradients of other
surrogates: compare their ratios. A learned baseline is only meaningful on weights trained with it.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.loader import dataset_dir, read_meta  # noqa: E402
from data.pairs import PairBatches  # noqa: E402
from data.tokenizer import from_meta  # noqa: E402
from model import Seq2Seq, Seq2SeqConfig  # noqa: E402
from model.config import flatten, from_flat  # noqa: E402
from training.config import read_config_file  # noqa: E402
from weights.checkpoint import load_checkpoint  # noqa: E402

SETTINGS = {  # name -> model options (hard cross-attention everywhere)
    "gumbel": dict(hard_attention_estimator="gumbel"),
    "reinforce: sequence, moving average (old default)": dict(hard_attention_credit="sequence",
                                                              hard_attention_baseline="moving_average"),
    "reinforce: sequence, none": dict(hard_attention_credit="sequence", hard_attention_baseline="none"),
    "reinforce: sequence, batch": dict(hard_attention_credit="sequence", hard_attention_baseline="batch"),
    "reinforce: query, none": dict(hard_attention_baseline="none"),
    "reinforce: query, moving average": dict(hard_attention_baseline="moving_average"),
    "reinforce: query, batch": dict(hard_attention_baseline="batch"),
    "reinforce: query, batch, normalized": dict(hard_attention_baseline="batch", hard_attention_normalize=True),
    "reinforce: query, 2 samples (RLOO)": dict(hard_attention_baseline="samples", hard_attention_samples=2),
    "reinforce: query, 4 samples (RLOO)": dict(hard_attention_baseline="samples", hard_attention_samples=4),
    "reinforce: query, learned": dict(hard_attention_baseline="learned"),
    # credit 'own' estimates another gradient (biased in the first decoder layer): compare its ratio
    "reinforce: own, batch": dict(hard_attention_credit="own", hard_attention_baseline="batch"),
    "reinforce: own, 2 samples (RLOO)": dict(hard_attention_credit="own", hard_attention_baseline="samples",
                                             hard_attention_samples=2),
    "reinforce: own, 4 samples (RLOO)": dict(hard_attention_credit="own", hard_attention_baseline="samples",
                                             hard_attention_samples=4),
}
REINFORCE = dict(hard_attention_estimator="reinforce", hard_attention_credit="query")


def score_gradients(model, batch: dict, passes: int, warmup: int, samples: int = 1) -> dict:
    """Variance and squared mean (per element, averaged) of d loss / d cross-attention scores over passes;
    with samples > 1 the batch holds each sequence that many times in a row, and their gradients add up."""
    grads = []

    def keep(scores, name):
        scores.register_hook(lambda g: grads.append(g.detach().nan_to_num(0.0).unflatten(0, (-1, samples)).sum(1)))

    for i in range(warmup + passes):
        with model.hooks([("*cross_attn.scores", keep)]):
            _, loss = model(**batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i < warmup:
            grads.clear()
    layers = len(grads) // passes
    g = torch.stack([torch.cat([x.flatten() for x in grads[i * layers:(i + 1) * layers]]) for i in range(passes)])
    var, mean2 = g.var(0).mean().item(), g.mean(0).pow(2).mean().item()
    return {"variance": var, "mean_squared": mean2, "ratio": var / mean2 if mean2 else float("nan")}


def reversal_setup():
    """(model config of config/seq2seq_reverse.py, the reverse dataset's folder, its tokenizer)."""
    values = read_config_file("config/seq2seq_reverse.py")
    keys = flatten(Seq2SeqConfig())
    model_cfg = from_flat(Seq2SeqConfig, {k: v for k, v in values.items() if k in keys})
    folder = dataset_dir("reverse")
    tokenizer = from_meta(read_meta(folder, prepare_if_missing=True)).with_specials(PairBatches.specials)
    return model_cfg.with_vocab_size(tokenizer.vocab_size), folder, tokenizer


def with_options(model_cfg, name: str, options: dict):
    """The config with hard cross-attention and a setting's options (REINFORCE's defaults under a 'reinforce' one)."""
    options = {**REINFORCE, **options} if name.startswith("reinforce") else options
    return from_flat(Seq2SeqConfig, {**flatten(model_cfg), "cross_attn_weighting": "hard", **options})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="", help="an out_dir whose ckpt.pt holds the weights to measure at")
    parser.add_argument("--passes", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=8, help="passes that only warm the running statistics")
    parser.add_argument("--settings", default="", help="|-separated prefixes of the settings to run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model_cfg, folder, tokenizer = reversal_setup()
    state = load_checkpoint(args.checkpoint)["model"] if args.checkpoint else None
    wanted = [s.strip() for s in args.settings.split("|") if s.strip()]
    print(f"weights: {args.checkpoint or 'initialisation (seed 0)'}; {args.passes} passes on 32 held-out pairs\n")
    print("| setting | var | mean² | var / mean² |\n|---|---|---|---|")
    for name, options in SETTINGS.items():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        cfg = with_options(model_cfg, name, options)
        torch.manual_seed(0)
        model = Seq2Seq(cfg)
        if state is not None:
            missing = model.load_state_dict(state, strict=False).missing_keys
            assert all("value_head" in k or "baseline" in k or "advantage" in k for k in missing), missing
        model.train()
        batches = PairBatches(folder, cfg, 32, "cpu", tokenizer)
        batch = batches.get("val", torch.Generator().manual_seed(5))
        samples = cfg.hard_attention.samples
        batch = {k: v.repeat_interleave(samples, 0) for k, v in batch.items()}  # each sequence `samples` times
        torch.manual_seed(1)
        r = score_gradients(model, batch, args.passes, args.warmup, samples)
        print(f"| {name} | {r['variance']:.2e} | {r['mean_squared']:.2e} | {r['ratio']:.1f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
