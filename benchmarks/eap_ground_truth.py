"""EAP, EAP-IG and exact edge patching on models whose circuit is known (the record in docs/circuits.md).

    nice -n 10 python benchmarks/eap_ground_truth.py                      # hand-built models, then the trained one
    nice -n 10 python benchmarks/eap_ground_truth.py --out_dir=out-induction-repeats --figures=eap-figures

1. The hand-built induction and successor models of lens/ground_truth.py: TPR, FPR (top |true| edges) and
   ROC area of each method against the true edges, their ranks, and the faithfulness curve's CPR and CMD.
2. The induction model of config/induction_shakespeare_repeats.py, trained once beforehand with
   `nice -n 10 python train.py config/induction_shakespeare_repeats.py` (its --out_dir here): the layer-0
   previous-token head and the layer-1 induction head are found by detect_head; the script reports the
   ranks of the edges prev -> induction<k> and induction -> logits, and the faithfulness of the circuits
   found. Pairs: clean [r, r], corrupted [r', r] (r, r' windows of validation text), metric the mean
   logit of the right next token over the second half.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not this folder
from data.tokens import load_tokens  # noqa: E402
from lens.circuit import SIZES, faithfulness, faithfulness_curve, greedy_circuit  # noqa: E402
from lens.circuit_plots import circuit_figure, faithfulness_figure  # noqa: E402
from lens.detectors import detect_head, induction_scores  # noqa: E402
from lens.eap import eap, eap_ig, edge_patching  # noqa: E402
from lens.edges import Pairs  # noqa: E402
from lens.ground_truth import induction_task, recovery, successor_task  # noqa: E402
from model import load_checkpoint  # noqa: E402
from training.families import model_from_checkpoint  # noqa: E402


def methods(model, pairs, metric, steps: int = 5) -> dict:
    """Scores of every edge by EAP, EAP-IG and exact patching."""
    return {"EAP": eap(model, pairs, metric=metric), f"EAP-IG ({steps} steps)": eap_ig(model, pairs, metric=metric, steps=steps),
            "exact edge patching": edge_patching(model, pairs, metric=metric)}


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's correlation of two score vectors (by |score|)."""
    ranks = [torch.argsort(torch.argsort(v.abs())).double() for v in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def hand_built(figures: str | None) -> None:
    """Section 1: the hand-built models."""
    for task_name, make in (("induction", induction_task), ("successor", successor_task)):
        task = make()
        scores = methods(task.model, task.pairs, task.metric)
        exact = scores["exact edge patching"].values
        print(f"\n{task_name} (hand-built, {len(task.pairs)} pairs, {len(exact)} edges; true: {', '.join(task.true_edges)})")
        print("| method | TPR | FPR | ROC AUC | ranks of the true edges | Spearman vs exact | CPR | CMD |")
        print("|---|---|---|---|---|---|---|---|")
        curves = {}
        for name, s in scores.items():
            r = recovery(s, task.true_edges)
            curves[name] = faithfulness_curve(task.model, task.pairs, metric=task.metric, scores=s, method="greedy")
            print(f"| {name} | {r['tpr']:.2f} | {r['fpr']:.3f} | {r['auc']:.3f} | {sorted(r['ranks'].values())} | "
                  f"{rank_correlation(s.values, exact):.3f} | {curves[name].cpr:.3f} | {curves[name].cmd:.3f} |")
        if figures:
            faithfulness_figure(curves, f"hand-built {task_name}").savefig(os.path.join(figures, f"{task_name}_f.png"))


def repeat_pairs(out_dir: str, n_pairs: int, half: int, seed: int = 0) -> Pairs:
    """[r, r] against [r', r], r and r' windows of the dataset's validation tokens."""
    dataset = load_checkpoint(out_dir)["train_config"].get("dataset", "shakespeare_repeats")
    tokens = load_tokens(os.path.join("data", dataset, "val.bin"))
    g = np.random.default_rng(seed)
    starts = g.integers(0, len(tokens) - half, size=(2, n_pairs))
    r, other = (torch.from_numpy(np.stack([tokens[s:s + half] for s in row]).astype(np.int64)) for row in starts)
    return Pairs(torch.cat([r, r], 1), torch.cat([other, r], 1))


def second_half_metric(half: int):
    """Mean logit of the right next token over the second half (positions half .. 2 half - 2)."""
    def metric(logits, batch):
        positions = torch.arange(half, 2 * half - 1)
        answers = batch.clean[0][:, positions + 1]
        return logits[:, positions].gather(-1, answers.unsqueeze(-1)).squeeze(-1).mean(1)
    return metric


def trained(out_dir: str, n_pairs: int, half: int, figures: str | None) -> None:
    """Section 2: the trained induction model."""
    if not os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        sys.exit(f"no checkpoint in {out_dir}; train it first: nice -n 10 python train.py "
                 f"config/induction_shakespeare_repeats.py --out_dir={out_dir}")
    ckpt = load_checkpoint(out_dir)
    model = model_from_checkpoint(ckpt).eval()
    pairs, metric = repeat_pairs(out_dir, n_pairs, half), second_half_metric(half)
    prev = detect_head(model, pairs.clean[0], "previous_token_head")  # (layer, head)
    induction = induction_scores(model, halves=pairs.clean[0][:, :half])
    p, i = int(prev[0].argmax()), int(induction[1].argmax())
    print(f"\ntrained induction model ({out_dir}, iteration {ckpt.get('iter_num')}): previous-token scores in layer 0 "
          f"{[round(float(v), 3) for v in prev[0]]}, induction scores in layer 1 {[round(float(v), 3) for v in induction[1]]}")
    key, out = f"a0.h{p}->a1.h{i}<k>", f"a1.h{i}->logits"
    scores = methods(model, pairs, metric)
    exact = scores["exact edge patching"].values
    print(f"{len(pairs)} pairs of {2 * half} tokens, {len(exact)} edges; the circuit: {key}, {out}")
    print(f"| method | rank of {key} | rank of {out} | Spearman vs exact | f of the 5-edge greedy circuit | CPR | CMD |")
    print("|---|---|---|---|---|---|---|")
    curves = {}
    for name, s in scores.items():
        curves[name] = faithfulness_curve(model, pairs, metric=metric, scores=s, method="greedy")
        small = faithfulness(model, pairs, metric=metric, circuits=[greedy_circuit(s, 5)], graph=s.graph)
        print(f"| {name} | {s.rank(key)} | {s.rank(out)} | {rank_correlation(s.values, exact):.3f} | "
              f"{float(small.f[0]):.3f} | {curves[name].cpr:.3f} | {curves[name].cmd:.3f} |")
    best = scores["EAP-IG (5 steps)"]
    print("EAP-IG's top 8 edges:", ", ".join(f"{e} ({best[e]:+.3f})" for e in best.top(8)))
    print(f"sizes: {', '.join(f'{100 * x:g}%' for x in SIZES)}; f (EAP-IG, greedy): "
          f"{', '.join(f'{v:.2f}' for v in curves['EAP-IG (5 steps)'].f)}")
    if figures:
        faithfulness_figure(curves, "trained induction model").savefig(os.path.join(figures, "trained_f.png"))
        circuit_figure(best.graph, greedy_circuit(best, 8), best.values, "trained induction model, EAP-IG").savefig(
            os.path.join(figures, "trained_circuit.png"))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="out-induction-repeats", help="the trained induction model's folder")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--half", type=int, default=24, help="tokens in each half of a pair")
    parser.add_argument("--figures", default=None, help="a folder for the PNGs")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
    hand_built(args.figures)
    trained(args.out_dir, args.pairs, args.half, args.figures)


if __name__ == "__main__":
    main(sys.argv[1:])
