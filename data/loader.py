"""Batches for training: random windows of memory-mapped token files."""

import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import torch

from data.mlm import MLMBatches
from data.pairs import PairBatches
from data.tokens import TokenFileError, load_tokens

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dataset_dir(dataset: str, data_dir: str = "") -> str:
    """Folder of a prepared dataset: data_dir if given, else data/<dataset> in this repo."""
    return data_dir or os.path.join(REPO, "data", dataset)


def read_meta(folder: str, prepare_if_missing: bool = False) -> dict:
    """The dataset's meta.json; runs its prepare.py first when asked and the dataset has none yet."""
    path = os.path.join(folder, "meta.json")
    script = os.path.join(folder, "prepare.py")
    if not os.path.exists(path) and prepare_if_missing and os.path.exists(script):
        print(f"preparing {folder} (first use) ...", flush=True)
        if subprocess.run([sys.executable, script]).returncode != 0:
            raise TokenFileError(f"{script} failed; fix the error above and run it again.")
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


def split_files(folder: str, split: str) -> list[str]:
    """A split's token files: `split.bin`, else its shards `split_*.bin` in order."""
    single = os.path.join(folder, f"{split}.bin")
    if os.path.exists(single):
        return [single]
    return sorted(glob.glob(os.path.join(folder, f"{split}_*.bin"))) or [single]  # [single]: load_tokens names it


class Windows:
    """Windows of T + 1 tokens drawn uniformly from one split's memory-mapped files (uint16 or uint32).

    A window never crosses from one file into the next; a file shorter than T + 1 gives none.
    """

    def __init__(self, files: list[str], T: int):
        self.files, self.T = files, T
        self.parts = [load_tokens(path) for path in files]
        counts = [max(0, len(part) - T) for part in self.parts]  # window starts per file
        if sum(counts) == 0:
            n = sum(len(p) for p in self.parts)
            raise TokenFileError(f"{os.path.basename(files[0])} in {os.path.dirname(files[0])} has {n} tokens, "
                                 f"fewer than the {T + 1} one window needs; use a smaller block_size or more text.")
        self.ends = np.cumsum(counts)

    def sample(self, n: int, generator: torch.Generator) -> np.ndarray:
        """(n, T + 1) int64 windows; with a single file the random draws equal `randint(len - T)`."""
        starts = torch.randint(int(self.ends[-1]), (n,), generator=generator).numpy()
        which = np.searchsorted(self.ends, starts, side="right")
        offsets = starts - np.concatenate([[0], self.ends[:-1]])[which]
        return np.stack([self.parts[f][i:i + self.T + 1] for f, i in zip(which, offsets)]).astype(np.int64)


class LMBatches:
    """Next-token prediction: x is a window of block_size tokens, y the same window shifted by one.

    A split is one file (`train.bin`) or several shards (`train_000000.bin`, ...), all memory-mapped.
    """

    specials = ()

    def __init__(self, folder: str, model_config, batch_size: int, device: str = "cpu", tokenizer=None):
        block_size = model_config.block_size
        self.data = {split: Windows(split_files(folder, split), block_size) for split in ("train", "val")}
        self.block_size, self.batch_size, self.device = block_size, batch_size, device

    def get(self, split: str, generator: torch.Generator) -> dict:
        """One batch {'idx': (B, T), 'targets': (B, T)} drawn with `generator`."""
        xy = torch.from_numpy(self.data[split].sample(self.batch_size, generator))
        if self.device.startswith("cuda"):
            xy = xy.pin_memory().to(self.device, non_blocking=True)
        else:
            xy = xy.to(self.device)
        return {"idx": xy[:, :-1], "targets": xy[:, 1:]}


BATCHES: dict[str, type] = {"gpt": LMBatches, "bert": MLMBatches}
"""model_type -> batch maker. A batch maker is built as cls(folder, model_config, batch_size, device,
tokenizer); declares the special tokens its family adds (`specials`); has `get(split, generator) -> dict`
(the model's keyword arguments, targets included); and may have `eval_metrics(logits, batch) ->
dict[str, float]`, which train.py averages over its evaluation batches, and `evaluate(model) ->
dict[str, float]`, called once per evaluation for metrics that need more than a forward pass."""
BATCHES["seq2seq"] = PairBatches  # data/pairs.py: source/target pairs grouped by length
BATCHES["rnn"] = PairBatches  # the RNN encoder-decoder reads the same pairs


def batch_generator(*keys) -> torch.Generator:
    """A generator seeded by `keys` (e.g. seed, split, iteration, micro-batch index).

    Seeding each micro-batch by its place in the run makes the data a function of the iteration
    alone: a resumed run draws what the uninterrupted one would have, and a global batch is the same
    set of windows however it is split among ranks and micro-steps.
    """
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
