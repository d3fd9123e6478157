#!/usr/bin/env bash
# The main job on CPU, in a few minutes: what the model is for.
#   simulate astrocyte LTP -> fit the macro model -> retention table (T = 1, 2 and 16)
#   -> generate a short qa1 memory set (bAbI facts in King James Bible text, Debian bible-kjv):
#      256-byte examples = 2 segments of 128 bytes, both facts in segment 1, the question at the
#      end of segment 2, so only memory carried across the segment boundary can answer
#   -> train a small RMAAT (AMRB, RF(t, 2)) and, side by side on the other core, the no-memory
#      control (the same model reading only the last segment)
#   -> test accuracy of both against chance (the last lines printed).
# A stand-in memory task: its numbers are never LRA or BABILong results.
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
# One intra-op thread per process: on a small shared CPU more threads oversubscribe it; the two
# runs of step 4 use one core each.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
config=rmaat/configs/demo/babi_qa1_short.yaml

echo "== 1/4 simulate the tripartite synapse, fit the macro model, tabulate RF(t, T) for T = 1, 2, 16"
# T = 2 for RMAAT, T = 1 for the one-segment control (RF = 1: nothing is passed on), 16 as a reference
.venv/bin/pipeline simulate --segments 1,2,16 --out "$table"

echo "== 2/4 generate a short qa1 memory set (2 x 128 bytes, facts in segment 1; generation.json records how)"
.venv/bin/pipeline data generate --task babi_qa1 --out "$out/qa1" --length 256 --segment-length 128 \
    --facts 2 --fact-segments 0 --size 12000 --seed 0

echo "== 3/4 train RMAAT on both segments ($config, RF(t, 2) from $table) and, beside it,"
echo "       the no-memory control on the last segment only (log: $out/control.log)"
.venv/bin/pipeline train --config "$config" --data-dir "$out/qa1" --run-dir "$out/control" \
    --seq-len 128 --segments 1 --set data.truncate=left --set model.retention_table="$table" \
    --no-progress >"$out/control.log" 2>&1 &
control=$!
.venv/bin/pipeline train --config "$config" --data-dir "$out/qa1" --run-dir "$out/rmaat" \
    --set model.retention_table="$table"
wait "$control" || { echo "the control run failed:"; tail -5 "$out/control.log"; exit 1; }

echo "== 4/4 memory vs no memory (test split; a stand-in memory task, not an LRA or BABILong result)"
.venv/bin/python - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
rmaat, control = (json.load(open(f"{out}/{name}/summary.json")) for name in ("rmaat", "control"))
print(f"  RMAAT, 2 segments with memory:     test accuracy {rmaat['test_accuracy']:.4f}")
print(f"  no-memory control, last segment:   test accuracy {control['test_accuracy']:.4f}")
print(f"  chance 1/6 = 0.1667; majority class {rmaat['majority_baseline']:.4f} (n={rmaat['n_test']})")
EOF
