"""Hook points: identity modules named after the tensor they carry (e.g. ``blocks.0.attn.pattern``).

Any model that contains HookPoints and inherits `HookedModel` can be looked into and changed:

    (logits, loss), cache = model.run_with_cache(idx, names_filter="*.attn.pattern")   # (B, nh, T, S) each
    with model.hooks(fwd_hooks=[("blocks.1.attn.z", fn)]):                      # fn(tensor, name)
        logits, _ = model(idx)

A hook function gets the tensor and the hook point's name; returning a tensor replaces the value
that flows on, returning None leaves it alone. Hooks on ``scores`` or ``pattern`` make that one
attention layer compute its weights explicitly; every other layer keeps the fused SDPA path.

TransformerLens' hooks run too: the name a hook gets is a `HookName`, a str with TransformerLens'
``.name``, ``.layer()`` and ``.ctx`` (a dict kept per hook point), and TransformerLens' names
(``blocks.0.attn.hook_z``, ``blocks.0.hook_resid_pre``, ...) are aliases of ours wherever a name is
accepted. A hook attached by such a name sees q, k, v, z and result in TransformerLens' layout,
(B, T, n_head, d_head); by our name, in ours, (B, n_head, T, d_head). So for the position embeddings:
``hook_pos_embed`` sees (B, T, C), a broadcast view of ours (``pos_embed``: (T, C), one row per position).
`bwd_hooks` get the gradient flowing back into the hook point (and may return a replacement).
"""

import fnmatch
import re
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

from weights.errors import HookNameError

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]
NameFilter = str | Iterable[str] | Callable[[str], bool] | None


# (our hook name's ending, TransformerLens' ending): "blocks.0.attn.z" is also "blocks.0.attn.hook_z"
TL_NAMES = (("embed", "hook_embed"), ("pos_embed", "hook_pos_embed"), ("resid_pre", "hook_resid_pre"),
            ("resid_mid", "hook_resid_mid"), ("resid_post", "hook_resid_post"), ("attn.out", "hook_attn_out"),
            ("mlp.out", "hook_mlp_out"), ("attn.q", "attn.hook_q"), ("attn.k", "attn.hook_k"),
            ("attn.v", "attn.hook_v"), ("attn.z", "attn.hook_z"), ("attn.result", "attn.hook_result"),
            ("attn.scores", "attn.hook_attn_scores"), ("attn.pattern", "attn.hook_pattern"),
            ("mlp.post", "mlp.hook_post"))
OPT_IN = ".attn.result"  # left out of names_filter=None
HEAD_FIRST = ("attn.q", "attn.k", "attn.v", "attn.z", "attn.result")  # (B, nh, T, .) here, (B, T, nh, .) in TL
POS_EMBED = "pos_embed"  # (T, C) here (one row per position), (B, T, C) in TL


def swap_ending(name: str, old: str, new: str) -> str | None:
    """name with its ending `old` (a whole dotted part) replaced by `new`; None if it does not end so."""
    if name == old:
        return new
    return name[:-len(old)] + new if name.endswith("." + old) else None


def ours_from_tl(name: str) -> str | None:
    """Our hook name (or glob) for a TransformerLens one; None when it is not TransformerLens'."""
    for ours, tl in TL_NAMES:
        found = swap_ending(name, tl, ours)
        if found is not None:
            return found
    return None


def tl_from_ours(name: str) -> str | None:
    """TransformerLens' name for one of ours; None when it has none."""
    for ours, tl in TL_NAMES:
        found = swap_ending(name, ours, tl)
        if found is not None:
            return found
    return None


class HookName(str):
    """A hook point's name as a hook function gets it: a str, plus TransformerLens' hook attributes."""

    def __new__(cls, name: str, ctx: dict, head_first: bool = False):
        hook = super().__new__(cls, name)
        hook.ctx, hook.head_first = ctx, head_first  # ctx: kept by the hook point until reset_hooks()
        return hook

    @property
    def name(self) -> str:
        return str(self)

    def layer(self) -> int:
        """The block number in the name; a HookNameError for a hook outside the blocks."""
        found = re.search(r"blocks\.(\d+)\.", self)
        if not found:
            raise HookNameError(f"{self} is not inside a block: it has no layer.")
        return int(found.group(1))


