#!/usr/bin/env bash
# Save a built petseg image as a gzipped tarball for upload to grand-challenge.org, with
# its sha256 beside it, and the weights as the model tarball for the algorithm's Models
# page (unpacked into /opt/ml/model at run time), so image and weights upload apart.
#
# Usage: ./export.sh [options]
#   --image NAME:TAG     image to save (default petseg:VERSION, VERSION from pyproject.toml)
#   --cpu                default image petseg:VERSION-cpu (the local CPU build)
#   --output FILE        tarball to write (default <repo>/out/petseg-VERSION[-cpu].tar.gz)
#   --weights DIR        weights folder for the model tarball (default <repo>/weights)
#   --model-output FILE  model tarball to write (default <repo>/out/model.tar.gz)
#   --no-model           do not write the model tarball
#   --model-only         write only the model tarball (no Docker needed)
#   -h, --help           this help
# Writes FILE and FILE.sha256 (`sha256sum -c` format) atomically and prints the sha256,
# for the image and for the model tarball (manifest.json and the folds it lists, each
# checked against the manifest's sha256 before packing). Uses pigz when installed, gzip
# otherwise. PETSEG_PYTHON: the Python with petseg (default <repo>/.venv/bin/python).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "export.sh: $*" >&2; exit 1; }

image="" output="" suffix="" weights="$root/weights" model_output="$root/out/model.tar.gz"
model=1 image_too=1
while (($#)); do
  case "$1" in
    --weights) weights="${2:?--weights needs a value}"; shift 2 ;;
    --model-output) model_output="${2:?--model-output needs a value}"; shift 2 ;;
    --no-model) model=0; shift ;;
    --model-only) image_too=0; shift ;;
    --image) image="${2:?--image needs a value}"; shift 2 ;;
    --cpu) suffix=-cpu; shift ;;
    --output) output="${2:?--output needs a value}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1'; see ./export.sh --help" ;;
  esac
done

if ((model)); then
  python="${PETSEG_PYTHON:-$root/.venv/bin/python}"
  echo "export.sh: packing $weights into $model_output" >&2
  model_sum="$(PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m \
    petseg.training.model_tarball "$weights" "$model_output")" || die "model tarball not written"
  echo "export.sh: $(du -h "$model_output" | cut -f1)  sha256 $model_sum (model)" >&2
  ((image_too)) || { echo "$model_sum"; exit 0; }
fi

version="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/pyproject.toml" | head -n 1)"
[[ -n "$version" ]] || die "$root/pyproject.toml: no version found; add version = \"X.Y.Z\""
image="${image:-petseg:$version$suffix}"
output="${output:-$root/out/petseg-$version$suffix.tar.gz}"
command -v docker >/dev/null || die "docker not found; install Docker (root: scripts/docker_setup.sh)"
docker image inspect "$image" >/dev/null 2>&1 || die "image $image not found; build it with ./build.sh"
mkdir -p "$(dirname "$output")"

compress=(gzip -c)
command -v pigz >/dev/null && compress=(pigz -c)
tmp="$(mktemp "$output.XXXXXX.tmp")"
trap 'rm -f "$tmp" "$tmp.sha256"' EXIT
echo "export.sh: saving $image to $output" >&2
docker save "$image" | "${compress[@]}" >"$tmp"
sum="$(sha256sum "$tmp" | cut -d' ' -f1)"
echo "$sum  $(basename "$output")" >"$tmp.sha256"
chmod 644 "$tmp" "$tmp.sha256"  # mktemp makes 0600
mv -f "$tmp" "$output"
mv -f "$tmp.sha256" "$output.sha256"
echo "export.sh: $(du -h "$output" | cut -f1)  sha256 $sum" >&2
echo "$sum"
