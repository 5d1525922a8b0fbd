#!/usr/bin/env bash
# cifarzoo's GPU benchmark: one command on a machine with a CUDA GPU, where the CIFAR-10 data is.
#
#   bash benchmarks/gpu_benchmark.sh PATH_TO_CIFAR10                # default run, at most 7 minutes
#   bash benchmarks/gpu_benchmark.sh PATH_TO_CIFAR10 --study        # the five-model study, at most 9.5 minutes
#   bash benchmarks/gpu_benchmark.sh --tiny                         # CPU smoke run on the bundled sample
#
# PATH_TO_CIFAR10 (or $CIFAR10_DATA) is the official cifar-10-python.tar.gz, a folder holding
# cifar-10-batches-py/, an image folder train/<class>/*.jpg + test/<class>/*.jpg (the JPEG copy),
# or a .tar.gz of that image folder. It is converted once to the official python layout under
# the work folder (stage data), which every later stage loads in a second.
#
# Stages of the default run, most important first, each under its own time cap (seconds), all
# of them under BENCH_BUDGET (420 s = 7 minutes, conversion included):
#   data              PATH -> $WORK/cifar-10-batches-py, skipped when already converted     (cap 60)
#   throughput_eager  training-step and inference throughput, eager fp32 vs bf16 + channels_last
#                     (the project's path less compile), every model, at-risk ones first   (cap 50)
#   throughput        eager fp32 vs the project's path (compiled where fit compiles: every
#                     study model's standard recipe; compile time reported apart), same order (cap 120)
#   fastnet           fastnet, standard preset, seeds 0-4: accuracy, flip TTA, train seconds (cap 70)
#   epochs2           each study model (and resnet18) for 2 epochs of its standard recipe
#                     (--epochs 2: eager, since 2 epochs are too short for compile=auto): seconds
#                     per epoch and early accuracy, to extrapolate the full recipes           (cap 90)
# The follow-up run (--study, or BENCH_STAGES=study) runs the whole five-model standard study
# with one seed in the time left of BENCH_BUDGET (570 s for it).
#
# Results go to $OUT (default ./gpu_benchmark_out), at most 8 files: benchmark.log (every
# command and its output), tables.md (every table), throughput.json, fastnet.json,
# fastnet_airbench.json (that stage only), epochs2.json, study_results.json (the study only),
# and results.tar.gz (every stage's JSON and each run's metrics.csv / summary.json /
# config.json; no weights).
#
# Options (or environment variables):
#   --study            BENCH_STAGES=study and BENCH_BUDGET=570
#   --stages LIST      BENCH_STAGES: comma list of the stages after data; also resnet18 (its full
#                      recipe), fastnet_nolookahead (the 5 seeds without lookahead, an ablation) and
#                      fastnet_airbench (fastnet with --preset airbench, airbench94_muon's recipe: Muon,
#                      alternating flip, 2-pixel shifts, 6-view TTA; 5 seeds, cap 60 s; not in the default
#                      run, whose caps already fill the 7 minutes: run it as --stages fastnet_airbench)
#   --tiny             BENCH_TINY=1: CPU smoke mode on the bundled sample, tiny widths and steps, no
#                      data path needed; stages throughput, fastnet, epochs2, study (what
#                      tests/test_benchmarks.py runs)
#   BENCH_BUDGET       seconds for the whole run          OUT     where the result files go
#   BENCH_WORK         scratch folder (default $TMPDIR/cifarzoo-bench; the converted data stays there for
#                      the next run, the rest is cleared at the start)
#   PYTHON             interpreter with PyTorch (default python3; cifarzoo runs from src/ via PYTHONPATH)
#   BENCH_COMMIT       commit to record when the tree has no .git
set -uo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD

DATA_SRC=${CIFAR10_DATA:-}
TINY=${BENCH_TINY:-0}
STAGES=${BENCH_STAGES:-}
BUDGET=${BENCH_BUDGET:-}
while (( $# )); do
    case $1 in
        --study) STAGES=study; BUDGET=${BUDGET:-570} ;;
        --stages) STAGES=${2:?--stages needs a comma list}; shift ;;
        --stages=*) STAGES=${1#--stages=} ;;
        --tiny) TINY=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_benchmark.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) DATA_SRC=$1 ;;
    esac
    shift
