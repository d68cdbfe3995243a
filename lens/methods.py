"""Analysis conveniences that users call as model methods (`model.run_with_cache(...)`), kept out of the
learner's files.

Every model family inherits `HookedModel` (model/hooks.py), which knows hook points and nothing of
analysis. The methods of `AnalysisMethods` below are added to it by model/__init__.py
(`HookedModel.add_methods(AnalysisMethods)`), so `from model import GPT` gives a GPT that has them.
This file and lens/cache.py import nothing of model/ (tests/test_layout.py checks it): the core never
depends on them, and they see a model only through its attributes. docs/architecture.md has the why.
"""

from lens.cache import ActivationCache, batch_size_hooks


class AnalysisMethods:
    """Methods every hooked model gets (TransformerLens' names). `self` is the model."""

    def run_with_cache(self, *args, names_filter=None, device=None, fwd_hooks=(), **kwargs):
        """Run the model on args/kwargs; return (output, cache): forward's output ((logits, loss) for every
        family) and an ActivationCache (a dict name -> detached tensor, with TransformerLens' methods: see
        lens/cache.py).

        `names_filter` selects hook points as `hooks()` does; `device` (e.g. "cpu") moves each tensor there
        as it is captured; `fwd_hooks` (interventions) run before the cache's hooks, so the cache holds
        the values after them.
        """
        noting, found = batch_size_hooks(self)
        output, values = self.capture(*args, names_filter=names_filter, device=device,
                                      fwd_hooks=[*noting, *fwd_hooks], **kwargs)
        return output, ActivationCache(values, self, batch_size=found.get("batch_size"))
