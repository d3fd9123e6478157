#!/usr/bin/env bash
# Regenerate the figures: the README's in docs/figures/ and the executed notebooks.
#
#   bash scripts/make_figures.sh              # both
#   bash scripts/make_figures.sh readme       # docs/figures/*.png only (5-15 min, the training run)
#   bash scripts/make_figures.sh notebooks    # notebooks/*.ipynb executed in place (~1 min)
#
# Python: $PYTHON, else ./.venv/bin/python (created by scripts/setup.sh when missing); the
# commands run this checkout's code (`python -m pipelines.cli` from the repository root).
#
# README figures: the packaged retention table (fit, retention factors), the astrocyte rate
# model (decay scale), a 4-segment tripartite simulation (Brian2 numpy target: no compiler) and
# one short CPU training run on generated ListOps. Intermediate files live in a temporary
# directory removed at exit.
#
# Notebooks: each runs top to bottom in a fresh kernel of this interpreter and is written back
# with its outputs (scripts/notebooks.py): no timestamps or interpreter version stored, fixed
# seeds, so a re-run on an unchanged tree leaves `git diff` empty. tests/test_notebooks.py checks
# that the committed outputs are current (scripts/notebooks.py check does the same by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
case "$what" in all|readme|notebooks) ;; *) echo "usage: $0 [all|readme|notebooks]" >&2; exit 2 ;; esac
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python="${PYTHON:-.venv/bin/python}"
if [ -z "${PYTHON:-}" ] && [ ! -x .venv/bin/python ]; then
    bash scripts/setup.sh --test
fi
pipeline() { "$python" -m pipelines.cli "$@"; }

if [ "$what" != notebooks ]; then
    out=docs/figures
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$out"

    # 1. Saturation curve + macro-model fit, and the retention factors, from the packaged table.
    pipeline plot fit --out "$out/saturation_fit.png"
    pipeline plot retention --totals 4,8,16,32 --out "$out/retention_factors.png"

    # 2. Decay scale: STP spatial response of the rate network vs the attention's exp(-scale*d).
    pipeline plot decay --scales 1,2,5,10 --tokens 16 --out "$out/decay_scale.png"

    # 3. The tripartite synapse through 4 segments.
    "$python" - "$work/tripartite.nc" <<'PY'
import sys
from neuro_sim import simulate
simulate((4,), "tripartite", codegen="numpy", progress=False).to_netcdf(sys.argv[1])
PY
    pipeline plot simulation "$work/tripartite.nc" --out "$out/tripartite_dynamics.png"

    # 4. One training curve: the main job's small RMAAT (AMRB, 2 segments of 128 tokens) on a
    #    generated short-ListOps demo set (10 < length < 250 tokens; not LRA ListOps), CPU, fixed seeds.
    pipeline data generate --task listops --out "$work/listops" --size 4000 --seed 0 \
        --min-length 10 --max-length 250
    pipeline train --config rmaat/configs/demo/listops_short.yaml --data-dir "$work/listops" \
        --run-dir "$work/run" --device cpu --seed 0 --no-progress
    pipeline plot training "$work/run" --out "$out/training_curves.png"
    ls -l "$out"
fi

if [ "$what" != readme ]; then
    if ! "$python" -c "import nbclient, ipykernel" 2>/dev/null; then
        echo "the notebooks need the test extra (nbclient, ipykernel): bash scripts/setup.sh --test" >&2
        exit 1
    fi
    "$python" scripts/notebooks.py execute
fi