done
BUDGET=${BUDGET:-420}
OUT=${OUT:-$ROOT/gpu_benchmark_out}
# Paths given relative to where the command was typed, not to the repository root.
[[ -n $DATA_SRC && $DATA_SRC != /* ]] && DATA_SRC=$CALLER/$DATA_SRC
[[ $OUT != /* ]] && OUT=$CALLER/$OUT
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/cifarzoo-bench}
if [[ $TINY == 1 ]]; then
    STAGES=${STAGES:-throughput,fastnet,epochs2,study}
    PY=${PYTHON:-$([[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3)}
else
    STAGES=${STAGES:-throughput_eager,throughput,fastnet,epochs2}
    PY=${PYTHON:-python3}
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export BENCH_COMMIT=${BENCH_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}

# The data argument first: a missing path is the most likely mistake and costs nothing to check.
if [[ $TINY == 1 ]]; then
    DATA=sample
else
    DATA=$WORK/cifar-10-batches-py
    if [[ ! -f $DATA/test_batch && -z $DATA_SRC ]]; then
        echo "gpu_benchmark.sh: no CIFAR-10 data given: run 'bash benchmarks/gpu_benchmark.sh PATH' (or set" \
             "CIFAR10_DATA=PATH), where PATH is cifar-10-python.tar.gz, a folder holding cifar-10-batches-py/," \
             "or the JPEG copy (a train/ + test/ image folder or its .tar.gz)" >&2
        exit 2
    fi
    if [[ -n $DATA_SRC && ! -e $DATA_SRC ]]; then
        echo "gpu_benchmark.sh: CIFAR-10 data not found: $DATA_SRC does not exist" \
             "(give the archive or folder as the first argument or in CIFAR10_DATA)" >&2
        exit 2
    fi
fi

# Results of an earlier run in the same work folder must not come back as this run's.
rm -rf "$WORK/json" "$WORK/runs" "$WORK/study"
rm -f "$WORK"/*.md
mkdir -p "$OUT" "$WORK/json"
LOG=$OUT/benchmark.log
TABLES=$OUT/tables.md
: >"$LOG"
: >"$TABLES"
START=$(date +%s)

say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
RESERVE=20  # kept back for a stage's grace period after its cap and for packing the results
left() { echo $(( BUDGET - RESERVE - ($(date +%s) - START) )); }
want() { [[ ",$STAGES," == *",$1,"* ]]; }

# run_capped NAME CAP CMD...: run CMD for at most min(CAP, time left) seconds. SIGINT first, so
# fit() saves a resumable checkpoint and the scripts keep the JSON they already wrote.
run_capped() {
    local name=$1 cap=$2; shift 2
    local l; l=$(left)
    local t=$(( cap < l ? cap : l ))
    if (( t < 10 )); then
        say "stage $name: skipped, ${l}s left"
        return 0
    fi
    say "stage $name: start (cap ${t}s): $*"
    local s; s=$(date +%s)
    timeout --signal=INT --kill-after=10 "$t" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "stage $name: rc=$rc after $(( $(date +%s) - s ))s$([[ $rc == 124 || $rc == 130 ]] && echo ' (time cap reached)')"
    return 0
}

say "gpu_benchmark: commit $BENCH_COMMIT, stages $STAGES, budget ${BUDGET}s, tiny=$TINY, out $OUT"
{  # each check capped too, so nothing outside a stage can hang the run
    command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi \
        --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    timeout 60 "$PY" -c "import sys, torch, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'numpy', numpy.__version__)"
    timeout 60 "$PY" -c "import cifarzoo; print('cifarzoo', cifarzoo.__version__, cifarzoo.__file__)"
} >>"$LOG" 2>&1 || { say "preflight failed: $PY cannot import torch, numpy or cifarzoo (see $LOG)"; exit 2; }

DEVICE=cpu
if [[ $TINY != 1 ]]; then
    DEVICE=cuda
    timeout 60 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { say "no CUDA device visible to $PY: stopping (--tiny runs the CPU smoke mode)"; exit 2; }
fi

# ---------------------------------------------------------------- data
# Converted once per source: a follow-up run with the same PATH and work folder reuses it.
if [[ $TINY != 1 ]]; then
    if [[ -f $DATA/test_batch && ( -z $DATA_SRC || "$(cat "$DATA/SOURCE" 2>/dev/null)" == "$DATA_SRC" ) ]]; then
        say "stage data: using the converted data already in $DATA"
    else
        rm -rf "$DATA"
        run_capped data 60 "$PY" benchmarks/prepare_data.py "$DATA_SRC" "$DATA"
        [[ -f $DATA/test_batch ]] && echo "$DATA_SRC" >"$DATA/SOURCE"
    fi
    [[ -f $DATA/test_batch ]] || { say "stage data: could not read $DATA_SRC as CIFAR-10 (see $LOG); nothing else can run"; exit 2; }
fi

# ---------------------------------------------------------------- throughput, fastnet, 2 epochs per model
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
AT_RISK_FIRST=inception,xception,resnet50,vgg19,vgg16,resnet18  # furthest from their targets first
if [[ $TINY == 1 ]]; then
    want throughput && throughput throughput 120 --device cpu --models fastnet,resnet18 --width-mult 0.125 \
        --batch-size 16 --inference-batch-size 16 --steps 1 --warmup 1 --repeats 1 --threads 1
    want fastnet && tta fastnet 120 --models fastnet --preset quick --seeds 2 --epochs 1 --subset 500 \
        --width-mult 0.125 --batch-size 100 --threads 1 --thresholds 0.2,0.5
    want epochs2 && tta epochs2 120 --models resnet18 --preset quick --epochs 2 --subset 200 --width-mult 0.125 \
        --batch-size 50 --threads 1 --thresholds 0.2
else
    want throughput_eager && throughput throughput_eager 50 --device cuda --models "$AT_RISK_FIRST,fastnet" \
        --variants fp32,bf16+cl --steps 20 --warmup 3 --repeats 3
    want throughput && throughput throughput 120 --device cuda --models "$AT_RISK_FIRST" --variants fp32,project \
        --steps 20 --warmup 3 --repeats 3
    want fastnet && tta fastnet 70 --models fastnet --preset standard --seeds 5 --thresholds 0.8,0.9,0.907
    want fastnet_airbench && tta fastnet_airbench 60 --models fastnet --preset airbench --seeds 5 \
        --thresholds 0.8,0.9,0.907,0.94
    want fastnet_nolookahead && tta fastnet_nolookahead 70 --models fastnet --preset standard --seeds 5 \
        --thresholds 0.8,0.9,0.907 --set lookahead=False
    want epochs2 && tta epochs2 90 --models vgg16,vgg19,resnet50,inception,xception,resnet18 --preset standard \
        --epochs 2 --thresholds 0.5,0.7
fi

# ---------------------------------------------------------------- the five-model study (its own run)
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
        timeout 15 "$PY" -m cifarzoo benchmark --report-only --out "$WORK/study" >>"$LOG" 2>&1
        [[ -f $WORK/study/results.json ]] && cp "$WORK/study/results.json" "$WORK/json/study_results.json"
        [[ -f $WORK/study/report.md ]] && { echo; cat "$WORK/study/report.md"; } >>"$TABLES"
    fi
fi

# ---------------------------------------------------------------- resnet18's full recipe (a target outside the study)
if want resnet18 && [[ $TINY != 1 ]]; then
    tta resnet18 600 --models resnet18 --preset standard --seeds 1 --thresholds 0.8,0.9,0.92
fi

# ---------------------------------------------------------------- what comes back: at most 8 files
# throughput.json holds the compiled comparison, or the eager one when only that ran.
[[ -f $WORK/json/throughput_eager.json && ! -f $WORK/json/throughput.json ]] \
    && cp "$WORK/json/throughput_eager.json" "$OUT/throughput.json"
for f in throughput fastnet fastnet_airbench epochs2 study_results; do
    [[ -f $WORK/json/$f.json ]] && cp "$WORK/json/$f.json" "$OUT/$f.json"
done
(cd "$WORK" && find json runs study \( -name '*.json' -o -name metrics.csv -o -name results.csv \) -print0 2>/dev/null \
    | tar czf "$OUT/results.tar.gz" --null -T -) 2>>"$LOG"
say "gpu_benchmark: done; files: $(cd "$OUT" && ls | tr '\n' ' ')"
