#!/usr/bin/env bash
# The GPU check of issue 18, on one CUDA device, in under 8 minutes on an H100:
#   train      bench/train.py --shape ml-20m --compile (NeuMF epoch on the device, vs a
#              per-sample DataLoader; then 1 + 99 scoring and full ranking)
#   dag        bench/dag_scale.py: the whole DAG through Airflow on the seeded synthetic
#              ML-20M log (bench/synthetic.py), training capped (1 epoch, larger batch;
#              GPU_CHECK_DAG_TRAINING=shipped keeps the shipped schedule, which does not
#              fit 8 minutes), stage seconds and peak RSS
#   recommend  bench/recommend.py: top-10 over all 26,744 items for all 138,493 users,
#              NeuMF's first layer split vs every pair through forward
# then prints ONE summary table (bench/gpu_summary.py). Each step runs under a time limit
# (timeout(1)), so the script ends in time whatever happens; a step over its limit is
# reported as `timeout`. Needs nothing outside this repository: the venv, Java, the
# synthetic log it writes itself. Exit status 0 when every step passed.
#
#   make gpu-check                                        # CUDA, ML-20M shapes
#   GPU_CHECK_SHAPE=tiny GPU_CHECK_DEVICE=cpu bench/gpu_check.sh   # the CPU smoke run
#
# Environment: GPU_CHECK_SHAPE (ml-20m | tiny), GPU_CHECK_DEVICE (cuda | cpu),
# GPU_CHECK_WORK (work folder, default /tmp/ncf-gpu-check; emptied first),
# GPU_CHECK_DAG_TRAINING (capped | shipped), GPU_CHECK_PYTHON (default .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

SHAPE=${GPU_CHECK_SHAPE:-ml-20m}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
WORK=${GPU_CHECK_WORK:-/tmp/ncf-gpu-check}
TRAINING=${GPU_CHECK_DAG_TRAINING:-capped}
PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
VENV_BIN=$(cd "$(dirname "$PY")" && pwd)
export PATH="$VENV_BIN:$PATH"  # the venv's airflow and spark-submit

case "$SHAPE" in
  ml-20m)
    # seconds per step: 150 + 265 + 60 = 475 s, the 8 minutes with the summary
    TRAIN_LIMIT=150; DAG_LIMIT=265; RECOMMEND_LIMIT=60
    TRAIN_ARGS=(--shape ml-20m)
    DAG_ARGS=(--events 20000263)
    RECOMMEND_ARGS=(--shape ml-20m) ;;
  tiny)
    TRAIN_LIMIT=300; DAG_LIMIT=600; RECOMMEND_LIMIT=120
    TRAIN_ARGS=(--shape ml-100k --epochs 1 --factors 8 --layers "16,8" --baseline-samples 20000)
    # a smoke run: three families (ALS, EASE^R and SASRec are the DAG test's to cover)
    DAG_ARGS=(--events 20000 --users 200 --items 1000 --families "ncf,mf,popularity")
    RECOMMEND_ARGS=(--shape tiny --factors 8 --layers "16,8") ;;
  *) echo "GPU_CHECK_SHAPE=$SHAPE: expected ml-20m or tiny" >&2; exit 2 ;;
esac
case "$DEVICE" in
  cuda)
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
      echo "no CUDA device visible to torch: run on a GPU machine, or GPU_CHECK_DEVICE=cpu" >&2
      exit 2
    fi
    TRAIN_ARGS+=(--compile)  # the GPU figures are torch.compile's (STACK.md)
    DAG_DEVICE=auto ;;
  cpu)
    DAG_DEVICE=cpu ;;
  *) echo "GPU_CHECK_DEVICE=$DEVICE: expected cuda or cpu" >&2; exit 2 ;;
esac

rm -rf "$WORK"
mkdir -p "$WORK"
: > "$WORK/steps.tsv"

step() {  # step NAME LIMIT COMMAND...: run it under timeout, log it, record code and time
  local name=$1 limit=$2
  shift 2
  local started ended code millis
  echo "== $name: $* (limit ${limit} s)"
  started=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  code=$?
  ended=$(date +%s%N)
  millis=$(( (ended - started) / 1000000 ))
  printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$code" $((millis / 1000)) $((millis % 1000)) "$*" \
    >> "$WORK/steps.tsv"
  tail -n 3 "$WORK/$name.log"
}

step train "$TRAIN_LIMIT" "$PY" bench/train.py "${TRAIN_ARGS[@]}" --device "$DEVICE"
step dag "$DAG_LIMIT" "$PY" bench/dag_scale.py "${DAG_ARGS[@]}" --training "$TRAINING" \
  --device "$DAG_DEVICE" --timeout $((DAG_LIMIT - 15)) --work "$WORK/dag" \
  --out "$WORK/dag.json"
step recommend "$RECOMMEND_LIMIT" "$PY" bench/recommend.py "${RECOMMEND_ARGS[@]}" \
  --device "$DEVICE" --out "$WORK/recommend.json"

echo
echo "GPU check ($SHAPE shapes on $DEVICE):"
"$PY" bench/gpu_summary.py "$WORK"
