"""The weight processing TransformerLens' from_pretrained applies, as a transform that returns a new model.

    folded = fold_weights(model)   # fold_ln, center_writing_weights, center_unembed, fold_value_biases

- fold_ln: each norm's gain and bias move into the weights that read it (c_attn, the MLP's c_fc, the
  unembedding); the norm keeps only its normalisation (gain 1, bias 0). A LayerNorm's output has zero
  mean, so those reading weights are also centred over d_model. Logits unchanged.
- center_writing_weights: every weight that writes to the residual stream (W_E, W_pos, each W_O, each
  W_out and their biases) loses its mean over d_model: every reader is a LayerNorm, which removes
  the mean anyway. Logits unchanged. LayerNorm models only.
- center_unembed: W_U (and b_U) lose their mean over the vocabulary: every logit of a position moves
  by the same amount, so log-probabilities and logit differences are unchanged, the logits are not.
- fold_value_biases: b_V's constant contribution (weights sum to 1) moves into b_O. Logits unchanged.

The new model has an untied head (so that centring W_E leaves W_U alone), with a bias when the final
norm had one; the original model is not touched. Decoder-only, pre-norm models (GPT) only.
"""

import copy
import dataclasses

import torch
from torch import nn

from lens.cache import LensError, get_stack


def fold_norm(norm: nn.Module, reader: nn.Linear, center: bool) -> None:
    """reader(norm(x)) = reader'(normalise(x)): move the norm's gain and bias into `reader` (in place)."""
    weight = reader.weight  # (out, in)
    if getattr(norm, "bias", None) is not None:
        reader.bias.add_(weight @ norm.bias)
    if norm.weight is not None:
        weight.mul_(norm.weight[None, :])
    if center:
        weight.sub_(weight.mean(1, keepdim=True))


def center_writer(linear: nn.Linear) -> None:
    """Remove the mean over d_model (the output dim) from a layer that writes to the residual stream."""
    linear.weight.sub_(linear.weight.mean(0, keepdim=True))
    if linear.bias is not None:
        linear.bias.sub_(linear.bias.mean())


def untied_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose head has its own weight and a bias (zero) when the final norm has one."""
    out = copy.deepcopy(model)
    head = out.lm_head
    needs_bias = getattr(out.ln_f, "bias", None) is not None and head.bias is None
    if head.weight is out.wte.weight or needs_bias:
        new = nn.Linear(head.in_features, head.out_features, bias=needs_bias or head.bias is not None)
        new.to(head.weight.device, head.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(head.weight)
            if new.bias is not None:
                new.bias.copy_(head.bias if head.bias is not None else torch.zeros_like(new.bias))
        out.lm_head = new
    out.config = dataclasses.replace(out.config, tie_embeddings=False)
    return out


def check_foldable(model: nn.Module, center_writing_weights: bool) -> None:
    """A LensError for a model this transform does not apply to."""
    structure = get_stack(model)
    if structure.unembed is None or not structure.causal or hasattr(model, "decoder"):
        raise LensError("fold_weights applies to a decoder-only model (GPT); BERT and the encoder-decoder are "
                        "left as they are.")
    if model.config.post_norm:
        raise LensError("fold_weights needs a pre-norm model: after a post-norm block nothing reads the residual "
                        "through its own norm.")
    if center_writing_weights and not isinstance(model.ln_f, nn.LayerNorm):
        raise LensError("center_writing_weights needs LayerNorm readers (they remove the mean); this model uses "
                        f"{type(model.ln_f).__name__}: pass center_writing_weights=False.")


@torch.no_grad()
def fold_weights(model: nn.Module, fold_ln: bool = True, center_writing_weights: bool = True,
                 center_unembed: bool = True, fold_value_biases: bool = True) -> nn.Module:
    """A copy of a GPT with TransformerLens' default weight processing (see the module docstring)."""
    check_foldable(model, center_writing_weights)
    out = untied_copy(model)
    center = isinstance(out.ln_f, nn.LayerNorm)
    for block in out.blocks:
        readers = [(block.ln_1, block.attn.c_attn)] + ([] if block.attn_only else [(block.ln_2, block.mlp.c_fc)])
        for norm, reader in readers if fold_ln else []:
            fold_norm(norm, reader, center)
            reset_norm(norm)
        if center_writing_weights:
            center_writer(block.attn.c_proj)
            if not block.attn_only:
                center_writer(block.mlp.c_proj)
        if fold_value_biases and block.attn.c_attn.bias is not None:
            C = block.attn.c_proj.out_features
            b_V = block.attn.c_attn.bias[2 * C:]
            block.attn.c_proj.bias.add_(block.attn.c_proj.weight @ b_V)
            b_V.zero_()
    if fold_ln:
        fold_norm(out.ln_f, out.lm_head, center)
        reset_norm(out.ln_f)
    if center_writing_weights:
        for embedding in (out.wte, out.wpe):
            if embedding is not None:
                embedding.weight.sub_(embedding.weight.mean(1, keepdim=True))
    if center_unembed:
        out.lm_head.weight.sub_(out.lm_head.weight.mean(0, keepdim=True))
        if out.lm_head.bias is not None:
            out.lm_head.bias.sub_(out.lm_head.bias.mean())
    return out


def reset_norm(norm: nn.Module) -> None:
    """Gain 1, bias 0: the norm only normalises."""
    if norm.weight is not None:
        norm.weight.fill_(1.0)
    if getattr(norm, "bias", None) is not None:
        norm.bias.zero_()
