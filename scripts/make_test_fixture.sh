#!/usr/bin/env bash
# Regenerate the container test's fixture: test/input (one small synthetic case in the
# grand-challenge layout) and test/expected_output (the mask `petseg predict` makes from
# it on this machine with the bundled weights).
#
# Usage: scripts/make_test_fixture.sh [options]
#   --input-only        only regenerate test/input
#   --expected-only     only regenerate the expected mask (from the current test/input)
#   --weights DIR       weights folder for the expected mask (default weights)
#   --input DIR         where the case goes / is read from (default test/input)
#   --expected DIR      where the expected output goes (default test/expected_output)
#   -h, --help          this help
# The case: `petseg phantom --size small` study (seed PHANTOM_SEED below, 5 lesions):
# images/pet/<uuid>.mha (SUV, 96 x 96 x 128 voxels, LAS direction) and
# images/ct/<uuid>.mha (HU, on the PET grid), under 1 MB; the same seed writes the same
# files and uuids. Rerun it whenever the bundled weights change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "make_test_fixture.sh: $*" >&2; exit 1; }

do_input=1 do_expected=1 weights=weights input=test/input expected=test/expected_output
while (($#)); do
  case "$1" in
    --input-only) do_expected=0; shift ;;
    --expected-only) do_input=0; shift ;;
    --weights) weights="${2:?--weights needs a value}"; shift 2 ;;
    --input) input="${2:?--input needs a value}"; shift 2 ;;
    --expected) expected="${2:?--expected needs a value}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1'; see --help" ;;
  esac
done
# Paths given relative to the caller's directory stay valid after the cd below.
weights="$(realpath -m "$weights")" input="$(realpath -m "$input")"
expected="$(realpath -m "$expected")"
cd "$root"
PHANTOM_SEED=2
python="${PETSEG_PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
export PYTHONPATH="$root"

if ((do_input)); then
  # One lesion-bearing study of the project's whole-body phantom, small size, CT on the
  # PET grid (a CT on its own finer grid would double the fixture past 1 MB).
  mkdir -p "$(dirname "$input")"
  tmp="$(mktemp -d "$(dirname "$input")/.input.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m petseg phantom "$tmp/phantom" --cases 1 --seed "$PHANTOM_SEED" \
    --layout challenge --size small --ct-grid pet --negative-fraction 0 >&2
  mv "$tmp/phantom/case_000/images" "$tmp/images"
  rm -rf "$tmp/phantom" "$input"
  mv "$tmp" "$input"
  chmod -R a+rX "$input"  # the image's unprivileged user reads it through a mount
  trap - EXIT
  echo "input case: $(cd "$input" && find images -type f | sort | tr '\n' ' ')" \
    "($(du -sh "$input" | cut -f1))" >&2
fi

if ((do_expected)); then
  [[ -f "$weights/manifest.json" ]] || die "$weights: no manifest.json; pass --weights DIR"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m petseg predict --input "$input" --output "$tmp" --weights "$weights" \
    --device cpu >&2
  mkdir -p "$(dirname "$expected")"
  rm -rf "$expected"
  mkdir -p "$expected/images"
  mv "$tmp/images/automated-petct-lesion-segmentation" "$expected/images/"
  echo "expected mask: $(ls "$expected"/images/automated-petct-lesion-segmentation)" \
    "(weights $weights)" >&2
fi
