#!/usr/bin/env bash
# Regenerate the README figures in docs/figures/ with the `pipeline plot` commands.
#
#   bash scripts/make_figures.sh
#
# Inputs: the packaged retention table (fit, retention factors), the astrocyte rate model
# (decay scale), a 4-segment tripartite simulation (Brian2 numpy target: no compiler) and
# one short CPU training run on generated ListOps.  Intermediate files live in a temporary
# directory removed at exit.  About 5-15 minutes on 2 CPU cores, most of it the training run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pipeline ] || bash scripts/setup.sh
pipeline=.venv/bin/pipeline
out=docs/figures
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# 1. Saturation curve + macro-model fit, and the retention factors, from the packaged table.
"$pipeline" plot fit --out "$out/saturation_fit.png"
"$pipeline" plot retention --totals 4,8,16,32 --out "$out/retention_factors.png"

# 2. Decay scale: STP spatial response of the rate network vs the attention's exp(-scale*d).
"$pipeline" plot decay --scales 1,2,5,10 --tokens 16 --out "$out/decay_scale.png"

# 3. The tripartite synapse through 4 segments.
.venv/bin/python - "$work/tripartite.nc" <<'PY'
import sys
from neuro_sim import simulate
simulate((4,), "tripartite", codegen="numpy", progress=False).to_netcdf(sys.argv[1])
PY
"$pipeline" plot simulation "$work/tripartite.nc" --out "$out/tripartite_dynamics.png"

# 4. One training curve: the main job's small RMAAT (AMRB, 2 segments of 128 tokens) on a
#    generated short-ListOps demo set (10 < length < 250 tokens; not LRA ListOps), CPU, fixed seeds.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$pipeline" data generate --task listops --out "$work/listops" --size 4000 --seed 0 \
    --min-length 10 --max-length 250
"$pipeline" train --config rmaat/configs/demo/listops_short.yaml --data-dir "$work/listops" \
    --run-dir "$work/run" --device cpu --seed 0 --no-progress
"$pipeline" plot training "$work/run" --out "$out/training_curves.png"

ls -l "$out"
