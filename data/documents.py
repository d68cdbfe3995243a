"""Documents inside token files: where they start, which document each token of a row belongs to, packing.

Sharded data (data/shards.py) puts a separator before every document: GPT-2's `<|endoftext|>`, or
`[EOS]` for other tokenizers. A row of tokens drawn from such data may hold several documents; with
document masking (`--doc_mask=True`) the batch makers hand the model each token's document id, and
the model lets a token attend only to earlier tokens of its own document, with positions that
restart at each document (model/attention.py). `--batch_align=doc` starts every row at a document,
so that a row packs whole documents one after the other, the last one cut at the row's end.
"""

from dataclasses import dataclass

import numpy as np
import torch

from weights.common import IGNORE_INDEX, ConfigError

ALIGNS = ("window", "doc")
SCAN_TOKENS = 1 << 24  # tokens compared with the separator at a time (bounds memory on web-scale shards)


@dataclass(frozen=True)
class Packing:
    """How rows treat documents: doc_mask (hand the model document ids), align ('window': rows start
    anywhere; 'doc': at a document's separator) and boundary_loss (train the last token of a document
    to predict the next document's separator, i.e. to end documents)."""

    doc_mask: bool = False
    align: str = "window"
    boundary_loss: bool = False

    def __post_init__(self):
        if self.align not in ALIGNS:
            raise ConfigError(f"batch_align must be one of {', '.join(ALIGNS)}, got {self.align!r}.")
        if self.boundary_loss and not self.doc_mask:
            raise ConfigError("doc_boundary_loss applies to document masking only; set doc_mask=True or drop it.")

    @property
    def needs_separator(self) -> bool:
        """Whether these settings read document boundaries."""
        return self.doc_mask or self.align == "doc"


def separator_id(tokenizer) -> int | None:
    """The id that starts each document (`<|endoftext|>`, else `[EOS]`), or None when the tokenizer has neither."""
    eot = getattr(tokenizer, "eot_id", None)
    return eot if eot is not None else tokenizer.special_ids.get("[EOS]")


def require_separator(tokenizer, folder: str) -> int:
    """separator_id, or a ConfigError saying how to get data with document separators."""
    sep = separator_id(tokenizer) if tokenizer is not None else None
    if sep is None:
        raise ConfigError(f"the dataset in {folder} has no document separator (<|endoftext|> or [EOS]), so "
                          "doc_mask and batch_align=doc cannot find its documents; prepare it as shards of "
                          "documents (python data/fineweb/prepare.py --input FILES) or drop those options.")
    return sep


def document_ids(tokens: torch.Tensor, sep: int) -> torch.Tensor:
    """(B, T) token ids -> (B, T) document ids: the number of separators up to and including each token."""
    return (tokens == sep).long().cumsum(dim=-1)


def mask_boundary_targets(targets: torch.Tensor, sep: int) -> torch.Tensor:
    """targets with the separators that start the next document set to IGNORE_INDEX: the last token of a
    document is not trained to predict across the boundary."""
    return targets.masked_fill(targets == sep, IGNORE_INDEX)


def document_starts(part: np.ndarray, sep: int, row_len: int) -> np.ndarray:
    """Indices of the separators of one token file from which a row of row_len tokens fits in the file."""
    found = [np.flatnonzero(np.asarray(part[i:i + SCAN_TOKENS]) == sep) + i for i in range(0, len(part), SCAN_TOKENS)]
    starts = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    return starts[starts + row_len <= len(part)]


def unreachable_fraction(parts: list[np.ndarray], sep: int, row_len: int) -> float:
    """Share of the tokens that no document-aligned row holds: those past the first row_len of their
    document (long documents), and those before a file's first separator."""
    lost, total = 0, 0
    for part in parts:
        starts = np.concatenate([document_starts(part, sep, 0), [len(part)]])
        lengths = np.diff(starts)
        lost += int(starts[0]) + int(np.maximum(lengths - row_len, 0).sum())
        total += len(part)
    return lost / max(total, 1)


def cut_fraction(rows: np.ndarray, sep: int) -> float:
    """Share of the tokens of rows (N, T + 1) whose document the row cuts: at the row's start (it does not
    begin with a separator) or at its end (the token after the row's T inputs is not a separator)."""
    inputs = rows[:, :-1]
    ids = np.cumsum(inputs == sep, axis=1)  # (N, T)
    cut_start = (inputs[:, :1] != sep) & (ids == ids[:, :1])
    cut_end = (rows[:, -1:] != sep) & (ids == ids[:, -1:])
    return float((cut_start | cut_end).mean())


def packing_report(windows, sep: int, align: str, padding: float = 0.0, rows: int = 256) -> str:
    """The log's line on how a split's rows meet its documents, from `rows` rows drawn with a fixed seed:
    the share of padding tokens, of tokens whose document a row cuts, and (aligned rows) of the split
    that no row reaches."""
    sample = windows.sample(rows, torch.Generator().manual_seed(0))
    line = (f"rows ({'document-aligned' if align == 'doc' else 'plain windows'}): {100 * padding:.1f}% padding, "
            f"{100 * cut_fraction(sample, sep):.1f}% of tokens in documents cut at a row's start or end")
    if align == "doc":
        line += (f"; {100 * unreachable_fraction(windows.parts, sep, windows.T + 1):.1f}% of the training split "
                 "lies past the first row of its document and is never trained on")
    return line
