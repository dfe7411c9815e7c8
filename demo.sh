#!/usr/bin/env bash
# The main job on a bundled default: generate a seeded synthetic whole-body PET/CT case,
# segment it with the bundled 5-fold ensemble, score it against the phantom's truth and
# write the mask and a MIP picture under ./demo_output (or the folder given with --out).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/python" -m petseg demo "$@"
