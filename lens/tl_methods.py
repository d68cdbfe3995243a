"""TransformerLens' everyday methods on every hooked model: the tokenizer's helpers, the weight space and
TransformerLens-style hooks (added to HookedModel by model/__init__.py, as lens/methods.py is:
docs/architecture.md).

    tokens = model.to_tokens("When Mary and John went", prepend_bos=True)   # (1, T) on the model's device
    model.to_str_tokens(tokens[0]); model.to_string(tokens[0]); model.to_single_token(" Mary")
    model.W_Q, model.W_O, model.QK, model.OV, model.all_composition_scores("K")
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", fn)], bwd_hooks=[...])
    model.add_hook("blocks.1.attn.hook_pattern", fn); ...; model.reset_hooks()

BOS: `prepend_bos=None` (the default) prepends the tokenizer's BOS token when it has one (GPT-2's
<|endoftext|>, as TransformerLens does for GPT-2) and nothing when it has none (a character tokenizer);
True demands one (an error if there is none), False never prepends. The model's tokenizer is
`model.tokenizer` (set by from_pretrained and by our checkpoints; None when unknown).
"""

import torch

from lens.cache import LensError
from lens.weight_space import WeightSpace


def bos_token(tokenizer) -> int | None:
    """The tokenizer's BOS id: `bos_id`, else GPT-2's end-of-text `eot_id`, else a Hugging Face tokenizer's
    BOS, else its EOS (TransformerLens' fallback); None when it has none of them."""
    for name in ("bos_id", "eot_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    special = getattr(tokenizer, "special_ids", {})
    return next((int(special[t]) for t in ("[BOS]", "[EOS]") if special.get(t) is not None), None)


def tokenizer_of(model):
    """model.tokenizer; a LensError when the model has none."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise LensError("this model has no tokenizer (model.tokenizer is None): set one, e.g. "
                        "model.tokenizer = data.tokenizer.GPT2Tokenizer(), or pass token ids.")
    return tokenizer


def encode(model, text: str, prepend_bos: bool | None) -> list[int]:
    """A string's ids, after the BOS token as prepend_bos says (see the module docstring)."""
    if not isinstance(text, str):
        raise LensError(f"to_tokens takes a string or a list of strings, got {type(text).__name__}.")
    bos = bos_token(tokenizer_of(model))
    if prepend_bos and bos is None:
        raise LensError("prepend_bos=True, but this tokenizer has no BOS token; pass prepend_bos=False.")
    return ([bos] if bos is not None and prepend_bos is not False else []) + tokenizer_of(model).encode(text)


PADDING_SIDES = ("right", "left")


def check_padding_side(padding_side: str | None) -> str:
    """"right" or "left" (None: "right", TransformerLens' default); a LensError otherwise."""
    side = "right" if padding_side is None else padding_side
    if side not in PADDING_SIDES:
        raise LensError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
    return side


def pad_token(tokenizer) -> int | None:
    """The id that pads a batch: the tokenizer's pad token, else its BOS / end-of-text id (TransformerLens
    pads GPT-2 with it); None when it has neither (to_tokens then pads with 0)."""
    pad = getattr(tokenizer, "special_ids", {}).get("[PAD]")
    return int(pad) if pad is not None else bos_token(tokenizer)


def pad_row(row: list, padding: list, side: str) -> list:
    """row with padding after it ("right") or before it ("left")."""
    return row + padding if side == "right" else padding + row


class TransformerLensMethods:
    """Methods every hooked model gets (TransformerLens' names). `self` is the model."""

    def to_tokens(self, input, prepend_bos: bool | None = None, padding_side: str | None = "right",
                  truncate: bool = True, return_attention_mask: bool = False):
        """A string or list of strings -> (B, T) token ids on the model's device; truncate keeps the first
        block_size tokens of each. Strings of different lengths are padded with the pad token (the BOS /
        end-of-text id, as TransformerLens pads GPT-2; 0 when the tokenizer has none) on `padding_side`,
        "right" (None: TransformerLens' default, also right) or "left" (what generate and the last
        position want). return_attention_mask=True returns (tokens, mask): mask (B, T) 1 at real tokens
        (the BOS included), 0 at padding, the `attention_mask` that forward, run_with_cache, the patching
        functions and generate take."""
        side = check_padding_side(padding_side)
        texts = [input] if isinstance(input, str) else list(input)
        if not texts:
            raise LensError("to_tokens got an empty list; give a string or a non-empty list of strings.")
        rows = [encode(self, text, prepend_bos) for text in texts]
        if truncate:
            rows = [row[:self.config.block_size] for row in rows]
        pad = pad_token(tokenizer_of(self)) or 0
        width = max(len(row) for row in rows)
        device = next(self.parameters()).device
        tokens = torch.tensor([pad_row(row, [pad] * (width - len(row)), side) for row in rows],
                              dtype=torch.long, device=device)
        if not return_attention_mask:
            return tokens
        mask = torch.tensor([pad_row([1] * len(row), [0] * (width - len(row)), side) for row in rows],
                            dtype=torch.long, device=device)
        return tokens, mask

    def to_str_tokens(self, input, prepend_bos: bool | None = None) -> list[str]:
        """Each token of a string (BOS as above) or of 1-D token ids, as its text."""
        if isinstance(input, str):
            ids = encode(self, input, prepend_bos)
        else:
            ids = torch.as_tensor(input).flatten().tolist() if torch.as_tensor(input).dim() <= 1 or \
                torch.as_tensor(input).size(0) == 1 else None
            if ids is None:
                raise LensError("to_str_tokens takes one sequence: a string, 1-D ids or a (1, T) batch.")
        return [tokenizer_of(self).decode([i]) for i in ids]

    def to_string(self, tokens) -> str | list[str]:
        """Token ids -> text: (T,) -> a string, (B, T) -> a list of strings."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [tokenizer_of(self).decode(row.tolist()) for row in tokens]
        return tokenizer_of(self).decode(tokens.flatten().tolist())

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS)."""
        ids = tokenizer_of(self).encode(string)
        if len(ids) != 1:
            raise LensError(f"{string!r} is {len(ids)} tokens ({[tokenizer_of(self).decode([i]) for i in ids]}); "
                            "give a string that is exactly one token.")
        return ids[0]

    def add_hook(self, name, hook, dir: str = "fwd") -> None:
        """Attach hook (fn(activation, hook) or fn(tensor, name)) to the hook points `name` selects until
        reset_hooks(); dir "fwd" or "bwd"."""
        handles = self.attach(name, hook, dir)
        self.__dict__.setdefault("_added_hooks", []).extend(handles)

    def reset_hooks(self, clear_contexts: bool = True) -> None:
        """Remove every hook add_hook attached (and empty each hook point's ctx)."""
        for handle in self.__dict__.pop("_added_hooks", []):
            handle.remove()
        if clear_contexts:
            for point in self.hook_points().values():
                point.ctx.clear()

    # the weight space (lens/weight_space.py): stacked copies, (n_layer, n_head, ...)
    W_Q = property(lambda self: WeightSpace(self).W_Q, doc="(n_layer, n_head, d_model, d_head)")
    W_K = property(lambda self: WeightSpace(self).W_K, doc="(n_layer, n_head, d_model, d_head)")
    W_V = property(lambda self: WeightSpace(self).W_V, doc="(n_layer, n_head, d_model, d_head)")
    W_O = property(lambda self: WeightSpace(self).W_O, doc="(n_layer, n_head, d_head, d_model)")
    b_Q = property(lambda self: WeightSpace(self).b_Q, doc="(n_layer, n_head, d_head)")
    b_K = property(lambda self: WeightSpace(self).b_K, doc="(n_layer, n_head, d_head)")
    b_V = property(lambda self: WeightSpace(self).b_V, doc="(n_layer, n_head, d_head)")
    b_O = property(lambda self: WeightSpace(self).b_O, doc="(n_layer, d_model)")
    W_in = property(lambda self: WeightSpace(self).W_in, doc="(n_layer, d_model, d_mlp)")
    W_out = property(lambda self: WeightSpace(self).W_out, doc="(n_layer, d_mlp, d_model)")
    b_in = property(lambda self: WeightSpace(self).b_in, doc="(n_layer, d_mlp)")
    b_out = property(lambda self: WeightSpace(self).b_out, doc="(n_layer, d_model)")
    W_E = property(lambda self: WeightSpace(self).W_E, doc="(d_vocab, d_model)")
    W_pos = property(lambda self: WeightSpace(self).W_pos, doc="(n_ctx, d_model)")
    W_U = property(lambda self: WeightSpace(self).W_U, doc="(d_model, d_vocab)")
    b_U = property(lambda self: WeightSpace(self).b_U, doc="(d_vocab)")
    QK = property(lambda self: WeightSpace(self).QK, doc="FactoredMatrix W_Q W_K^T, (n_layer, n_head, d_model, d_model)")
    OV = property(lambda self: WeightSpace(self).OV, doc="FactoredMatrix W_V W_O, (n_layer, n_head, d_model, d_model)")

    def all_composition_scores(self, mode: str) -> torch.Tensor:
        """Q-, K- or V-composition of every earlier head into every later head: (layer, head, layer, head)."""
        return WeightSpace(self).all_composition_scores(mode)
