"""Device and precision choices shared by train.py and sample.py."""

from contextlib import nullcontext

import torch

from weights.common import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> str:
    """'auto' -> cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} was asked for but CUDA is not available; use --device=cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps was asked for but is not available; use --device=cpu.")
    return name


def pick_dtype(name: str, device: str) -> str:
    """'auto' -> bfloat16 on CUDA where supported, float32 elsewhere."""
    if name != "auto":
        return name
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def autocast(device: str, dtype: str):
    """Mixed-precision context for dtype on device (a no-op for float32)."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else device, dtype=DTYPES[dtype])


def enable_tf32() -> None:
    """Let float32 matmuls and convolutions use TF32 tensor cores (Ampere and later GPUs)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9 deprecates allow_tf32
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
