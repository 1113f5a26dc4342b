#!/usr/bin/env bash
# Installs the system packages fastmp builds against, when missing:
# Boost headers (libboost-dev) and, with --test, GoogleTest (libgtest-dev).
set -euo pipefail
pkgs=(libboost-dev)
[[ "${1:-}" == "--test" ]] && pkgs+=(libgtest-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
