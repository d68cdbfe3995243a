"""Every registered family's forward returns the pair (logits, loss), loss None without targets (nanoGPT's)."""

import pytest
import torch

from training.families import FAMILIES

V, T = 13, 6


def build(model_type: str):
    entry = FAMILIES[model_type]
    torch.manual_seed(0)
    return entry.model(entry.config(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()


def inputs(model_type: str, idx: torch.Tensor) -> tuple:
    """The positional inputs of a forward pass without targets: the tokens, or (source, target) tokens."""
    return (idx,) if model_type in ("gpt", "bert") else (idx, idx)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_forward_returns_logits_and_loss_on_every_call(model_type):
    model = build(model_type)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))  # a batch of 2: no silent unpacking
    out = model(*inputs(model_type, idx))
    assert isinstance(out, tuple) and len(out) == 2
    logits, loss = out
    assert logits.shape == (2, T, V) and loss is None
    targets = {"bert": "labels"}.get(model_type, "targets")
    logits_t, loss_t = model(*inputs(model_type, idx), **{targets: idx})
    assert torch.equal(logits_t, logits) and loss_t.dim() == 0 and loss_t.item() > 0
    (cached_logits, cached_loss), cache = model.run_with_cache(*inputs(model_type, idx))
    assert torch.allclose(cached_logits, logits, atol=1e-5) and cached_loss is None and len(cache) > 0
