#!/usr/bin/env bash
# Run every check of the project: ruff, hadolint and shellcheck (scripts/lint.sh, pinned in
# .venv), the pytest suite, then the container test (build the inference image, run it on
# test/input with the challenge's docker flags, check its output; build the train image,
# check `--help`). The last lines name every part's time and every linter skipped.
#
# Usage: ./test.sh [pytest arguments]
# Environment:
#   PETSEG_REQUIRE_DOCKER=1   fail when no Docker daemon answers (default: skip the
#                             container part with a message); .ci/run sets it
#   PETSEG_REQUIRE_DCIODVFY=1 fail when dciodvfy (dicom3tools) is missing instead of skipping
#                             the DICOM SEG validation; .ci/run sets it after
#                             scripts/system_setup.sh installed it
#   PETSEG_REQUIRE_XVFB=1     fail when Xvfb is missing instead of skipping the napari test
#                             (test/test_serve_napari.py); .ci/run sets it
#   PETSEG_REQUIRE_LINT=1     fail when hadolint or shellcheck is missing instead of skipping
#                             it with a SKIPPED line (scripts/lint.sh); .ci/run sets it
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
skipped=()
report() {
  local t
  for t in "${timings[@]}"; do echo "test.sh: $t" >&2; done
  if ((${#skipped[@]})); then
    echo "test.sh: SKIPPED (not installed): ${skipped[*]}; PETSEG_REQUIRE_LINT=1 makes" \
      "that a failure" >&2
  fi
}
trap report EXIT

part bootstrap scripts/bootstrap.sh
# hadolint and shellcheck come pinned in .venv (requirements-dev.txt); a system one also works
export PATH="$root/.venv/bin:$PATH"
part lint scripts/lint.sh
for tool in hadolint shellcheck; do command -v "$tool" >/dev/null || skipped+=("$tool"); done
part pytest .venv/bin/python -m pytest "$@"
part container scripts/container_test.sh
