"""Token files: a 64-byte header (magic, version, dtype, token count) followed by the token ids.

The header lets a reader tell a complete file from one cut mid-write or from a foreign file.
Files are written to a temporary name and renamed into place, so a crash never leaves half a file
under the real name; a dataset's files are all written before any replaces the old dataset's.
"""

import glob
import json
import os
import re
import struct

import numpy as np
import torch

from data.documents import document_starts
from weights.common import UserError, atomic_write, temporary_path

MAGIC = b"HSTOKENS"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQ")  # magic, version, itemsize (2 or 4), token count
DTYPES = {2: np.uint16, 4: np.uint32}


class TokenFileError(UserError, ValueError):
    """A token file that is missing, truncated, foreign or otherwise unusable."""


def dtype_for_vocab(vocab_size: int):
    """The smallest unsigned dtype holding ids below vocab_size (uint16 up to 65,536 ids)."""
    if vocab_size <= 2**16:
        return np.uint16
    if vocab_size <= 2**32:
        return np.uint32
    raise TokenFileError(f"a vocabulary of {vocab_size} ids does not fit in 32-bit token files.")


def write_tokens(path: str, tokens, vocab_size: int) -> None:
    """Write token ids to `path` atomically, in the smallest dtype for vocab_size; check every id fits."""
    dtype = dtype_for_vocab(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and tokens.dtype.kind not in "iu":  # a cast would truncate 1.5 to 1 silently
        raise TokenFileError(f"token ids must be integers, not {tokens.dtype}.")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise TokenFileError(f"token ids must lie in [0, {vocab_size}); found {tokens.min()}..{tokens.max()}.")
    tokens = tokens.astype(dtype, copy=False)
    header = _HEADER.pack(MAGIC, VERSION, np.dtype(dtype).itemsize, tokens.size).ljust(HEADER_BYTES, b"\0")
    with atomic_write(path) as f:
        f.write(header)
        f.write(tokens.tobytes())


def split_files(folder: str, split: str) -> list[str]:
    """A split's token files: `split.bin`, else its shards `split_*.bin` in order."""
    single = os.path.join(folder, f"{split}.bin")
    if os.path.exists(single):
        return [single]
    return sorted(glob.glob(os.path.join(folder, f"{split}_*.bin"))) or [single]  # [single]: load_tokens names it


class Windows:
    """Windows of T + 1 tokens drawn uniformly from one split's memory-mapped files (uint16 or uint32).

    A window never crosses from one file into the next; a file shorter than T + 1 gives none. Given
    `separator`, a window starts only at a document (a separator token) whose window fits in its file
    (data/documents.py: document-aligned rows that pack whole documents).
    """

    def __init__(self, files: list[str], T: int, separator: int | None = None):
        self.files, self.T = files, T
        self.parts = [load_tokens(path) for path in files]
        # window starts per file: every index, or the documents' separators
        self.starts = None if separator is None else [document_starts(part, separator, T + 1) for part in self.parts]
        counts = [max(0, len(part) - T) for part in self.parts] if separator is None else [len(s) for s in self.starts]
        if sum(counts) == 0:
            self.refuse(separator)
        self.ends = np.cumsum(counts)

    def refuse(self, separator: int | None) -> None:
        """The TokenFileError for a split that holds no window."""
        files, T = self.files, self.T
        if separator is not None:
            raise TokenFileError(f"no document in {os.path.dirname(files[0])} ({os.path.basename(files[0])}...) starts "
                                 f"a window of {T + 1} tokens inside its file; use a smaller block_size or "
                                 "batch_align=window.")
        if len(files) == 1:
            raise TokenFileError(f"{os.path.basename(files[0])} in {os.path.dirname(files[0])} has {len(self.parts[0])} "
                                 f"tokens, fewer than the {T + 1} one window needs; use a smaller block_size or more text.")
        # a window never crosses shards: their total does not count
        name = re.sub(r"_\d+\.bin$", "_*.bin", os.path.basename(files[0]))
        raise TokenFileError(f"the {len(files)} {name} shards in {os.path.dirname(files[0])} are each shorter than "
                             f"one window (the longest has {max(len(p) for p in self.parts)} tokens, a window "
                             f"{T + 1}); use a smaller block_size or larger shards (--shard_tokens).")

    def sample(self, n: int, generator: torch.Generator) -> np.ndarray:
        """(n, T + 1) int64 windows; with a single file the random draws equal `randint(len - T)`."""
        starts = torch.randint(int(self.ends[-1]), (n,), generator=generator).numpy()
        which = np.searchsorted(self.ends, starts, side="right")
        offsets = starts - np.concatenate([[0], self.ends[:-1]])[which]
        if self.starts is not None:  # the k-th document of the file
            offsets = [self.starts[f][k] for f, k in zip(which, offsets)]
        return np.stack([self.parts[f][i:i + self.T + 1] for f, i in zip(which, offsets)]).astype(np.int64)


def read_header(path: str) -> tuple[np.dtype, int]:
    """Check the header and size of a token file; return (dtype, token count)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError:
        raise TokenFileError(f"token file {path} does not exist; run the dataset's prepare.py first.")
    if len(raw) < _HEADER.size or raw[:8] != MAGIC:
        raise TokenFileError(f"{path} is not a headscope token file; re-create it with the dataset's prepare.py.")
    _, version, itemsize, count = _HEADER.unpack(raw[:_HEADER.size])
    if version != VERSION or itemsize not in DTYPES:
        raise TokenFileError(f"{path} has an unsupported format (version {version}); re-run the prepare script.")
    expected = HEADER_BYTES + count * itemsize
    if size != expected:
        raise TokenFileError(f"{path} is truncated or corrupt ({size} bytes, expected {expected}); "
                             "re-run the prepare script.")
    return np.dtype(DTYPES[itemsize]), count


def load_tokens(path: str) -> np.ndarray:
    """Memory-map a token file after checking its header (nothing is read into RAM)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def write_json(path: str, obj: dict) -> None:
    """Write a JSON file atomically (a temporary file, then a rename)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


def replace_dataset(out_dir: str, writers: dict, meta: dict) -> None:
    """Write a dataset's files into out_dir, then its meta.json, keeping the dataset already there until
    the new one is written: a crash or an error leaves the old one whole (or, killed during the renames
    at the end, none: meta.json marks a complete dataset and is written last).

    writers maps each file name to a function that writes the file to the path it is given.
    """
    staged = {name: temporary_path(os.path.join(out_dir, name)) for name in writers}  # clears killed runs' too
    meta_path = os.path.join(out_dir, "meta.json")
    try:
        os.makedirs(out_dir, exist_ok=True)
        for name, write in writers.items():
            write(staged[name])
        if os.path.exists(meta_path):
            os.remove(meta_path)
        for name, path in staged.items():
            os.replace(path, os.path.join(out_dir, name))
        write_json(meta_path, meta)
    except OSError as e:
        raise TokenFileError(f"cannot write the dataset to {out_dir} ({e.strerror or e}); "
                             "pick a writable --out_dir with free space.") from None
    finally:
        for path in staged.values():
            if os.path.isfile(path):
                os.remove(path)


def write_split_dataset(out_dir: str, ids, vocab_size: int, meta: dict, val_fraction: float = 0.1) -> dict:
    """train.bin (the first 1 - val_fraction of ids), val.bin (the rest), then meta.json; return the meta."""
    n_train = int(len(ids) * (1 - val_fraction))
    meta = {**meta, "train_tokens": n_train, "val_tokens": len(ids) - n_train}
    replace_dataset(out_dir, {"train.bin": lambda path: write_tokens(path, ids[:n_train], vocab_size),
                              "val.bin": lambda path: write_tokens(path, ids[n_train:], vocab_size)}, meta)
    return meta
