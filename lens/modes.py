"""Analysis runs the model as it is used, not as it is trained: dropout off.

A model left in training mode with dropout gives different attention patterns, detector scores and
patching results on every call (two `encode` calls on one input differed by 1.18 on a BERT with
dropout 0.1). The detectors and the attention recorder put such a model in eval mode for their run and
give every submodule its mode back after; patching refuses it, since its clean cache was most likely
captured in the same noisy mode.
"""

from contextlib import contextmanager

from lens.cache import LensError


def dropout_rate(model) -> float:
    """The model's dropout probability when it is in training mode (0.0 in eval mode or without dropout)."""
    return float(getattr(getattr(model, "config", None), "dropout", 0.0) or 0.0) if model.training else 0.0


@contextmanager
def evaluating(model):
    """Run the block with the model in eval mode; every submodule gets its own mode back after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def refuse_training(model, what: str) -> None:
    """A LensError when the model is in training mode with non-zero dropout (its runs are random)."""
    rate = dropout_rate(model)
    if rate > 0:
        raise LensError(f"{what} needs the model in eval mode: it is in training mode with dropout {rate}, so every "
                        "run differs; call model.eval() (and capture the clean cache again).")
