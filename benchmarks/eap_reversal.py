"""Which edges of an encoder-decoder trained on reversal carry the anti-diagonal? EAP, EAP-IG and exact patching.

    nice -n 10 python train.py config/seq2seq_reverse.py --out_dir=out-seq2seq     # a trained reversal model
    nice -n 10 python benchmarks/eap_reversal.py --out_dir=out-seq2seq

Pairs: held-out lines of one length (no padding in the source). The clean input is (line, BOS + the line
reversed); the corrupted input keeps the decoder's input and swaps the source for another line of that length,
so only the encoder side (the `encoder` sender and what the cross-attention heads read from it) differs.
Metric: the mean log-probability of the clean target (the reversed line, then EOS) over the target positions.

Printed: each cross-attention head's anti-diagonal share (lens.detectors.alignment_scores against the
reversal's alignment: decoder position t reads source position S - 1 - t), then, for each method, the ranks of
the cross-attention edges (the encoder into each head's key and value, the head's query, and its best edge
out), the Spearman correlation over the heads of that share with each head's encoder edge scores, the top
edges, and the Spearman correlation of each method's scores with exact patching.
"""

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not this folder
from benchmarks.eap_ground_truth import methods, rank_correlation  # noqa: E402
from data.pairs import read_pairs  # noqa: E402
from lens.detectors import alignment_scores, reversal_alignment  # noqa: E402
from lens.edges import Pairs  # noqa: E402
from model import load_checkpoint  # noqa: E402
from training.families import model_from_checkpoint  # noqa: E402


def reversal_pairs(model, n_pairs: int, seed: int = 0) -> tuple[Pairs, torch.Tensor]:
    """Clean (src, BOS + reversed) and corrupted (another src of the same length, the same decoder input) pairs of
    the commonest source length among the validation lines; and the targets (reversed + EOS), (N, T)."""
    tok = model.tokenizer
    lines = [source for source, _ in read_pairs(os.path.join("data", "reverse", "val.jsonl"))]
    length = Counter(len(tok.encode(line)) for line in lines).most_common(1)[0][0]
    same = [tok.encode(line) for line in lines if len(tok.encode(line)) == length]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(same), generator=g)[:2 * n_pairs].tolist()
    src = torch.tensor([same[i] for i in picks[:n_pairs]])
    other = torch.tensor([same[i] for i in picks[n_pairs:2 * n_pairs]])
    bos, eos = tok.special_ids["[BOS]"], tok.special_ids["[EOS]"]
    reversed_src = src.flip(1)
    tgt = torch.cat([torch.full((n_pairs, 1), bos), reversed_src], 1)
    targets = torch.cat([reversed_src, torch.full((n_pairs, 1), eos)], 1)
    return Pairs((src, tgt), (other, tgt)), targets


def target_logprob(targets: torch.Tensor):
    """The metric: mean log-probability of the clean targets over the target positions, one value per pair."""
    def metric(logits, batch):
        logp = torch.log_softmax(logits, -1).gather(-1, targets[batch.rows].unsqueeze(-1)).squeeze(-1)
        return logp.mean(1)
    return metric


def cross_edges(graph, layer: int, head: int) -> dict:
    """The named edges of cross-attention head x{layer}.h{head}: encoder->key, encoder->value, best edge out."""
    name = f"x{layer}.h{head}"
    return {"k": f"encoder->{name}<k>", "v": f"encoder->{name}<v>",
            "out": [n for n in graph.names if n.startswith(name + "->")]}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="out-seq2seq", help="the trained reversal model's folder")
    parser.add_argument("--pairs", type=int, default=32)
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.out_dir, "ckpt.pt")):
        sys.exit(f"no checkpoint in {args.out_dir}; train one first: nice -n 10 python train.py "
                 f"config/seq2seq_reverse.py --out_dir={args.out_dir}")
    ckpt = load_checkpoint(args.out_dir)
    model = model_from_checkpoint(ckpt).eval()
    pairs, targets = reversal_pairs(model, args.pairs)
    metric = target_logprob(targets)
    src, tgt = pairs.clean
    share = alignment_scores(model, src, tgt, reversal_alignment(tgt.size(1), src.size(1)))  # (layer, head)
    scores = methods(model, pairs, metric)
    exact = scores["exact edge patching"]
    graph = exact.graph
    with torch.no_grad():
        clean_m = float(metric(model(src, tgt)[0], next(pairs.batches(len(pairs)))).mean())
    print(f"reversal model ({args.out_dir}, iteration {ckpt.get('iter_num')}): {len(pairs)} pairs, source length "
          f"{src.size(1)}, {len(graph)} edges; clean metric {clean_m:.3f} (mean log-probability of the target)")
    print("\n| cross head | anti-diagonal share | " + " | ".join(
        f"{m}: rank of encoder-><k>, <v>; best edge out (rank)" for m in scores) + " |")
    print("|---|---|" + "---|" * len(scores))
    for layer in range(share.size(0)):
        for head in range(share.size(1)):
            edges = cross_edges(graph, layer, head)
            cells = []
            for s in scores.values():
                best_out = min(edges["out"], key=s.rank)
                cells.append(f"{s.rank(edges['k'])}, {s.rank(edges['v'])}; {best_out.split('->')[1]} ({s.rank(best_out)})")
            print(f"| x{layer}.h{head} | {float(share[layer, head]):.3f} | " + " | ".join(cells) + " |")
    heads = [(layer, head) for layer in range(share.size(0)) for head in range(share.size(1))]
    for name, s in scores.items():  # do the heads whose pattern is most anti-diagonal carry the strongest edges?
        by_head = {part: torch.tensor([s[cross_edges(graph, *lh)[part]] for lh in heads]) for part in "kv"}
        print(f"{name}: Spearman of the {len(heads)} cross heads' anti-diagonal share with |score| of encoder-><k> "
              f"{rank_correlation(share.flatten(), by_head['k']):.2f}, <v> {rank_correlation(share.flatten(), by_head['v']):.2f}")
    for name, s in scores.items():
        print(f"\n{name} (Spearman vs exact {rank_correlation(s.values, exact.values):.3f}), top 10: "
              + ", ".join(f"{e} ({s[e]:+.3f})" for e in s.top(10)))


if __name__ == "__main__":
    main(sys.argv[1:])
