"""REINFORCE for hard attention: who gets credit for which loss, the baselines, the surrogate.

A hard weighting trained by REINFORCE samples one key per query and head. The gradient of the expected
loss is E[sum_c (R_c - b_c) grad log p(choice c)], summed over the choices c of a batch, where R_c is
the part of the loss that choice c can change and b_c is any baseline that does not depend on choice c.
Both are what this module decides:

- **credit** (the reach of a choice): in a causal decoder a choice made at query position t can change
  the losses at positions t, t+1, ... only (`later`), and in the last layer that mixes positions only the
  loss at t (`own`); in a bidirectional stack, every loss of its sequence (`all`). The family tells each
  weighting its reach; `credit=sequence` ignores it and gives every choice its whole sequence's loss
  (Williams' plain estimator), `credit=query` uses it. Losses a choice cannot change only add noise.
  `credit=own` gives every choice its own target's loss only, in every layer: a discount of 0 in RL's
  terms, biased where a choice also moves later targets (a causal stack's layers below the last), but
  free of the noise of the later targets' own choices.
- **baseline** b_c, in loss per target token times the number of target tokens in reach:
  `moving_average` of past steps, `batch` (the other sequences of the batch at the same query
  position, leave-one-out), `samples` (the other samples of the same sequence: the batch holds each
  sequence `samples` times in a row, RLOO), `learned` (a small value head on the query's scores,
  trained by regression on the reward), or `none`.
- **normalize**: advantages divided by a running RMS of past steps' advantages (a positive constant
  within a step, so the direction of the estimate stays unbiased).
"""

import torch
import torch.nn.functional as F
from torch import nn

REACHES = ("all", "later", "own")
CREDITS = ("query", "own", "sequence")
BASELINES = ("batch", "moving_average", "samples", "learned", "none")


def rewards(token_loss: torch.Tensor, real: torch.Tensor, reach: str, n_queries: int):
    """(R, count) per query (B, Q): the summed target losses a choice at that query can change, and how many.

    token_loss, real (B, T): each target's loss (0 where not real) and whether it is scored.
    reach 'own': the target at the query's position (Q == T); 'later': that target and every later one;
    'all': every target of the sequence.
    """
    real = real.float()
    if reach == "all":
        total, count = token_loss.sum(1, keepdim=True), real.sum(1, keepdim=True)  # (B, 1)
        return total.expand(-1, n_queries), count.expand(-1, n_queries)
    if n_queries != token_loss.size(1):
        raise ValueError(f"credit per query needs a target per query; got {n_queries} queries, "
                         f"{token_loss.size(1)} targets.")
    if reach == "own":
        return token_loss, real
    # reach 'later': sums over positions t.. (reverse cumulative sums)
    return token_loss.flip(1).cumsum(1).flip(1), real.flip(1).cumsum(1).flip(1)


def leave_one_out(per_token: torch.Tensor, count: torch.Tensor, groups: int) -> torch.Tensor:
    """Baseline per query (B, Q): the count-weighted mean per-token reward of the other rows of its group.

    Rows come in `groups` consecutive groups... of B // groups rows each when groups > 1 is the number
    of groups; with groups == 1 the whole batch is one group. A row alone in its group gets 0.
    """
    B, Q = per_token.shape
    size = B // groups
    total = (per_token * count).view(groups, size, Q)
    counts = count.view(groups, size, Q)
    others = total.sum(1, keepdim=True) - total  # (groups, size, Q): the sums without the row itself
    other_counts = counts.sum(1, keepdim=True) - counts
    mean = torch.where(other_counts > 0, others / other_counts.clamp(min=1e-9), torch.zeros_like(others))
    return (mean * counts).view(B, Q)


class ValueHead(nn.Module):
    """Predicts a query's reward per target token from its heads' sorted choice probabilities (top_k each)."""

    def __init__(self, n_head: int, top_k: int = 4, hidden: int = 32):
        super().__init__()
        self.top_k = top_k
        self.net = nn.Sequential(nn.Linear(n_head * (top_k + 1), hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def features(self, log_p: torch.Tensor) -> torch.Tensor:
        """log_p (B, nh, Q, S) -> (B, Q, nh * (top_k + 1)): each head's top_k probabilities and entropy."""
        p = log_p.exp()
        k = min(self.top_k, p.size(-1))
        top = p.topk(k, dim=-1).values
        top = F.pad(top, (0, self.top_k - k))
        entropy = -(p * log_p.masked_fill(p == 0, 0.0)).sum(-1, keepdim=True)
        return torch.cat([top, entropy], -1).permute(0, 2, 1, 3).flatten(2).detach()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # (B, Q)


def reach_of(model: nn.Module, weighting: nn.Module) -> str:
    """What a choice of `weighting` can change in `model`: 'own', 'later' or 'all' (the safe answer).

    A causal stack (a GPT's blocks, an encoder-decoder's decoder blocks): a choice at query t reaches the
    targets t.. in every block but the last, and target t only in the last (after it, nothing mixes
    positions). The RNN decoder's attention (no input feeding) reaches its own target only.
    """
    if getattr(getattr(model, "decoder", None), "cross_attn", None) is not None:  # RNN encoder-decoder
        return "own" if model.decoder.cross_attn.weighting is weighting else "all"
    stack = model.decoder.blocks if hasattr(model, "decoder") else model.blocks if model.model_type == "gpt" else []
    for i, block in enumerate(stack):
        for attn in (block.attn, getattr(block, "cross_attn", None)):
            if attn is not None and attn.weighting is weighting:
                return "own" if i == len(stack) - 1 else "later"
    return "all"
