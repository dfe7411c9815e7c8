#!/usr/bin/env bash
# Build a petseg image and tag it with the version from pyproject.toml.
#
# Usage: ./build.sh [options] [-- extra docker build arguments]
#   --target inference|train  image to build (default inference, the grand-challenge
#                             algorithm; train has the `petseg` command as entrypoint)
#   --base-image IMAGE        base image (default: the Dockerfile's pinned CUDA PyTorch image)
#   --cpu                     build on the local CPU base image made by
#                             scripts/docker_setup.sh (no registry needed) and feed the
#                             CPU torch wheel in through .whl/; tag gets a -cpu suffix
#   --weights DIR             weights folder baked into the inference image (default
#                             weights/); must be let in by .dockerignore: weights/ or
#                             out/test-weights/
#   --tag NAME:TAG            image tag (default petseg:VERSION or petseg-train:VERSION)
#   --network MODE            network of the build's RUN steps (default: host when the
#                             daemon has no bridge network, else docker's default)
#   -q, --quiet               only print the tag
#   -h, --help                this help
# Prints the image tag as the last line on stdout. Environment:
#   PETSEG_CPU_BASE_IMAGE  local CPU base image (default petseg-base-cpu:bookworm)
#   PETSEG_TORCH_WHEEL     CPU torch wheel for --cpu (default: torch-<pin>+cpu-cp311 wheel
#                          found in pip's find-links folders)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; exit 1; }

target=inference base_image="" cpu=0 weights="" tag="" network="" quiet=0
extra=()
while (($#)); do
  case "$1" in
    --target) target="${2:?--target needs a value}"; shift 2 ;;
    --base-image) base_image="${2:?--base-image needs a value}"; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --weights) weights="${2:?--weights needs a value}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --network) network="${2:?--network needs a value}"; shift 2 ;;
    -q | --quiet) quiet=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1'; see ./build.sh --help" ;;
  esac
done
[[ "$target" == inference || "$target" == train ]] \
  || die "--target must be inference or train, not '$target'"
cd "$root"

version="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)"
[[ -n "$version" ]] || die "pyproject.toml: no version found; add version = \"X.Y.Z\""
name=petseg
[[ "$target" == train ]] && name=petseg-train
suffix=""

command -v docker >/dev/null || die "docker not found; install Docker (root: scripts/docker_setup.sh)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers; start one (root: scripts/docker_setup.sh)"

build_args=()
if ((cpu)); then
  [[ -z "$base_image" ]] || die "--cpu and --base-image exclude each other"
  base_image="${PETSEG_CPU_BASE_IMAGE:-petseg-base-cpu:bookworm}"
  docker image inspect "$base_image" >/dev/null 2>&1 \
    || die "local base image $base_image is missing; build it with scripts/docker_setup.sh (root)"
  torch_pin="$(sed -n 's/^torch==\([^ #]*\).*/\1/p' requirements.txt)"
  wheel="${PETSEG_TORCH_WHEEL:-}"
  if [[ -z "$wheel" ]]; then
    links="${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true)"
    for dir in $links; do
      for candidate in "$dir"/torch-"$torch_pin"+cpu-cp311-*.whl; do
        [[ -f "$candidate" ]] && wheel="$candidate" && break 2
      done
    done
  fi
  [[ -n "$wheel" && -f "$wheel" ]] || die "no CPU torch $torch_pin wheel for Python 3.11 found;" \
    "set PETSEG_TORCH_WHEEL=/path/to/torch-$torch_pin+cpu-cp311-...whl"
  mkdir -p .whl
  if [[ ! -f ".whl/$(basename "$wheel")" ]]; then
    ln -f "$wheel" .whl/ 2>/dev/null || cp "$wheel" .whl/
  fi
  suffix=-cpu
fi
if ((!cpu)) && compgen -G ".whl/*.whl" >/dev/null; then
  echo "build.sh: feeding local wheels from .whl/: $(cd .whl && echo *.whl) (a CPU torch" \
    "wheel left by --cpu is not installed over the base image's torch; delete .whl/ to" \
    "shrink the build context)" >&2
fi
[[ -n "$base_image" ]] && build_args+=(--build-arg "BASE_IMAGE=$base_image")
if [[ -n "$weights" ]]; then
  [[ "$target" == inference ]] || die "--weights only applies to --target inference"
  weights_rel="$(realpath --relative-to="$root" "$weights")"
  [[ -f "$weights_rel/manifest.json" ]] || die "$weights: no manifest.json; pass a weights folder"
  [[ "$weights_rel" != ..* ]] || die "$weights: must lie inside $root (the build context)"
  build_args+=(--build-arg "WEIGHTS_DIR=$weights_rel")
fi
if [[ -z "$network" ]] && ! docker network inspect bridge >/dev/null 2>&1; then
  network=host  # a daemon started with --bridge=none gives RUN steps no route out
fi
[[ -n "$network" ]] && build_args+=(--network "$network")
[[ -n "$tag" ]] || tag="$name:$version$suffix"

echo "build.sh: building $tag (target $target, base ${base_image:-pinned in Dockerfile})" >&2
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# The legacy builder: BuildKit/buildx is not available everywhere, and this Dockerfile
# needs nothing from it. Its deprecation notice is filtered out.
set +e
DOCKER_BUILDKIT=0 docker build --target "$target" --tag "$tag" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  "${build_args[@]}" "${extra[@]}" "$root" 2>&1 \
  | grep -v -e '^DEPRECATED: The legacy builder' -e 'BuildKit is currently disabled' \
    -e 'environment-variable\.$' -e '^ *$' \
  | if ((quiet)); then cat >"$log"; else tee "$log" >&2; fi
status=${PIPESTATUS[0]}
set -e
if ((status)); then
  ((quiet)) && tail -n 40 "$log" >&2
  die "docker build of $tag failed (exit $status)"
fi
echo "$tag"
