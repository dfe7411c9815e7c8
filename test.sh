#!/usr/bin/env bash
# Run the project's test suite (pytest) in the pinned virtual environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
scripts/bootstrap.sh
.venv/bin/python -m ruff check petseg test benchmarks process.py
.venv/bin/python -m pytest "$@"
