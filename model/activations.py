"""The activations of the modern recipe: relu2 (ReLU squared) and swiglu (SwiGLU, Llama's gated unit).

Plug-ins kept out of the learner's files, as the learned scores are (model/scores.py): they register themselves
in model/layers.py's ACTIVATIONS as "relu2" and "swiglu" (model/__init__.py imports this file), so configs and
checkpoints with activation=relu2 or swiglu build them as before. A gated activation says so (`gated = True`):
the MLP's c_fc then makes both halves it multiplies.
"""

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import ACTIVATIONS


class ReLUSquared(nn.Module):
    """relu(x)^2 (So et al., 2021, "Primer"): as cheap as ReLU, trains faster than GELU in small models."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """Gated unit silu(a) * b (Shazeer, 2020) over the two halves [a, b] of a doubled hidden layer."""

    gated = True  # the MLP's c_fc produces both halves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


ACTIVATIONS["relu2"] = ReLUSquared
ACTIVATIONS["swiglu"] = SwiGLU

__all__ = ["ReLUSquared", "SwiGLU"]
