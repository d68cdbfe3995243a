"""Rotary position embeddings (RoPE; Su et al., 2021, "RoFormer").

Each pair of features (i, i + hs/2) of a query or key at position m is rotated by the angle
m * base^(-2i/hs). A rotated query at m and key at n then have a dot product that depends on the
positions only through m - n: attention sees relative positions, and no position embedding is added
to the tokens. Built for fewer features than a head has, it rotates the head's first ones only (GPT-NeoX). Keys are rotated once, before they enter the KV cache, at their absolute position.
"""

import torch
from torch import nn


class Rotary(nn.Module):
    """Rotates the features of (B, nh, T, hs) queries or keys by position-dependent angles."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        self.dim = head_dim  # features rotated; a wider head passes the rest unchanged (partial rotary)
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hs/2,)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, hs/2)
        # tables, not parameters: not in the state dict, so checkpoints are the same with or without rope
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, nh, T, hs) at positions offset .. offset + T - 1 -> rotated x, same shape and dtype.

        `positions` (B, T), when given, are each row's own positions (left-padded batches); the
        caller keeps them below max_len.
        """
        if x.size(-1) > self.dim:  # partial rotary (GPT-NeoX): the first dim features turn, the rest pass
            return torch.cat([self(x[..., :self.dim], offset, positions), x[..., self.dim:]], dim=-1)
        T = x.size(-2)
        if positions is not None:
            cos = self.cos[positions].to(x.dtype)[:, None]  # (B, 1, T, hs/2), broadcast over heads
            sin = self.sin[positions].to(x.dtype)[:, None]
            x1, x2 = x.chunk(2, dim=-1)
            return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        if offset + T > self.cos.size(0):
            raise ValueError(f"rotary positions go up to {self.cos.size(0) - 1}; position {offset + T - 1} "
                             "was asked for (crop the sequence or train with a larger block_size).")
        cos = self.cos[offset:offset + T].to(x.dtype)  # (T, hs/2), broadcast over batch and heads
        sin = self.sin[offset:offset + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
