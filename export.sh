#!/usr/bin/env bash
# Save a built petseg image as a gzipped tarball for upload to grand-challenge.org, with
# its sha256 beside it.
#
# Usage: ./export.sh [options]
#   --image NAME:TAG   image to save (default petseg:VERSION, VERSION from pyproject.toml)
#   --cpu              default image petseg:VERSION-cpu (the local CPU build)
#   --output FILE      tarball to write (default <repo>/out/petseg-VERSION[-cpu].tar.gz)
#   -h, --help         this help
# Writes FILE and FILE.sha256 (`sha256sum -c` format) atomically and prints the sha256.
# Uses pigz when installed, gzip otherwise.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "export.sh: $*" >&2; exit 1; }

image="" output="" suffix=""
while (($#)); do
  case "$1" in
    --image) image="${2:?--image needs a value}"; shift 2 ;;
    --cpu) suffix=-cpu; shift ;;
    --output) output="${2:?--output needs a value}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1'; see ./export.sh --help" ;;
  esac
done

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
