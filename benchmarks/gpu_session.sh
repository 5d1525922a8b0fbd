#!/usr/bin/env bash
# The one command a session with a GPU runs (one call, at most 10 minutes of wall time):
# convert the JPEG copy of CIFAR-10, then time each stage below under its own cap and
# write every result under $OUT. Stages, in order of what they decide:
#
#   data              local/cifar10-jpeg.tar.gz -> /tmp/gpu_session/cifar-10-batches-py
#   throughput_eager  throughput.py --device cuda, six models: eager fp32 vs bf16 + channels_last  (cap 80 s)
#   fastnet           fastnet, standard preset (eager: compile=auto is off for its 480 steps), seeds 0-4  (80 s)
#   throughput        the same six: eager fp32 vs the project's path (compiled; compile time apart)  (150 s)
#   fastnet_compiled  fastnet seeds 0-4 with --compile on  (110 s)
#   fastnet_nolookahead  fastnet seeds 0-4 without lookahead: the one ablation CPU could not settle  (50 s)
#   study             cifarzoo benchmark --preset standard, the five study models, seed 0: the time left
#   resnet18          (not in the default list) resnet18's recipe, seed 0
# The whole study needs most of a 10-minute call by itself: for it, run with
# GPU_SESSION_STAGES=data,study in a session of its own.
#
# Before the call, in the repository root of this machine:
#   mkdir -p local && cp PATH/TO/cifar10-jpeg.tar.gz PATH/TO/cifar10_from_jpeg.py local/
# and run, with carry ["local"] (local/ is git-ignored; the archive is 20 MB), timeout_s 600:
#   BENCH_COMMIT=<git rev-parse --short HEAD> bash benchmarks/gpu_session.sh
#
# Assumptions about the GPU machine: no network, so
# nothing is installed; `python3` there is the one with PyTorch (2.11 + CUDA 13 when last
# read), numpy, Pillow, matplotlib and tqdm; cifarzoo is not installed, so it runs from
# src/ through PYTHONPATH (torchinfo, needed only by `cifarzoo models --layers`, is absent).
# The working tree may arrive without .git: pass the commit in BENCH_COMMIT.
#
# Environment knobs:
#   GPU_SESSION_TINY=1     CPU smoke mode: bundled sample, tiny widths and steps, no conversion; stages
#                          throughput, fastnet, study only (no compile); what tests/test_benchmarks.py runs
#   GPU_SESSION_STAGES     comma list of stages (default: all above but resnet18, in that order)
#   GPU_SESSION_BUDGET     seconds for the whole script (default 560, under the 600 s command limit)
#   OUT                    where results go (default local/gpu_session_out); a device call returns at
#                          most 8 files, so this script writes only: session.log, tables.md (every
#                          table), throughput.json, fastnet.json, study_results.json and
#                          results.tar.gz (every stage's JSON and each run's metrics.csv /
#                          summary.json / config.json; no weights)
#   PYTHON                 interpreter (default python3; in tiny mode .venv/bin/python when present)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TINY=${GPU_SESSION_TINY:-0}
BUDGET=${GPU_SESSION_BUDGET:-560}
OUT=${OUT:-$ROOT/local/gpu_session_out}
WORK=${GPU_SESSION_WORK:-/tmp/gpu_session}
if [[ $TINY == 1 ]]; then
    STAGES=${GPU_SESSION_STAGES:-data,throughput,fastnet,study}
    PY=${PYTHON:-$([[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3)}
else
    STAGES=${GPU_SESSION_STAGES:-data,throughput_eager,fastnet,throughput,fastnet_compiled,fastnet_nolookahead,study}
    PY=${PYTHON:-python3}
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export BENCH_COMMIT=${BENCH_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/session.log
TABLES=$OUT/tables.md
: >"$LOG"
: >"$TABLES"
START=$(date +%s)

say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
RESERVE=30  # kept back for the report and the archive at the end
left() { echo $(( BUDGET - RESERVE - ($(date +%s) - START) )); }
want() { [[ ",$STAGES," == *",$1,"* ]]; }

# run_capped NAME CAP CMD...: run CMD for at most min(CAP, time left) seconds. SIGINT first,
# so fit() saves a resumable checkpoint and the scripts keep what they already wrote.
run_capped() {
    local name=$1 cap=$2; shift 2
    local l; l=$(left)
    local t=$(( cap < l ? cap : l ))
    if (( t < 20 )); then
        say "stage $name: skipped, ${l}s left"
        return 0
    fi
    say "stage $name: start (cap ${t}s): $*"
    local s; s=$(date +%s)
    timeout --signal=INT --kill-after=20 "$t" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "stage $name: rc=$rc after $(( $(date +%s) - s ))s$([[ $rc == 124 || $rc == 130 ]] && echo ' (time cap reached)')"
    return 0
}

say "gpu_session: commit $BENCH_COMMIT, stages $STAGES, budget ${BUDGET}s, tiny=$TINY, out $OUT"
{
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c "import sys, torch, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'numpy', numpy.__version__)"
    "$PY" -c "import cifarzoo; print('cifarzoo', cifarzoo.__version__, cifarzoo.__file__)"
} >>"$LOG" 2>&1 || { say "preflight failed: python/torch/cifarzoo not importable (see above)"; exit 2; }

if [[ $TINY == 1 ]]; then
    DEVICE=cpu
    DATA=sample
else
    DEVICE=cuda
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { say "no CUDA device visible to $PY: stopping (GPU_SESSION_TINY=1 runs the CPU smoke mode)"; exit 2; }
    DATA=$WORK/cifar-10-batches-py
fi

# ---------------------------------------------------------------- data
if want data && [[ $TINY != 1 ]]; then
    if [[ -f $DATA/test_batch ]]; then
        say "stage data: $DATA already there"
    elif [[ -f $ROOT/local/cifar10-jpeg.tar.gz && -f $ROOT/local/cifar10_from_jpeg.py ]]; then
        run_capped data 120 "$PY" "$ROOT/local/cifar10_from_jpeg.py" "$ROOT/local/cifar10-jpeg.tar.gz" "$DATA"
    else
        say "stage data: local/cifar10-jpeg.tar.gz or local/cifar10_from_jpeg.py missing; copy both into local/ and carry it"
        exit 2
    fi
    [[ -f $DATA/test_batch ]] || { say "stage data: conversion failed; nothing else can run"; exit 2; }
fi

# ---------------------------------------------------------------- throughput and fastnet
mkdir -p "$WORK/json"
throughput() {  # throughput NAME CAP ARGS...: throughput.py into $WORK/json/NAME.json
    local name=$1 cap=$2; shift 2
    run_capped "$name" "$cap" "$PY" benchmarks/throughput.py "$@" --json "$WORK/json/$name.json" \
        --markdown "$WORK/$name.md"
    [[ -f $WORK/$name.md ]] && { echo; cat "$WORK/$name.md"; } >>"$TABLES"
}
tta() {  # tta NAME CAP ARGS...: time_to_accuracy.py into $WORK/json/NAME.json
    local name=$1 cap=$2; shift 2
    run_capped "$name" "$cap" "$PY" benchmarks/time_to_accuracy.py --data "$DATA" --device "$DEVICE" \
        --out "$WORK/runs/$name" --json "$WORK/json/$name.json" --markdown "$WORK/$name.md" "$@"
    [[ -f $WORK/$name.md ]] && { echo; cat "$WORK/$name.md"; } >>"$TABLES"
}
SIX=vgg16,resnet18,vgg19,resnet50,xception,inception  # cheapest compiles first: a cap keeps the most models
FAST=(--models fastnet --preset standard --seeds 5 --thresholds 0.8,0.9,0.907)
if [[ $TINY == 1 ]]; then
    want throughput && throughput throughput 120 --device cpu --models fastnet,resnet18 --width-mult 0.125 \
        --batch-size 16 --inference-batch-size 16 --steps 1 --warmup 1 --repeats 1 --threads 1
    want fastnet && tta fastnet 120 --models fastnet --preset quick --seeds 2 --epochs 1 --subset 500 \
        --width-mult 0.125 --batch-size 100 --threads 1 --thresholds 0.2,0.5
else
    # Eager first (seconds per model): fp32 vs bf16 + channels_last, the project's path less compile.
    want throughput_eager && throughput throughput_eager 80 --device cuda --models "$SIX" \
        --variants fp32,bf16+cl --steps 20 --warmup 3 --repeats 3
    want fastnet && tta fastnet 80 "${FAST[@]}"
    # The project's path, compiled (tens of seconds of compile per model, reported apart).
    want throughput && throughput throughput 150 --device cuda --models "$SIX" --variants fp32,project \
        --steps 20 --warmup 3 --repeats 3
    want fastnet_compiled && tta fastnet_compiled 110 "${FAST[@]}" --compile on
    want fastnet_nolookahead && tta fastnet_nolookahead 50 "${FAST[@]}" --set lookahead=False
fi

# ---------------------------------------------------------------- the five-model study
if want study; then
    if [[ $TINY == 1 ]]; then
        study_args=(--preset quick --models fastnet --epochs 1 --device cpu)
    else
        study_args=(--preset standard --models vgg16,vgg19,resnet50,inception,xception --seeds 1 --data "$DATA"
                    --device cuda)
    fi
    run_capped study 600 "$PY" -m cifarzoo benchmark "${study_args[@]}" --out "$WORK/study"
    if [[ -d $WORK/study ]]; then
        # After a time cap the report covers the finished runs (the rest show as not run).
        timeout 25 "$PY" -m cifarzoo benchmark --report-only --out "$WORK/study" >>"$LOG" 2>&1
        [[ -f $WORK/study/results.json ]] && cp "$WORK/study/results.json" "$WORK/json/study_results.json"
        [[ -f $WORK/study/report.md ]] && { echo; cat "$WORK/study/report.md"; } >>"$TABLES"
    fi
fi

# ---------------------------------------------------------------- resnet18 (a target outside the study; not default)
if want resnet18 && [[ $TINY != 1 ]]; then
    tta resnet18 600 --models resnet18 --preset standard --seeds 1 --thresholds 0.8,0.9,0.92
fi

# ---------------------------------------------------------------- what comes back
# A device call returns at most 8 files: the log, the tables, the three main JSONs, and
# one archive with every JSON and each run's metrics.csv / summary.json / config.json.
for f in throughput fastnet study_results; do
    [[ -f $WORK/json/$f.json ]] && cp "$WORK/json/$f.json" "$OUT/$f.json"
done
(cd "$WORK" && find json runs study \( -name '*.json' -o -name metrics.csv -o -name results.csv \) -print0 2>/dev/null \
    | tar czf "$OUT/results.tar.gz" --null -T -) 2>>"$LOG"
say "gpu_session: done; files: $(cd "$OUT" && ls | tr '\n' ' ')"
