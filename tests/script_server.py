"""A fork server for tests/conftest.py's run_script: it imports torch and the project once, then runs each
requested script in a forked child, a process of its own, as `python SCRIPT ARGS` would run it.

The child gets the request's working folder, environment, argv, stdout and stderr files, and sys.path with
the script's folder first; then the script runs as __main__ at the top level of this file, so an uncaught
exception, sys.exit("error: ...") and the exit status are Python's own. What it skips is the import of the
packages this server preloaded (and what an environment variable would change in them at import time),
and the interpreter's teardown at exit (atexit functions run, stdout and stderr are flushed). Requests are JSON lines on stdin; the reply
to each is its exit status (negative: the signal that ended it), after the child has ended.
"""

import atexit
import json
import os
import runpy
import signal
import sys

SERVER_PATH = sys.path[:]  # as Python set it for this file: its folder first, then the site's
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import matplotlib.pyplot  # noqa: E402,F401  the costly imports, done once (pyplot picks its backend on first use)
import torch  # noqa: E402,F401
import sample  # noqa: E402,F401
import train  # noqa: E402,F401

del sys.path[1]


def serve() -> dict:
    """Answer requests until stdin closes (then exit); return, in a forked child, the request it is to run."""
    while line := sys.stdin.readline():
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        _, status = os.waitpid(pid, 0)
        print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
    sys.exit(0)


def become(request: dict) -> None:
    """Turn this forked child into the process that runs the request's script."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.stdin = open(os.devnull)  # not the requests' pipe
    os.dup2(sys.stdin.fileno(), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        with open(path, "wb") as f:
            os.dup2(f.fileno(), fd)
    sys.argv = request["argv"]
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]  # as Python reads it
    sys.path[:] = [os.path.dirname(os.path.realpath(sys.argv[0])), *extra, *SERVER_PATH[1:]]  # links resolved
    signal.alarm(request["timeout"])  # a hang ends in SIGALRM, an exit status the test reports


def run() -> int:
    """Run the script as __main__; return the exit status Python would give it (printing what Python prints)."""
    try:
        runpy.run_path(os.path.abspath(sys.argv[0]), run_name="__main__")  # __main__.__file__ is absolute
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("error: ...")
        return 1
    except BaseException:  # noqa: BLE001 - uncaught: Python's traceback
        sys.excepthook(*sys.exc_info())
        return 1


if __name__ == "__main__":
    become(serve())
    code = run()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # without tearing the interpreter down: seconds on a busy machine, and nothing to see
