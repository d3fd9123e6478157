#!/usr/bin/env bash
# The CUDA device check (SPEC §9, issue 10): every CUDA check in one run of <= 8 minutes on a lent
# H100/H200, figures written under $OUT (default ./device_check_out; safe to re-run):
#   0. environment: GPU name, torch / CUDA / cuDNN / NCCL versions, nvidia-smi, missing modules
#   1. the `cuda` tests (pytest -m cuda tests/test_cuda.py)   -> pytest_cuda.txt, pytest_cuda.xml
#   2. pipeline bench memory, Retrieval shape (16 x 512, batch 32): BPTT vs AMRB peak memory
#      (torch.cuda.max_memory_allocated) and step time          -> bench_memory.json
#   3. pipeline bench throughput, Retrieval shape (2 x 4096 bytes, 8 + 8 segments, batch 32):
#      rmaat, rmaat:bptt, rmt, transformer tokens/s and peaks     -> bench_throughput.json
#   4. AMRB/BPTT step time, from 2 and 3; then device_check.json + device_check.md (our figures
#      beside the paper's: 15.0 vs 3.4 GB, 1.73x) and device_check.log (this console output).
# Each part has its own time limit (TESTS_TIMEOUT, MEMORY_TIMEOUT, THROUGHPUT_TIMEOUT seconds),
# so one hang cannot eat the budget; the limits add up to under 8 minutes.
# Without CUDA the benches are skipped (said so, with what they would measure) and the tests
# only show that they skip cleanly: under 2 minutes.
# Python: $PYTHON, else .venv/bin/python, else python3. Wheels in ./.whl (e.g. netCDF4, cftime, which
# a bare GPU image may lack) are installed into a temporary folder first when a module is missing.
# Exit status: 0 when no part failed or timed out (skipped parts are fine), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./device_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

TESTS_TIMEOUT="${TESTS_TIMEOUT:-210}"
MEMORY_TIMEOUT="${MEMORY_TIMEOUT:-90}"
THROUGHPUT_TIMEOUT="${THROUGHPUT_TIMEOUT:-90}"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, installed or not
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # CPU work here is tiny; the GPU does the rest

MEMORY_CMD=("$PY" -m pipelines.cli bench memory --segments 16 --segment-len 512 --d-model 128 --batch 32
            --device cuda --json)
THROUGHPUT_CMD=("$PY" -m pipelines.cli bench throughput --presets rmaat,rmaat:bptt,rmt,transformer
                --doc-len 4096 --segments 8 --d-model 128 --layers 2 --batch 32 --rounds 5 --device cuda --json)
TESTS_CMD=("$PY" -m pytest -m cuda tests/test_cuda.py -rA -v --durations=15 -p no:cacheprovider
           --junitxml="$OUT/pytest_cuda.xml" -o junit_family=xunit2)

# record NAME STATUS RC SECONDS COMMAND NOTE -> one row of the parts table
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$WORK/parts.tsv"; }

# run_part NAME LIMIT STDOUT_FILE COMMAND... : run under `timeout` (the whole process group is
# killed at the limit), stdout to STDOUT_FILE ("-": console only; "+FILE": console and FILE)
run_part() {
    local name=$1 limit=$2 target=$3
    shift 3
    local start=$SECONDS rc status
    echo
    echo "== $name (limit ${limit}s): $*"
    case "$target" in
        -) timeout --kill-after=10 "$limit" "$@"; rc=$? ;;
        +*) timeout --kill-after=10 "$limit" "$@" | tee "${target#+}"; rc=${PIPESTATUS[0]} ;;
        *) timeout --kill-after=10 "$limit" "$@" >"$target"; rc=$? ;;
    esac
    case $rc in
        0) status=ok ;;
        124|137) status="timed out" ;;
        *) status=failed ;;
    esac
    local took=$((SECONDS - start))
    echo "== $name: $status (exit $rc) after ${took}s"
    record "$name" "$status" "$rc" "$took" "$*" ""
    [ "$status" = ok ]
}

skip_part() {  # NAME WHAT COMMAND...
    local name=$1 what=$2
    shift 2
    echo
    echo "== $name: skipped: no CUDA device"
    echo "   would measure: $what"
    echo "   would run: $*"
    record "$name" skipped "" 0 "$*" "no CUDA device"
}

main() {
    local failed=0 started=$SECONDS
    rm -f "$OUT"/device_check.json "$OUT"/device_check.md "$OUT"/pytest_cuda.txt "$OUT"/pytest_cuda.xml \
          "$OUT"/bench_memory.json "$OUT"/bench_throughput.json
    echo "device check: $(date -u +%Y-%m-%dT%H:%M:%SZ), python $PY, OUT=$OUT"

    # wheels carried for modules the image lacks (see scripts/device_check.py: MODULES)
    if compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c "import netCDF4" 2>/dev/null; then
        echo "== installing the wheels in .whl/ into $WORK/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
            && export PYTHONPATH="$WORK/site:$PYTHONPATH"
    fi

    run_part environment 45 - "$PY" scripts/device_check.py env --out "$WORK/env.json" || failed=1
    local cuda=0
    if [ -f "$WORK/env.json" ] && "$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["cuda_available"] else 1)' "$WORK/env.json"; then
        cuda=1
    fi

    if [ "$cuda" = 0 ]; then
        echo
        echo "== no CUDA device: the tests run only to show that they skip cleanly; the benches are skipped"
    fi
    run_part tests "$TESTS_TIMEOUT" "+$OUT/pytest_cuda.txt" "${TESTS_CMD[@]}" || failed=1

    if [ "$cuda" = 1 ]; then
        run_part memory "$MEMORY_TIMEOUT" "$OUT/bench_memory.json" "${MEMORY_CMD[@]}" || failed=1
        run_part throughput "$THROUGHPUT_TIMEOUT" "$OUT/bench_throughput.json" "${THROUGHPUT_CMD[@]}" || failed=1
    else
        skip_part memory "peak memory (torch.cuda.max_memory_allocated) and step time of one training step, BPTT vs AMRB, rmaat at 16 segments of 512, batch 32 (paper: 15.0 vs 3.4 GB)" "${MEMORY_CMD[@]}"
        skip_part throughput "training tokens/s and peak memory of rmaat (AMRB), rmaat:bptt, rmt, transformer on the Retrieval shape, batch 32, bf16 (paper: RMAAT 1.73x RMT)" "${THROUGHPUT_CMD[@]}"
    fi

    echo
    echo "== assembling $OUT/device_check.json and $OUT/device_check.md"
    timeout 60 "$PY" scripts/device_check.py assemble --out "$OUT" --work "$WORK" || failed=1
    echo "== device check done in $((SECONDS - started))s; files in $OUT:"
    ls -l "$OUT"
    return $failed
}

main 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
