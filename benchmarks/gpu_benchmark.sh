#!/usr/bin/env bash
# cifarzoo's GPU benchmark: one command on a machine with a CUDA GPU, where the CIFAR-10 data is.
#
#   bash benchmarks/gpu_benchmark.sh PATH_TO_CIFAR10            # default run, at most 7 minutes
#   bash benchmarks/gpu_benchmark.sh PATH_TO_CIFAR10 --study    # the five-model study: 2 calls, each < 10 minutes
#   bash benchmarks/gpu_benchmark.sh PATH_TO_CIFAR10 --plan     # print the stages, caps, expected times, commands
#   BENCH_DEVICE=cpu bash benchmarks/gpu_benchmark.sh PATH      # the same stage commands on the CPU, tiny sizes
#   bash benchmarks/gpu_benchmark.sh --tiny                     # BENCH_DEVICE=cpu on the bundled sample
#
# PATH_TO_CIFAR10 (or $CIFAR10_DATA) is the official cifar-10-python.tar.gz, a folder holding
# cifar-10-batches-py/, an image folder train/<class>/*.jpg + test/<class>/*.jpg (the JPEG copy),
# or a .tar/.tar.gz of that image folder (decoded straight from the tar stream by a process pool).
# It is converted once to the official python layout under the work folder (stage data), which
# every later stage loads in a second.
#
# Stages of the default run in order of value, each under its own time cap (seconds), all under
# BENCH_BUDGET (420 s = 7 minutes). "H100" is the expected time on one H100 (an ESTIMATE, not a
# measurement; the reasoning is in benchmarks/README.md, "Expected time per stage on an H100"):
#   stage             what                                                               cap   H100
#   data              PATH -> $WORK/cifar-10-batches-py (skipped when already converted) 120     10
#   fastnet_airbench  fastnet, airbench preset (airbench94_muon's recipe), seeds 0-4      60     40
#   fastnet           fastnet, standard preset, seeds 0-4                                 60     40
#   epochs2           every study model + resnet18, 2 epochs of its standard recipe with   100     60
#                     the warm-up scaled to 2 epochs (--truncate-schedule): seconds per
#                     epoch to extrapolate the recipes; accuracies are early learning only
#   throughput_eager  training-step img/s, eager fp32 vs bf16 + channels_last, cheapest    50     35
#                     models first, no inference (--no-inference)
#   compile_check     torch.compile trains a tiny net; if not, every later stage runs      90     25
#                     eager (said in the log and tables.md)
#   throughput        the project's path (compiled where fit compiles), cheapest compiles  180    180
#                     first; the fp32 baseline taken from throughput_eager.json; the cap
#                     is expected to leave xception and inception unmeasured
# The study (--study) is split in two calls that continue one study folder; each call runs the
# next part not yet finished (a part cut by its cap resumes in the next call), 570 s cap each:
#   study part 1      vgg16, vgg19, resnet50: 197 s of training + 3 compiles                570    340
#   study part 2      inception, xception: 222 s of training + 2 compiles                   570    410
# (each call also runs data (skipped once converted) and compile_check, ~25 s).
#
# Results go to $OUT (default ./gpu_benchmark_out): benchmark.log (every command and its output),
# tables.md (every table), one JSON per stage written there while the stage runs (rewritten after
# every model or run, so a run killed from outside keeps what was measured), study_results.json
# (the study), and results.tar.gz (every JSON and each run's metrics.csv / summary.json /
# config.json; no weights).
#
# Options (or environment variables):
#   --study            BENCH_STAGES=study and BENCH_BUDGET=570: the next part of the study
#   --stages LIST      BENCH_STAGES: comma list of the stages after data; also study, resnet18 (its
#                      full recipe) and fastnet_nolookahead (the 5 standard seeds without lookahead)
#   --plan             print what would run (stage, cap, expected H100 seconds, command) and stop
#   --tiny             BENCH_TINY=1: BENCH_DEVICE=cpu on the bundled sample, no data path needed
#   BENCH_DEVICE       cuda (default) or cpu: cpu runs every stage's own command with tiny sizes
#                      appended (fewer seeds, 1 epoch, a small subset and width, 1 timed step),
#                      so the argument lists a GPU gets are the ones the test suite runs
#   BENCH_COMPILE      auto (default: compile_check decides) or off (run every stage eager)
#   BENCH_BUDGET       seconds for the whole run          OUT     where the result files go
#   BENCH_WORK         scratch folder (default $TMPDIR/cifarzoo-bench; the converted data and the
#                      study stay there for the next call, the rest is cleared at the start)
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
DEVICE=${BENCH_DEVICE:-cuda}
COMPILE=${BENCH_COMPILE:-auto}
PLAN=0
while (( $# )); do
    case $1 in
        --study) STAGES=study; BUDGET=${BUDGET:-570} ;;
        --stages) STAGES=${2:?--stages needs a comma list}; shift ;;
        --stages=*) STAGES=${1#--stages=} ;;
        --tiny) TINY=1 ;;
        --plan) PLAN=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_benchmark.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) DATA_SRC=$1 ;;
    esac
    shift
