"""Muon: momentum SGD whose update for each weight matrix is orthogonalised (Jordan et al., 2024).

For a matrix W with momentum M = U S V^T, Muon steps along U V^T: every singular direction of the
update moves by the same amount, so the few directions that dominate a raw gradient no longer drown
the rest. U V^T is approximated by a few Newton-Schulz iterations (matrix products only, no SVD).
Muon is meant for the hidden matrices of the Transformer blocks; embeddings, the LM head, norm
gains and biases keep AdamW (`make_muon_adamw`).
"""

import torch

from model.layers import Block

# quintic Newton-Schulz coefficients from Keller Jordan's Muon write-up: they push every singular value
# in (0, 1] into roughly [0.7, 1.2] within 5 steps (faster than converging exactly to 1)
NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel, Persson, Musco and Gower, 2025, arXiv 2505.16932): a different quintic at each step,
# each the best for the interval of singular values the steps before it leave; these are the paper's method's
# values for 5 steps with its safety factor 1.02 (G is divided by 1.02 ||G||_F first), as modded-nanogpt uses
POLAR_EXPRESS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                 (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                 (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                 (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                 (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))
ORTHOGONALIZERS = ("newton_schulz", "polar_express")


def orthogonalize(G: torch.Tensor, steps: int = 5, eps: float = 1e-7, method: str = "newton_schulz",
                  bf16: bool = False) -> torch.Tensor:
    """Approximate U V^T for G = U S V^T (a matrix, or a batch of them) by `steps` quintic iterations.

    Each step maps X -> a X + b (X X^T) X + c (X X^T)^2 X, i.e. each singular value s to
    a s + b s^3 + c s^5 with the singular vectors unchanged; X starts as G / ||G||_F so that s <= 1.
    method 'newton_schulz' repeats NS_COEFFS; 'polar_express' takes POLAR_EXPRESS's first `steps` quintics.
    The products run in bfloat16 on CUDA, and on the CPU with `bf16` (faster where it has AMX or avx512_bf16).
    """
    if method == "polar_express":
        if steps > len(POLAR_EXPRESS):
            raise ValueError(f"Polar Express has coefficients for {len(POLAR_EXPRESS)} steps, not {steps}.")
        coefficients, scale = POLAR_EXPRESS[:steps], 1.02
    else:
        coefficients, scale = [NS_COEFFS] * steps, 1.0
    X = G.to(torch.bfloat16 if G.is_cuda or bf16 else torch.float32)  # many CPUs have no fast bfloat16 matmul
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the short side: X X^T is then the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * scale + eps)
    for a, b, c in coefficients:
        A = X @ X.mT  # (m, m)
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if transposed else X).to(G.dtype)


def normalize_neurons(update: torch.Tensor, second_moment: torch.Tensor, beta2: float) -> torch.Tensor:
    """NorMuon (Li et al., 2025): divide each neuron's share of an orthogonalised update
    (B, m, n) by the root of a running mean of its squares, then restore the update's Frobenius norm.

    A neuron is a row of the longer side (rows when m >= n); `second_moment` (B, m, 1) or (B, 1, n) holds the
    running means and is updated in place. The orthogonalised update gives every singular direction the same
    size but not every neuron; this evens out the neurons too.
    """
    dim = -1 if update.size(-2) >= update.size(-1) else -2
    second_moment.lerp_(update.square().mean(dim=dim, keepdim=True), 1 - beta2)
    scaled = update * second_moment.clamp_min(1e-10).rsqrt()
    norms = update.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
    return scaled * norms


