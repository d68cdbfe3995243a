"""train.py's learning-rate schedule (lr_at): linear warmup, cosine decay to min_lr, constant with decay_lr=False."""

import math

import pytest

from training.config import TrainConfig
from weights.common import ConfigError
from train import lr_at


def test_warmup_is_linear_and_reaches_the_peak():
    cfg = TrainConfig(learning_rate=1e-3, warmup_iters=4, lr_decay_iters=20, min_lr=1e-4)
    # step it of warmup: learning_rate * (it + 1) / (warmup_iters + 1), never 0 at step 0
    assert [lr_at(it, cfg) for it in range(5)] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3], rel=1e-12)


def test_cosine_decay_to_min_lr_then_constant():
    cfg = TrainConfig(learning_rate=1e-3, warmup_iters=4, lr_decay_iters=20, min_lr=1e-4)
    assert lr_at(12, cfg) == pytest.approx(5.5e-4, rel=1e-12)  # half-way: the mean of peak and floor
    # a quarter of the way: min + (1 + cos(pi / 4)) / 2 * (peak - min)
    assert lr_at(8, cfg) == pytest.approx(1e-4 + (1 + math.cos(math.pi / 4)) / 2 * 9e-4, rel=1e-12)
    assert lr_at(19, cfg) == pytest.approx(1e-4 + (1 + math.cos(math.pi * 15 / 16)) / 2 * 9e-4, rel=1e-12)
    assert [lr_at(it, cfg) for it in (20, 21, 500)] == [1e-4, 1e-4, 1e-4]
    decay = [lr_at(it, cfg) for it in range(4, 21)]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly falling from the peak to the floor


def test_no_warmup_and_min_lr_zero():
    cfg = TrainConfig(learning_rate=2e-3, warmup_iters=0, lr_decay_iters=10, min_lr=0.0)
    assert lr_at(0, cfg) == 2e-3
    assert lr_at(5, cfg) == pytest.approx(1e-3, rel=1e-12)
    assert lr_at(10, cfg) == 0.0


def test_decay_lr_false_keeps_the_learning_rate():
    cfg = TrainConfig(learning_rate=3e-4, warmup_iters=10, lr_decay_iters=20, min_lr=1e-5, decay_lr=False)
    assert {lr_at(it, cfg) for it in (0, 5, 10, 15, 20, 1000)} == {3e-4}  # no warmup either, as nanoGPT


def test_wsd_holds_the_peak_then_cools_down_linearly():
    cfg = TrainConfig(learning_rate=1e-3, warmup_iters=2, lr_decay_iters=20, min_lr=1e-4, lr_schedule="wsd",
                      cooldown_frac=0.25)
    assert lr_at(1, cfg) == pytest.approx(1e-3 * 2 / 3, rel=1e-12)  # the same warmup
    assert {lr_at(it, cfg) for it in range(2, 16)} == {1e-3}  # stable until the last quarter (iteration 15)
    assert [lr_at(it, cfg) for it in (16, 18, 20)] == pytest.approx([1e-3 - 0.2 * 9e-4, 1e-3 - 0.6 * 9e-4, 1e-4],
                                                                    rel=1e-12)
    with pytest.raises(ConfigError, match="lr_schedule must be"):
        TrainConfig(lr_schedule="linear")
