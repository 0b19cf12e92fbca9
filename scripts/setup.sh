#!/usr/bin/env bash
# Create .venv with the pinned, known-good stack (see constraints.txt) and install the
# package with its extras. Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[mmaction,demo,tests]"
