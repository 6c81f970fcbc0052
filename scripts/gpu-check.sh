#!/usr/bin/env bash
# One prepared GPU run (make gpu-check): an import check, the CUDA tests, a GPU sweep sized
# for an H100/H200 with the CPU reference runs on the machine's own CPUs, the loop
# performance table, the equivalence verdicts, the report, and a short summary printed last,
# all within a bound printed at the start (under 7 minutes). The summary carries the GPU
# speedup bound's check (docs/gpu-bound.md): each measured GPU/CPU speedup against the bound
# for this GPU (above it: flagged), and the bound on the GPU itself against its measured steps.
#
# Needs no install: runs from the repository with PYTHONPATH=. and the python3 that holds
# torch (or $PYTHON); the first stage checks every import and says what is missing and how
# to bring it to an air-gapped machine. Outputs go to $OUT when set (the device machine
# returns at most 8 files, so the run folder travels as one archive), else to
# runs/gpu-check-<time>/.
#
#   scripts/gpu-check.sh                # on a GPU machine
#   scripts/gpu-check.sh --dry-run      # anywhere: the same stages on the CPU, tiny sizes, and
#                                       # only the GPU machine's packages importable
#   scripts/gpu-check.sh --print-bound  # the stage table and the total time bound, nothing run
#
# Exit status: 0 every stage finished (the equivalence verdict, "not equivalent" included,
# is in the summary); 1 a stage failed or hit its limit (the outputs are still written and
# the summary lists the failed stages); 2 usage; 4 a module is missing (nothing ran; the
# message says which and how to bring it offline).
set -uo pipefail
cd "$(dirname "$0")/.."

# Every Python run and every step after the sweep is a stage: at its limit it gets SIGINT (a
# sweep then saves what finished), and SIGKILL `grace` seconds later. So the script ends
# within the sum of limit + grace over the stages plus SHELL_SECONDS for its own few
# commands (mkdir, log lines): BOUND. The device machine's 15 minutes also pay for its start.
#        name        limit grace
# The sweep's limit is what the gpu-check preset is sized for: its plan (`cifar-bench run
# --preset gpu-check --devices cuda --data synthetic --plan`, bench/config.py GPU_CHECK_SIZING)
# leaves a third of it spare.
STAGES=("machine        30  3"   # imports first (torch among them), machine line, nvidia-smi
        "cuda-tests     60  3"
        "sweep         190  5"
        "perf           45  3"
        "equivalence    20  3"
        "report         25  3"
        "archive         5  2"   # report.md copied out, the run folder packed
        "summary        12  3")
SHELL_SECONDS=3
BOUND=$SHELL_SECONDS
for row in "${STAGES[@]}"; do
    read -r _ limit grace <<<"$row"
    BOUND=$((BOUND + limit + grace))
done
limits_of() {  # limits_of NAME -> "limit grace"
    local row name
    for row in "${STAGES[@]}"; do
        read -r name limit grace <<<"$row"
        [[ $name == "$1" ]] && { echo "$limit $grace"; return 0; }
    done
    echo "gpu-check: no stage named $1" >&2
    exit 2
}

DRY_RUN=0
case "${1:-}" in
    "") ;;
    --dry-run) DRY_RUN=1 ;;
    --print-bound)
        printf '%s\n' "${STAGES[@]}"
        echo "bound ${BOUND} s (limits + grace + ${SHELL_SECONDS} s of shell)"
        exit 0 ;;
    *) echo "usage: scripts/gpu-check.sh [--dry-run | --print-bound]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The dry run sees only the GPU machine's packages (scripts/gpu_env/sitecustomize.py).
[[ $DRY_RUN == 1 ]] && export PYTHONPATH="$PWD/scripts/gpu_env:$PYTHONPATH"
STAMP=$(date +%Y%m%d-%H%M%S)
DEST=${OUT:-runs/gpu-check-$STAMP}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
WORK=$(mktemp -d)
RUN="$WORK/run"
LOG="$DEST/gpu-check.log"
START=$SECONDS

FAILED=()
log() { echo "[gpu-check $((SECONDS - START))s] $*" | tee -a "$LOG"; }
describe() {
    case $1 in
        0) echo "exit 0" ;;
        124) echo "stopped at its time limit, exit 124" ;;
        137) echo "killed after its grace period, exit 137" ;;
        126 | 127) echo "could not start ($PY?), exit $1" ;;
        *) echo "exit $1" ;;
    esac
}
# run_stage NAME [--stdout FILE] CMD...: CMD under NAME's limit and grace; its status in RC.
run_stage() {
    local name=$1 out=$LOG limit grace
    shift
    if [[ ${1:-} == --stdout ]]; then out=$2; shift 2; fi
    read -r limit grace <<<"$(limits_of "$name")"
    log "$name (limit $limit s + $grace s): $*"
    timeout -s INT -k "$grace" "$limit" "$@" >>"$out" 2>>"$LOG"
    RC=$?
    log "$name: $(describe "$RC")"
}
# stage: run_stage, and any non-zero status is a failed stage; the script goes on, so the
# outputs always come back.
stage() {
    run_stage "$@"
    [[ $RC == 0 ]] || FAILED+=("$1 ($(describe "$RC"))")
}

