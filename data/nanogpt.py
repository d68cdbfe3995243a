"""nanoGPT's prepared datasets (train.bin, val.bin: bare uint16 ids; meta.pkl for a char vocabulary, none for
GPT-2 BPE) rewritten as ours (token files with a header, meta.json), the ids unchanged.

    python tools/from_nanogpt.py --data_dir=../nanoGPT/data/shakespeare_char --to_data=data/nanogpt_char
"""

import os

import numpy as np

from data.tokenizer import GPT2Tokenizer
from data.tokens import replace_dataset, write_tokens
from weights.nanogpt import NanoGPTError, char_tokenizer_meta, read_meta_pkl


def nanogpt_tokenizer(data_dir: str) -> dict:
    """The tokenizer meta of a nanoGPT dataset folder: its meta.pkl's characters, or GPT-2 BPE without one."""
    path = os.path.join(data_dir, "meta.pkl")
    if not os.path.exists(path):  # nanoGPT's shakespeare and openwebtext: GPT-2 ids, no meta.pkl
        return {"tokenizer": "gpt2", "vocab_size": GPT2Tokenizer.base_vocab_size, "specials": []}
    return char_tokenizer_meta(read_meta_pkl(path), path)


def read_nanogpt_split(data_dir: str, split: str, vocab_size: int) -> np.ndarray:
    """The ids of nanoGPT's split.bin (bare uint16); a NanoGPTError if it is missing or holds foreign ids."""
    path = os.path.join(data_dir, f"{split}.bin")
    try:
        ids = np.fromfile(path, dtype=np.uint16)
    except OSError as e:
        raise NanoGPTError(f"cannot read {path} ({e.strerror}); pass a folder nanoGPT's prepare.py wrote.") from None
    if os.path.getsize(path) % 2 or not ids.size:
        raise NanoGPTError(f"{path} is not a whole number of uint16 ids; recreate it with nanoGPT's prepare.py.")
    if int(ids.max()) >= vocab_size:
        raise NanoGPTError(f"{path} holds id {int(ids.max())}, outside the {vocab_size}-token vocabulary of "
                           f"{data_dir}; its meta.pkl belongs to another dataset.")
    return ids


def convert_dataset(data_dir: str, out_dir: str) -> dict:
    """Write nanoGPT's dataset in data_dir as ours into out_dir (the ids unchanged); return our meta."""
    meta = nanogpt_tokenizer(data_dir)
    splits = {split: read_nanogpt_split(data_dir, split, meta["vocab_size"]) for split in ("train", "val")}
    meta = {**meta, "train_tokens": int(splits["train"].size), "val_tokens": int(splits["val"].size),
            "source": f"nanoGPT dataset {os.path.abspath(data_dir)}"}
    replace_dataset(out_dir, {f"{split}.bin": (lambda path, ids=ids: write_tokens(path, ids, meta["vocab_size"]))
                              for split, ids in splits.items()}, meta)
    return meta
