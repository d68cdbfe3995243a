"""Checkpoints: written atomically, read without unpickling code (`weights_only=True`).

A checkpoint is a dict: "model" (state dict), "model_type", "model_args" (the model config as a dict),
"optimizer", "scaler" (float16's loss scale), "train_config", "tokenizer", "iter_num", "best_val_loss", "rng",
"elapsed_s", "wandb_id".
Reading one upgrades what older headscope versions wrote (renamed parameters and config keys).
"""

import os
import shutil

import torch

from weights.common import UserError, atomic_write, temporary_path

# parameter names of older versions -> today's (Attention.score, the score module, became Attention.scorer)
RENAMED_PARAMETERS = ((".attn.score.", ".attn.scorer."), (".cross_attn.score.", ".cross_attn.scorer."))


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, corrupt or from an incompatible model."""


def save_checkpoint(payload: dict, path: str) -> None:
    """Write payload to path through a temporary file and a rename: a crash or a full disk leaves the old file intact."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_write(path) as f:
            torch.save(payload, f)
    except OSError as e:
        kept = "the previous one is intact" if os.path.isfile(path) else "none was saved"
        raise CheckpointError(f"cannot save the checkpoint {path} ({e.strerror or e}; {kept}); free some disk space "
                              "or pick a writable --out_dir.") from None


def copy_checkpoint(source: str, path: str) -> None:
    """Make path a copy of the checkpoint at source, atomically: a hard link (no second copy on disk; a later
    save replaces source by a new file, so the link keeps this one) or, where links fail, a copy of the bytes."""
    tmp = temporary_path(path)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"cannot write {path} ({e.strerror or e}); free some disk space or pick a writable "
                              "--out_dir.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DDP's, in either order (nanoGPT: module._orig_mod.)


def strip_wrappers(key: str) -> str:
    """A state-dict key without the prefixes that torch.compile and DDP wrappers put in front of it."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def upgrade_state(state: dict) -> dict:
    """A state dict with wrapper prefixes (torch.compile, DDP) dropped and old parameter names renamed."""
    upgraded = {}
    for key, value in state.items():
        key = strip_wrappers(key)
        for old, new in RENAMED_PARAMETERS:
            key = key.replace(old, new)
        upgraded[key] = value
    return upgraded


SAMPLE_KEYS = ("model", "model_args", "tokenizer")  # what sampling from a checkpoint needs
RESUME_KEYS = SAMPLE_KEYS + ("model_type", "optimizer", "train_config", "iter_num", "best_val_loss", "rng")


def load_checkpoint(path: str, map_location="cpu", needs: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint written by save_checkpoint (any version); only tensors and plain data are accepted.

    `needs`: the entries the caller reads besides the weights and their config (e.g. RESUME_KEYS)."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train one first (python train.py --out_dir=...).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        raise CheckpointError(f"{path} is corrupt or not a headscope checkpoint; retrain or restore it.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a headscope checkpoint (no model weights and config).")
    missing = [key for key in needs if key not in ckpt]
    if missing:  # e.g. nanoGPT's ckpt.pt: weights and config, but no tokenizer or random state
        raise CheckpointError(f"{path} has no {missing[0]!r} entry, so it was not written by headscope's train.py; "
                              "train a headscope model or restore the checkpoint.")
    ckpt["model"] = upgrade_state(ckpt["model"])
    return ckpt
