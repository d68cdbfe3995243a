"""Building blocks shared by every model family: MLP and the pre-norm Transformer block."""

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import Attention, PastKeyValues, Score
from model.hooks import HookPoint
from weights.errors import IGNORE_INDEX

ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),  # exact (erf) GELU, as nanoGPT and BERT
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's approximation
}  # the modern recipe's relu2 and swiglu register here (model/activations.py)
NORMS = {
    "layernorm": lambda config: nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias),
    "rmsnorm": lambda config: nn.RMSNorm(config.n_embd, eps=config.norm_eps),  # x / rms(x) * g: no mean, no bias
}


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): logits bounded by +-cap, nearly unchanged well inside (0 disables)."""
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


class AuxiliaryLoss:
    """Mixin for a module whose training forward pass leaves a term to add to the model's loss.

    The families' loss (`auxiliary_losses`) asks every such module of the model whether it has a term
    (`has_auxiliary_loss`) and, if any has, hands each the model and each target's loss; the terms
    are added to the loss that forward returns, so a training step (or torch.compile) sees one loss.
    Hard attention's REINFORCE estimator uses it (model/hard_attention.py); the core knows no variant.
    A module may also ask the training step for each sequence `copies_per_sequence` times in a row.
    """

    copies_per_sequence = 1

    def has_auxiliary_loss(self) -> bool:
        """Whether the last forward pass left a term (then auxiliary_loss is called once, and forgets it)."""
        return False

    def auxiliary_loss(self, model: nn.Module, token_loss: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The term: `model` the whole model (where this module sits in it), token_loss (B, T) each target's loss
        (detached; 0 where not scored), real (B, T) whether a target is scored (the loss is their mean)."""
        raise NotImplementedError


def copies_per_sequence(model: nn.Module) -> int:
    """How many times in a row a training batch should hold each sequence: the most any AuxiliaryLoss asks."""
    return max((m.copies_per_sequence for m in model.modules() if isinstance(m, AuxiliaryLoss)), default=1)


def auxiliary_losses(model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | float:
    """The sum of the terms the model's AuxiliaryLoss modules left in this forward pass (0 when none did).

    logits (B, T, V) and targets (B, T) give each target's loss; targets equal to IGNORE_INDEX are not scored.
    """
    pending = [m for m in model.modules() if isinstance(m, AuxiliaryLoss) and m.has_auxiliary_loss()]
    if not pending:
        return 0.0
    token_loss = F.cross_entropy(logits.detach().flatten(0, 1).float(), targets.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)  # (B, T)
    return sum(m.auxiliary_loss(model, token_loss, targets != IGNORE_INDEX) for m in pending)


def make_norm(config) -> nn.Module:
    """The normalisation layer named by config.norm."""
    return NORMS[config.norm](config)


class MLP(nn.Module):
    """Position-wise feed-forward network: n_embd -> config.mlp_width (4 n_embd unless mlp_hidden is set)
    -> activation -> n_embd.

    A gated activation (SwiGLU) gets two hidden halves of that width; by default 2/3 of 4 n_embd
    (rounded up to a multiple of 8), which keeps the parameter count of the plain MLP.
    """

    def __init__(self, config):
        super().__init__()
        self.act = ACTIVATIONS[config.activation]()
        gated = getattr(self.act, "gated", False)
        hidden = config.mlp_width
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if gated else hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.post, self.out = HookPoint(), HookPoint()  # hidden activations (B, T, hidden); output (B, T, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.c_proj(self.post(self.act(self.c_fc(x))))))


class Block(nn.Module):
    """Self-attention, optional cross-attention over a source sequence, MLP; each a residual branch.

    Pre-norm (GPT-2): x + f(norm(x)). Post-norm (original Transformer, BERT): norm(x + f(x)).
    Parallel (GPT-NeoX, config.parallel_residual): the MLP reads the block's input, x + attn(ln_1(x)) + mlp(ln_2(x)).
    """

    def __init__(self, config, cross: bool = False):
        super().__init__()
        self.post_norm = config.post_norm
        self.parallel = getattr(config, "parallel_residual", False)
        self.ln_1 = make_norm(config)
        self.attn = Attention(config)
        if cross:
            self.ln_cross = make_norm(config)
            self.cross_attn = Attention(config, cross=True, score=getattr(config, "cross_attn_score", None),
                                        weighting=getattr(config, "cross_attn_weighting", None))
        self.attn_only = config.attn_only  # no MLP (Olsson et al. 2022's attention-only models)
        if not self.attn_only:
            self.ln_2 = make_norm(config)
            self.mlp = MLP(config)
        if config.zero_init:  # each residual branch starts as the identity
            for branch in (self.attn, getattr(self, "mlp", self.attn), getattr(self, "cross_attn", self.attn)):
                branch.c_proj.zero_init = True
        self.resid_pre, self.resid_mid, self.resid_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                source: torch.Tensor | None = None, source_mask: torch.Tensor | None = None,
                cache: PastKeyValues | None = None, cross_cache: PastKeyValues | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `mask`/`causal` shape self-attention; `source_mask` cross-attention;
        `positions` (B, T) are each row's rotary positions (left-padded batches)."""
        x = block_input = self.resid_pre(x)
        x = self.residual(x, self.ln_1, lambda h: self.attn(h, mask=mask, causal=causal, cache=cache,
                                                            positions=positions))
        x = self.resid_mid(x)
        if hasattr(self, "cross_attn"):
            x = self.residual(x, self.ln_cross,
                              lambda h: self.cross_attn(h, source=source, mask=source_mask, cache=cross_cache))
        if not self.attn_only:
            x = self.residual(x, self.ln_2, self.mlp, block_input if self.parallel else x)
        return self.resid_post(x)

    def residual(self, x: torch.Tensor, norm: nn.Module, branch, source: torch.Tensor | None = None) -> torch.Tensor:
        """One residual branch, its norm before (pre-norm) or after the addition (post-norm); the branch
        reads `source` instead of x when given (a pre-norm parallel block's MLP reads the block's input)."""
        if self.post_norm:
            return norm(x + branch(x))
        return x + branch(norm(x if source is None else source))


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) for weights and embeddings, zero biases, and residual
    projections (c_proj) scaled by 1/sqrt(2 n_layer) so the residual stream's variance stays put.
    Linear layers marked `zero_init` (config.zero_init) start at zero instead."""
    for name, p in module.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / (2 * n_layer) ** 0.5)
        elif name.endswith(".bias"):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            nn.init.normal_(p, mean=0.0, std=0.02)
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
        elif isinstance(m, Score) and hasattr(m, "reset_parameters"):
            m.reset_parameters()  # learned scores (general, additive) have their own scales
        if getattr(m, "zero_init", False):  # marked by Block (and heads) when config.zero_init
            nn.init.zeros_(m.weight)
