#!/usr/bin/env bash
# Install maekit and everything it needs on a fresh Debian machine (as root, no torch yet).
#   bash scripts/install.sh          # runtime: data package, torch, maekit
#   bash scripts/install.sh --dev    # + test and lint tools (pytest, pytest-xdist, ruff, shellcheck)
set -euo pipefail
# Debian marks its system Python "externally managed"; this script is meant for a dedicated machine.
export PIP_BREAK_SYSTEM_PACKAGES=1
cd "$(dirname "$0")/.."

# Fashion-MNIST, the built-in dataset (idx files under /usr/share/datasets/fashion-mnist).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# The torch build this project is tested with (a pinned version keeps pip from fetching another).
python3 -m pip install -q torch==2.14.1 torchvision==0.29.1
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
python3 -m pip install -q -e ".${extra}"
# --dev: shellcheck for the launch-script tests (tests/test_launch_scripts.py fails without it).
if [ "${1:-}" = "--dev" ] && ! command -v shellcheck >/dev/null && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
# pyenv keeps console scripts behind shims: refresh them so `maekit` is on PATH.
if command -v pyenv >/dev/null; then pyenv rehash || true; fi
