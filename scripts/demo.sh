#!/usr/bin/env bash
# Set up (if needed) and run the demo on generated videos; extra arguments go to `adafuse demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/adafuse demo "$@"
