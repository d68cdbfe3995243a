"""Model FLOPs utilisation (MFU): the share of a GPU's peak matmul throughput that training achieves.

    MFU = flops_per_token(model, T) * tokens_per_second / (peak_flops(gpu) * number_of_gpus)

The FLOP count follows PaLM (Chowdhery et al. 2022, appendix B), as nanoGPT and most published
MFU figures do, so numbers compare: a training token costs 6 FLOPs per matmul weight (2 forward,
4 backward) plus the attention products, 12 * T * d per attention layer (QK^T and AV, each
2 * T * d forward, times 3 for training), counted over the full T x T score matrix. Causal masking
lets flash kernels skip about half of that attention work, so for a causal model the true
utilisation is slightly lower than reported (about 7% for GPT-2 124M at T = 1024).
"""

import re

import torch
from torch import nn

from model.attention import Attention

# Peak dense (no 2:4 sparsity) BF16 tensor-core FLOP/s, with FP32 accumulation, by GPU model.
# Sources: NVIDIA datasheets, which print the sparse figure (halved here); GeForce cards from the
# Ampere GA102 and Ada Lovelace whitepapers (BF16 with FP32 accumulate). Patterns are tried in order
# against torch.cuda.get_device_name(), so the more specific name comes first.
PEAK_FLOPS: list[tuple[str, float, str]] = [
    (r"H100.*NVL", 835e12, "H100 NVL datasheet: 1,671 TFLOPS sparse"),
    (r"H100.*PCIe", 756e12, "H100 PCIe datasheet: 1,513 TFLOPS sparse"),
    (r"H100", 989e12, "H100 SXM datasheet: 1,979 TFLOPS sparse"),
    (r"H200.*NVL", 835e12, "H200 NVL datasheet: 1,671 TFLOPS sparse"),
    (r"H200", 989e12, "H200 SXM datasheet: 1,979 TFLOPS sparse"),
    (r"GH200", 989e12, "GH200 datasheet: 1,979 TFLOPS sparse"),
    (r"A100", 312e12, "A100 datasheet (SXM and PCIe): 624 TFLOPS sparse"),
    (r"L40S", 362e12, "L40S datasheet: 733 TFLOPS sparse"),
    (r"L40\b", 181e12, "L40 datasheet: 362 TFLOPS sparse"),
    (r"\bL4\b", 121e12, "L4 datasheet: 242 TFLOPS sparse"),
    (r"A40\b", 150e12, "A40 datasheet: 299 TFLOPS sparse"),
    (r"RTX A6000", 155e12, "RTX A6000 datasheet: 310 TFLOPS sparse"),
    (r"A10\b", 125e12, "A10 datasheet: 250 TFLOPS sparse"),
    (r"RTX 4090", 165e12, "Ada whitepaper: RTX 4090 BF16, FP32 accumulate, 165.2 TFLOPS dense"),
    (r"RTX 3090", 71e12, "GA102 whitepaper: RTX 3090 BF16, FP32 accumulate, 71 TFLOPS dense"),
    # no BF16 tensor cores: FP16 tensor-core peak instead
    (r"V100.*PCIE", 112e12, "V100 PCIe datasheet: 112 TFLOPS FP16 (no BF16)"),
    (r"V100", 125e12, "V100 SXM2 datasheet: 125 TFLOPS FP16 (no BF16)"),
    (r"\bT4\b", 65e12, "T4 datasheet: 65 TFLOPS FP16 (no BF16)"),
]


def peak_flops(gpu_name: str) -> float | None:
    """Peak dense BF16 FLOP/s of the GPU model named `gpu_name`, or None when it is not in the table."""
    for pattern, flops, _source in PEAK_FLOPS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return flops
    return None


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul weights + 12 x seq_len x width per attention layer.

    Matmul weights are those of every nn.Linear, counted once (a tied LM head is one matrix);
    embedding lookups, norms and biases do no matmul and are left out.
    """
    weights = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
    attention_flops = sum(12 * seq_len * m.n_head * m.head_dim for m in model.modules() if isinstance(m, Attention))
    return 6 * sum(weights.values()) + attention_flops


def mfu(tokens_per_s: float, flops_per_token: float, peak: float, n_gpus: int = 1) -> float:
    """Achieved FLOP/s over the peak of all GPUs (a fraction: 0.5 is 50%)."""
    return tokens_per_s * flops_per_token / (peak * n_gpus)


def device_peak(device: str) -> tuple[float | None, str]:
    """(peak FLOP/s or None, GPU name) for a CUDA device; (None, 'cpu') elsewhere."""
    if not device.startswith("cuda"):
        return None, device
    name = torch.cuda.get_device_name(torch.device(device))
    return peak_flops(name), name
