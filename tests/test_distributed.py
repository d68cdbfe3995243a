"""Data-parallel training on CPU: torchrun with 2 gloo processes (DDP and FSDP) against one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_script
from model import load_checkpoint
from training import distributed
from training.families import model_from_checkpoint
from weights.common import ConfigError

# global batch: 2 micro-batches of 4 sequences; one process accumulates both, two processes take one each
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
        "--gradient_accumulation_steps=2", "--eval_iters=3", "--eval_interval=5", "--log_interval=5",
        "--warmup_iters=2", "--lr_decay_iters=10", "--learning_rate=3e-3", "--device=cpu", "--dropout=0.0"]


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # every process of both sides: the same kernels, so the same rounding


def torchrun(*args, nproc=2, check=True):
    """Run train.py under torchrun with nproc CPU processes (gloo); a hang fails after 5 minutes with the output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py",
           *args]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "WANDB_MODE": "disabled", **ONE_THREAD})
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"torchrun {args} did not finish in {e.timeout} s:\n{e.stdout}\n{e.stderr}") from None
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_run(a_dir, b_dir, tol=1e-5):
    """Same evaluated losses at every evaluation and the same final weights."""
    a, b = metrics(a_dir), metrics(b_dir)
    assert [r["iter"] for r in a] == [r["iter"] for r in b] == [0, 5, 10]
    for ra, rb in zip(a, b):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=tol)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], abs=tol)
    wa, wb = load_checkpoint(str(a_dir))["model"], load_checkpoint(str(b_dir))["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=tol), k


@pytest.fixture(scope="module")
def single(char_data, tmp_path_factory):
    """The reference: one process, 10 iterations, 2 micro-batches accumulated per step.

    On one thread like each torchrun process: the runs are then equal to the bit here (0.0 difference in
    weights and losses, against 1.2e-7 when this one ran on 2 threads), far inside the tolerance."""
    out = tmp_path_factory.mktemp("single")
    run_script("train.py", f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=10", *TINY, env=ONE_THREAD)
    return out


def test_ddp_equals_one_process_and_resumes(char_data, single, tmp_path):
    out = tmp_path / "ddp"
    first = torchrun(f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=5", *TINY)
    assert "2 process(es), DDP" in first.stdout and first.stdout.count("step 5:") == 1  # rank 0 alone prints
    shutil.copytree(out, tmp_path / "at5")
    proc = torchrun(f"--out_dir={out}", "--max_iters=10", "--init_from=resume")
    assert "resuming" in proc.stdout and "another number" not in proc.stdout
    assert_same_run(single, out)
    ckpt = load_checkpoint(str(out))
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])

    # FSDP resumes the DDP checkpoint (optimizer state is keyed by parameter name) and matches too
    fsdp = torchrun(f"--out_dir={tmp_path / 'at5'}", "--max_iters=10", "--init_from=resume", "--fsdp=True")
    assert "FSDP" in fsdp.stdout
    assert_same_run(single, tmp_path / "at5")
    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "at5"))).eval()  # a gathered, plain checkpoint
    idx = torch.randint(0, model.config.vocab_size, (1, 8))
    assert torch.isfinite(model(idx)[0]).all()


