"""One run per out_dir: an advisory lock held for the run's whole life.

The lock is `fcntl.flock` on `out_dir/.lock`, which also holds the holder's process id. The operating
system drops it when the process ends in any way (a SIGKILL or a crash included), so a dead run never
leaves a stale lock behind; the file itself stays and is harmless. Under torchrun only rank 0 takes it
(the other ranks never write to out_dir).
"""

import fcntl
import os
import time

from weights.common import ConfigError, UserError

LOCK_NAME = ".lock"


class OutDirBusy(UserError, RuntimeError):
    """Another process holds out_dir's lock."""


def holder_pid(path: str) -> str:
    """The pid written in a held lock file ('unknown' if the holder has not written it yet)."""
    for _ in range(20):  # the holder writes its pid right after it takes the lock
        try:
            with open(path) as f:
                pid = f.read().strip()
        except OSError:
            pid = ""
        if pid.isdigit():
            return pid
        time.sleep(0.05)
    return "unknown"


def lock_out_dir(out_dir: str, create: bool = True):
    """Take out_dir's lock and write this process's id into it; return the open lock file (keep it open:
    closing it, or the process ending, releases the lock). With create=False an out_dir that does not
    exist, or cannot be written, is not locked (None): a run that writes nothing there needs no lock."""
    path = os.path.join(out_dir, LOCK_NAME)
    made = create and not os.path.isdir(out_dir)
    try:
        if create:
            os.makedirs(out_dir, exist_ok=True)
        handle = open(path, "a+")
        handle.made_dir = made  # release() removes a folder this run made and left empty
    except OSError as e:
        if not create:
            return None
        raise ConfigError(f"cannot write to out_dir {out_dir!r} ({e.strerror}); pick a writable --out_dir.") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutDirBusy(f"out_dir {out_dir} is in use by another run (pid {holder_pid(path)}); wait for it to end or "
                         "stop it, or pick another --out_dir.") from None
    except OSError:  # a file system without locks: run unprotected rather than not at all
        return handle
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def release(handle) -> None:
    """Drop out_dir's lock; a folder the lock itself made, which holds nothing but the lock file (the run
    stopped on an error before writing anything), is removed, so a mistyped command leaves no empty out_dir."""
    folder = os.path.dirname(handle.name)
    if getattr(handle, "made_dir", False) and os.listdir(folder) == [LOCK_NAME]:
        os.remove(handle.name)  # still locked: no other run can take this folder in between
        os.rmdir(folder)
    handle.close()
