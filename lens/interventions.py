"""Interventions on attention heads, as hook lists for ``model.hooks(...)`` or ``run_with_cache(fwd_hooks=...)``.

    with model.hooks(ablate_heads([(1, 2), (0, 3)])):          # zero heads 1.2 and 0.3
        logits, _ = model(idx)
    with model.hooks(replace_pattern((0, 1), torch.eye(T))):   # head 0.1 attends to itself only
        ...

A head is (attention module, head index): ``(1, 2)`` is head 2 of ``blocks.1.attn``; any other
attention module is named in full, e.g. ``("decoder.blocks.0.cross_attn", 2)``. Ablating and
scaling act on the head's output ``z`` (before the output projection), so they keep the fast path;
replacing a pattern hooks ``pattern`` and makes that one layer compute its weights explicitly.
"""

import re

import torch

from model.attention import Attention
from model.config import ConfigError

Head = tuple[int | str, int]


def attn_name(layer: int | str) -> str:
    """An attention module's name: an int is a decoder/encoder-only block's self-attention."""
    return f"blocks.{layer}.attn" if isinstance(layer, int) else layer


def by_module(heads) -> dict[str, list[int]]:
    """Group heads by attention module name: {"blocks.1.attn": [0, 2], ...}."""
    grouped = {}
    for layer, head in heads:
        if isinstance(head, bool) or not isinstance(head, int) or head < 0:
            raise ConfigError(f"head {head!r} of {attn_name(layer)}: heads are whole numbers from 0 "
                              "(write (layer, head) pairs such as (1, 2)).")
        grouped.setdefault(attn_name(layer), []).append(head)
    return grouped


def check_heads(name: str, idx: list[int], n_head: int) -> None:
    """A ConfigError unless every head index is one of the module's n_head heads."""
    missing = [h for h in idx if h >= n_head]
    if missing:
        raise ConfigError(f"head {missing[0]} of {name} does not exist: it has heads 0..{n_head - 1}.")


def parse_heads(spec: str, model) -> list[tuple[str, int]]:
    """Parse "1.2,0.3" (LAYER.HEAD) or "decoder.blocks.0.cross_attn.2" (MODULE.HEAD) and check them."""
    modules = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
    heads = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        where, _, head = item.rpartition(".")
        name = attn_name(int(where)) if where.isdecimal() else where
        if where.isdecimal() and head.isdecimal() and name not in modules:
            layers = sorted({int(n.split(".")[1]) for n in modules if re.fullmatch(r"blocks\.\d+\.attn", n)})
            raise ConfigError(f"head {item!r}: there is no layer {where}; the layers are "
                              f"{f'0..{layers[-1]}' if layers else 'named in full (e.g. encoder.blocks.0.attn.1)'}.")
        if name not in modules or not head.isdecimal():
            examples = ", ".join(f"{n}.0" for n in list(modules)[:2])
            raise ConfigError(f"cannot read head {item!r}; write LAYER.HEAD such as 0.1 (or a full name such as "
                              f"{examples}), several separated by commas.")
        if int(head) >= modules[name].n_head:
            raise ConfigError(f"head {item!r} does not exist: {name} has heads 0..{modules[name].n_head - 1}.")
        heads.append((name, int(head)))
    if not heads:
        raise ConfigError("no heads given; write LAYER.HEAD such as 0.1, several separated by commas.")
    return heads


def check_means(means: dict[str, torch.Tensor], name: str, z: torch.Tensor) -> None:
    """A ConfigError unless means[name] is (n_head, head_dim) for this z (B, nh, T, hs)."""
    want = (z.size(1), z.size(3))
    if name not in means or tuple(means[name].shape) != want:
        raise ConfigError(f"the means hold no {want} (n_head, head_dim) entry for {name}; compute them with "
                          "head_means(model, ..., heads=heads) for the heads you ablate.")