def test_fsdp_from_scratch_equals_one_process(char_data, single, tmp_path):
    out = tmp_path / "fsdp"
    torchrun(f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=10", "--fsdp=True", *TINY)
    assert_same_run(single, out)
    # one process resumes the FSDP run without being told --fsdp=False (it cannot shard, and needs not)
    proc = run_script("train.py", f"--out_dir={out}", "--init_from=resume", "--max_iters=15", env=ONE_THREAD)
    assert "resuming" in proc.stdout and "FSDP" not in proc.stdout and metrics(out)[-1]["iter"] == 15
    assert load_checkpoint(str(out))["train_config"]["fsdp"] is False


def test_accumulation_must_split_evenly(char_data, tmp_path):
    # what torchrun --nproc_per_node=2 gives rank 0; the check comes before joining the process group
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    proc = subprocess.run([sys.executable, "train.py", f"--data_dir={char_data}", f"--out_dir={tmp_path}", *TINY,
                           "--gradient_accumulation_steps=3"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: gradient_accumulation_steps (3) counts micro-batches over all 2 processes; make it a multiple of 2.")


def test_nonfinite_loss_skips_steps_then_stops_keeping_checkpoint(char_data, tmp_path):
    out = tmp_path / "nan"
    common = [f"--data_dir={char_data}", f"--out_dir={out}", "--eval_interval=2", *TINY]
    run_script("train.py", *common, "--max_iters=4")
    before = (out / "ckpt.pt").read_bytes()
    # resumed with an absurd learning rate: one step blows the weights up, then every loss is NaN
    proc = run_script("train.py", f"--out_dir={out}", "--init_from=resume", "--max_iters=20",
                      "--learning_rate=1e30", "--warmup_iters=0", "--max_nonfinite_steps=3", check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.count("step skipped") == 3 and "3 in a row" in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the loss was non-finite for 3 steps"), proc.stderr
    assert (out / "ckpt.pt").read_bytes() == before  # the evaluation at a NaN model saved nothing
    assert load_checkpoint(str(out))["iter_num"] == 4


def test_accumulation_unset_is_one_per_process_and_given_is_global():
    assert distributed.accumulation_steps(None, 1) == 1 and distributed.accumulation_steps(None, 8) == 8
    assert distributed.accumulation_steps(32, 8) == 32 and distributed.accumulation_steps(2, 1) == 2
    with pytest.raises(ConfigError, match=r"^gradient_accumulation_steps \(6\) counts .* multiple of 4\.$"):
        distributed.accumulation_steps(6, 4)
    with pytest.raises(ConfigError, match="resume it on a number of processes that divides 6"):
        distributed.accumulation_steps(6, 4, resumed=True)
    assert distributed.describe_batch(16, 64, 2, 2) == (
        "global batch: 32 sequences, 2,048 tokens per step (2 process(es) x 1 micro-batch(es) of 16 x 64)")


def test_resume_keeps_the_stored_global_batch(char_data, tmp_path):
    # a one-process run without the key stores its effective count (1): two processes cannot resume it
    tiny = [a for a in TINY if not a.startswith("--gradient_accumulation_steps")]
    proc = run_script("train.py", f"--data_dir={char_data}", f"--out_dir={tmp_path}", *tiny, "--max_iters=2")
    assert "global batch: 4 sequences, 128 tokens per step (1 process(es) x 1 micro-batch(es) of 4 x 32)" in proc.stdout
    assert load_checkpoint(str(tmp_path))["train_config"]["gradient_accumulation_steps"] == 1
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}  # checked before joining a group
    proc = subprocess.run([sys.executable, "train.py", f"--out_dir={tmp_path}", "--init_from=resume",
                           "--max_iters=4"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and proc.stderr.startswith(
        "error: this run was trained with gradient_accumulation_steps=1"), proc.stderr
    # evaluating it trains nothing: two processes may (the same losses as one)
    one = run_script("train.py", f"--out_dir={tmp_path}", "--init_from=resume", "--eval_only", env=ONE_THREAD)
    two = torchrun(f"--out_dir={tmp_path}", "--init_from=resume", "--eval_only")
    assert one.stdout.splitlines()[-1] == two.stdout.splitlines()[-1] and "step 2: train loss" in two.stdout


def test_rank_zero_failing_to_write_stops_every_rank_with_one_line(char_data, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "out"  # rank 0 alone writes to out_dir, and cannot
    proc = torchrun(f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=4", *TINY, check=False)
    assert proc.returncode != 0
    assert f"error: cannot write to out_dir '{out}'" in proc.stderr, proc.stderr
    assert "[rank 1] error: rank 0 stopped" in proc.stderr, proc.stderr  # not gloo's "Connection closed by peer"
    assert "[rank1]: Traceback" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr

    # rank 0 alone prepares a dataset, and finds none to prepare
    proc = torchrun(f"--data_dir={tmp_path / 'nodata'}", f"--out_dir={tmp_path / 'out'}", *TINY, check=False)
    assert proc.returncode != 0 and "error: no prepared dataset in" in proc.stderr, proc.stderr
    assert "[rank 1] error: rank 0 stopped: no prepared dataset in" in proc.stderr, proc.stderr
    assert "[rank1]: Traceback" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr

    # rank 0 cannot save the first checkpoint (ckpt.pt is a folder): both ranks stop at that evaluation
    out = tmp_path / "out"
    (out / "ckpt.pt").mkdir(parents=True)
    proc = torchrun(f"--data_dir={char_data}", f"--out_dir={out}", "--max_iters=10", "--overwrite=True", *TINY,
                    check=False)
    assert proc.returncode != 0 and "step 5:" in proc.stdout and "step 10:" not in proc.stdout
    assert "error: cannot save the checkpoint" in proc.stderr, proc.stderr
    assert "[rank 1] error: rank 0 stopped: cannot save the checkpoint" in proc.stderr, proc.stderr
    assert "[rank1]: Traceback" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr
