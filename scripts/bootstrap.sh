#!/usr/bin/env bash
# Installs the system packages fastmp's development needs, when missing:
#   --test   GoogleTest (libgtest-dev), for the C++ unit tests
#   --boost  the system's Boost headers (libboost-dev); optional: `pip install`
#            fetches Boost from PyPI (boost-headers), and a CMake build uses
#            `pip install boost-headers` when no system Boost is found
set -euo pipefail
pkgs=()
for arg in "$@"; do
  case "$arg" in
    --test) pkgs+=(libgtest-dev) ;;
    --boost) pkgs+=(libboost-dev) ;;
    *) echo "usage: $0 [--test] [--boost]" >&2; exit 2 ;;
  esac
done
# A C++20 compiler (any build needs one).
command -v c++ >/dev/null 2>&1 || pkgs+=(g++)
missing=()
for p in ${pkgs[@]+"${pkgs[@]}"}; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
