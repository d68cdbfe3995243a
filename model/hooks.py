"""Hook points: identity modules named after the tensor they carry (e.g. ``blocks.0.attn.pattern``).

Any model that contains HookPoints and inherits `HookedModel` can be looked into and changed:

    (logits, loss), cache = model.run_with_cache(idx, names_filter="*.attn.pattern")   # (B, nh, T, S) each
    with model.hooks(fwd_hooks=[("blocks.1.attn.z", fn)]):                      # fn(tensor, name)
        logits, _ = model(idx)

A hook function gets the tensor and the hook point's name; returning a tensor replaces the value
that flows on, returning None leaves it alone. Hooks on ``scores`` or ``pattern`` make that one
attention layer compute its weights explicitly; every other layer keeps the fused SDPA path.

Other libraries' names are aliases wherever a name is accepted: `HookedModel.aliases` says which (and the
layout a hook attached by one sees); model/__init__.py installs TransformerLens' (lens/tl_names.py), so
``blocks.0.attn.hook_z`` works too, its hooks seeing TransformerLens' layouts.
`bwd_hooks` get the gradient flowing back into the hook point (and may return a replacement).
"""

import fnmatch
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

from weights.errors import HookNameError

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]
NameFilter = str | Iterable[str] | Callable[[str], bool] | None


OPT_IN = ".attn.result"  # left out of names_filter=None


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class NoAliases:
    """What `HookedModel.aliases` provides: other names for the hook points and the layout a hook attached by
    one sees. This default knows none; model/__init__.py installs TransformerLens' (lens/tl_names.py)."""

    hint = ""  # added to the error for a name that matches nothing

    def ours(self, name: str) -> str | None:
        """Our hook name (or glob) for an alias (or a glob of them); None when `name` is not one."""
        return None

    def alias(self, name: str) -> str | None:
        """The alias of our hook name; None when it has none."""
        return None

    def label(self, name: str, ctx: dict) -> str:
        """The name a hook function gets (`ctx`: the hook point's dict, kept until reset)."""
        return name

    def layout(self, name: str, points: dict) -> tuple:
        """(widen, turn, handles) for a hook attached to point `name` by its alias: `widen` makes the value that
        flows on, `turn` (its own inverse) shows it to the hook and turns a replacement back; handles of any
        helper hooks on `points`."""
        return _same, _same, []


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

    aliases = NoAliases()  # other names for the hook points (model/__init__.py: TransformerLens')

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point of the model by its module-tree name, e.g. ``blocks.0.attn.pattern``."""
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def hook_names(self) -> list[str]:
        """The names that hooks(), run_with_cache() and the interventions accept."""
        return list(self.hook_points())

    def match_hooks(self, names_filter: NameFilter) -> list[str]:
        """Names selected by a filter: None (all but the per-head results), a name or glob (``*.attn.pattern``), a list of
        those, or a predicate on the name; aliases (``*.attn.hook_pattern``: `aliases`) select too.
        An exact name or a glob that selects nothing is an error."""
        return [name for name, _ in self.select_hooks(names_filter)]

    def select_hooks(self, names_filter: NameFilter) -> list[tuple[str, bool]]:
        """match_hooks' names, each with whether it was named by its alias (the alias's layout then applies)."""
        names = self.hook_names()
        if names_filter is None:  # per-head results cost a (B, nh, T, C) tensor per layer: only when named
            return [(n, False) for n in names if not n.endswith(OPT_IN)]
        if callable(names_filter):  # a predicate may read the aliases (TransformerLens' names)
            alias = {n: self.aliases.alias(n) for n in names}
            return [(n, not names_filter(n)) for n in names if names_filter(n) or (alias[n] and names_filter(alias[n]))]
        if not isinstance(names_filter, (str, Iterable)):
            raise TypeError(f"names_filter must be a hook name or glob, a list of them, a predicate on the name or "
                            f"None (every hook point); got {type(names_filter).__name__}.")
        patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        selected = {}
        for pattern in patterns:
            ours = self.aliases.ours(pattern)
            found = [n for n in names if fnmatch.fnmatchcase(n, ours or pattern)]
            if not found:
                examples = ", ".join(names[:3] + names[-2:]) if names else "none"
                raise HookNameError(f"no hook point matches {pattern!r}; names look like {examples} "
                                    f"(see model.hook_names(){self.aliases.hint}).")
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
        for name, aliased in self.select_hooks(names_filter):
            widen, turn, helpers = self.aliases.layout(name, points) if aliased else (_same, _same, [])
            handles += helpers
            call = _call_with_name(fn, self.aliases.label(self.aliases.alias(name) if aliased else name,
                                                          points[name].ctx), widen, turn)
            if direction == "bwd":
                call = _on_gradient(call, widen)
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


def _call_with_name(fn: HookFn, name: str, widen=_same, turn=_same):
    """Adapt fn(tensor, name) to torch's forward-hook signature hook(module, inputs, output); fn sees
    turn(widen(value)) and a replacement it returns is turned back (an alias's layout: NoAliases.layout)."""

    def hook(module, inputs, output):
        value = turn(widen(output))
        result = fn(value, name)
        if result is not None and not (isinstance(result, torch.Tensor) and result.shape == value.shape):
            got = tuple(result.shape) if isinstance(result, torch.Tensor) else f"a {type(result).__name__}"
            raise ValueError(f"the hook on {name} returned {got} for a {tuple(value.shape)} value; return a tensor "
                             "of the same shape to replace it, or None to leave it unchanged.")
        return turn(result) if result is not None else None

    return hook


def _on_gradient(hook, widen=_same):
    """A forward hook that runs `hook` on the gradient of the hook point's value when it is differentiated.
    A value that `widen` changes flows on widened, so that the gradient is the widened one's (TransformerLens'
    per-example position embeddings)."""

    def attach(module, inputs, output):
        wide = widen(output)
        if wide.requires_grad:
            wide.register_hook(lambda grad: hook(module, inputs, grad))
        return wide if wide is not output else None

    return attach