class HookPoint(nn.Module):
    """Passes its input through unchanged; forward hooks registered on it can read or replace it."""

    def __init__(self):
        super().__init__()
        self.ctx = {}  # TransformerLens' hook.ctx: anything a hook function keeps between calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True when a forward hook is attached (attention then computes its weights explicitly)."""
        return bool(self._forward_hooks)


class HookedModel:
    """Mixin for an nn.Module holding HookPoints: named hooks, capture, hook_names (run_with_cache and the
    other analysis methods are added from lens/methods.py: docs/architecture.md)."""

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point of the model by its module-tree name, e.g. ``blocks.0.attn.pattern``."""
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def hook_names(self) -> list[str]:
        """The names that hooks(), run_with_cache() and the interventions accept."""
        return list(self.hook_points())

    def match_hooks(self, names_filter: NameFilter) -> list[str]:
        """Names selected by a filter: None (all but the per-head results), a name or glob (``*.attn.pattern``), a list of
        those, or a predicate on the name; TransformerLens' names are aliases (``*.attn.hook_pattern``).
        An exact name or a glob that selects nothing is an error."""
        return [name for name, _ in self.select_hooks(names_filter)]

    def resolve_hook(self, name: str) -> tuple[str, bool]:
        """(our name, whether its value is seen in TransformerLens' (B, T, n_head, .) layout) of one exact hook name."""
        ours = ours_from_tl(name) if "hook_" in name else None
        if (ours or name) not in self.hook_points():
            raise HookNameError(f"{name!r} is not a hook point of this model (see model.hook_names()).")
        return ours or name, ours is not None and any(ours.endswith("." + ending) for ending in HEAD_FIRST)

    def select_hooks(self, names_filter: NameFilter) -> list[tuple[str, bool]]:
        """match_hooks' names, each with whether it was named in TransformerLens' form (its layout then applies)."""
        names = self.hook_names()
        if names_filter is None:  # per-head results cost a (B, nh, T, C) tensor per layer: only when named
            return [(n, False) for n in names if not n.endswith(OPT_IN)]
        if callable(names_filter):  # a TransformerLens predicate reads TransformerLens' names
            tl = {n: tl_from_ours(n) for n in names}
            return [(n, not names_filter(n)) for n in names if names_filter(n) or (tl[n] and names_filter(tl[n]))]
        if not isinstance(names_filter, (str, Iterable)):
            raise TypeError(f"names_filter must be a hook name or glob, a list of them, a predicate on the name or "
                            f"None (every hook point); got {type(names_filter).__name__}.")
        patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        selected = {}
        for pattern in patterns:
            ours = ours_from_tl(pattern) if "hook_" in pattern else None
            found = [n for n in names if fnmatch.fnmatchcase(n, ours or pattern)]
            if not found:
                examples = ", ".join(names[:3] + names[-2:]) if names else "none"
                raise HookNameError(f"no hook point matches {pattern!r}; names look like {examples} "
                                    "(see model.hook_names(); TransformerLens' names such as blocks.0.attn.hook_z work too).")
            selected.update({n: ours is not None for n in found if n not in selected})
        return list(selected.items())

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), bwd_hooks: Iterable[tuple[NameFilter, HookFn]] = ()):
        """Attach (name or filter, fn) hooks for the duration of a `with` block; always removed after it.
        Backward hooks are attached to the values computed inside the block and fire when they are differentiated."""
        handles = []
        try:
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for names_filter, fn in pairs:
                    handles += self.attach(names_filter, fn, direction)
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def attach(self, names_filter: NameFilter, fn: HookFn, direction: str = "fwd") -> list:
        """Attach fn to the selected hook points ("fwd": their values, "bwd": their gradients); the handles."""
        if direction not in ("fwd", "bwd"):
            raise ValueError(f"a hook's direction is 'fwd' or 'bwd', got {direction!r}.")
        points = self.hook_points()
        handles = []
        for name, tl_form in self.select_hooks(names_filter):
            head_first = tl_form and any(name.endswith("." + ending) for ending in HEAD_FIRST)
            hook = HookName(tl_from_ours(name) if tl_form else name, points[name].ctx, head_first)
            batch = None
            if tl_form and swap_ending(name, POS_EMBED, "embed") in points:  # TL's (B, T, C): learn B from embed
                batch = {}
                handles.append(points[swap_ending(name, POS_EMBED, "embed")].register_forward_hook(
                    lambda module, inputs, output, batch=batch: batch.update(size=output.size(0))))
            call = _call_with_name(fn, hook, batch)
            if direction == "bwd":
                call = _on_gradient(call, batch)
            handles.append(points[name].register_forward_hook(call))
        return handles

    def capture(self, *args, names_filter: NameFilter = None, device=None,
                fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs) -> tuple[object, dict[str, torch.Tensor]]:
        """Run the model on args/kwargs; return (output, {hook name: a detached copy of its value}): forward's
        output ((logits, loss) for every family) and the captured values.

        `device` (e.g. "cpu") moves each tensor there as it is captured. `fwd_hooks` (interventions)
        run before the capturing hooks, so the values are those after them. `run_with_cache` (lens/methods.py)
        wraps the dict in an ActivationCache.
        """
        values = {}

        def store(tensor: torch.Tensor, name: str) -> None:
            # a copy: the live tensor flows on, and a later hook may edit it in place
            values[name] = tensor.detach().to(tensor.device if device is None else device, copy=True)

        with self.hooks([*fwd_hooks, (self.match_hooks(names_filter), store)]):
            output = self(*args, **kwargs)
        return output, values

    @classmethod
    def add_methods(cls, methods: type) -> None:
        """Give every hooked model the methods defined in class `methods`: the analysis conveniences that
        live outside the learner's files (lens/methods.py; model/__init__.py adds them)."""
        for name, value in vars(methods).items():
            if not name.startswith("__"):
                setattr(cls, name, value)


