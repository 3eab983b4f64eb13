#!/usr/bin/env bash
# Build and test fastvae against one torch release in a throw-away venv:
#
#   tools/check_torch.sh VERSION [PYTEST ARGS...]      e.g.  tools/check_torch.sh 2.15.0
#
# Steps: a venv with torch==VERSION (pip's torch cap on this kind of machine is lifted for this one
# install), a copy of the working tree (the repository's own in-place build is left alone), the
# extension built as `make build` does (CUDA kernels whenever nvcc is found), then pytest.
# Prints one summary line and, with RESULTS=FILE, writes it as JSON.
#
# Environment:
#   VENV=DIR         use (and keep) this venv; reused as is when it already has torch VERSION.
#                    Default: a temporary venv, removed at the end.
#   FASTVAE_CUDA     passed to setup.py (default 1 when nvcc is found: the check is of the CUDA
#                    build; set it empty to test the automatic CPU fallback instead).
#   CUDA_HOME        the toolkit (default /usr/local/cuda when it has bin/nvcc).
#   MAX_JOBS         parallel compile jobs (default 2).
#   PYTHON           interpreter for the venv (default python3).
#   RESULTS=FILE     write the summary as JSON.
#   FASTVAE_MNIST_DIR  MNIST t10k for the data tests (default <repo>/../shared/data/mnist-t10k).
set -euo pipefail

# Everything in one function: bash has parsed the whole script before it runs, so editing this
# file while a check is under way cannot derail it.
main() {

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
VERSION=$1; shift
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${PYTHON:=python3}"
: "${MAX_JOBS:=2}"
export MAX_JOBS
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ -z "${FASTVAE_CUDA+set}" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  export FASTVAE_CUDA=1
fi
if [ -z "${FASTVAE_MNIST_DIR:-}" ] && [ -d "$REPO/../shared/data/mnist-t10k" ]; then
  export FASTVAE_MNIST_DIR=$(cd "$REPO/../shared/data/mnist-t10k" && pwd)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastvae-torch-$VERSION.XXXXXX")
if [ -z "${VENV:-}" ]; then VENV=$WORK/venv; fi
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
log() { echo "check_torch[$VERSION]: $*" >&2; }

# 1. The venv. An empty constraints file replaces pip's configured one (which caps torch). Run
# even for an existing venv: a no-op when satisfied, and it brings setuptools to the version the
# licence field needs (>= 77) within what this torch accepts (2.11 wants < 82).
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
: > "$WORK/no-constraints.txt"
PIP_CONSTRAINT=$WORK/no-constraints.txt "$VENV/bin/python" -m pip install -q --progress-bar off \
  "torch==$VERSION" ninja numpy tqdm matplotlib pytest pytest-benchmark scikit-learn "setuptools>=77" wheel
PY=$VENV/bin/python
TORCH_FULL=$("$PY" -c 'import torch; print(torch.__version__)')
TORCH_CUDA=$("$PY" -c 'import torch; print(torch.version.cuda)')
NVCC_VERSION=$( [ -n "${CUDA_HOME:-}" ] && "$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p' || echo none)
log "torch $TORCH_FULL (CUDA $TORCH_CUDA), nvcc $NVCC_VERSION, FASTVAE_CUDA=${FASTVAE_CUDA-unset}, MAX_JOBS=$MAX_JOBS"

# 2. A copy of the working tree (tracked and untracked, not ignored files).
mkdir "$WORK/src"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
  | tar cf - --null --no-recursion --ignore-failed-read -T - 2>/dev/null) | tar xf - -C "$WORK/src"
cd "$WORK/src"
# Tests that look for the data at <repo>/../shared/data find it next to the copy too.
if [ -n "${FASTVAE_MNIST_DIR:-}" ] && [ -d "$FASTVAE_MNIST_DIR" ]; then
  mkdir -p "$WORK/shared/data" && ln -s "$FASTVAE_MNIST_DIR" "$WORK/shared/data/mnist-t10k"
fi

# 3. Build, as `make build` does.
START=$(date +%s)
BUILD_OK=true
"$PY" setup.py -q build_ext --inplace 2>&1 | tee "$WORK/build.log" || BUILD_OK=false
BUILD_S=$(( $(date +%s) - START ))
CUDA_BUILT=null
if $BUILD_OK; then
  FASTVAE_SKIP_EXT=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tee -a "$WORK/build.log"
  CUDA_BUILT=$("$PY" -c 'import fastvae; print(str(fastvae.CUDA_BUILT).lower())')
fi
DEPRECATIONS=$(grep -c -i "deprecat" "$WORK/build.log" || true)
log "build ok=$BUILD_OK in ${BUILD_S}s, CUDA kernels built: $CUDA_BUILT, deprecation lines in build log: $DEPRECATIONS"

# 4. Tests (the venv's console script `fastvae` is this copy, installed editable above).
PASSED=0; FAILED=0; ERRORS=0; SKIPPED=0; TEST_S=0
if $BUILD_OK; then
  START=$(date +%s)
  PATH=$VENV/bin:$PATH "$PY" -m pytest tests -q -p no:cacheprovider --junitxml="$WORK/junit.xml" "$@" || true
  TEST_S=$(( $(date +%s) - START ))
  read -r PASSED FAILED ERRORS SKIPPED < <("$PY" - "$WORK/junit.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print(n["tests"] - n["failures"] - n["errors"] - n["skipped"], n["failures"], n["errors"], n["skipped"])
EOF
  )
fi

SUMMARY=$(cat <<EOF
{"torch": "$TORCH_FULL", "torch_cuda": "$TORCH_CUDA", "nvcc": "$NVCC_VERSION",
 "fastvae_cuda_env": "${FASTVAE_CUDA-unset}", "build_ok": $BUILD_OK, "cuda_built": $CUDA_BUILT,
 "build_seconds": $BUILD_S, "max_jobs": $MAX_JOBS, "build_deprecation_lines": $DEPRECATIONS,
 "tests": {"passed": $PASSED, "failed": $FAILED, "errors": $ERRORS, "skipped": $SKIPPED,
           "seconds": $TEST_S, "pytest_args": "$*"}}
EOF
)
echo "$SUMMARY"
if [ -n "${RESULTS:-}" ]; then echo "$SUMMARY" > "$RESULTS"; fi
$BUILD_OK && [ "$FAILED" = 0 ] && [ "$ERRORS" = 0 ]
}

main "$@"
