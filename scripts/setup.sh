#!/usr/bin/env bash
# Create ./.venv and install the project into it (plus the Debian packages it reads).
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --test   plus the test extra (pytest, hypothesis, nbclient, ...)
# torch is pinned to 2.13.0 here, the CPU wheel available on this machine; the package
# metadata accepts a range so that users with CUDA can install their own build first.
# numpy < 2.4 is required by brian2 2.9.0 (pinned in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

# Debian packages: the King James Bible (bible-kjv + bible-kjv-text: real text for the memory tasks
# and the kjv_* stand-ins, read by the main job and the tests) and, for the tests, Fashion-MNIST
# (the image stand-in's loader test). Installed when we are root with apt-get; otherwise the
# commands that need them say which package to install.
packages=()
command -v bible >/dev/null || packages+=(bible-kjv bible-kjv-text)
[ -n "$extra" ] && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && packages+=(dataset-fashion-mnist)
if [ "${#packages[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq "${packages[@]}" >/dev/null) \
            || echo "note: could not install ${packages[*]} (apt-get install ${packages[*]})"
    else
        echo "note: install these Debian packages as root: apt-get install ${packages[*]}"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extra}"
