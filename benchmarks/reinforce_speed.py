"""Time per training step of the reversal config's hard cross-attention, per estimator, side by side.

    python benchmarks/reinforce_speed.py --rounds=5

The encoder-decoder of config/seq2seq_reverse.py with hard cross-attention, trained with the config's
optimizer (Muon + AdamW) on training batches of the reverse task. Each round draws one batch and times
`--steps` training steps (forward, backward, optimizer step) of every setting on it in turn, so a change of
load on a shared machine hits every setting alike; the table gives the median ms per step over the rounds
and its ratio to Gumbel's. A setting with hard_attention_samples=K takes its distinct pairs
each K times in a row, as its training run does: with batch_size / K pairs a step holds as many rows as
the others, with batch_size pairs K times as many.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.pairs import PairBatches  # noqa: E402
from model import Seq2Seq  # noqa: E402
from reinforce_variance import reversal_setup, with_options  # noqa: E402
from training.config import read_config_file  # noqa: E402
from training.muon import make_muon_adamw  # noqa: E402

RLOO = dict(hard_attention_credit="own", hard_attention_baseline="samples", hard_attention_samples=2)
SETTINGS = {  # name -> (model options, distinct pairs per step as a share of batch_size)
    "gumbel": (dict(hard_attention_estimator="gumbel"), 1),
    "straight_through": (dict(hard_attention_estimator="straight_through"), 1),
    "reinforce: query, batch (default)": ({}, 1),
    "reinforce: own, 2 samples (RLOO), 32 pairs": (RLOO, 0.5),
    "reinforce: own, 2 samples (RLOO), 64 pairs": (RLOO, 1),
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per setting and round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    values = read_config_file("config/seq2seq_reverse.py")
    model_cfg, folder, tokenizer = reversal_setup()
    runs = {}
    for name, (options, share) in SETTINGS.items():
        cfg = with_options(model_cfg, name, options)
        torch.manual_seed(0)
        model = Seq2Seq(cfg).train()
        optimizer = make_muon_adamw(model, values["muon_lr"], values["learning_rate"], (0.9, 0.99), 0.1)
        runs[name] = (model, optimizer, (int(values["batch_size"] * share), cfg.hard_attention.samples), [])
    batches = PairBatches(folder, model_cfg, values["batch_size"], "cpu", tokenizer)
    load_before = os.getloadavg()
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        batch = batches.get("train", torch.Generator().manual_seed(r))
        for model, optimizer, (pairs, samples), times in runs.values():
            rows = {k: v[:pairs].repeat_interleave(samples, 0) for k, v in batch.items()}
            start = time.perf_counter()
            for _ in range(args.steps):
                _, loss = model(**rows)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if r > 0:
                times.append((time.perf_counter() - start) * 1000 / args.steps)
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
