"""Hook points: identity modules named after the tensor they carry (e.g. ``blocks.0.attn.pattern``)."""

import torch
from torch import nn


class HookPoint(nn.Module):
    """Passes its input through unchanged; forward hooks registered on it can read or replace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True when a forward hook is attached (attention then computes its weights explicitly)."""
        return bool(self._forward_hooks)
