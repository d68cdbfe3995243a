"""tests/script_server.py runs a script as a fresh `python SCRIPT ARGS` would: same exit status, output,
working folder, argv, environment, sys.path and module state for each run."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import run_forked, script_env

SCRIPT = r'''
import os, sys
import helper_module  # found through PYTHONPATH
print("argv", sys.argv[1:])
print("cwd", os.path.basename(os.getcwd()))
print("env", os.environ.get("PROBE_VAR"))
print("path0", os.path.basename(sys.path[0]))
print("main", __name__, os.path.basename(__file__))
import train
train.PROBE = getattr(train, "PROBE", 0) + 1  # a module changed by one run must be fresh in the next
print("probe", train.PROBE)
kind = sys.argv[1]
if kind == "error":
    sys.exit("error: something the user did; do something else.")
if kind == "raise":
    raise ValueError("boom")
if kind == "code":
    sys.stdout.flush()
    os._exit(3)
if kind == "kill":
    os.kill(os.getpid(), 15)
print("done", helper_module.VALUE)
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    (folder / "scripts").mkdir()
    (folder / "lib").mkdir()
    (folder / "scripts" / "probe.py").write_text(SCRIPT)
    (folder / "lib" / "helper_module.py").write_text("VALUE = 42\n")
    return folder


def fresh(argv, cwd, env):
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                          env={**script_env(), **env}, timeout=300)


@pytest.mark.parametrize("kind", ["ok", "error", "raise", "code", "kill"])
def test_a_forked_run_is_a_fresh_interpreters_run(script, kind):
    env = {"PYTHONPATH": str(script / "lib") + os.pathsep + os.path.dirname(os.path.dirname(__file__)),
           "PROBE_VAR": kind}
    argv = [str(script / "scripts" / "probe.py"), kind, "--flag=x y"]
    expected = fresh(argv, script, env)
    for _ in range(2):  # a second run starts from the server's state again, not from the first run's
        got = run_forked(argv, cwd=script, env=env)
        assert got.returncode == expected.returncode
        assert got.stdout == expected.stdout
        if kind == "raise":  # the same traceback's last line (frames inside runpy differ)
            assert got.stderr.strip().splitlines()[-1] == expected.stderr.strip().splitlines()[-1] == "ValueError: boom"
        else:
            assert got.stderr == expected.stderr
    assert "probe 1" in expected.stdout
    assert {"ok": 0, "error": 1, "raise": 1, "code": 3, "kill": -signal.SIGTERM}[kind] == expected.returncode
