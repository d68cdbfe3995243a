"""Head detectors and the in-context-learning score during training (train.py --head_probe=True).

At every evaluation train.py adds to its metrics.jsonl record (and wandb):
- ``induction/L{l}H{h}``: each head's induction score on repeated random tokens (detect_head "mul"),
  and ``induction_max`` the largest;
- ``induction_text/L{l}H{h}`` and ``induction_text_max``: the same score on validation text followed by
  itself (the first half of each probe sequence, twice): the tokens the model has actually learnt;
- ``previous_token/L{l}H{h}`` and ``previous_token_max`` on a validation batch;
- ``icl_score``: the loss on late positions of a context minus the loss on early ones (Olsson et al.
  2022 take the 500th token minus the 50th; here the mean over the last 1/16 of the context minus
  the mean over positions [T/16, T/8)): it turns negative when the model uses its context.
"""

import torch
import torch.nn.functional as F

from lens.detectors import detect_head, induction_scores
from lens.cache import LensError
from weights.common import IGNORE_INDEX


def in_context_score(model, idx: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean loss over the last T/16 positions minus the mean over positions [T/16, T/8): (B, T) batches;
    targets equal to IGNORE_INDEX (-100) are left out of both means."""
    T = idx.size(1)
    if T < 16:
        raise LensError(f"the in-context score needs contexts of at least 16 tokens, got {T}.")
    logits, _ = model(idx)
    loss = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none",
                           ignore_index=IGNORE_INDEX)  # (B, T), 0 at ignored targets
    kept = (targets != IGNORE_INDEX).float()

    def mean(cols: slice) -> torch.Tensor:  # over the positions whose targets count
        return loss[:, cols].sum() / kept[:, cols].sum().clamp(min=1)

    return (mean(slice(T - T // 16, T)) - mean(slice(T // 16, T // 8))).item()


def head_scores(name: str, scores: torch.Tensor) -> dict[str, float]:
    """{name/L{l}H{h}: score, ..., name_max: the largest} from an (n_layer, n_head) table."""
    flat = {f"{name}/L{l}H{h}": round(scores[l, h].item(), 4)
            for l in range(scores.size(0)) for h in range(scores.size(1))}
    return {**flat, f"{name}_max": round(scores.max().item(), 4)}


def probe(model, batch: dict, seed: int = 0, n_sequences: int = 8) -> dict[str, float]:
    """Detector scores of every head and the in-context score, as flat metrics; a decoder-only (GPT) model."""
    if "idx" not in batch:
        raise LensError("head_probe works on decoder-only models (model_type=gpt); turn it off for this model.")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            idx, targets = batch["idx"][:n_sequences], batch["targets"][:n_sequences]
            record = head_scores("induction", induction_scores(model, batch=n_sequences, seed=seed))
            halves = idx[:, :model.config.block_size // 2]  # validation text, each followed by itself
            record.update(head_scores("induction_text", induction_scores(model, halves=halves)))
            record.update(head_scores("previous_token", detect_head(model, idx, "previous_token_head")))
            record["icl_score"] = round(in_context_score(model, idx, targets), 4)
    finally:
        model.train(was_training)
    return record
