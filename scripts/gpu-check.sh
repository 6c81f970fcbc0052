#!/usr/bin/env bash
# One prepared GPU run (make gpu-check): CUDA tests, a GPU sweep sized for an H100/H200
# in under 8 minutes with the CPU reference runs on the machine's own CPUs, the
# equivalence verdicts, the report, and a short summary printed last.
#
# Needs no install: runs from the repository with PYTHONPATH=. and the python3 that holds
# torch. Outputs go to $OUT when set (the device machine returns at most 8 files, so the
# run folder travels as one archive), else to runs/gpu-check-<time>/.
#
#   scripts/gpu-check.sh            # on a GPU machine
#   scripts/gpu-check.sh --dry-run  # anywhere: the same stages on the CPU, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
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
# Each stage has its own time limit and the script goes on after a failure, so the
# outputs always come back; SIGINT at the limit lets a sweep save what finished.
stage() {
    local name=$1 limit=$2; shift 2
    log "$name: $*"
    timeout -s INT -k 20 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    log "$name: exit $rc"
    [[ $rc == 0 ]] || FAILED+=("$name (exit $rc)")
}

if [[ $DRY_RUN == 1 ]]; then
    DEVICE=cpu; SWEEP=(--preset quick --devices cpu --models tutorial --data synthetic)
    PERF=(--device cpu --batch-sizes 32 --repeats 1 --seconds 0.2 --workers 0 --data synthetic)
else
    DEVICE=cuda; SWEEP=(--preset gpu-check --devices cuda --data auto)
    PERF=(--device cuda --batch-sizes 4,32,128,512 --repeats 3 --seconds 0.3 --workers 4 --layout --data auto)
fi

log "machine: $(hostname), $($PY -c 'import torch,sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")' 2>&1)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$LOG" 2>&1 || true

# Stage limits add up to under 8 minutes (the device machine's 15 include its start).
stage cuda-tests 90 $PY -m pytest -q -m cuda -p no:cacheprovider tests
stage sweep 240 $PY -m bench run "${SWEEP[@]}" --out "$RUN" --no-progress
stage perf 90 $PY -m bench perf "${PERF[@]}" --out "$RUN/performance"
# exit 1 here is a verdict (a pair not equivalent), reported in the summary, not a failure
timeout 30 $PY -m bench equivalence "$RUN" >>"$LOG" 2>&1; [[ $? -le 1 ]] || FAILED+=("equivalence")
stage report 45 $PY -m bench report "$RUN"

# What comes back: the report and summary as files, everything else in one archive.
cp "$RUN/report.md" "$DEST/report.md" 2>/dev/null || true
tar -czf "$DEST/run.tar.gz" -C "$WORK" run 2>>"$LOG"
$PY -m bench summary "$RUN" >"$DEST/summary.md" 2>>"$LOG"
log "done in $((SECONDS - START)) s; outputs in $DEST: $(ls "$DEST" | tr '\n' ' ')"
rm -rf "$WORK"
echo
echo "== gpu-check summary ($DEVICE, $((SECONDS - START)) s) =="
cat "$DEST/summary.md"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "failed stages: ${FAILED[*]} (see gpu-check.log)"
    exit 1
fi
