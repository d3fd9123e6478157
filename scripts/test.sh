#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

# Real offline image data for the Fashion-MNIST stand-in loader test (Debian package).
# Optional: the test that reads it is skipped with a reason when it is absent.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
        || echo "note: could not install dataset-fashion-mnist; its test will be skipped"
fi

exec .venv/bin/python -m pytest "$@"
