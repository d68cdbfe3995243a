import contextlib
import io
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings

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
    run_in_process("data/shakespeare_char/prepare.py", "--input", str(text_path), "--out_dir", str(folder))
    return folder


def run_script(*args, check=True, env=None):
    """Run a repo script in a fresh interpreter (with extra environment variables); return the CompletedProcess.

    train.py and sample.py run on the CPU unless the test names a device: the tests mean the CPU (on a GPU,
    --device=auto would train in bf16, where their float32 equalities do not hold). The script runs on one
    thread (OMP_NUM_THREADS=1, unless `env` says otherwise), as the tests in this process do: on a machine
    whose cores the other pytest workers keep busy, torch's threads wait on each other (100 iterations of a
    tiny model, startup included: 46 s with torch's default threads, 19 s on one, measured on 2 busy cores)."""
    if args and args[0] in ("train.py", "sample.py") and not any(str(a).startswith("--device=") for a in args):
        args = (*args, "--device=cpu")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_in_process(*args, check=True, env=None):
    """Run a script of the repo's root (train.py, sample.py) as `python SCRIPT ARGS` would, but in this process;
    return a CompletedProcess with its exit status and what it wrote to stdout and stderr.

    The script's `if __name__ == "__main__":` block runs (runpy), so its exit status and `error: ...` line are
    the script's own; stdout and stderr are captured at the file descriptors (C-level output included), and the
    warnings it raises are written to stderr, as Python's default filters would show them. What a fresh
    interpreter does and this does not: importing the packages (warnings at import time), reading environment
    variables at import time (PYTHONPATH), the default thread count (here torch's one thread), signals and
    locks between processes: tests of those use run_script. The script runs in the repo's root, with its
    sys.argv, its folder first on sys.path and the environment (WANDB_MODE=disabled and `env`) only for its
    duration; the top-level modules it imported from its own folder (outside the repo's root) are forgotten
    after it."""
    script, *rest = (str(a) for a in args)
    if script in ("train.py", "sample.py") and not any(a.startswith("--device=") for a in rest):
        rest.append("--device=cpu")
    with _script_context([script, *rest], {"WANDB_MODE": "disabled", **(env or {})}), _captured_fds() as output:
        code = _run_main(os.path.join(REPO, script))
    proc = subprocess.CompletedProcess([sys.executable, script, *rest], code, *output)
    if check and code != 0:
        raise AssertionError(f"{args} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run_main(path):
    """Run the script at path as __main__; return the exit status Python would give it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # Python's default filters, not pytest's
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        try:
            runpy.run_path(path, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)  # sys.exit("error: ...") prints its message
        except BaseException:  # noqa: BLE001 - an uncaught exception: Python prints its traceback
            traceback.print_exc()
            code = 1
    for w in caught:
        sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    return code


@contextlib.contextmanager
def _script_context(argv, env):
    """sys.argv, sys.path, the current folder (the repo's root) and environment variables as the script sees them."""
    saved_argv, saved_path, saved_cwd, modules = sys.argv, sys.path[:], os.getcwd(), set(sys.modules)
    saved_env = {k: os.environ.get(k) for k in env}
    folder = os.path.dirname(os.path.join(REPO, argv[0]))
    sys.argv = argv
    sys.path.insert(0, folder)
    os.chdir(REPO)
    os.environ.update(env)
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        for name in set(sys.modules) - modules:  # a sibling of tools/x.py imported as a top-level module must
            file = getattr(sys.modules[name], "__file__", None) or ""  # not shadow a package in later tests
            if folder != REPO and "." not in name and os.path.dirname(file) == folder:
                del sys.modules[name]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _captured_fds():
    """Capture file descriptors 1 and 2 (and sys.stdout, sys.stderr on them); yield [stdout, stderr] filled
    with the captured text on exit."""
    output = []
    streams = sys.stdout, sys.stderr
    for stream in streams:
        stream.flush()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
        sys.stdout, sys.stderr = (open(fd, "w", encoding="utf-8", buffering=1, closefd=False) for fd in (1, 2))
        try:
            yield output
        finally:
            sys.stdout.close()
            sys.stderr.close()
            sys.stdout, sys.stderr = streams
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            for f in (out_file, err_file):
                f.seek(0)
                output.append(f.read().decode("utf-8", errors="replace"))


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
