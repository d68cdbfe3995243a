"""Building blocks shared by every model family: MLP and the pre-norm Transformer block."""

import torch
from torch import nn

from model.attention import Attention, KVCache
from model.hooks import HookPoint


class MLP(nn.Module):
    """Position-wise feed-forward network: n_embd -> 4 n_embd -> GELU -> n_embd."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention over a source sequence, MLP."""

    def __init__(self, config, cross: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = Attention(config)
        if cross:
            self.ln_cross = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.cross_attn = Attention(config, cross=True, score=getattr(config, "cross_attn_score", None),
                                        weighting=getattr(config, "cross_attn_weighting", None))
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        self.resid_pre, self.resid_mid, self.resid_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                source: torch.Tensor | None = None, source_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, cross_cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `mask`/`causal` shape self-attention; `source_mask` cross-attention."""
        x = self.resid_pre(x)
        x = x + self.attn(self.ln_1(x), mask=mask, causal=causal, cache=cache)
        x = self.resid_mid(x)
        if hasattr(self, "cross_attn"):
            x = x + self.cross_attn(self.ln_cross(x), source=source, mask=source_mask, cache=cross_cache)
        x = x + self.mlp(self.ln_2(x))
        return self.resid_post(x)


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) for weights and embeddings, zero biases, and residual
    projections (c_proj) scaled by 1/sqrt(2 n_layer) so the residual stream's variance stays put."""
    for name, p in module.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / (2 * n_layer) ** 0.5)
        elif name.endswith(".bias"):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            nn.init.normal_(p, mean=0.0, std=0.02)
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
