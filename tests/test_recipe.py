"""Options of the faster recipe (issue 34 item 4, docs/benchmarks.md "Time to a target loss"): Muon's
orthogonaliser (Polar Express), its products in bfloat16 on the CPU, and NorMuon's per-neuron scaling."""

import pytest
import torch

from model import GPT, ConfigError, GPTConfig
from train import make_optimizer
from training.config import TrainConfig
from training.muon import POLAR_EXPRESS, Muon, normalize_neurons, orthogonalize


def polynomial_reference(G: torch.Tensor, coefficients, scale: float) -> torch.Tensor:
    """float64: the quintics applied to each singular value of G / (scale ||G||_F), through an SVD."""
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    s = S / (scale * G.double().norm())
    for a, b, c in coefficients:
        s = a * s + b * s ** 3 + c * s ** 5
    return U @ torch.diag(s) @ Vh


@pytest.mark.parametrize("shape", [(48, 32), (32, 96)])
def test_polar_express_applies_its_own_quintic_at_each_step(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    X = orthogonalize(G, 5, method="polar_express")
    assert torch.allclose(X.double(), polynomial_reference(G, POLAR_EXPRESS, 1.02), atol=2e-4)
    # nearer the polar factor U V^T than Jordan's repeated quintic with the same 5 steps
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    polar = U @ Vh
    assert (X.double() - polar).norm() < 0.7 * (orthogonalize(G, 5).double() - polar).norm()
    s = torch.linalg.svdvals(X.double())
    assert s.min() > 0.8 and s.max() < 1.2
    with pytest.raises(ValueError, match="5 steps"):
        orthogonalize(G, 6, method="polar_express")


def test_bf16_products_on_the_cpu():
    G = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(1))
    full, half = orthogonalize(G), orthogonalize(G, bf16=True)
    assert half.dtype == torch.float32 and half.shape == G.shape
    assert torch.allclose(half, full, atol=0.05)  # the same polar factor, to bfloat16's precision
    assert not torch.allclose(half, full, atol=1e-4)  # but computed in bfloat16: rounded


def test_normalize_neurons_evens_out_the_rows_and_keeps_the_norm():
    update = torch.randn(1, 12, 4) * torch.linspace(0.1, 3.0, 12)[None, :, None]  # tall: a neuron is a row
    moments = torch.zeros(1, 12, 1)
    out = normalize_neurons(update.clone(), moments, beta2=0.95)
    assert torch.allclose(moments, 0.05 * update.square().mean(-1, keepdim=True))  # the running mean, updated
    row_rms = out.square().mean(-1).sqrt()
    assert torch.allclose(row_rms, row_rms.mean().expand_as(row_rms), rtol=1e-4)  # every neuron the same size
    assert torch.allclose(out.norm(), update.norm(), rtol=1e-5)
    wide = torch.randn(1, 4, 12)  # wide: a neuron is a column
    assert normalize_neurons(wide, torch.zeros(1, 1, 12), 0.95).square().mean(-2).std() < 1e-4


def test_normuon_changes_muons_step_by_neuron():
    torch.manual_seed(0)
    grad = torch.randn(16, 8) * torch.linspace(0.1, 3.0, 16)[:, None]
    steps = {}
    for normuon in (0.0, 0.95):
        w = torch.nn.Parameter(torch.zeros(16, 8))
        w.grad = grad.clone()
        Muon([w], lr=0.1, normuon=normuon).step()
        steps[normuon] = w.detach()
    assert torch.allclose(steps[0.0].norm(), steps[0.95].norm(), rtol=1e-4)  # the same size of step
    rms = steps[0.95].square().mean(-1).sqrt()
    assert rms.std() / rms.mean() < 1e-3 < steps[0.0].square().mean(-1).sqrt().std() / rms.mean()


def test_train_config_passes_the_muon_options_and_refuses_bad_ones():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    cfg = TrainConfig(optimizer="muon", muon_method="polar_express", normuon=0.9, muon_bf16=True)
    group = make_optimizer(model, cfg, "cpu").optimizers["muon"].param_groups[0]
    assert (group["method"], group["bf16"], group["normuon"]) == ("polar_express", True, 0.9)
    with pytest.raises(ConfigError, match="muon_method"):
        TrainConfig(muon_method="svd")
    with pytest.raises(ConfigError, match="normuon"):
        TrainConfig(normuon=1.0)
