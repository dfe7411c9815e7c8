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
# The case: images/pet/<uuid>.mha (SUV, LAS direction, 2.0364 x 2.0364 x 3 mm) and
# images/ct/<uuid>.mha (HU, on a finer grid of its own), with fixed uuids so a
# regenerated fixture keeps its names. Run it again whenever the weights change.
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
python="${PETSEG_PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
export PYTHONPATH="$root"

if ((do_input)); then
  mkdir -p "$(dirname "$input")"
  tmp="$(mktemp -d "$(dirname "$input")/.input.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  "$python" - "$tmp" <<'PY'
"""One small case with real-world geometry: PET on an LAS grid, CT on a finer one."""
import sys
from pathlib import Path

sys.path.insert(0, "test")
from inference_synthetic import finer_ct_geometry, make_case  # noqa: E402

from petseg.io import write_image  # noqa: E402

PET_UUID = "5f0c7e2a-3d1b-4c8e-9a6f-2b7d4e1c0a93"
CT_UUID = "c81e4b6d-0f2a-47d5-b3e9-6a1f8c2d5e07"
out = Path(sys.argv[1])
pet, _, _, _ = make_case()
_, ct, _, _ = make_case(ct_geometry=finer_ct_geometry(pet))
write_image(pet, out / "images" / "pet" / f"{PET_UUID}.mha")
write_image(ct, out / "images" / "ct" / f"{CT_UUID}.mha")
print(f"input case: PET {pet.GetSize()} at {pet.GetSpacing()} mm, CT {ct.GetSize()}",
      file=sys.stderr)
PY
  rm -rf "$input"
  mv "$tmp" "$input"
  chmod -R a+rX "$input"  # the image's unprivileged user reads it through a mount
  trap - EXIT
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
