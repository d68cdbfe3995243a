"""The logit lens: what the unembedding reads from the residual stream before each block and after the last.

    lens = logit_lens(cache)                        # (n_layer + 1, B, T, V) logits; the last is the model's
    table = top_tokens(lens, k=1)                   # ids (n_layer + 1, B, T, k) and their probabilities

Each entry is ln_f(resid) @ W_U^T with the final norm's statistics recomputed per entry (nostalgebraist's
logit lens; TransformerLens' accumulated_resid(apply_ln=True) at the unembedding).
"""

import torch

from lens.cache import LensError


def logit_lens(cache, pos_slice=None) -> torch.Tensor:
    """Logits read from every accumulated residual stream: (n_layer + 1, B, [T], V)."""
    unembed = cache.structure.unembed
    if unembed is None:
        raise LensError("the logit lens needs a linear unembedding after the final norm; this stack has none "
                        "(BERT's MLM head and an encoder are not linear).")
    resid = cache.accumulated_resid(apply_ln=True, pos_slice=pos_slice)
    with torch.no_grad():
        return unembed(resid)


def top_tokens(lens_logits: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely ids at every entry and their probabilities: two (..., k) tensors."""
    probs = lens_logits.float().softmax(-1)
    values, ids = probs.topk(k, dim=-1)
    return ids, values
