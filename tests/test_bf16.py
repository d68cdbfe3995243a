"""bf16 autocast on the CPU, the stand-in for the GPU's default precision."""

import torch

from conftest import run_script
from model import GPTConfig, load_checkpoint
from training.families import model_from_checkpoint
from model.attention import Attention
from test_train import SMALL, metrics

# bf16 keeps 8 bits of mantissa (a relative step of 2^-8 = 0.004): outputs of size ~1 may differ by a
# few such steps between the fused and the explicit path, which round at different places
BF16_ATOL = 2e-2


def test_explicit_and_sdpa_attention_agree_under_bf16():
    torch.manual_seed(0)
    attn = Attention(GPTConfig(n_layer=1, n_head=4, n_embd=64, block_size=32, vocab_size=48)).eval()
    x = torch.randn(2, 32, 64)
    reference = attn(x, causal=True)  # float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = attn(x, causal=True)
        explicit, weights = attn(x, causal=True, need_weights=True)
    assert fast.dtype == explicit.dtype == torch.bfloat16
    assert (fast.float() - explicit.float()).abs().max() < BF16_ATOL
    assert (fast.float() - reference).abs().max() < BF16_ATOL
    assert weights.float().triu(1).abs().max() == 0  # causal: nothing above the diagonal


def test_bf16_training_run_checkpoint_and_sampling(char_data, tmp_path):
    out = tmp_path / "out"
    proc = run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=60",
                      "--eval_interval=30", "--lr_decay_iters=60", "--device=cpu", "--dtype=bfloat16", *SMALL)
    assert "dtype bfloat16" in proc.stdout
    rows = metrics(out)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    model = model_from_checkpoint(load_checkpoint(str(out))).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps float32 weights
    sample = run_script("sample.py", f"--out_dir={out}", "--start=ROMEO:", "--max_new_tokens=30",
                        "--device=cpu", "--dtype=bfloat16")
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout) >= 36
