#!/usr/bin/env bash
# Make a Docker daemon and the local CPU base image available on a bare Debian machine.
#
# Steps, each skipped when already done (idempotent):
#   1. install Debian's docker.io and debootstrap with apt when missing;
#   2. start dockerd in the background when no daemon answers, and wait for it;
#   3. build the local CPU base image (Debian bookworm minbase + python3 + pip, the host's
#      CA bundle trusted) when absent. It stands in for the CUDA PyTorch base image where
#      no image registry is reachable; see docs/container.md.
#
# Usage: scripts/docker_setup.sh [-h | --help]
# Root only. Environment:
#   PETSEG_CPU_BASE_IMAGE          name of the local base image (default petseg-base-cpu:bookworm)
#   PETSEG_DOCKER_STORAGE_DRIVER   overlay2 | vfs (default: overlay2 when the kernel has
#                                  overlayfs and the daemon starts with it, else vfs)
#   PETSEG_DEBIAN_MIRROR           apt mirror for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "docker_setup.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
esac

base_image="${PETSEG_CPU_BASE_IMAGE:-petseg-base-cpu:bookworm}"
mirror="${PETSEG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log_file=/var/log/petseg-dockerd.log
say() { echo "docker_setup: $*" >&2; }

if [[ "$(id -u)" -ne 0 ]]; then
  say "must run as root (installs packages and starts dockerd); rerun with sudo"
  exit 1
fi

# --- 1. packages -------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  say "installing ${missing[*]} with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >/dev/null
fi

# --- 2. daemon ---------------------------------------------------------------------------
daemon_up() { timeout 10 docker info >/dev/null 2>&1; }

start_daemon() {  # $1: storage driver; returns 0 once the daemon answers
  local driver="$1"
  say "starting dockerd (storage driver $driver, no iptables, no bridge); log: $log_file"
  setsid nohup dockerd --storage-driver="$driver" --iptables=false --ip6tables=false \
    --bridge=none >>"$log_file" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 60); do
    if daemon_up; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 1
}

if daemon_up; then
  say "a Docker daemon is already running"
else
  driver="${PETSEG_DOCKER_STORAGE_DRIVER:-}"
  if [[ -n "$driver" ]]; then
    start_daemon "$driver" || { say "dockerd did not start; see $log_file"; exit 1; }
  elif grep -qw overlay /proc/filesystems && start_daemon overlay2; then
    :
  else
    start_daemon vfs || { say "dockerd did not start; see $log_file"; exit 1; }
  fi
fi
say "daemon: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}')"

# --- 3. local CPU base image -------------------------------------------------------------
if docker image inspect "$base_image" >/dev/null 2>&1; then
  say "base image $base_image is present"
  exit 0
fi
say "building base image $base_image with debootstrap (bookworm minbase, python3, pip)"
rootfs="$(mktemp -d /var/tmp/petseg-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 20 "$rootfs.log" >&2
  say "debootstrap failed; full log: $rootfs.log"
  exit 1
}
rm -f "$rootfs.log"
# Trust the same certificate authorities as the host, so pip inside a build can reach
# PyPI through whatever TLS-inspecting egress the host sits behind.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/tmp/*
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["/bin/bash"]' \
  - "$base_image" >/dev/null
say "base image $base_image built ($(docker image inspect "$base_image" --format '{{.Size}}' \
  | awk '{printf "%.0f MB", $1 / 1e6}'))"