done
[[ $TINY == 1 ]] && DEVICE=cpu
[[ $DEVICE == cuda || $DEVICE == cpu ]] || { echo "gpu_benchmark.sh: BENCH_DEVICE=$DEVICE: use cuda or cpu" >&2; exit 2; }
[[ $COMPILE == auto || $COMPILE == off ]] || { echo "gpu_benchmark.sh: BENCH_COMPILE=$COMPILE: use auto or off" >&2; exit 2; }
BUDGET=${BUDGET:-420}
STAGES=${STAGES:-fastnet_airbench,fastnet,epochs2,throughput_eager,throughput}
OUT=${OUT:-$ROOT/gpu_benchmark_out}
# Paths given relative to where the command was typed, not to the repository root.
[[ -n $DATA_SRC && $DATA_SRC != /* ]] && DATA_SRC=$CALLER/$DATA_SRC
[[ $OUT != /* ]] && OUT=$CALLER/$OUT
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/cifarzoo-bench}
PY=${PYTHON:-$([[ $DEVICE == cpu && -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3)}
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export BENCH_COMMIT=${BENCH_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}

# Tiny sizes appended to each stage's own command on the CPU (argparse: the last value wins).
if [[ $DEVICE == cpu ]]; then
    SMALL_TTA=(--seeds 1 --epochs 1 --subset 100 --width-mult 0.0625 --batch-size 50 --threads 1)
    SMALL_TP=(--width-mult 0.0625 --batch-size 8 --steps 1 --warmup 1 --repeats 1 --threads 1)
    SMALL_STUDY=(--preset quick --epochs 1 --jobs 1 --threads 1)
else
    SMALL_TTA=() SMALL_TP=() SMALL_STUDY=()
fi

# The data argument first: a missing path is the most likely mistake and costs nothing to check.
if [[ $TINY == 1 ]]; then
    DATA=sample
else
    DATA=$WORK/cifar-10-batches-py
    if [[ ! -f $DATA/test_batch && -z $DATA_SRC && $PLAN == 0 ]]; then
        echo "gpu_benchmark.sh: no CIFAR-10 data given: run 'bash benchmarks/gpu_benchmark.sh PATH' (or set" \
             "CIFAR10_DATA=PATH), where PATH is cifar-10-python.tar.gz, a folder holding cifar-10-batches-py/," \
             "or the JPEG copy (a train/ + test/ image folder or its .tar/.tar.gz)" >&2
        exit 2
    fi
    if [[ -n $DATA_SRC && ! -e $DATA_SRC && $PLAN == 0 ]]; then
        echo "gpu_benchmark.sh: CIFAR-10 data not found: $DATA_SRC does not exist" \
             "(give the archive or folder as the first argument or in CIFAR10_DATA)" >&2
        exit 2
    fi
fi

want() { [[ ",$STAGES," == *",$1,"* ]]; }
# The study's two parts, each well under a call's 570 s (train seconds from the recipes' epochs at
# the reference eager img/s, plus about a minute of compilation per model).
STUDY_PARTS=("vgg16,vgg19,resnet50" "inception,xception")
STUDY_EXPECT=(340 410)
STUDY=$WORK/study
study_part() {  # the first part without its done-marker; all done: start the study again
    local i
    for i in "${!STUDY_PARTS[@]}"; do
        [[ -f $STUDY/.part$(( i + 1 ))-done ]] || { echo $(( i + 1 )); return; }
    done
    echo 0
}

START=$(date +%s)
if [[ $PLAN == 1 ]]; then
    LOG=/dev/null TABLES=/dev/null
else
    # Results of an earlier run in the same work folder must not come back as this run's; the
    # study folder is kept (a --study call continues it).
    rm -rf "$WORK/runs"
    rm -f "$WORK"/*.md
    mkdir -p "$OUT" "$WORK"
    LOG=$OUT/benchmark.log
    TABLES=$OUT/tables.md
    : >"$LOG"
    : >"$TABLES"
fi
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
RESERVE=20  # kept back for a stage's grace period after its cap and for packing the results
left() { echo $(( BUDGET - RESERVE - ($(date +%s) - START) )); }

# run_capped NAME CAP EXPECT CMD...: run CMD for at most min(CAP, time left) seconds. SIGINT first,
# so fit() saves a resumable checkpoint and the scripts keep the JSON they already wrote.
# With --plan: print the stage and its command only.
run_capped() {
    local name=$1 cap=$2 expect=$3; shift 3
    if [[ $PLAN == 1 ]]; then
        printf 'stage %-17s cap %4ss  H100 ~%4ss  %s\n' "$name" "$cap" "$expect" "$*"
        return 0
    fi
    local l; l=$(left)
    local t=$(( cap < l ? cap : l ))
    if (( t < 10 )); then
        say "stage $name: skipped, ${l}s left"
        return 0
    fi
    say "stage $name: start (cap ${t}s, H100 ~${expect}s): $*"
    local s; s=$(date +%s)
    timeout --signal=INT --kill-after=10 "$t" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "stage $name: rc=$rc after $(( $(date +%s) - s ))s$([[ $rc == 124 || $rc == 130 ]] && echo ' (time cap reached)')"
    return $rc
}

say "gpu_benchmark: commit $BENCH_COMMIT, device $DEVICE, stages $STAGES, budget ${BUDGET}s, out $OUT"
if [[ $PLAN == 0 ]]; then
    {  # each check capped too, so nothing outside a stage can hang the run
        [[ $DEVICE == cuda ]] && command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi \
            --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
        timeout 60 "$PY" -c "import sys, torch, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'numpy', numpy.__version__)"
        timeout 60 "$PY" -c "import cifarzoo; print('cifarzoo', cifarzoo.__version__, cifarzoo.__file__)"
    } >>"$LOG" 2>&1 || { say "preflight failed: $PY cannot import torch, numpy or cifarzoo (see $LOG)"; exit 2; }
    if [[ $DEVICE == cuda ]]; then
        timeout 60 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
            || { say "no CUDA device visible to $PY: stopping (BENCH_DEVICE=cpu runs the stages on the CPU)"; exit 2; }
    fi
fi

# ---------------------------------------------------------------- data
# Converted once per source: a follow-up run with the same PATH and work folder reuses it.
if [[ $TINY != 1 ]]; then
    if [[ $PLAN == 0 && -f $DATA/test_batch && ( -z $DATA_SRC || "$(cat "$DATA/SOURCE" 2>/dev/null)" == "$DATA_SRC" ) ]]; then
        say "stage data: using the converted data already in $DATA"
    else
        [[ $PLAN == 0 ]] && rm -rf "$DATA"
        run_capped data 120 10 "$PY" benchmarks/prepare_data.py "$DATA_SRC" "$DATA"
        [[ $PLAN == 0 && -f $DATA/test_batch ]] && echo "$DATA_SRC" >"$DATA/SOURCE"
    fi
    [[ $PLAN == 1 || -f $DATA/test_batch ]] \
        || { say "stage data: could not read $DATA_SRC as CIFAR-10 (see $LOG); nothing else can run"; exit 2; }
fi

# ---------------------------------------------------------------- stages
tables() { [[ -f $WORK/$1.md ]] && { echo; cat "$WORK/$1.md"; } >>"$TABLES"; return 0; }
throughput() {  # throughput NAME CAP EXPECT ARGS...: throughput.py, its JSON straight into $OUT
    local name=$1 cap=$2 expect=$3; shift 3
    [[ $PLAN == 0 ]] && rm -f "$OUT/$name.json"
    run_capped "$name" "$cap" "$expect" "$PY" benchmarks/throughput.py --device "$DEVICE" --preset standard "$@" \
        "${SMALL_TP[@]}" --json "$OUT/$name.json" --markdown "$WORK/$name.md"
    tables "$name"
}
tta() {  # tta NAME CAP EXPECT ARGS...: time_to_accuracy.py, its JSON straight into $OUT
    local name=$1 cap=$2 expect=$3; shift 3
    [[ $PLAN == 0 ]] && rm -f "$OUT/$name.json"
    run_capped "$name" "$cap" "$expect" "$PY" benchmarks/time_to_accuracy.py --data "$DATA" --device "$DEVICE" \
        "$@" "${COMPILE_ARGS[@]}" "${SMALL_TTA[@]}" --out "$WORK/runs/$name" --json "$OUT/$name.json" \
        --markdown "$WORK/$name.md"
    tables "$name"
}
# compile_check: once, before the first stage that compiles. Without a working toolchain (Triton on
# CUDA) every compiled stage would fail model by model; instead everything after runs eager.
COMPILE_ARGS=()
COMPILE_CHECKED=0
compile_check() {
    (( COMPILE_CHECKED )) && return 0
    COMPILE_CHECKED=1
    if [[ $COMPILE == auto ]] && run_capped compile_check 90 25 "$PY" benchmarks/_common.py compile-check "$DEVICE"; then
        return 0
    fi
    [[ $PLAN == 1 && $COMPILE == auto ]] && return 0  # the plan assumes the check passes
    COMPILE=off
    COMPILE_ARGS=(--compile off)
    export TORCHDYNAMO_DISABLE=1  # the study's fit calls compile where the recipe says so: make it a no-op
    local msg="compile unavailable or turned off (BENCH_COMPILE=off, or compile_check failed: see $LOG): every"
    msg+=" later stage runs eager; the compiled throughput stage is skipped; the study runs with"
    msg+=" TORCHDYNAMO_DISABLE=1, so its report's 'compiled' names the recipe's decision, not what ran"
    say "$msg"
    echo -e "\n**$msg**" >>"$TABLES"
}

[[ $COMPILE == off ]] && compile_check  # told to run eager: say so before anything runs
# Fit stages first: whole training runs are what nothing else predicts.
want fastnet_airbench && tta fastnet_airbench 60 40 --models fastnet --preset airbench --seeds 5 \
    --thresholds 0.8,0.9,0.94
want fastnet && tta fastnet 60 40 --models fastnet --preset standard --seeds 5 --thresholds 0.8,0.9,0.907
want fastnet_nolookahead && tta fastnet_nolookahead 60 40 --models fastnet --preset standard --seeds 5 \
    --thresholds 0.8,0.9,0.907 --set lookahead=False
# Cheapest first (seconds per epoch at the reference img/s), so a cap cuts the costliest.
want epochs2 && tta epochs2 100 60 --models vgg16,vgg19,resnet18,resnet50,xception,inception --preset standard \
    --epochs 2 --truncate-schedule --thresholds 0.3,0.5
# Throughput: cheapest models first; then the compiled path, cheapest compiles first, reusing the
# eager stage's fp32 baseline instead of measuring it again.
want throughput_eager && throughput throughput_eager 50 35 \
    --models fastnet,vgg16,vgg19,resnet18,resnet50,xception,inception --variants fp32,bf16+cl \
    --steps 10 --warmup 2 --repeats 2 --no-inference
if want throughput; then
    compile_check
    if [[ $COMPILE == off ]]; then
        say "stage throughput: skipped (eager only: the project path is the eager stage's bf16+cl)"
    else
        throughput throughput 180 180 --models resnet18,vgg16,vgg19,resnet50,xception,inception \
            --variants fp32,project --steps 10 --warmup 2 --repeats 2 --no-inference \
            --baseline-from "$OUT/throughput_eager.json"
    fi
fi

# ---------------------------------------------------------------- the five-model study, in parts
if want study; then
    compile_check
    part=$(study_part)
    if (( part == 0 )); then
        say "study: every part done in $STUDY: starting the study again"
        [[ $PLAN == 0 ]] && rm -rf "$STUDY"
        part=1
    fi
    for i in "${!STUDY_PARTS[@]}"; do
        say "study part $(( i + 1 )) of ${#STUDY_PARTS[@]}: ${STUDY_PARTS[i]}, expected ~${STUDY_EXPECT[i]}s on" \
            "an H100$( (( i + 1 == part )) && echo ' <- this call')"
    done
    run_capped "study_part$part" 570 "${STUDY_EXPECT[part - 1]}" "$PY" -m cifarzoo benchmark --preset standard \
        --models "${STUDY_PARTS[part - 1]}" --seeds 1 --data "$DATA" --device "$DEVICE" "${SMALL_STUDY[@]}" \
        --out "$STUDY"
    rc=$?
    if [[ $PLAN == 0 ]]; then
        # A part cut by its cap (SIGINT: 130, or 124) is not done: the next call resumes its runs.
        [[ $rc != 124 && $rc != 130 && $rc != 137 ]] && touch "$STUDY/.part$part-done"
        rm -f "$OUT/study_results.json"
        if [[ -d $STUDY ]]; then  # the report covers every run so far (the rest show as not run)
            timeout 30 "$PY" -m cifarzoo benchmark --report-only --out "$STUDY" >>"$LOG" 2>&1
            [[ -f $STUDY/results.json ]] && cp "$STUDY/results.json" "$OUT/study_results.json"
            [[ -f $STUDY/report.md ]] && { echo; cat "$STUDY/report.md"; } >>"$TABLES"
        fi
        next=$(study_part)
        say "study: $( (( next == 0 )) && echo 'complete' || echo "part $next next: run the same command again")"
    fi
fi

# ---------------------------------------------------------------- resnet18's full recipe (a target outside the study)
want resnet18 && tta resnet18 600 60 --models resnet18 --preset standard --seeds 1 --thresholds 0.8,0.9,0.92

# ---------------------------------------------------------------- what comes back
[[ $PLAN == 1 ]] && exit 0
rm -rf "$WORK/json" && mkdir -p "$WORK/json" && cp "$OUT"/*.json "$WORK/json/" 2>/dev/null
(cd "$WORK" && find json runs study \( -name '*.json' -o -name metrics.csv -o -name results.csv \) -print0 2>/dev/null \
    | tar czf "$OUT/results.tar.gz" --null -T -) 2>>"$LOG"
say "gpu_benchmark: done; files: $(cd "$OUT" && ls | tr '\n' ' ')"
