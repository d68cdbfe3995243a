"""Attention maps grouped for display: one AttentionView per stack of layers (self, encoder, cross)."""

import re
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AttentionView:
    """The maps of one stack of attention layers, sharing their query and key tokens."""

    title: str  # e.g. "self-attention", "decoder cross-attention"
    query_tokens: list[str]
    key_tokens: list[str]
    layers: dict[str, np.ndarray]  # attention module name -> (n_head, T, S)
    cross: bool = False  # keys come from another sequence (no query/key distance)


def display_token(token: str) -> str:
    """A token made visible in a label: spaces, newlines and tabs get a printable symbol."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace(" ", "\u2423") or "\u2205"


def views_from_maps(maps: dict[str, torch.Tensor], tokens: list[str], source_tokens: list[str] | None = None,
                    batch_index: int = 0) -> list[AttentionView]:
    """Group `...pattern` maps (B, nh, T, S) by stack; queries/keys get `tokens` or `source_tokens`.

    `blocks.N.attn` and `decoder.blocks.N.attn` attend over `tokens`; `encoder.blocks.N.attn` over
    `source_tokens`; `...cross_attn` from `tokens` to `source_tokens`.
    """
    groups: dict[str, AttentionView] = {}
    for name, pattern in maps.items():
        if not name.endswith(".pattern"):
            continue
        module = name.removesuffix(".pattern")
        stack = re.sub(r"blocks\.\d+\.", "", module)  # "decoder.blocks.3.cross_attn" -> "decoder.cross_attn"
        cross, encoder = stack.endswith("cross_attn"), stack.startswith("encoder.")
        if (cross or encoder) and source_tokens is None:
            raise ValueError(f"{name} attends over a source sequence; pass source_tokens.")
        queries = source_tokens if encoder else tokens
        keys = source_tokens if (cross or encoder) else tokens
        if stack not in groups:
            prefix = stack.split(".")[0] + " " if "." in stack else ""
            groups[stack] = AttentionView(prefix + ("cross-attention" if cross else "self-attention"),
                                          list(queries), list(keys), {}, cross)
        array = pattern[batch_index].detach().float().cpu().numpy()  # (nh, T, S)
        if array.shape[1:] != (len(queries), len(keys)):
            raise ValueError(f"{name} is {array.shape[1]} x {array.shape[2]} but {len(queries)} query and "
                             f"{len(keys)} key tokens were given.")
        groups[stack].layers[module] = array
    return list(groups.values())
