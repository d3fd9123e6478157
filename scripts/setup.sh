#!/usr/bin/env bash
# Create ./.venv and install the project into it.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --test   plus the test extra (pytest, hypothesis, nbclient, ...)
# torch is pinned to 2.13.0 here, the CPU wheel available on this machine; the package
# metadata accepts a range so that users with CUDA can install their own build first.
# numpy < 2.4 is required by brian2 2.9.0 (pinned in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extra}"
