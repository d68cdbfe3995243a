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

from model.cache import ActivationCache, HookNameError  # noqa: F401 (HookNameError: public here too)

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
    """Mixin for an nn.Module holding HookPoints: named hooks, run_with_cache, hook_names."""

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

    def run_with_cache(self, *args, names_filter: NameFilter = None, device=None,
                       fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs):
        """Run the model on args/kwargs; return (output, cache): forward's output ((logits, loss) for every
        family) and an ActivationCache (a dict name -> detached tensor, with TransformerLens' methods: see
        model/cache.py).

        `device` (e.g. "cpu") moves each tensor there as it is captured. `fwd_hooks` (interventions)
        run before the cache hooks, so the cache holds the values after them.
        """
        cache = {}

        def store(tensor: torch.Tensor, name: str) -> None:
            # a copy: the live tensor flows on, and a later hook may edit it in place
            cache[name] = tensor.detach().to(tensor.device if device is None else device, copy=True)

        with self.hooks([*fwd_hooks, (self.match_hooks(names_filter), store)]):
            output = self(*args, **kwargs)
        return output, ActivationCache(cache, self)


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
