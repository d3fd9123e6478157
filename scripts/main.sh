#!/usr/bin/env bash
# The main job on the embedded default, on CPU, in a few minutes:
#   simulate astrocyte LTP -> fit the macro model -> retention table (T = 16)
#   -> generate a small ListOps set -> train a small RMAAT -> accuracy vs the majority class.
# Everything lands under runs/demo/ (gitignored).  Re-running starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

out=runs/demo
rm -rf "$out"
mkdir -p "$out"
export RMAAT_RETENTION_TABLE="$out/retention_table.nc"

.venv/bin/pipeline simulate --segments 16 --out "$RMAAT_RETENTION_TABLE"
.venv/bin/pipeline data generate --task listops --out "$out/listops" --size 2000 --seed 0
.venv/bin/pipeline train --task listops --data-dir "$out/listops" --run-dir "$out/train" \
    --config demo
