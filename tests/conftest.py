import os
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The whole suite (module fixtures too) on one thread: a trained loss then does not depend on the core
    count, and OpenMP does not spin against a busy CPU. Scripts run by run_script use their own defaults."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from seed 0."""
    torch.manual_seed(0)


def copy_dataset(source, folder):
    """Copy a prepared dataset's files (train.bin, val.bin, meta.json) into folder; return folder."""
    for name in ("train.bin", "val.bin", "meta.json"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    """A small char-level dataset (two plays of the built-in corpus) prepared in a temporary folder."""
    from data.corpus import shakespeare_text

    folder = tmp_path_factory.mktemp("chardata")
    text_path = folder / "input.txt"
    text_path.write_text(shakespeare_text(max_plays=2), encoding="utf-8")
    run_script("data/shakespeare_char/prepare.py", "--input", str(text_path), "--out_dir", str(folder))
    return folder


def run_script(*args, check=True, env=None):
    """Run a repo script in a fresh interpreter (with extra environment variables); return the CompletedProcess.

    train.py and sample.py run on the CPU unless the test names a device: the tests mean the CPU (on a GPU,
    --device=auto would train in bf16, where their float32 equalities do not hold)."""
    if args and args[0] in ("train.py", "sample.py") and not any(str(a).startswith("--device=") for a in args):
        args = (*args, "--device=cpu")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc):
    """Check that a script failed with exit 1 and one `error: ...` line; return that line."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked `cuda` on a machine without a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run python tools/gpu_check.py on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
