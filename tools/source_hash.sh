#!/usr/bin/env bash
# One hash of the sources the extension is built from (csrc/, setup.py, tools/), from their
# contents and paths only (no git needed): `make gpu-kit` stores it in build/gpu-kit/SOURCES and
# benchmarks/gpu_check.sh uses the kit only when the tree it runs in gives the same hash.
set -eu
cd "$(dirname "$0")/.."
find csrc tools setup.py -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cuh' -o -name '*.cu' -o -name '*.py' -o -name '*.sh' \) \
  -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
