#!/usr/bin/env bash
# Fresh-machine set-up: system GL for offscreen MuJoCo rendering, then .venv with pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # EGL + Mesa: offscreen MuJoCo rendering; libb64: tritonclient's perf_analyzer binary.
  if ! ldconfig -p | grep -q libEGL.so || ! ldconfig -p | grep -q libb64.so; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libegl1 libgl1 libgl1-mesa-dri libb64-0d >/dev/null
  fi
  # Debian's python3 makes virtual environments only with python3-venv.
  if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch==2.13.0 resolves to this machine's local CPU wheel; constraints.txt pins everything else.
.venv/bin/pip install -q -c constraints.txt -e ".[train,export,cpu,dev,ray,study,sisl]"
