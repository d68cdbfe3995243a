"""Token files: a 64-byte header (magic, version, dtype, token count) followed by the token ids.

The header lets a reader tell a complete file from one cut mid-write or from a foreign file.
Files are written to a temporary name and renamed into place, so a crash never leaves half a file
under the real name.
"""

import glob
import json
import os
import re
import struct

import numpy as np

MAGIC = b"HSTOKENS"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQ")  # magic, version, itemsize (2 or 4), token count
DTYPES = {2: np.uint16, 4: np.uint32}


class TokenFileError(ValueError):
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
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise TokenFileError(f"token ids must lie in [0, {vocab_size}); found {tokens.min()}..{tokens.max()}.")
    tokens = tokens.astype(dtype, copy=False)
    header = _HEADER.pack(MAGIC, VERSION, np.dtype(dtype).itemsize, tokens.size).ljust(HEADER_BYTES, b"\0")
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(tokens.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def temporary_path(path: str) -> str:
    """A temporary name next to path for this process, after removing the ones that processes killed
    mid-write left behind (their process is gone), which would otherwise stay on disk for good."""
    for stale in glob.glob(glob.escape(path) + ".tmp*"):
        pid = re.fullmatch(r"\.tmp(\d+)", stale[len(path):])
        if pid and int(pid.group(1)) != os.getpid() and not process_alive(int(pid.group(1))):
            try:
                os.remove(stale)
            except OSError:
                pass  # another process removed it first
    return f"{path}.tmp{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists, owned by someone else; or an id we cannot judge: leave its file alone
    return True


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
    tmp = temporary_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_split_dataset(out_dir: str, ids, vocab_size: int, meta: dict, val_fraction: float = 0.1) -> dict:
    """train.bin (the first 1 - val_fraction of ids), val.bin (the rest), then meta.json; return the meta."""
    n_train = int(len(ids) * (1 - val_fraction))
    meta_path = os.path.join(out_dir, "meta.json")
    try:
        os.makedirs(out_dir, exist_ok=True)
        if os.path.exists(meta_path):  # meta.json marks a complete dataset: drop it until the new one is whole
            os.remove(meta_path)
        write_tokens(os.path.join(out_dir, "train.bin"), ids[:n_train], vocab_size)
        write_tokens(os.path.join(out_dir, "val.bin"), ids[n_train:], vocab_size)
        meta = {**meta, "train_tokens": n_train, "val_tokens": len(ids) - n_train}
        write_json(meta_path, meta)  # written last: its presence means "prepared"
    except OSError as e:
        raise TokenFileError(f"cannot write the dataset to {out_dir} ({e.strerror}); pick a writable --out_dir.")
    return meta
