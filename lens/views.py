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
    query_documents: list[int] | None = None  # packed rows: each query token's document, 0, 1, ... (the page marks
    key_documents: list[int] | None = None    # where a document starts); None when the row is one sequence


def document_numbers(doc_ids: torch.Tensor) -> list[int]:
    """A row's document ids (T,), any integers, as 0, 1, 2, ...: a new number wherever the id changes."""
    if doc_ids.numel() == 0:
        return []
    changes = torch.cat([doc_ids.new_zeros(1), (doc_ids[1:] != doc_ids[:-1]).long()])
    return changes.cumsum(0).tolist()


def display_token(token: str) -> str:
    """A token made visible in a label: spaces, newlines and tabs get a printable symbol."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace(" ", "\u2423") or "\u2205"


def views_from_maps(maps: dict[str, torch.Tensor], tokens: list[str], source_tokens: list[str] | None = None,
                    batch_index: int = 0, attention_mask: torch.Tensor | None = None,
                    source_mask: torch.Tensor | None = None, prompt_length: int | None = None,
                    doc_ids: torch.Tensor | None = None) -> list[AttentionView]:
    """Group `...pattern` maps (B, nh, T, S) by stack; queries/keys get `tokens` or `source_tokens`.

    `blocks.N.attn` and `decoder.blocks.N.attn` attend over `tokens` (generated from `prompt_length` on, which
    the viewer marks); `encoder.blocks.N.attn` over `source_tokens`; `...cross_attn` from `tokens` to `source_tokens`.

    For row `batch_index` of a padded batch, `attention_mask` (B, T) marks the real tokens of `tokens`'
    sequence (1 = real, 0 = padding, as given to the model) and `source_mask` (B, S) those of the source:
    the views leave out padding queries and keys (lens.recorder.strip_padding). The tokens may then be the
    row's T tokens (padding included, dropped here) or only its real ones.

    `doc_ids` (B, T), as given to the model for packed documents (`--doc_mask`), numbers each shown token of
    `tokens`' sequence by its document, so that the page marks where each document starts.
    """
    sequences = {"target": (tokens, attention_mask, "attention_mask"),
                 "source": (source_tokens, source_mask, "source_mask")}
    shown: dict[str, list[str]] = {}  # each sequence's tokens as shown (padding left out)
    real_row = lambda kind, batch, length: shown_row(sequences[kind], batch_index, batch, length,  # noqa: E731
                                                     shown.setdefault(kind, []))
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
    return [mark_documents(view, doc_ids, batch_index, attention_mask, len(shown.get("target", ()))) for view in
            groups.values()]


def shown_row(sequence: tuple, batch_index: int, batch: int, length: int, shown: list[str]) -> torch.Tensor | None:
    """Row `batch_index`'s real positions (length,) in one sequence (given tokens, mask, mask name), or None
    without a mask; fills `shown` (when empty) with the tokens the views show."""
    given, mask, mask_name = sequence
    if mask is None:
        if not shown:
            shown.extend(given)
        return None
    real = real_positions(mask, (batch, length), mask_name)[batch_index]
    if not shown:
        n = int(real.sum())
        if len(given) == length:
            shown.extend(t for t, keep in zip(given, real.tolist()) if keep)
        elif len(given) == n:
            shown.extend(given)
        else:
            raise ValueError(f"{mask_name} marks {n} of row {batch_index}'s {length} tokens as real but "
                             f"{len(given)} tokens were given; pass all {length} or the {n} real ones.")
    return real


def mark_documents(view: AttentionView, doc_ids: torch.Tensor | None, batch_index: int,
                   attention_mask: torch.Tensor | None, n_shown: int) -> AttentionView:
    """The view with the document number of each shown token of the target sequence (queries of a
    decoder's stacks, keys too of self-attention); the source sequence has no documents."""
    if doc_ids is None or view.title.startswith("encoder"):
        return view
    doc_ids = torch.as_tensor(doc_ids).detach().cpu()
    shape = None if attention_mask is None else tuple(torch.as_tensor(attention_mask).shape)
    if doc_ids.dim() != 2 or batch_index >= doc_ids.size(0) or shape not in (None, tuple(doc_ids.shape)):
        raise ValueError(f"doc_ids has shape {tuple(doc_ids.shape)} but the view needs (batch, tokens) with a row "
                         f"{batch_index}{'' if shape is None else f', as attention_mask {shape}'}; "
                         "pass the doc_ids the model was given.")
    row = doc_ids[batch_index]
    if attention_mask is not None:
        row = row[real_positions(attention_mask, shape, "attention_mask")[batch_index]]
    if row.numel() != n_shown:
        raise ValueError(f"doc_ids gives {row.numel()} tokens of row {batch_index} a document but the view shows "
                         f"{n_shown}; pass the doc_ids the model was given.")
    documents = document_numbers(row)
    view.query_documents = documents
    view.key_documents = None if view.cross else documents
    return view
