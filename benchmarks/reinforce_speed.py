"""Time per training step of hard attention, per estimator, side by side: the reversal config's hard
cross-attention, or the CPU char config's GPT with hard self-attention.

    python benchmarks/reinforce_speed.py --rounds=5                 # config/seq2seq_reverse.py
    python benchmarks/reinforce_speed.py --task=gpt --rounds=5      # config/shakespeare_char_cpu.py

The model of the config with hard attention, trained with the config's optimizer (reversal: Muon + AdamW;
GPT: AdamW) on training batches. Each round draws one batch and times `--steps` training steps (forward,
backward, optimizer step) of every setting on it in turn, so a change of load on a shared machine hits
every setting alike; the table gives the median ms per step over the rounds and its ratio to Gumbel's. A
setting with hard_attention_samples=K takes its distinct sequences each K times in a row, as its training
run does: with batch_size / K sequences a step holds as many rows as the others, with batch_size K times
as many.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.loader import LMBatches, dataset_dir, read_meta  # noqa: E402
from data.pairs import PairBatches  # noqa: E402
from data.tokenizer import from_meta  # noqa: E402
from model import GPT, GPTConfig, Seq2Seq  # noqa: E402
from model.config import flatten, from_flat  # noqa: E402
from reinforce_variance import reversal_setup, with_options  # noqa: E402
from training.config import read_config_file  # noqa: E402
from training.muon import make_muon_adamw  # noqa: E402

RLOO = dict(hard_attention_credit="own", hard_attention_baseline="samples", hard_attention_samples=2)
REINFORCE = dict(hard_attention_estimator="reinforce")
SETTINGS = {  # task -> name -> (model options, distinct sequences per step as a share of batch_size)
    "reverse": {
        "gumbel": (dict(hard_attention_estimator="gumbel"), 1),
        "straight_through": (dict(hard_attention_estimator="straight_through"), 1),
        "reinforce: query, batch (default)": ({}, 1),
        "reinforce: own, 2 samples (RLOO), 32 pairs": (RLOO, 0.5),
        "reinforce: own, 2 samples (RLOO), 64 pairs": (RLOO, 1),
    },
    "gpt": {
        "gumbel": (dict(hard_attention_estimator="gumbel"), 1),
        "reinforce: own, batch": ({**REINFORCE, "hard_attention_credit": "own"}, 1),
        "reinforce: own, 2 samples (RLOO), 6 windows": ({**REINFORCE, **RLOO}, 0.5),
        "reinforce: own, 2 samples (RLOO), 12 windows": ({**REINFORCE, **RLOO}, 1),
    },
}


def reverse_runs(settings: dict):
    """(runs, batch maker) for the reversal config: name -> (model, optimizer, (rows, samples), times)."""
    values = read_config_file("config/seq2seq_reverse.py")
    model_cfg, folder, tokenizer = reversal_setup()
    runs = {}
    for name, (options, share) in settings.items():
        cfg = with_options(model_cfg, name, options)
        torch.manual_seed(0)
        model = Seq2Seq(cfg).train()
        optimizer = make_muon_adamw(model, values["muon_lr"], values["learning_rate"], (0.9, 0.99), 0.1)
        runs[name] = (model, optimizer, (int(values["batch_size"] * share), cfg.hard_attention.samples), [])
    return runs, PairBatches(folder, model_cfg, values["batch_size"], "cpu", tokenizer)


def gpt_runs(settings: dict):
    """(runs, batch maker) for the CPU char config's GPT with hard self-attention, as reverse_runs."""
    values = read_config_file("config/shakespeare_char_cpu.py")
    folder = dataset_dir(values["dataset"])
    tokenizer = from_meta(read_meta(folder, prepare_if_missing=True))
    keys = flatten(GPTConfig())
    base = {k: v for k, v in values.items() if k in keys}
    runs = {}
    for name, (options, share) in settings.items():
        cfg = from_flat(GPTConfig, {**base, "vocab_size": tokenizer.vocab_size, "attn_weighting": "hard", **options})
        torch.manual_seed(0)
        model = GPT(cfg).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=values["learning_rate"], betas=(0.9, values["beta2"]),
                                      weight_decay=values["weight_decay"])
        runs[name] = (model, optimizer, (int(values["batch_size"] * share), cfg.hard_attention.samples), [])
    return runs, LMBatches(folder, from_flat(GPTConfig, base), values["batch_size"], "cpu", tokenizer)


def time_rounds(runs: dict, batches, rounds: int, steps: int) -> None:
    """Append each setting's ms per step of every round (round 0 warms up and is not counted)."""
    for r in range(rounds + 1):
        batch = batches.get("train", torch.Generator().manual_seed(r))
        for model, optimizer, (rows, samples), times in runs.values():
            step_batch = {k: v[:rows].repeat_interleave(samples, 0) for k, v in batch.items()}
            start = time.perf_counter()
            for _ in range(steps):
                _, loss = model(**step_batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if r > 0:
                times.append((time.perf_counter() - start) * 1000 / steps)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(SETTINGS), default="reverse")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per setting and round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs, batches = (reverse_runs if args.task == "reverse" else gpt_runs)(SETTINGS[args.task])
    load_before = os.getloadavg()
    time_rounds(runs, batches, args.rounds, args.steps)
    load_after = os.getloadavg()
    print(f"median ms per training step over {args.rounds} rounds of {args.steps} steps, {args.threads} thread(s); "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| setting | ms/step | time vs gumbel |\n|---|---|---|")
    first = statistics.median(runs["gumbel"][3])
    for name, (_, _, _, times) in runs.items():
        ms = statistics.median(times)
        print(f"| {name} | {ms:.0f} | {ms / first:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