log "bound ${BOUND} s: $(printf '%s; ' "${STAGES[@]}" | tr -s ' ')+ ${SHELL_SECONDS} s shell"
# CIFAR-10 when data/ holds it (the files cnn.data.find_cifar10_folder looks for), else
# synthetic data: the GPU machine has no network, so nothing tries a download.
DATA_DIR=${GPU_CHECK_DATA_DIR:-data}
DATA=synthetic
for f in "$DATA_DIR"/{,cifar-10-batches-py/}{test_batch,data_batch_1}; do [[ -e $f ]] && DATA=cifar10; done
export CIFAR_BENCH_NO_DOWNLOAD=1
if [[ $DRY_RUN == 1 ]]; then
    # tiny sizes: the dry run must fit the same limits on a slow shared CPU
    DEVICE=cpu; SWEEP=(--preset quick --devices cpu --models tutorial --data synthetic --train-size 2048 --test-size 500)
    PERF=(--device cpu --batch-sizes 32 --repeats 1 --seconds 0.2 --workers 0 --data synthetic)
else
    DEVICE=cuda; SWEEP=(--preset gpu-check --devices cuda --data "$DATA" --data-dir "$DATA_DIR")
    PERF=(--device cuda --batch-sizes 32,512 --repeats 3 --seconds 0.25 --workers 4 --layout --data "$DATA"
          --data-dir "$DATA_DIR")
fi

run_stage machine --stdout "$WORK/machine.txt" "$PY" scripts/preflight.py
tee -a "$LOG" <"$WORK/machine.txt"
if [[ $RC != 0 ]]; then
    cp "$WORK/machine.txt" "$DEST/summary.md"
    rm -rf "$WORK"
    if [[ $RC == 4 ]]; then
        echo "gpu-check: missing modules (above); nothing was run. Outputs: $DEST" >&2
        exit 4
    fi
    echo "gpu-check: the machine stage failed ($(describe "$RC")); see $LOG" >&2
    exit 1
fi

stage cuda-tests "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
log "data: $DATA ($DATA_DIR)"
stage sweep "$PY" -m bench run "${SWEEP[@]}" --out "$RUN" --no-progress
SWEEP_RC=$RC
stage perf "$PY" -m bench perf "${PERF[@]}" --out "$RUN/performance"
# `equivalence` exits 3 for "a pair is not equivalent": a verdict, reported in the summary.
# 0 is "all equivalent or inconclusive"; anything else (1 an error, 2 usage) is a failure.
run_stage equivalence "$PY" -m bench equivalence "$RUN"
case $RC in
    0) VERDICT="every pair equivalent or inconclusive" ;;
    3) VERDICT="at least one pair NOT equivalent (equivalence.csv in run.tar.gz)" ;;
    *) VERDICT="none: the equivalence stage failed ($(describe "$RC"))"
       FAILED+=("equivalence ($(describe "$RC"))") ;;
esac
stage report "$PY" -m bench report "$RUN"

# What comes back: the report and summary as files, everything else in one archive.
stage archive bash -c '[[ ! -f "$1/report.md" ]] || cp "$1/report.md" "$2/"; tar -czf "$2/run.tar.gz" -C "$3" run' \
    _ "$RUN" "$DEST" "$WORK"
stage summary --stdout "$DEST/summary.md" "$PY" -m bench summary "$RUN"
{
    echo
    # a cut sweep: `bench summary` lists what sweep.json planned and the results lack
    [[ $SWEEP_RC == 0 ]] || echo "The sweep stage did not finish ($(describe "$SWEEP_RC")): the not-run lines above list what it lacks."
    echo "Equivalence verdict: $VERDICT."
    [[ ${#FAILED[@]} == 0 ]] || echo "Failed stages: ${FAILED[*]} (see gpu-check.log)."
} >>"$DEST/summary.md"
log "done in $((SECONDS - START)) s (bound $BOUND s); outputs in $DEST: $(ls "$DEST" | tr '\n' ' ')"
rm -rf "$WORK"
echo
echo "== gpu-check summary ($DEVICE, $((SECONDS - START)) s) =="
cat "$DEST/summary.md"
[[ ${#FAILED[@]} == 0 ]] || exit 1