class Muon(torch.optim.Optimizer):
    """Orthogonalised momentum for 2-D parameters: W <- W - lr * sqrt(max(1, rows/cols)) * NS(momentum).

    The sqrt(rows/cols) factor gives tall and wide matrices the same per-entry update size. Weight
    decay is decoupled (W <- W (1 - lr wd)), as in AdamW. Options of the speedrun line: `method`
    'polar_express' and `bf16` products on the CPU (orthogonalize), `normuon` (normalize_neurons with that
    beta2; 0: off).
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0, method: str = "newton_schulz", normuon: float = 0.0,
                 bf16: bool = False):
        if lr <= 0 or not 0.0 <= momentum < 1.0 or ns_steps < 1 or weight_decay < 0 or not 0 <= normuon < 1 \
                or method not in ORTHOGONALIZERS:
            raise ValueError("Muon needs lr > 0, momentum in [0, 1), ns_steps >= 1, weight_decay >= 0, normuon in "
                             f"[0, 1) and a method in {ORTHOGONALIZERS}.")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay, method=method, normuon=normuon, bf16=bf16))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon updates matrices only; got a parameter of shape {tuple(p.shape)} "
                                     "(give embeddings, norms and biases to AdamW).")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            buckets: dict[tuple, list] = {}  # matrices of one shape are orthogonalised together, as a batch
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(p.grad)
                direction = p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                buckets.setdefault((p.shape, p.dtype, p.device), []).append((p, direction))
            for pairs in buckets.values():
                self.update(group, pairs)
        return loss

    def update(self, group: dict, pairs: list) -> None:
        """Step the parameters of one shape: orthogonalise their directions as a batch (then NorMuon's scaling)."""
        lr = group["lr"]
        updates = orthogonalize(torch.stack([d for _, d in pairs]), group["ns_steps"], method=group["method"],
                                bf16=group["bf16"])
        if group["normuon"] > 0:
            moments = [self.state[p].setdefault("second_moment", neuron_moments(p)) for p, _ in pairs]
            stacked = torch.stack(moments)
            updates = normalize_neurons(updates, stacked, group["normuon"])
            for moment, new in zip(moments, stacked):
                moment.copy_(new)
        for (p, _), update in zip(pairs, updates):
            if group["weight_decay"] > 0:
                p.mul_(1.0 - lr * group["weight_decay"])
            p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def neuron_moments(p: torch.Tensor) -> torch.Tensor:
    """NorMuon's running mean of squares, one per neuron of matrix p: (m, 1) when m >= n, else (1, n)."""
    m, n = p.shape
    return p.new_zeros(m, 1) if m >= n else p.new_zeros(1, n)


class Optimizers:
    """Several optimizers stepped as one (what train.py and GradScaler need: param_groups, step, state)."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        """Every group of every optimizer (the dicts themselves: setting a group's lr sets it)."""
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self, closure=None):
        """Step each optimizer."""
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of all parameters."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """One state dict per optimizer, under its name."""
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned; the optimizer names must match."""
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}.")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def block_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D parameters inside Transformer blocks (attention and MLP weights): what Muon trains."""
    seen, out = set(), []
    for module in model.modules():
        if isinstance(module, Block):
            for p in module.parameters():
                if p.dim() == 2 and p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def make_muon_adamw(model: torch.nn.Module, muon_lr: float, adamw_lr: float, betas: tuple[float, float],
                    weight_decay: float, muon_momentum: float = 0.95, muon_weight_decay: float = 0.0,
                    fused: bool = False, **muon_options) -> Optimizers:
    """Muon for block matrices; AdamW for the rest (embeddings and head with weight decay, 1-D without).
    `muon_options` go to Muon (method, bf16, normuon).

    Each group carries `lr_scale`, its peak learning rate over adamw_lr, for train.py's schedule.
    """
    matrices = block_matrices(model)
    ids = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    adamw = torch.optim.AdamW(
        [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": 1.0},
         {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0}],
        lr=adamw_lr, betas=betas, fused=fused)
    muon = Muon([{"params": matrices, "lr_scale": muon_lr / adamw_lr}], lr=muon_lr, momentum=muon_momentum,
                weight_decay=muon_weight_decay, **muon_options)
    return Optimizers(adamw=adamw, muon=muon)
