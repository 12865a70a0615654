#!/usr/bin/env bash
# Every GPU check of issue 18 in one run, for the few minutes a GPU machine is lent:
#   1. the CUDA tests (python -m pytest -m gpu): synthesis, distillation, analysis, AMP on/off, channels_last,
#      the compiled objective;
#   2. benchmarks/synthesis_speed.py on the GPU at batch 256, 1,024 and 16,384: the plain DeepInversion loop
#      against the engine (eager and compiled), images/s, ratio, overhead, BN distance, teacher accuracy, and the
#      GPU's busy share and kernels per step;
#   3. with a Fashion-MNIST teacher: one `fashion-best` student, timed (the robustness table's GPU figure), and
#      `fashion-5min` students plain and with teacher echo (issue 18's "≤ 30 s student on one GPU").
#
#   scripts/gpu_checks.sh [fashion teacher model.pt]     (or FASHION_TEACHER=<model.pt>)
#
# The Fashion-MNIST teacher is the one the CPU tables used (bncnn6_w32); without one it trains one if the dataset is
# installed, else it benchmarks the digits teacher it trains first. Without CUDA it says so and runs what the CPU can:
# the GPU tests report their skip reason and the benchmark runs one small CPU table. Output: stdout, and
# $OUT/gpu_checks.log when $OUT is set (the device tool brings $OUT back).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="${OUT:-/tmp}/gpu_checks.log"
exec > >(tee "$LOG") 2>&1
HOME_DIR="$(mktemp -d /tmp/dfkd-gpu-checks-XXXX)"
dfkd() { python3 -m dfkd_core.cli --home "$HOME_DIR" --quiet "$@"; }
latest_teacher() { python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])"; }
status=0

echo "== machine"
date -u; uptime
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv || true
else
    DEVICE=cpu
    echo "no CUDA GPU on this machine: the GPU tests will be skipped (reason below) and the benchmark runs a small"
    echo "CPU table instead of the GPU one"
fi
python3 -c "import dfkd_core, torch; from dfkd_core.device import thread_policy; print('torch', torch.__version__, '|', thread_policy())"

echo "== GPU tests (python -m pytest -m gpu)"
python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/ || status=1

echo "== teachers"
dfkd train-teacher --dataset digits --device "$DEVICE" >/dev/null || { echo "digits teacher failed"; exit 1; }
DIGITS="$(dfkd runs --kind teacher --json | latest_teacher)"
FASHION="${1:-${FASHION_TEACHER:-}}"
if [ -z "$FASHION" ] && [ "$DEVICE" = cuda ] && \
   python3 -c "from dfkd_core.data import load_split; load_split('fashion-mnist', 'test')" 2>/dev/null; then
    dfkd train-teacher --dataset fashion-mnist --model bncnn6_w32 --epochs 3 --device cuda >/dev/null && \
        FASHION="$(dfkd runs --kind teacher --json | latest_teacher)"
fi
echo "digits teacher: $DIGITS; Fashion-MNIST teacher: ${FASHION:-none (pass a model.pt to benchmark one)}"

speed() { DFKD_HOME="$HOME_DIR" python3 benchmarks/synthesis_speed.py --device "$DEVICE" "$@" || status=1; }
echo "== synthesis speed"
if [ "$DEVICE" = cuda ]; then
    for teacher in ${FASHION:+"$FASHION"} "$DIGITS"; do
        speed --teacher "$teacher" --batch-sizes 256 1024 16384 --iterations 40 --repeats 3 --profile
    done
else
    speed --teacher "${FASHION:-$DIGITS}" --batch-sizes 256 --iterations 20 --repeats 1 --variants reference engine
fi
if [ "$DEVICE" = cuda ] && [ -n "$FASHION" ]; then
    echo "== a fashion-best student on the GPU (issue 19: the GPU column of the robustness table)"
    /usr/bin/time -f "%e s wall" python3 -m dfkd_core.cli --home "$HOME_DIR" --quiet distill --teacher "$FASHION" \
        --method deepinversion --recipe fashion-best --device cuda | tail -2 || status=1
    for extra in "" "--teacher-echo 2 --steps 3800"; do
        echo "== a fashion-5min student on the GPU ${extra:+($extra)} (issue 18: <= 30 s)"
        /usr/bin/time -f "%e s wall" python3 -m dfkd_core.cli --home "$HOME_DIR" --quiet distill --teacher "$FASHION" \
            --method deepinversion --recipe fashion-5min --device cuda $extra | tail -2 || status=1
    done
fi
echo "== done (exit $status); log: $LOG"
exit $status
