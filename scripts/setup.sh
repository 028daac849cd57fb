#!/usr/bin/env bash
# Create .venv and install loraregistry with its test extras. torch is pinned to 2.13.0 (a CPU
# build) in pyproject.toml: an unpinned torch would pull a multi-GB CUDA build. Every other
# dependency is held to the tested versions in constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# constraints.txt: the versions the suite last passed on (see its header).
python -m pip install -q -c constraints.txt -e '.[test]'
