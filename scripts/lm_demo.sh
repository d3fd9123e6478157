#!/usr/bin/env bash
# Causal RMAAT as a byte-level language model (SPEC section 8), on CPU in a few minutes:
#   train a small RMAAT on the King James Bible with whole books held out (rmaat/configs/demo/
#   kjv_lm_short.yaml: 2K-byte contexts, 4 segments of 512 bytes, AMRB with a loss per segment)
#   -> test bits per byte next to the unigram byte baseline (printed side by side)
#   -> generate text from a prompt (streaming, memory carried with the T-free r_t)
#   -> bits per byte by position over 64K-byte held-out streams, memory carried across all
#      128 segments, for each retention rule (figure runs/lm_demo/streaming.png).
# Everything lands under runs/lm_demo/ (gitignored). Re-running starts afresh. Not an LRA task.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

out=runs/lm_demo
rm -rf "$out"
mkdir -p "$out"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

echo "== 1/3 train causal RMAAT on KJV bytes (held-out books as val/test)"
.venv/bin/pipeline train --config rmaat/configs/demo/kjv_lm_short.yaml --run-dir "$out/rmaat" --no-progress

echo "== 2/3 generate (prompt, then 300 sampled bytes)"
.venv/bin/pipeline generate --checkpoint "$out/rmaat/checkpoints/best.pt" \
    --prompt "And it came to pass, when the king" --max-bytes 300 --temperature 0.8 --seed 0

echo "== 3/3 bits per byte by position over 64K-byte test streams (memory carried; trained on 4 segments)"
.venv/bin/pipeline evaluate --checkpoint "$out/rmaat/checkpoints/best.pt" --stream-bytes 65536 --streams 2 \
    --figure "$out/streaming.png"
