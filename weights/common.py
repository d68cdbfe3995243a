"""Shared by every package: the errors and IGNORE_INDEX (defined in weights/errors.py, the leaf the core
imports, and re-exported here), and atomic writing. It imports nothing of the project but weights/errors.py.

- `UserError`, `ConfigError`, `HookNameError`, `IGNORE_INDEX`: see weights/errors.py.
- `flatten`: a config dataclass as the flat dict that checkpoints, exports and the command line use.
- `atomic_write`: the one way files are written: to a temporary file, then renamed over the target,
  so a crash never leaves half a file (or a lost old one) under the real name. `atomic_folder` does the
  same for a whole folder (a Hugging Face export): built beside the target, then swapped in.
"""

import dataclasses
import glob
import os
import re
import shutil
from contextlib import contextmanager

from weights.errors import IGNORE_INDEX, ConfigError, HookNameError, UserError  # noqa: F401 (re-exported)


def flatten(config) -> dict:
    """A config as a flat dict, a nested config's fields as `<field>_<name>` (hard_attention_estimator):
    the keys of the command line, config files, checkpoints and Hugging Face exports."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            values.update({f"{f.name}_{k}": v for k, v in flatten(value).items()})
        else:
            values[f.name] = value
    return values


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists, owned by someone else; or an id we cannot judge: leave its file alone
    return True


def remove_path(path: str) -> None:
    """Remove a file, a link or a folder with everything in it."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def temporary_path(path: str) -> str:
    """A temporary name next to path for this process, after removing the ones that processes killed
    mid-write left behind (their process is gone), which would otherwise stay on disk for good."""
    for stale in glob.glob(glob.escape(path) + ".tmp*"):
        pid = re.fullmatch(r"\.tmp(\d+)(?:\.tmp\d+)*", stale[len(path):])  # nested: a staged file's own temporary
        if pid and int(pid.group(1)) != os.getpid() and not process_alive(int(pid.group(1))):
            try:
                remove_path(stale)
            except OSError:
                pass  # another process removed it first
    return f"{path}.tmp{os.getpid()}"


@contextmanager
def atomic_write(path: str, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file next to `path` for writing; when the block ends without an error, flush it
    to disk and rename it onto `path`. On an error the temporary file is removed and `path` is untouched."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    tmp = temporary_path(path)  # also clears what a killed writer left
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_folder(path: str):
    """Yield a new empty folder beside `path` to fill; when the block ends without an error, swap it in for
    `path` (what `path` held is removed after the swap, so no file of it stays). On an error `path` is untouched
    and the new folder removed. OSError (an unwritable place) reaches the caller."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    staging = temporary_path(path)  # also clears the folders that killed writers left
    os.mkdir(staging)
    try:
        yield staging
        old = None
        if os.path.lexists(path):
            old = f"{path}.old{os.getpid()}"
            os.rename(path, old)  # a crash before the next rename leaves the previous folder here, whole
        os.rename(staging, path)
        if old is not None:
            remove_path(old)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
