import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The whole suite (module fixtures too) on one thread: a trained loss then does not depend on the core
    count, and OpenMP does not spin against a busy CPU. Scripts run by run_script run on one thread too."""
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


def run_script(*args, check=True, env=None, fresh=False):
    """Run a repo script as `python SCRIPT ARGS` (with extra environment variables); return the CompletedProcess.

    The script runs in a process of its own, forked from a server that has imported torch and the project
    (run_forked); with fresh=True (or `python -c`) in a fresh interpreter, which also sees what happens at
    import time. train.py and sample.py run on the CPU unless the test names a device: the tests mean the CPU
    (on a GPU, --device=auto would train in bf16, where their float32 equalities do not hold)."""
    if args and args[0] in ("train.py", "sample.py") and not any(str(a).startswith("--device=") for a in args):
        args = (*args, "--device=cpu")
    if fresh or str(args[0]).startswith("-"):
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                              env={**script_env(), **(env or {})})
    else:
        proc = run_forked(args, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def script_env():
    """The environment scripts run in: this process's, without wandb, on one thread (OMP_NUM_THREADS=1).

    One thread, as the tests in this process: on cores that the other pytest worker keeps busy, torch's
    threads wait on each other (100 iterations of a tiny model, startup included: 46 s with torch's default
    threads, 19 s on one, measured on 2 busy cores)."""
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


_server = None  # this pytest process's tests/script_server.py, started on first use


def run_forked(argv, cwd=REPO, env=None, timeout=300):
    """Run `python SCRIPT ARGS` (argv, without `python`) in a process of its own, forked from a server that
    has imported torch and the project (tests/script_server.py); return the CompletedProcess (exit status,
    stdout, stderr). A fresh interpreter spends seconds importing torch (4 to 40 s measured on 2 busy cores);
    a forked one, none. The environment is script_env() and `env`, applied when the script starts (so a
    variable read at import time by a preloaded package has no effect; PYTHONPATH is put on sys.path as
    Python does). A run past `timeout` seconds is ended by SIGALRM (exit status -14)."""
    global _server
    if not hasattr(os, "fork"):  # Windows: a fresh interpreter
        return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                              env={**script_env(), **(env or {})}, timeout=timeout)
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "script_server.py")], cwd=REPO,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=script_env())
        atexit.register(_server.stdin.close)  # the server exits when its stdin closes
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, name) for name in ("stdout", "stderr")]
        request = {"argv": argv, "cwd": str(cwd), "env": {**script_env(), **(env or {})}, "stdout": paths[0],
                   "stderr": paths[1], "timeout": timeout}
        _server.stdin.write(json.dumps(request) + "\n")
        _server.stdin.flush()
        reply = _server.stdout.readline()
        if not reply:
            raise AssertionError(f"tests/script_server.py stopped (exit status {_server.wait()}) running {argv}")
        output = []
        for path in paths:
            with open(path, encoding="utf-8", errors="replace") as f:
                output.append(f.read())
    return subprocess.CompletedProcess([sys.executable, *argv], json.loads(reply), *output)


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
