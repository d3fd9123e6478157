#!/usr/bin/env bash
# The main job on CPU, in a few minutes:
#   simulate astrocyte LTP -> fit the macro model -> retention table (T = 2 and 16)
#   -> generate a short-ListOps demo set (10 < length < 250 tokens; NOT LRA ListOps, whose
#      inputs are 500-2000 tokens) -> train a small RMAAT (2 segments of 128 tokens, AMRB)
#   -> test accuracy against the majority-class baseline (the last lines printed).
# Everything lands under runs/demo/ (gitignored).  Re-running starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

out=runs/demo
rm -rf "$out"
mkdir -p "$out"
table="$out/retention_table.nc"
# The trainer's table lookup: model.retention_table (set below: only that file, an error if it
# lacks T) -- the environment variable is for anything else run in this shell.
export RMAAT_RETENTION_TABLE="$table"
# One intra-op thread: on a small shared CPU, more threads oversubscribe it (measured 6x slower
# with 2 threads on a busy 2-core machine); the trainer itself does not set a thread count.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

echo "== 1/3 simulate the tripartite synapse, fit the macro model, tabulate RF(t, T) for T = 2, 16"
.venv/bin/pipeline simulate --segments 2 --segments 16 --out "$table"

echo "== 2/3 generate a short-ListOps demo set (not LRA ListOps; rules in listops-1000/generation.json)"
.venv/bin/pipeline data generate --task listops --out "$out/listops" --size 4000 --seed 0 \
    --min-length 10 --max-length 250

echo "== 3/3 train a small RMAAT (rmaat/configs/demo/listops_short.yaml) with RF(t, 2) from $table"
.venv/bin/pipeline train --config rmaat/configs/demo/listops_short.yaml --data-dir "$out/listops" \
    --run-dir "$out/train" --set model.retention_table="$table"

echo "(short-ListOps demo set, 10 < length < 250 tokens: a CPU smoke run, not an LRA ListOps result;"
echo " metrics in $out/train/metrics.jsonl, curves in $out/train/curves.png)"
