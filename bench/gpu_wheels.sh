#!/usr/bin/env bash
# Wheels for a GPU machine without a package index: the packages bench/gpu_check.sh needs that a CUDA
# image with torch, numpy, onnx and onnxruntime lacks (and tensorboard, whose pin works with the pinned
# protobuf), at constraints.txt's pins, for CPython 3.12 on x86-64 Linux, into .whl/ (gpu_check.sh
# installs them). gymnasium-robotics is slimmed: the Adroit hand and Franka kitchen meshes (24 MB, no
# omad environment uses them) are left out of its wheel.
#
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]      # default 3.12; needs pip and a package index
#
# Keep .whl/ out of git (e.g. `echo /.whl/ >> .git/info/exclude`); together the wheels take about 32 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${1:-3.12}
PIP=${PIP:-.venv/bin/pip}
PACKAGES=(pydantic pydantic_core annotated-types typing-inspection typing_extensions
          grpcio grpcio-health-checking grpcio-reflection protobuf
          mujoco mujoco-core glfw PyOpenGL gymnasium gymnasium-robotics pettingzoo Farama-Notifications
          tensorboard)

pins=()
for name in "${PACKAGES[@]}"; do
    pin=$(grep -i "^${name}==" constraints.txt || true)
    [ -n "$pin" ] || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
platforms=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
rm -rf .whl && mkdir .whl
"$PIP" download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    "${platforms[@]}" -d .whl "${pins[@]}"

# gymnasium-robotics without the meshes of environments omad does not build (its RECORD rewritten to match)
python3 - <<'EOF'
import glob
import os
import zipfile

DROP = ("gymnasium_robotics/envs/assets/adroit_hand/", "gymnasium_robotics/envs/assets/kitchen_franka/")
(path,) = glob.glob(".whl/gymnasium_robotics-*.whl")
slim = path + ".slim"
with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if item.filename.startswith(DROP):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not line.startswith(DROP)).encode()
        dst.writestr(item, data)
os.replace(slim, path)
EOF
du -sh .whl
ls .whl
