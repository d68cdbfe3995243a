"""Attention maps grouped for display: one AttentionView per stack of layers (self, encoder, cross)."""

import re
from dataclasses import dataclass

import numpy as np
import torch

from lens.recorder import real_positions, strip_padding


@dataclass
class AttentionView:
    """The maps of one stack of attention layers, sharing their query and key tokens."""

    title: str  # e.g. "self-attention", "decoder cross-attention"
    query_tokens: list[str]
    key_tokens: list[str]
    layers: dict[str, np.ndarray]  # attention module name -> (n_head, T, S)
    cross: bool = False  # keys come from another sequence (no query/key distance)
    prompt_length: int | None = None  # the target tokens from this index on were generated (the page marks them)


def display_token(token: str) -> str:
    """A token made visible in a label: spaces, newlines and tabs get a printable symbol."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace(" ", "\u2423") or "\u2205"


def views_from_maps(maps: dict[str, torch.Tensor], tokens: list[str], source_tokens: list[str] | None = None,
                    batch_index: int = 0, attention_mask: torch.Tensor | None = None,
                    source_mask: torch.Tensor | None = None, prompt_length: int | None = None) -> list[AttentionView]:
    """Group `...pattern` maps (B, nh, T, S) by stack; queries/keys get `tokens` or `source_tokens`.

    `blocks.N.attn` and `decoder.blocks.N.attn` attend over `tokens` (generated from `prompt_length` on, which
    the viewer marks); `encoder.blocks.N.attn` over `source_tokens`; `...cross_attn` from `tokens` to `source_tokens`.

    For row `batch_index` of a padded batch, `attention_mask` (B, T) marks the real tokens of `tokens`'
    sequence (1 = real, 0 = padding, as given to the model) and `source_mask` (B, S) those of the source:
    the views leave out padding queries and keys (lens.recorder.strip_padding). The tokens may then be the
    row's T tokens (padding included, dropped here) or only its real ones.
    """
    sequences = {"target": (tokens, attention_mask, "attention_mask"),
                 "source": (source_tokens, source_mask, "source_mask")}
    shown: dict[str, list[str]] = {}  # each sequence's tokens as shown (padding left out)

    def real_row(kind: str, batch: int, length: int) -> torch.Tensor | None:
        """The row's real positions (length,) in one sequence, or None without a mask; sets shown[kind]."""
        given, mask, mask_name = sequences[kind]
        if mask is None:
            shown.setdefault(kind, list(given))
            return None
        real = real_positions(mask, (batch, length), mask_name)[batch_index]
        if kind not in shown:
            n = int(real.sum())
            if len(given) == length:
                shown[kind] = [t for t, keep in zip(given, real.tolist()) if keep]
            elif len(given) == n:
                shown[kind] = list(given)
            else:
                raise ValueError(f"{mask_name} marks {n} of row {batch_index}'s {length} tokens as real but "
                                 f"{len(given)} tokens were given; pass all {length} or the {n} real ones.")
        return real

    groups: dict[str, AttentionView] = {}
    for name, pattern in maps.items():
        if not name.endswith(".pattern"):
            continue
        module = name.removesuffix(".pattern")
        stack = re.sub(r"blocks\.\d+\.", "", module)  # "decoder.blocks.3.cross_attn" -> "decoder.cross_attn"
        cross, encoder = stack.endswith("cross_attn"), stack.startswith("encoder.")
        if (cross or encoder) and source_tokens is None:
            raise ValueError(f"{name} attends over a source sequence; pass source_tokens.")
        query_kind = "source" if encoder else "target"
        key_kind = "source" if (cross or encoder) else "target"
        B, _, T, S = pattern.shape
        query_real, key_real = real_row(query_kind, B, T), real_row(key_kind, B, S)
        queries, keys = shown[query_kind], shown[key_kind]
        if stack not in groups:
            prefix = stack.split(".")[0] + " " if "." in stack else ""
            groups[stack] = AttentionView(prefix + ("cross-attention" if cross else "self-attention"), list(queries),
                                          list(keys), {}, cross, None if encoder else prompt_length)
        row = strip_padding(pattern[batch_index].detach(), query_real, key_real)
        array = row.float().cpu().numpy()  # (nh, T, S)
        if array.shape[1:] != (len(queries), len(keys)):
            raise ValueError(f"{name} is {array.shape[1]} x {array.shape[2]} but {len(queries)} query and "
                             f"{len(keys)} key tokens were given.")
        groups[stack].layers[module] = array
    return list(groups.values())
