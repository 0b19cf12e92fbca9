#!/usr/bin/env bash
# Set up (if needed) and run the lint and the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check adafuse_plugin tests benchmarks
.venv/bin/ruff format --check adafuse_plugin tests benchmarks
.venv/bin/mypy  # the whole package (pyproject.toml [tool.mypy])
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" .venv/bin/python -m pytest -q
