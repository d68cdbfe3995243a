"""The induction circuit of an induction run, read from its weights: K-composition of every layer-0 head into
every layer-1 head, and each head's OV copying score, beside the heads' behaviour on validation text.

    python train.py config/induction_shakespeare_repeats.py
    python benchmarks/induction_composition.py out-induction-repeats       # --data_dir=data/shakespeare_repeats

The weights are read in TransformerLens' folded basis (lens/folding.py fold_weights: the norms' gains in
the weights, writing weights and unembedding centred). The previous-token head (layer 0) and the
induction head (layer 1) are picked by their detector scores on validation text followed by itself;
docs/induction_heads.md records the result.

The OV copying score is printed for three embeddings E in E W_V W_O W_U (TransformerLens' and Elhage et
al.'s score is sum(eig) / sum(|eig|) with E = W_E): W_E itself; the "virtual" embedding a layer-1 head
reads when every layer-0 head attends to the token itself (W_E + sum_h ln_1(W_E) W_OV[0, h] + b_O, through
layer 1's ln_1; weights only); and the effective embedding measured on validation text (each token's mean
ln_1 input of layer 1). Beside each: the fraction of tokens whose own logit is the largest in their row.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository, not benchmarks/

from data.tokens import load_tokens  # noqa: E402
from lens import detectors  # noqa: E402
from lens.folding import fold_weights  # noqa: E402
from lens.weight_space import WeightSpace  # noqa: E402
from training.families import model_from_checkpoint  # noqa: E402
from weights.checkpoint import load_checkpoint  # noqa: E402


def text_scores(model, val: torch.Tensor, sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous-token scores, induction scores), (layer, head), on validation text followed by itself."""
    half = model.config.block_size // 2
    starts = torch.randint(0, len(val) - half, (sequences,), generator=torch.Generator().manual_seed(0))
    halves = torch.stack([val[i:i + half] for i in starts])
    previous = detectors.detect_head(model, halves, "previous_token_head")
    return previous, detectors.induction_scores(model, halves=halves)


def embeddings(model, ws: WeightSpace, val: torch.Tensor, sequences: int) -> dict:
    """name -> (embedding (n, d_model), tokens (n,) or None): what a layer-1 head's values read per token."""
    ln_0, ln_1 = model.blocks[0].ln_1, model.blocks[1].ln_1
    virtual = ws.W_E + sum(ln_0(ws.W_E) @ ws.W_V[0, h] @ ws.W_O[0, h] for h in range(ws.W_V.size(1))) + ws.b_O[0]
    starts = torch.randint(0, len(val) - model.config.block_size, (4 * sequences,),
                           generator=torch.Generator().manual_seed(1))
    text = torch.stack([val[i:i + model.config.block_size] for i in starts])  # (N, T)
    _, cache = model.run_with_cache(text, names_filter="blocks.1.resid_pre")
    read = ln_1(cache["blocks.1.resid_pre"]).flatten(0, 1)  # (N T, d_model)
    sums = torch.zeros(ws.W_E.shape).index_add_(0, text.flatten(), read)
    counts = torch.bincount(text.flatten(), minlength=ws.W_E.size(0))
    seen = torch.nonzero(counts).flatten()
    return {"W_E (TransformerLens' definition)": (ws.W_E, None),
            "virtual: ln_1(W_E + layer 0 attending to the token)": (ln_1(virtual), None),
            f"effective: mean ln_1 input on text ({len(seen)} tokens seen)": (sums[seen] / counts[seen, None], seen)}


def print_copying(ws: WeightSpace, tables: dict) -> None:
    """Each embedding's copying score and top-1 fraction of every layer-1 head."""
    heads = ws.W_V.size(1)
    print("\nOV copying of the layer-1 heads, folded weights: score sum(eig)/sum(|eig|) of E W_V W_O W_U; "
          "top-1: tokens whose own logit is the largest in their row")
    print("| E | " + " | ".join(f"L1H{h} score | L1H{h} top-1" for h in range(heads)) + " |")
    print("|---" * (2 * heads + 1) + "|")
    for name, (embedding, tokens) in tables.items():
        score, top1 = ws.copying_scores(embedding, tokens)[1], ws.copying_top1(embedding, tokens)[1]
        print(f"| {name} | " + " | ".join(f"{s:+.3f} | {t:.3f}" for s, t in zip(score.tolist(), top1.tolist())) + " |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="a run folder of a 2-layer GPT trained on data/shakespeare_repeats")
    parser.add_argument("--data_dir", default="data/shakespeare_repeats")
    parser.add_argument("--sequences", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    checkpoint = load_checkpoint(args.out_dir)
    model = model_from_checkpoint(checkpoint).eval()
    if model.config.n_layer != 2:
        sys.exit(f"error: this reads a 2-layer model's layer-0 x layer-1 composition; {args.out_dir} has "
                 f"{model.config.n_layer} layers.")
    val = torch.from_numpy(load_tokens(os.path.join(args.data_dir, "val.bin")).astype(np.int64))
    previous, induction = text_scores(model, val, args.sequences)
    folded = fold_weights(model)
    ws = WeightSpace(folded)
    k_comp = ws.all_composition_scores("K")[0, :, 1, :]  # (layer-0 head, layer-1 head)
    copying = ws.copying_scores()
    prev_head, ind_head = int(previous[0].argmax()), int(induction[1].argmax())
    print(f"{args.out_dir}: iteration {checkpoint.get('iter_num', '?')}, "
          f"val loss {checkpoint.get('best_val_loss', float('nan')):.3f}")
    print(f"previous-token head (layer 0, by score): L0H{prev_head} ({previous[0, prev_head]:.3f}); "
          f"induction head (layer 1): L1H{ind_head} ({induction[1, ind_head]:.3f})")
    print("\nK-composition, layer-0 head (rows) into layer-1 head (columns), folded weights:")
    print("| | " + " | ".join(f"L1H{h}" for h in range(k_comp.size(1))) + " | prev-token score |")
    print("|---" * (k_comp.size(1) + 2) + "|")
    for h0 in range(k_comp.size(0)):
        print(f"| L0H{h0} | " + " | ".join(f"{v:.3f}" for v in k_comp[h0].tolist()) + f" | {previous[0, h0]:.3f} |")
    print("| induction score | " + " | ".join(f"{v:.3f}" for v in induction[1].tolist()) + " | |")
    top = divmod(int(k_comp.argmax()), k_comp.size(1))
    print(f"\nhighest K-composition: L0H{top[0]} -> L1H{top[1]} ({k_comp.max():.3f}); "
          f"the detectors' pair: L0H{prev_head} -> L1H{ind_head} ({k_comp[prev_head, ind_head]:.3f})")
    print("\nOV copying score sum(eig)/sum(|eig|) of W_E W_V W_O W_U, folded weights:")
    print("| layer | " + " | ".join(f"H{h}" for h in range(copying.size(1))) + " |")
    print("|---" * (copying.size(1) + 1) + "|")
    for layer in range(copying.size(0)):
        print(f"| {layer} | " + " | ".join(f"{v:+.3f}" for v in copying[layer].tolist()) + " |")
    print_copying(ws, embeddings(folded, ws, val, args.sequences))


if __name__ == "__main__":
    main(sys.argv[1:])
