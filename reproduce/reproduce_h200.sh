#!/usr/bin/env bash
# One device command of the H200 reproduction (docs/RESULTS.md): pretrain MODEL for the budget of its
# config, fine-tune it on GLUE, and copy the results to $OUT/NAME/ (the checkpoint stays on the machine).
# Reproduces one row of docs/RESULTS.md's tables (reproduce/results_report.py writes them).
#
#   bash reproduce/reproduce_h200.sh MODEL [train.py flags ...]
#
# MODEL: crammedbert-3072 or ultrafastbert-1x11 (configs/h200_<model>.py). Run from the repository root with
# .device/ (python -m reproduce.prepare_h200_data) beside it; NAME is MODEL unless REPRO_NAME says otherwise
# (a second run of a model, e.g. at equal steps: REPRO_NAME=ultrafastbert-1x11-steps ... --config.steps=N
# --config.budget_hours=0). Stages, each under a time cap so that the command ends inside 10 minutes:
#   1. reproduce/gpu_env.sh (the imports and wheels of the device machine), when it exists;
#   2. train.py (4 minutes of training plus compilation and the final checkpoint);
#   3. eval_glue.py with configs/glue_h200.py, one process per task, side by side on the GPU when its
#      compute mode lets several processes share it (one after the other otherwise), each cut at the
#      deadline REPRO_DEADLINE_S seconds after the start (default 560);
#   4. the results into $OUT/NAME/ (at most 8 files, each far below 16 MiB): log.txt, run.json (config,
#      stage times, machine), metrics.jsonl, loss.png, results.json (all GLUE tasks), glue.log.
# Machine-specific: the 560 s deadline, the 8 files of at most 16 MiB and $OUT (the folder whose files come
# back) are the limits of our device command (10 minutes, what it returns); elsewhere OUT defaults to
# runs/h200-out and REPRO_DEADLINE_S can be raised.
# For a test off the GPU: REPRO_SKIP_ENV=1 PYTHON=.venv/bin/python and shrinking flags (docs/RESULTS.md);
# REPRO_GLUE_TASKS (comma-separated) and REPRO_GLUE_FLAGS (extra eval_glue.py flags) narrow the GLUE part.
set -euo pipefail

MODEL=${1:?usage: reproduce/reproduce_h200.sh MODEL [train.py flags ...]  (MODEL: crammedbert-3072, ultrafastbert-1x11)}
shift
TRAIN_FLAGS=("$@")
CONFIG="configs/h200_${MODEL//-/_}.py"
[[ -f "$CONFIG" ]] || { echo "no config $CONFIG for model $MODEL" >&2; exit 2; }
NAME=${REPRO_NAME:-$MODEL}
OUT=${OUT:-runs/h200-out}
RESULTS="$OUT/$NAME"
WORKDIR="runs/h200-$NAME"
GLUE_OUT="$WORKDIR/glue"
GLUE_TASKS=${REPRO_GLUE_TASKS:-rte,mrpc,stsb,cola,sst2}  # shortest first, for the one-by-one case
read -r -a GLUE_FLAGS <<< "${REPRO_GLUE_FLAGS:-}"
DEADLINE=${REPRO_DEADLINE_S:-560}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
shopt -s nullglob
stamp() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
left() { local s=$((DEADLINE - SECONDS - ${1:-0})); echo $((s > 1 ? s : 1)); }  # seconds to the deadline

run_task() {
    local task=$1
    timeout "$(left)" "$PY" eval_glue.py --config=configs/glue_h200.py --workdir="$WORKDIR" \
        --glue_dir=.device/glue --config.tasks="$task" --out="$GLUE_OUT/$task" "${GLUE_FLAGS[@]}" \
        > "$GLUE_OUT/$task.log" 2>&1 || echo "$task: exit status $? (124: cut at the deadline)" >> "$GLUE_OUT/$task.log"
}

main() {
    stamp "reproduce_h200 $MODEL as $NAME: ${TRAIN_FLAGS[*]:-}"
    if [[ "${REPRO_SKIP_ENV:-0}" != 1 && -f reproduce/gpu_env.sh ]]; then
        source reproduce/gpu_env.sh
    fi
    local env_s=$SECONDS gpu
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_mode --format=csv,noheader 2>/dev/null || echo "no GPU")
    stamp "device: $gpu"

    rm -rf "$WORKDIR"  # a leftover workdir would be resumed, not retrained
    stamp "pretraining: $CONFIG"
    if ! timeout "$(left 60)" "$PY" train.py --config="$CONFIG" --workdir="$WORKDIR" "${TRAIN_FLAGS[@]}"; then
        cp "$WORKDIR"/metrics.jsonl "$WORKDIR"/loss.png "$RESULTS/" 2>/dev/null
        stamp "pretraining failed (124: cut at the deadline); no GLUE"
        return 1
    fi
    cp "$WORKDIR/metrics.jsonl" "$WORKDIR/loss.png" "$RESULTS/"
    local train_s=$((SECONDS - env_s))
    stamp "pretraining done in ${train_s}s"

    # Several processes can share the GPU (host-bound batch-16 steps leave it mostly idle) in Default mode.
    local parallel=${REPRO_GLUE_PARALLEL:-$([[ "$gpu" == *", Default" ]] && echo 1 || echo 0)} task tasks
    IFS=, read -r -a tasks <<< "$GLUE_TASKS"
    mkdir -p "$GLUE_OUT"
    stamp "GLUE: $GLUE_TASKS (side by side: $parallel), deadline ${DEADLINE}s"
    if [[ "$parallel" == 1 ]]; then
        export XLA_PYTHON_CLIENT_MEM_FRACTION=0.15  # 5 processes x 0.15 of the GPU's memory
        for task in "${tasks[@]}"; do run_task "$task" & done
        wait
    else
        for task in "${tasks[@]}"; do run_task "$task"; done
    fi
    local glue_s=$((SECONDS - env_s - train_s))
    for task in "${tasks[@]}"; do  # each log without its progress bars' intermediate states
        echo "=== $task"
        tr '\r' '\n' < "$GLUE_OUT/$task.log" | grep -v '^ *$' | grep -v '%|' || true
        tr '\r' '\n' < "$GLUE_OUT/$task.log" | grep '%|' | tail -n 1 || true
    done > "$RESULTS/glue.log"
    "$PY" -m reproduce.results_report merge-glue --tasks "$GLUE_TASKS" --out "$RESULTS/results.json" \
        "$GLUE_OUT"/*/results.json
    stamp "GLUE done in ${glue_s}s"

    "$PY" -m reproduce.results_report run-info --out "$RESULTS/run.json" --name "$NAME" --device "$gpu" \
        --seconds "env=$env_s,train=$train_s,glue=$glue_s,total=$SECONDS" -- --config="$CONFIG" "${TRAIN_FLAGS[@]}"
    stamp "results in $RESULTS: $(ls "$RESULTS" | tr '\n' ' ')"
}

mkdir -p "$RESULTS"
main 2>&1 | tee "$RESULTS/log.txt"
