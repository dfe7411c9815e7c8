#!/usr/bin/env bash
# Install the system tools the tests use, pinned to Debian bookworm's versions:
#   dicom3tools (dciodvfy, the reference DICOM validator that checks the DICOM SEG).
# Idempotent: does nothing when the tools are on PATH.
#
# Usage: scripts/system_setup.sh [-h | --help]
# Root only when something is missing (apt-get). Environment:
#   PETSEG_DICOM3TOOLS_VERSION   Debian version of dicom3tools (default 1.00~20220618093127-2)
set -euo pipefail

case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "system_setup.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
esac

version="${PETSEG_DICOM3TOOLS_VERSION:-1.00~20220618093127-2}"
say() { echo "system_setup: $*" >&2; }

if command -v dciodvfy >/dev/null; then
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  say "dciodvfy is missing and installing it needs root: sudo apt-get install dicom3tools=$version"
  exit 1
fi
say "installing dicom3tools=$version with apt"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "dicom3tools=$version" >/dev/null
command -v dciodvfy >/dev/null || { say "dicom3tools installed but dciodvfy is not on PATH"; exit 1; }
