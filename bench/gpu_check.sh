#!/usr/bin/env bash
# The GPU check: CUDA tests, updates/s (eager, compiled, CUDA graphs), a short training run, serving on
# CUDA against the CPU, and several jobs per GPU; results.json, results.md and the logs in the output dir.
#
#   bash bench/gpu_check.sh [--smoke] [--out DIR] [--budget SECONDS]
#
# On a GPU machine (about 8 minutes): uses the machine's python3 and its CUDA build of torch; installs
# the pinned wheels in .whl/ when the tree carries them (bench/gpu_wheels.sh makes them: the packages
# the machine lacks, for a machine without a package index), then omad itself (editable, no index).
# Where a package index is reachable and torch has no CUDA, or onnxruntime no CUDA provider, it installs
# the pinned CUDA builds (TORCH_CUDA_INDEX, onnxruntime-gpu from the `gpu` extra's pin).
# --smoke: every step on the CPU at tiny sizes with .venv/bin/python, installing nothing (a dry run of the
# script itself). Every step has its own time limit, and a failing step does not stop the next.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)

SMOKE=0
OUT_DIR=${OUT:-$REPO/runs/gpu_check}
BUDGET=500
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1 ;;
        --out) OUT_DIR=$2; shift ;;
        --budget) BUDGET=$2; shift ;;
        *) echo "usage: bash bench/gpu_check.sh [--smoke] [--out DIR] [--budget SECONDS]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG=$OUT_DIR/run.log
: >"$LOG"
: >"$WORK/status.tsv"
START=$SECONDS
export PYTHONUNBUFFERED=1  # no MUJOCO_GL: training renders nothing, and EGL needs libraries the GPU machine lacks
TORCH_CUDA_INDEX=${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu130}

if [ $SMOKE = 1 ]; then
    PY=$REPO/.venv/bin/python
    [ -x "$PY" ] || PY=python3
    SMOKE_FLAG=--smoke
    # one thread per process: the smoke run's processes share a small CPU, and oversubscribed threads
    # make each tiny update hundreds of times slower
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
else
    PY=python3
    SMOKE_FLAG=
fi

log() { echo "[gpu_check $(( SECONDS - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - (SECONDS - START) )); }
# limit MAX RESERVE: min(MAX, time left - RESERVE), RESERVE being what the later steps need at least
limit() { local l=$(( $(left) - $2 )); [ "$l" -gt "$1" ] && l=$1; echo "$l"; }

# step NAME MAX RESERVE COMMAND...: runs COMMAND for at most `limit MAX RESERVE` seconds (killed after
# that); records its exit code and seconds.
step() {
    local name=$1; local limit; limit=$(limit "$2" "$3"); shift 3
    if [ "$limit" -lt 5 ]; then
        log "$name: skipped, the budget is spent"
        printf '%s\t%s\t%s\n' "$name" 124 0 >>"$WORK/status.tsv"
        return
    fi
    log "$name: start (at most ${limit}s)"
    local t0=$SECONDS
    timeout --kill-after=20 "$limit" "$@" >>"$LOG" 2>&1
    local code=$?
    printf '%s\t%s\t%s\n' "$name" "$code" "$(( SECONDS - t0 ))" >>"$WORK/status.tsv"
    log "$name: exit code $code after $(( SECONDS - t0 ))s"
}

# check_py NAME MAX RESERVE: `step` running bench/gpu_check.py NAME, which gets the step's limit less 50 s
# (its own stop and report) as --seconds
check_py() {
    local inner; inner=$(( $(limit "$2" "$3") - 50 ))
    [ "$inner" -lt 10 ] && inner=10
    step "$1" "$2" "$3" "$PY" -m bench.gpu_check "$1" --work "$WORK" $SMOKE_FLAG --seconds "$inner"
}

setup() {
    set -e
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        echo "installing the carried wheels: $(ls .whl | tr '\n' ' ')"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/omad-site .whl/*.whl
    fi
    if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . ; then
        echo "editable install failed; using the tree on PYTHONPATH with its egg-info"
        "$PY" -c "import sys; sys.argv = ['setup.py', 'egg_info']; from setuptools import setup; setup()"
    fi
    if "$PY" -c "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/pip/', timeout=5)" 2>/dev/null; then
        if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
            echo "torch has no CUDA here; installing the pinned CUDA build from $TORCH_CUDA_INDEX"
            "$PY" -m pip install -q "torch==2.13.0" --index-url "$TORCH_CUDA_INDEX"
        fi
        if ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
            pin=$(grep -i '^onnxruntime-gpu==' constraints.txt)
            echo "onnxruntime has no CUDA provider; installing $pin (the gpu extra, without the cpu extra's onnxruntime)"
            "$PY" -m pip uninstall -q -y onnxruntime || true
            "$PY" -m pip install -q "$pin"
        fi
    else
        echo "no package index reachable: the machine's torch and onnxruntime are used as they are"
    fi
}

if [ $SMOKE = 1 ]; then
    log "smoke run on the CPU ($PY), output in $OUT_DIR"
else
    log "GPU check ($PY), budget ${BUDGET}s, output in $OUT_DIR"
    export -f setup
    export PY TORCH_CUDA_INDEX
    step setup 150 330 bash -c setup
    if [ -d /tmp/omad-site ]; then export PYTHONPATH=/tmp/omad-site:$REPO; else export PYTHONPATH=$REPO; fi
fi
export PYTHONPATH=${PYTHONPATH:-$REPO}

# Each step's MAX, and the RESERVE it leaves the later ones (expected on an H200: setup 30 s, info 5,
# tests 90, updates 100, serve 45, jobs 100, report 5; training gets what is left, up to 180 s of it).
check_py info 60 330
check_py tests 200 290
check_py updates 200 230
if [ $SMOKE = 1 ]; then TRAIN_MAX=90; else TRAIN_MAX=$(( 180 + 50 )); fi
check_py train $TRAIN_MAX 165
check_py serve 120 110
check_py jobs 220 10
step report 60 0 "$PY" -m bench.gpu_check report --work "$WORK" $SMOKE_FLAG

for f in results.json results.md tests.log train.log; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT_DIR/$f"
done
cat "$WORK"/sweep-w*.log >"$OUT_DIR/sweeps.log" 2>/dev/null
log "done in $(( SECONDS - START ))s: $OUT_DIR/results.md"
[ -f "$OUT_DIR/results.md" ] && cat "$OUT_DIR/results.md"
exit 0
