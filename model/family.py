"""What every model family shares: the embedding stem (token + position embeddings with the length check,
dropout, hook points), the output head (tied to the embedding or not, soft-capped logits, the loss with one
ignore index), num_params.

The parameters stay on the family's own modules (`wte`, `wpe`, `lm_head`), named as in GPT-2.
"""

import torch
import torch.nn.functional as F
from torch import nn

from model.hooks import HookedModel, HookPoint
from model.layers import auxiliary_losses, softcap
from weights.errors import IGNORE_INDEX
from weights.pretrained import save_model


def embed(ids: torch.Tensor, wte: nn.Embedding, wpe: nn.Embedding | None, limit: int, offset: int = 0,
          what: str = "sequence", limit_name: str = "block_size",
          hint: str = "crop it or train with a larger block_size",
          positions: torch.Tensor | None = None, hooks: tuple[nn.Module, nn.Module] | None = None) -> torch.Tensor:
    """Token ids (B, T) at positions offset.. -> embeddings (B, T, C); a ValueError past `limit` positions.

    `positions` (B, T) gives each row its own positions instead (left-padded batches). With rotary
    positions (`wpe` None) positions enter inside attention instead. `hooks`: the family's `embed` and
    `pos_embed` hook points, which see the token (B, T, C) and position ((T, C) or (B, T, C)) embeddings.
    """
    T = ids.size(1)
    if offset + T > limit:
        raise ValueError(f"{what} of {offset + T} tokens exceeds {limit_name} {limit}; {hint}.")
    x = wte(ids)  # (B, T, C)
    if hooks is not None:
        x = hooks[0](x)
    if wpe is not None:
        pos = wpe(torch.arange(offset, offset + T, device=ids.device) if positions is None else positions)
        x = x + (pos if hooks is None else hooks[1](pos))
    return x


class EmbeddingStem:
    """The embedding stem every stack starts with (a mixin of nn.Module, GPT-2's names): token embeddings
    `wte`, learned position embeddings `wpe` (None with rotary positions, or in a stack without positions),
    dropout `drop`, and the hook points `embed` and `pos_embed` (see embed) in the stacks that have them."""

    def add_stem(self, vocab_size: int, block_size: int, config, hooks: bool = True, extra_positions: int = 0,
                 what: str = "sequence", limit_name: str = "block_size",
                 hint: str = "crop it or train with a larger block_size") -> None:
        """Make the stem's modules: block_size (+ extra_positions) learned positions when config.pos_emb is
        'learned'; `what`, `limit_name` and `hint` word the error for an input longer than block_size."""
        self.wte = nn.Embedding(vocab_size, config.n_embd)
        learned = config.pos_emb == "learned"
        self.wpe = nn.Embedding(block_size + extra_positions, config.n_embd) if learned else None
        self.drop = nn.Dropout(config.dropout)
        if hooks:
            self.embed, self.pos_embed = HookPoint(), HookPoint()  # token (B, T, C) and position (T, C) embeddings
        self.stem_hooked, self.stem_limit = hooks, (block_size, what, limit_name, hint)

    def stem(self, ids: torch.Tensor, offset: int = 0, positions: torch.Tensor | None = None,
             hooked: bool = True) -> torch.Tensor:
        """Token ids (B, T) at positions offset.. (or `positions` (B, T)) -> embeddings (B, T, C), before
        dropout; `hooked` False passes no hook point (the static decoder's compiled step)."""
        limit, what, limit_name, hint = self.stem_limit
        hooks = (self.embed, self.pos_embed) if hooked and self.stem_hooked else None
        return embed(ids, self.wte, self.wpe, limit, offset, what, limit_name, hint, positions, hooks)


def tie_head(head: nn.Linear, embedding: nn.Embedding, config) -> None:
    """Share the embedding's weights with the output head (config.tie_embeddings), or mark an untied
    head to start at zero (config.zero_init)."""
    if config.tie_embeddings:
        head.weight = embedding.weight
    elif config.zero_init:
        head.zero_init = True


def logits_and_loss(logits: torch.Tensor, targets: torch.Tensor | None, cap: float = 0.0,
                    model: nn.Module | None = None):
    """The pair every family's forward returns: soft-capped logits (B, T, V) and the mean cross-entropy
    over the targets (B, T) that are not IGNORE_INDEX (-100), or None without targets (nanoGPT's contract).

    Given the model, the loss also carries the auxiliary terms its modules left in this forward pass
    (model/layers.py AuxiliaryLoss; e.g. hard attention's REINFORCE surrogate, whose value is 0).
    """
    logits = softcap(logits, cap)
    if targets is None:
        return logits, None
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    if model is not None:
        loss = loss + auxiliary_losses(model, logits, targets)
    return logits, loss


class Family(HookedModel, nn.Module):
    """Base of the model families: hook points (HookedModel), the parameter count, Hugging Face export."""

    model_type = ""  # the family's name in checkpoints and training/families.py ("gpt", "bert", ...)
    tokenizer = None  # a data.tokenizer.Tokenizer: from_pretrained sets the folder's, a checkpoint its meta's

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings (every `wpe`) excluded by default, as GPT-2's paper counts."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for name, m in self.named_modules()
                     if name.split(".")[-1] == "wpe" and isinstance(m, nn.Embedding))
        return n

    def save_pretrained(self, folder: str, tokenizer=None, overwrite: bool = False) -> None:
        """Write a Hugging Face folder (config.json, model.safetensors and, given the tokenizer or its
        meta dict, its files) that transformers' Auto classes load; an ExportError for options they lack.
        The folder is written whole, then swapped in; one that holds anything but an earlier export is
        refused unless `overwrite`."""
        save_model(self, folder, tokenizer, overwrite)  # weight I/O: weights/pretrained.py
