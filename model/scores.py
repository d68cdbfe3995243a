"""The scores with learned weights: Luong's general (bilinear) and Bahdanau's additive score.

Plug-ins kept out of the learner's files, as hard attention is (model/hard_attention.py): they register
themselves in model/attention.py's SCORES as "general" and "additive" (model/__init__.py imports this file),
so configs and checkpoints with attn_score=general or additive build them as before.
"""

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import SCORES, Score, register


@register(SCORES, "general")
class General(Score):
    """q^T W k with a learned (hs, hs) matrix W per head (Luong's general / bilinear score).

    q^T W k = (q^T W) . k, so W is folded into the queries and SDPA computes the rest (scale 1).
    W starts as I / sqrt(hs): the score begins as the scaled dot product and learns from there.
    """

    sdpa_scale = 1.0

    def __init__(self, n_head: int, head_dim: int):
        super().__init__(n_head, head_dim)
        self.weight = nn.Parameter(torch.empty(n_head, head_dim, head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W = I / sqrt(head_dim) in every head."""
        hs = self.weight.size(-1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(hs).expand_as(self.weight) / math.sqrt(hs))

    def prepare_q(self, q: torch.Tensor) -> torch.Tensor:
        return q @ self.weight.to(q.dtype)  # (B, nh, T, hs) @ (nh, hs, hs) -> (B, nh, T, hs)


@register(SCORES, "additive")
class Additive(Score):
    """v^T tanh(W_q q + W_k k) with a small learned network per head (Bahdanau's additive score).

    The tanh features of every (query, key) pair, (B, nh, T, S, hidden), would not fit in memory at
    block_size 256, so they are computed for `chunk_elements` at a time over the queries; in training
    each chunk is recomputed in the backward pass (activation checkpointing) instead of being stored.
    Only the (B, nh, T, S) scores stay, as for every other score. No SDPA path: it is not a dot product.
    """

    chunk_elements = 1 << 24  # tanh features per chunk: 64 MiB in float32

    def __init__(self, n_head: int, head_dim: int):
        super().__init__(n_head, head_dim)
        self.w_q = nn.Parameter(torch.empty(n_head, head_dim, head_dim))  # hidden size head_dim
        self.w_k = nn.Parameter(torch.empty(n_head, head_dim, head_dim))
        self.v = nn.Parameter(torch.empty(n_head, head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-like: the tanh inputs keep the queries' scale; v sums the hidden units to order-1 scores."""
        hs, hidden = self.w_q.shape[1:]
        nn.init.normal_(self.w_q, std=1.0 / math.sqrt(hs))
        nn.init.normal_(self.w_k, std=1.0 / math.sqrt(hs))
        nn.init.normal_(self.v, std=1.0 / math.sqrt(hidden))

    @staticmethod
    def pair_scores(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, nh, t, h) and (B, nh, S, h) -> v . tanh(a_t + b_s): (B, nh, t, S)."""
        features = torch.tanh(a.unsqueeze(3) + b.unsqueeze(2))  # (B, nh, t, S, h)
        return features @ v[None, :, None, :, None]  # ... (nh, 1, h, 1) -> (B, nh, t, S, 1)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        a = q @ self.w_q.to(q.dtype)  # (B, nh, T, h)
        b = k @ self.w_k.to(k.dtype)  # (B, nh, S, h)
        v = self.v.to(q.dtype)
        B, nh, T, h = a.shape
        S = b.size(2)
        step = max(1, self.chunk_elements // max(1, B * nh * S * h))  # queries per chunk
        recompute = torch.is_grad_enabled() and step < T
        chunks = []
        for start in range(0, T, step):
            a_chunk = a[:, :, start:start + step]
            if recompute:
                chunks.append(checkpoint(self.pair_scores, a_chunk, b, v, use_reentrant=False))
            else:
                chunks.append(self.pair_scores(a_chunk, b, v))
        return torch.cat(chunks, dim=2).squeeze(-1)  # (B, nh, T, S)
