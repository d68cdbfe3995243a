"""MFU arithmetic, the GPU peak table, and the loss-plot command."""

import json

import pytest
import torch

from conftest import one_line_error, run_script
from model import GPT, GPTConfig
from training.mfu import flops_per_token, mfu, peak_flops


def test_flops_per_token_of_gpt2_124m():
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768))
    d, L, V, T = 768, 12, 50257, 1024
    matmul_weights = L * 12 * d * d + V * d  # qkv 3d^2, proj d^2, MLP 8d^2 per layer; the tied head once
    assert flops_per_token(model, T) == 6 * matmul_weights + 12 * L * T * d
    assert flops_per_token(model, T) == pytest.approx(854.4e6, rel=1e-4)


def test_peak_table_matches_real_device_names():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == peak_flops("NVIDIA A100-PCIE-40GB") == 312e12
    assert peak_flops("NVIDIA L4") == 121e12 and peak_flops("NVIDIA L40S") == 362e12
    assert peak_flops("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_flops("Tesla V100-SXM2-16GB") == 125e12
    assert peak_flops("NVIDIA A10G") is None and peak_flops("Some Future GPU") is None
    assert mfu(tokens_per_s=500_000, flops_per_token=854.3e6, peak=989e12, n_gpus=1) == pytest.approx(0.4319, abs=1e-4)


def write_run(folder, slope):
    folder.mkdir()
    lines = [json.dumps({"iter": i, "train_loss": 4 - slope * i, "val_loss": 4.1 - slope * i, "elapsed_s": i / 10})
             for i in range(0, 50, 10)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"iter\": 50, \"tra")  # last line cut by a crash


def test_plot_two_runs_into_png(tmp_path):
    write_run(tmp_path / "a", 0.01)
    write_run(tmp_path / "b", 0.02)
    png = tmp_path / "loss.png"
    proc = run_script("tools/plot_metrics.py", str(tmp_path / "a" / "metrics.jsonl"), str(tmp_path / "b"),
                      "-o", str(png))
    assert "wrote" in proc.stdout and "a, b" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    bad = run_script("tools/plot_metrics.py", str(tmp_path / "missing"), check=False)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: no metrics file")


def test_plot_skips_bytes_and_values_that_are_not_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'\xff\xfe\n{"iter": "a", "val_loss": null}\n')
    assert "no evaluations" in one_line_error(run_script("tools/plot_metrics.py", str(run), check=False))
    write_run(tmp_path / "good", 0.01)
    line = one_line_error(run_script("tools/plot_metrics.py", str(tmp_path / "good"), "-o",
                                     str(tmp_path / "loss.txt"), check=False))
    assert "cannot write" in line


@pytest.mark.parametrize("args, says", [  # cheap options alongside, so that a regression fails fast
    (["bench.py", "--configs=,"], "unknown config"), (["bench.py", "--batch_size=-1"], "--batch_size"),
    (["bench.py", "--device=bogus"], "device must be"), (["benchmarks/hooks.py", "--repeats=0"], "--repeats"),
    (["benchmarks/hooks.py", "--device=gpu", "--size=small", "--repeats=1", "--passes=1"], "device must be"),
    (["benchmarks/attention_variants.py", "--variants=foo/softmax", "--max_iters=0", "--no_seq2seq"], "attn_score"),
    (["benchmarks/attention_variants.py", "--variants=,", "--max_iters=0", "--no_seq2seq"], "no variant"),
    (["benchmarks/attention_variants.py", "--threads=0", "--max_iters=0", "--no_seq2seq", "--speed_rounds=0"],
     "--threads"),
    (["benchmarks/seq2seq.py", "--out_dir=no-such-run", "--pairs=0"], "--pairs"),
    (["benchmarks/vs_nanogpt.py", "--data_dir=no-such-data", "--seeds=,"], "--seeds"),
    (["benchmarks/modern_recipe.py", "--table", "no-such-run"], "no metrics file"),
    (["benchmarks/reinforce_reversal.py", "no-name"], "is not NAME=OUT_DIR"),
    (["benchmarks/reinforce_reversal.py", "run=no-such-run"], "no checkpoint at no-such-run"),
])
def test_benchmark_scripts_refuse_bad_options_in_one_line(args, says):
    assert says in one_line_error(run_script(*args, check=False))