def _call_with_name(fn: HookFn, name: HookName, batch: dict | None = None):
    """Adapt fn(tensor, name) to torch's forward-hook signature hook(module, inputs, output); with `batch`
    ({"size": B}, filled by the embed point) a (T, C) value is shown as a (B, T, C) broadcast view."""

    def hook(module, inputs, output):
        output = _batched(output, batch)
        value = output.transpose(1, 2) if name.head_first else output
        result = fn(value, name)
        if result is not None and not (isinstance(result, torch.Tensor) and result.shape == value.shape):
            got = tuple(result.shape) if isinstance(result, torch.Tensor) else f"a {type(result).__name__}"
            raise ValueError(f"the hook on {name} returned {got} for a {tuple(value.shape)} value; return a tensor "
                             "of the same shape to replace it, or None to leave it unchanged.")
        return result.transpose(1, 2) if result is not None and name.head_first else result

    return hook


def _batched(output: torch.Tensor, batch: dict | None) -> torch.Tensor:
    """A (T, C) value as the (B, T, C) broadcast view (no copy) when `batch` holds B; else unchanged."""
    return output.expand(batch["size"], *output.shape) if batch and output.dim() == 2 else output


def _on_gradient(hook, batch: dict | None = None):
    """A forward hook that runs `hook` on the gradient of the hook point's value when it is differentiated.
    With `batch`, a (T, C) value flows on as its (B, T, C) broadcast view, so that the gradient is each
    example's (as TransformerLens' batched position embeddings get it)."""

    def attach(module, inputs, output):
        output = _batched(output, batch)
        if output.requires_grad:
            output.register_hook(lambda grad: hook(module, inputs, grad))
        return output if batch else None

    return attach
