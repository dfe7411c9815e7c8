#!/usr/bin/env bash
# Install the system tools the tests use, pinned to Debian bookworm's versions:
#   dicom3tools (dciodvfy, the reference DICOM validator that checks the DICOM SEG);
#   xvfb and the xcb libraries that PyQt5's Qt needs beyond the base image (the napari
#   test: a virtual screen, OpenGL from the base image's Mesa).
# Idempotent: does nothing when all are installed.
#
# Usage: scripts/system_setup.sh [-h | --help]
# Root only when something is missing (apt-get). Environment:
#   PETSEG_DICOM3TOOLS_VERSION   Debian version of dicom3tools (default 1.00~20220618093127-2)
#   PETSEG_XVFB_VERSION          Debian version of xvfb (default 2:21.1.7-3+deb12u13, from
#                                bookworm-security; when the mirror no longer has it, the
#                                newer bookworm one is installed with a warning)
set -euo pipefail

case "${1:-}" in
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "system_setup.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
esac

dicom3tools="dicom3tools=${PETSEG_DICOM3TOOLS_VERSION:-1.00~20220618093127-2}"
xvfb="xvfb=${PETSEG_XVFB_VERSION:-2:21.1.7-3+deb12u13}"
xcb=(libxcb-icccm4=0.4.1-1.1 libxcb-keysyms1=0.4.0-1+b2 libxcb-xinerama0=1.15-1)
say() { echo "system_setup: $*" >&2; }
installed() { dpkg-query -W -f='${Status}' "${1%%=*}" 2>/dev/null | grep -q "ok installed"; }

missing=()
command -v dciodvfy >/dev/null || missing+=("$dicom3tools")
command -v Xvfb >/dev/null || missing+=("$xvfb")
for package in "${xcb[@]}"; do installed "$package" || missing+=("$package"); done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  say "missing, and installing needs root: sudo apt-get install ${missing[*]}"
  exit 1
fi
say "installing ${missing[*]} with apt"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
for i in "${!missing[@]}"; do
  if [[ "${missing[$i]}" == "$xvfb" ]] && ! apt-cache show "$xvfb" >/dev/null 2>&1; then
    say "warning: $xvfb is no longer on the mirror; installing bookworm's current xvfb"
    missing[i]=xvfb
  fi
done
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v dciodvfy >/dev/null || { say "dicom3tools installed but dciodvfy is not on PATH"; exit 1; }
command -v Xvfb >/dev/null || { say "xvfb installed but Xvfb is not on PATH"; exit 1; }
