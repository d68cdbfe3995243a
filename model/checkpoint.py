"""Checkpoints: written atomically, read without unpickling code (`weights_only=True`)."""

import os

import torch

from data.tokens import temporary_path
from model.config import MODEL_CONFIGS, from_dict


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from an incompatible model."""


def save_checkpoint(payload: dict, path: str) -> None:
    """Write payload to path through a temporary file and a rename: a crash leaves the old file intact."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_path(path)  # also clears what a killed run left
    try:
        torch.save(payload, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint written by save_checkpoint; only tensors and plain data are accepted."""
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
    return ckpt


WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DDP's, in either order (nanoGPT: module._orig_mod.)


def strip_wrappers(key: str) -> str:
    """A state-dict key without the prefixes that torch.compile and DDP wrappers put in front of it."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def model_from_checkpoint(ckpt: dict):
    """Rebuild the model stored in a checkpoint dict and load its weights."""
    import model as models  # late import: the families import this package's modules

    model_type = ckpt.get("model_type", "gpt")
    if model_type not in MODEL_CONFIGS:
        raise CheckpointError(f"checkpoint holds an unknown model type {model_type!r}.")
    config = from_dict(MODEL_CONFIGS[model_type], ckpt["model_args"])
    net = models.MODELS[model_type](config)
    state = {strip_wrappers(k): v for k, v in ckpt["model"].items()}
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise CheckpointError("checkpoint weights do not match the model config it stores; it is damaged.") from None
    return net
