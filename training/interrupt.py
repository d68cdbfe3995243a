"""Ctrl-C (SIGINT) and SIGTERM while training: stop after the current step and save, or quit at once.

The first signal only sets a flag: the loop finishes its step, saves a checkpoint that resumes exactly,
and ends with `Interrupted`. A second signal raises KeyboardInterrupt wherever the process is: a
checkpoint being written then stays a temporary file that is removed (weights/common.py atomic_write),
so the last complete ckpt.pt is never touched. Under torchrun the agent passes the signal once to every
worker (they run in their own sessions) and kills them 30 s later; the ranks agree to stop at one step.
"""

import os
import signal
import threading

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal; the message says what was saved. `code`: the exit status (128 + signal)."""

    def __init__(self, message: str, code: int = 128 + signal.SIGINT):
        super().__init__(message)
        self.code = code


class GracefulStop:
    """While active (a `with` block on the main thread), SIGINT/SIGTERM ask the loop to stop: `signum` is the
    first signal received (None before); a second one raises KeyboardInterrupt."""

    def __init__(self, notice: str = "", enabled: bool = True):
        self.notice, self.enabled = notice, enabled
        self.signum = None
        self.previous = {}

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def handle(self, signum, frame):
        """The first signal sets `signum` and prints the notice; the second quits at once."""
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.notice:  # os.write: a print() here could re-enter a print the loop is in the middle of
            os.write(2, f"{signal.Signals(signum).name}: {self.notice}\n".encode())

    def requested(self, ranks) -> bool:
        """Whether any rank received a signal (collective under torchrun: every rank stops at the same step)."""
        if not ranks.launched:
            return self.signum is not None
        flag = torch.tensor([0.0 if self.signum is None else float(self.signum)], device=ranks.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and flag.item():
            self.signum = int(flag.item())
        return bool(flag.item())