def head_means(model, *args, heads, position_mask: torch.Tensor | None = None, **kwargs) -> dict[str, torch.Tensor]:
    """Mean output z (n_head, head_dim) of each attention module in `heads`, over every batch row and
    position of the inputs args/kwargs: the reference values for mean ablation.

    position_mask (B, T), True where a position counts, leaves others out of the mean: pass BERT's
    attention_mask (or a decoder's target mask) so that padding does not pull the means.
    """
    names = [f"{name}.z" for name in by_module(heads)]
    with torch.no_grad():
        _, cache = model.run_with_cache(*args, names_filter=names, **kwargs)
    if position_mask is None:
        return {name[:-2]: cache[name].mean(dim=(0, 2)) for name in names}  # (B, nh, T, hs) -> (nh, hs)
    means = {}
    for name in names:
        z = cache[name]
        if position_mask.shape != (z.size(0), z.size(2)):
            raise ValueError(f"position_mask has shape {tuple(position_mask.shape)}; {name} has "
                             f"{z.size(0)} rows of {z.size(2)} positions.")
        keep = position_mask.to(device=z.device, dtype=torch.bool)[:, None, :, None]  # (B, 1, T, 1)
        if not keep.any():
            raise ValueError("position_mask selects no position; mark at least one as True.")
        means[name[:-2]] = (z * keep).sum(dim=(0, 2)) / keep.sum(dim=(0, 2))
    return means


def ablate_heads(heads, mode: str = "zero", means: dict[str, torch.Tensor] | None = None) -> list:
    """Hooks that knock heads out: their output z becomes zero, or its mean.

    mode "mean" uses `means` (from head_means, e.g. over a reference batch) or, without it, the
    mean over the current batch and positions (a one-token decoding step then changes nothing:
    pass means for generation).
    """
    if mode not in ("zero", "mean"):
        raise ConfigError(f"ablation mode must be 'zero' or 'mean', got {mode!r}.")

    def make(name: str, idx: list[int]):
        def hook(z: torch.Tensor, hook_name: str) -> torch.Tensor:
            check_heads(name, idx, z.size(1))
            if mode == "mean" and means is not None:
                check_means(means, name, z)
            z = z.clone()  # (B, nh, T, hs)
            if mode == "zero":
                z[:, idx] = 0.0
            elif means is not None:
                z[:, idx] = means[name][idx][None, :, None, :].to(z)
            else:
                z[:, idx] = z[:, idx].mean(dim=(0, 2), keepdim=True)
            return z
        return hook

    return [(f"{name}.z", make(name, idx)) for name, idx in by_module(heads).items()]


def scale_heads(heads, factor: float) -> list:
    """Hooks that multiply the output z of each head by `factor` (0 ablates, 2 amplifies)."""

    def make(name: str, idx: list[int]):
        def hook(z: torch.Tensor, hook_name: str) -> torch.Tensor:
            check_heads(name, idx, z.size(1))
            z = z.clone()
            z[:, idx] = z[:, idx] * factor
            return z
        return hook

    return [(f"{name}.z", make(name, idx)) for name, idx in by_module(heads).items()]


def replace_pattern(head: Head, pattern: torch.Tensor) -> list:
    """Hooks that make one head use `pattern` ((T, S), or (B, T, S) per batch row) as its weights."""
    (name, [idx]), = by_module([head]).items()

    def hook(weights: torch.Tensor, hook_name: str) -> torch.Tensor:
        B, nh, T, S = weights.shape
        check_heads(name, [idx], nh)
        rows = len(pattern) if pattern.dim() == 3 else 1
        if pattern.shape[-2:] != (T, S) or pattern.dim() not in (2, 3) or rows not in (1, B):
            raise ValueError(f"{hook_name} head {idx} has a ({T}, {S}) pattern here for {B} batch rows; the "
                             f"replacement is {tuple(pattern.shape)}; give (T, S) or ({B}, T, S).")
        weights = weights.clone()
        weights[:, idx] = pattern.to(weights)
        return weights

    return [(f"{name}.pattern", hook)]
