"""Hook points: identity modules named after the tensor they carry (e.g. ``blocks.0.attn.pattern``).

Any model that contains HookPoints and inherits `HookedModel` can be looked into and changed:

    (logits, loss), cache = model.run_with_cache(idx, names_filter="*.attn.pattern")   # (B, nh, T, S) each
    with model.hooks(fwd_hooks=[("blocks.1.attn.z", fn)]):                      # fn(tensor, name)
        logits, _ = model(idx)

A hook function gets the tensor and the hook point's name; returning a tensor replaces the value
that flows on, returning None leaves it alone. Hooks on ``scores`` or ``pattern`` make that one
attention layer compute its weights explicitly; every other layer keeps the fused SDPA path.
"""

import fnmatch
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

from weights.common import HookNameError

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]
NameFilter = str | Iterable[str] | Callable[[str], bool] | None


class HookPoint(nn.Module):
    """Passes its input through unchanged; forward hooks registered on it can read or replace it."""

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
        """Names selected by a filter: None (all), a name or glob (``*.attn.pattern``), a list of
        those, or a predicate on the name. An exact name or a glob that selects nothing is an error."""
        names = self.hook_names()
        if names_filter is None:
            return names
        if callable(names_filter):
            return [n for n in names if names_filter(n)]
        if not isinstance(names_filter, (str, Iterable)):
            raise TypeError(f"names_filter must be a hook name or glob, a list of them, a predicate on the name or "
                            f"None (every hook point); got {type(names_filter).__name__}.")
        patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        selected = []
        for pattern in patterns:
            found = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not found:
                examples = ", ".join(names[:3] + names[-2:]) if names else "none"
                raise HookNameError(f"no hook point matches {pattern!r}; names look like {examples} "
                               "(see model.hook_names()).")
            selected += [n for n in found if n not in selected]
        return selected

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = ()):
        """Attach (name or filter, fn) hooks for the duration of a `with` block; always removed after it."""
        points = self.hook_points()
        handles = []
        try:
            for names_filter, fn in fwd_hooks:
                for name in self.match_hooks(names_filter):
                    handles.append(points[name].register_forward_hook(_call_with_name(fn, name)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def capture(self, *args, names_filter: NameFilter = None, device=None,
                fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs) -> tuple[object, dict[str, torch.Tensor]]:
        """Run the model on args/kwargs; return (output, {hook name: a detached copy of its value}).

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


def _call_with_name(fn: HookFn, name: str):
    """Adapt fn(tensor, name) to torch's forward-hook signature hook(module, inputs, output)."""

    def hook(module, inputs, output):
        result = fn(output, name)
        if result is not None and not (isinstance(result, torch.Tensor) and result.shape == output.shape):
            got = tuple(result.shape) if isinstance(result, torch.Tensor) else f"a {type(result).__name__}"
            raise ValueError(f"the hook on {name} returned {got} for a {tuple(output.shape)} value; return a tensor "
                             "of the same shape to replace it, or None to leave it unchanged.")
        return result

    return hook
