#!/usr/bin/env bash
# Every GPU number in one command of at most 8 minutes (the sum of the stage caps below is 480 s),
# run on the GPU machine with the prebuilt kit carried along (benchmarks/README.md, "On a GPU machine"):
#
#   bash benchmarks/gpu_check.sh                         # device call, carry ["build/gpu-kit"]
#   STEPS="memcheck racecheck" bash benchmarks/gpu_check.sh   # rerun some stages only
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh     # rehearsal on a CPU machine (CI runs it)
#
# Stages (cap in seconds; those on one line run concurrently):
#   env 10        env.txt: nvidia-smi, versions, tool paths, CPU flags, the kit; tool probes
#   kit 120       the carried build/gpu-kit when it imports, sees CUDA and was built from these
#                 sources; otherwise `setup.py build_ext --inplace` with every core
#   tests 110 | memcheck 70 | racecheck 70 | accuracy 60
#                 the needs_cuda tests; the same tests (graph capture, compile and training left
#                 out) under compute-sanitizer memcheck / racecheck in shards with the caching
#                 allocator off; benchmarks/accuracy.py on CUDA
#   bench 40      benchmarks/gpu_bench.py, rows appended as measured; it also gets the time the
#                 kit stage left of its cap (normally ~110 s more), so kit + bench <= 160 s
# Files in $OUT (default benchmarks/results/gpu), each written when its stage ends, 8 at most:
#   env.txt summary.txt tests-cuda.log memcheck.log racecheck.log accuracy-<dev>.json
#   accuracy-bench.log bench-<dev>.jsonl
# A failed stage never stops the others; the exit status is the number of failed stages.
# benchmarks/gpu_results.py turns the folder into reports under benchmarks/results/.
set -u
cd "$(dirname "$0")/.." || exit 99
DRY=${GPU_CHECK_DRY_RUN:-0}
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
# env and kit always run: every later stage needs fastvae importable (the kit copied or built).
STEPS=" env kit ${STEPS:-tests memcheck racecheck accuracy bench} "
# Sized from the H200 run of 2026-12-04 17:11: the needs_cuda tests took 78 s alone (60 s timed out
# beside the sanitizers), accuracy over 30 s; the sanitizers never finish and keep what they reach.
declare -A CAP=([env]=10 [kit]=120 [tests]=110 [memcheck]=70 [racecheck]=70 [accuracy]=60 [bench]=40)
if [ "${1:-}" = "--caps" ]; then  # the stage caps, for tests/test_gpu_check.py
  for s in env kit tests memcheck racecheck accuracy bench; do echo "$s ${CAP[$s]}"; done
  exit 0
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# scripts under benchmarks/ (accuracy.py) import fastvae from this checkout, not from site-packages
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NCPU=$(nproc 2>/dev/null || echo 4)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
T0=$(date +%s)
failed=0
kit_used=0
if [ "$DRY" = 1 ]; then DEV=cpu; else DEV=cuda; export FASTVAE_REQUIRE_CUDA=1; fi

if [ "$DRY" = 1 ]; then  # a shared CPU machine imports torch many times slower than the device
  for s in "${!CAP[@]}"; do CAP[$s]=$((CAP[$s] * ${GPU_CHECK_DRY_CAP_SCALE:-3})); done
fi

# A stage's files start empty when it is chosen: what is there after a run is that run's.
: > "$OUT/summary.txt"
want() { [[ $STEPS == *" $1 "* ]]; }
want accuracy && : > "$OUT/accuracy-bench.log"
want bench && rm -f "$OUT/bench-$DEV.jsonl"
say() { echo "$*" | tee -a "$OUT/summary.txt"; }
[ "$DRY" = 1 ] && say "  dry run: on the CPU, every stage cap x${GPU_CHECK_DRY_CAP_SCALE:-3}"
dry_note() { say "  dry run: $*"; }

# result NAME RC START [FILE]: one summary line per stage (TIMEOUT when `timeout` killed it).
result() {
  local name=$1 rc=$2 start=$3 file=${4:-} verdict
  case $rc in
    0) verdict=PASS ;;
    124 | 137) verdict="TIMEOUT (rc=$rc)" ;;
    *) verdict="FAIL (rc=$rc)" ;;
  esac
  [ "$rc" = 0 ] || failed=$((failed + 1))
  say "stage $name: $verdict in $(($(date +%s) - start)) s of cap ${CAP[$name]} s${file:+ -> $(basename "$file")}"
}

# ---------------------------------------------------------------- stage env (and tool probes)
TIMEOUT_OPT=()  # pytest's per-test timeout, when pytest-timeout is installed
XDIST_OPT=()
SANITIZER=""
probe() {
  echo "== date: $(date -u +%FT%TZ)  host: $(hostname)  dry run: $DRY  python: $PY"
  echo "== uname: $(uname -a)"
  echo "== nvidia-smi"; timeout 10 nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo "== nvcc"; timeout 10 "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>&1 | tail -2 || echo "nvcc: not found"
  echo "== python / torch"
  timeout 12 "$PY" -c "import sys, torch, importlib.metadata as m
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')
for d in sorted(m.distributions(), key=lambda d: d.metadata['Name'].lower()):
    if d.metadata['Name'].lower().startswith(('torch', 'triton', 'numpy', 'pytest', 'nvidia-')): print(' ', d.metadata['Name'], d.version)
" 2>&1
  echo "== tools"
  for t in nvcc compute-sanitizer cuobjdump nvidia-smi gcc g++ ninja timeout; do
    echo "$t: $(command -v "$t" || ls "${CUDA_HOME:-/usr/local/cuda}/bin/$t" 2>/dev/null || echo missing)"
  done
  echo "== cpu: $NCPU cores; $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null)"
  grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512bw|fma|f16c)$' | tr '\n' ' '; echo
  echo "== memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
  echo "== kit"
  if [ -d build/gpu-kit ]; then
    cat build/gpu-kit/COMMIT build/gpu-kit/SOURCES 2>/dev/null
    du -sh build/gpu-kit 2>/dev/null
    echo "this tree's sources: $(bash tools/source_hash.sh)"
  else
    echo "no build/gpu-kit carried"
  fi
}
export DRY PY NCPU
if want env; then
  start=$(date +%s)
  timeout -k 2 "${CAP[env]}" bash -c "$(declare -f probe); probe" > "$OUT/env.txt" 2>&1 < /dev/null
  result env $? "$start" "$OUT/env.txt"
fi
# The probes themselves are quick and always run: later stages drop what is missing.
if "$PY" -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_OPT=(--timeout); else say "  probe: no pytest-timeout, tests run without a per-test timeout"; fi
if "$PY" -c "import xdist" 2>/dev/null; then XDIST_OPT=(-n "$((NCPU > 8 ? 4 : 2))"); else say "  probe: no pytest-xdist, the CUDA tests run in one process"; fi
SANITIZER=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null || true)
SAN_OPTS=()
help=""
[ -n "$SANITIZER" ] && help=$(timeout 20 "$SANITIZER" --help 2>&1 || true)
if [[ $help == *memcheck* ]]; then
  # --kernel-name kns=fastvae: only fastvae's kernels are instrumented (torch's run natively), which
  # is several times faster and keeps racecheck's reports on torch's own reductions out of the log.
  for opt in "--error-exitcode 1" "--print-limit 20" "--target-processes all" "--kernel-name kns=fastvae"; do
    [[ $help == *"${opt%% *}"* ]] && read -r -a words <<< "$opt" && SAN_OPTS+=("${words[@]}")
  done
  say "  probe: compute-sanitizer $SANITIZER (options: ${SAN_OPTS[*]})"
else
  SANITIZER=""
  say "  probe: no compute-sanitizer: memcheck and racecheck are skipped"
fi

# ---------------------------------------------------------------- stage kit (or build)
# The kit's compiled files go into fastvae/, where the tests import the package from (pytest puts
# the repository first on sys.path). The dry run never copies them (it would clobber a local build).
left() { echo $((DEADLINE - $(date +%s))); }
kit_works() {  # kit_works [SECONDS]: fastvae imports here, CUDA built (and on the device: a GPU seen)
  local check="import fastvae, torch; assert fastvae.CUDA_BUILT, 'built without CUDA'" t
  [ "$DRY" = 1 ] || check+="; assert fastvae.cuda_available(), 'no CUDA device visible'"
  # A dry run on a machine whose build left the CUDA kernels out (make's rule when no GPU is
  # visible) rehearses the rest; with FASTVAE_CUDA=1 (CI) the CUDA build is required as on the device.
  [ "$DRY" = 1 ] && [ "${FASTVAE_CUDA:-}" != 1 ] && check="import fastvae, torch"
  t=$(left); [ "$t" -gt "${1:-60}" ] && t=${1:-60}
  [ "$t" -gt 0 ] || { echo "kit: no time left in the stage's cap"; return 124; }
  timeout -k 2 "$t" "$PY" -c "$check; print('fastvae', fastvae.__file__, 'CUDA built', fastvae.CUDA_BUILT)"
}
kit() {
  if [ ! -d build/gpu-kit/fastvae ]; then
    echo "kit: no build/gpu-kit carried"
  elif [ "$(cat build/gpu-kit/SOURCES 2>/dev/null)" != "$(bash tools/source_hash.sh)" ] && [ "${GPU_CHECK_KIT:-}" != force ]; then
    echo "kit: built from other sources than this tree (build/gpu-kit/SOURCES); GPU_CHECK_KIT=force uses it anyway"
  elif [ "$DRY" = 1 ]; then
    echo "kit: dry run: the kit is checked from its own folder, not copied into this tree's fastvae/"
    (cd build/gpu-kit && kit_works 60) && return 0
    echo "kit: (the kit does not import with $PY)"
  else
    (cd build/gpu-kit/fastvae && find . -name '_C*.so' -o -name '_cpu_isa.py') | while read -r f; do
      cp "build/gpu-kit/fastvae/$f" "fastvae/$f"
    done
    if kit_works 60; then echo "kit: using the carried build/gpu-kit"; kit_used=1; return 0; fi
    echo "kit: the carried build/gpu-kit does not work here: building instead"
    (cd build/gpu-kit/fastvae && find . -name '_C*.so' -o -name '_cpu_isa.py') | while read -r f; do rm -f "fastvae/$f"; done
  fi
  if [ "$DRY" = 1 ] && kit_works 60; then
    echo "kit: dry run: fastvae imports here as it is: no build (the device would run setup.py build_ext --inplace)"
    return 0
  fi
  local cuda=1
  [ "$DRY" = 1 ] && cuda=""  # the dry run: the flags of the local build, so that ninja finds it current
  echo "kit: building in place with $NCPU jobs: FASTVAE_CUDA=$cuda setup.py build_ext --inplace ($(left) s left)"
  local t=$(($(left) - 25))
  [ "$t" -gt 0 ] || t=1  # `timeout 0` would mean no limit
  FASTVAE_CUDA=$cuda FASTVAE_EMU=0 MAX_JOBS=$NCPU timeout -k 5 "$t" "$PY" setup.py -q build_ext --inplace 2>&1 \
    | tail -40
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "kit: the build failed (rc=$rc)"
  kit_works 20 && return "$rc"
}
kit_left=0
if want kit; then
  start=$(date +%s)
  DEADLINE=$((start + CAP[kit]))
  kit >> "$OUT/env.txt" 2>&1 < /dev/null
  rc=$?
  grep -E '^kit:' "$OUT/env.txt" | sed 's/^/  /' | tee -a "$OUT/summary.txt"
  result kit "$rc" "$start" "$OUT/env.txt"
  kit_left=$((CAP[kit] - ($(date +%s) - start)))
  [ "$kit_left" -gt 0 ] || kit_left=0
fi

# ---------------------------------------------------------------- stages tests | sanitizers | accuracy
SAN_K="not graph and not compile and not training and not second_gpu"
# Every CUDA test but graph capture, torch.compile (its workers are processes of their own) and
# training, in shards (benchmarks/gpu_shard.py) interleaved by file, so that each shard's first
# tests cover every op family, the whole-ELBO op included.
sanitize() {  # sanitize TOOL CAP: 3 shards under compute-sanitizer, concurrently
  local tool=$1 cap=$2 shards=3 k pids=() cmd
  [ "$DRY" = 1 ] && shards=1  # one collection is enough to rehearse (tests/test_gpu_check.py checks the sharding)
  echo "$tool: the needs_cuda tests (-k '$SAN_K') in $shards shards, PYTORCH_NO_CUDA_MEMORY_CACHING=1"
  for k in $(seq 0 $((shards - 1))); do
    cmd=("$PY" -m pytest -p no:cacheprovider -p gpu_shard -m needs_cuda -k "$SAN_K" tests)
    if [ "$DRY" = 1 ]; then
      cmd+=(--collect-only -q)
    else
      cmd=("$SANITIZER" --tool "$tool" "${SAN_OPTS[@]}" "${cmd[@]}" "${TIMEOUT_OPT[@]/%/=40}" -v -rfE)
    fi
    ( GPU_SHARD=$k/$shards PYTHONPATH="benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        timeout -k 5 "$cap" "${cmd[@]}" > "$TMP/$tool.$k" 2>&1
      echo "shard $k: rc=$?" >> "$TMP/$tool.$k" ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  local bad=0
  for k in $(seq 0 $((shards - 1))); do
    echo "=================== shard $k"; cat "$TMP/$tool.$k"
    grep -q "^shard $k: rc=0" "$TMP/$tool.$k" || bad=$(grep -o 'rc=[0-9]*$' "$TMP/$tool.$k" | tail -1 | cut -d= -f2)
  done
  return "${bad:-1}"
}
group=()
background() {  # the dry run runs the concurrent stages one after the other: a CPU machine has few cores
  [ "$DRY" = 1 ] || return 0
  wait "${group[-1]}" || failed=$((failed + 1))
  unset 'group[-1]'
}
if want tests; then
  (
    start=$(date +%s)
    if [ "$DRY" = 1 ]; then
      timeout -k 5 "${CAP[tests]}" "$PY" -m pytest -p no:cacheprovider --collect-only -q -m needs_cuda tests \
        > "$OUT/tests-cuda.log" 2>&1
      rc=$?
      dry_note "tests: the CUDA tests collected, not run ($(grep -c '::' "$OUT/tests-cuda.log") of them)"
    else
      timeout -k 5 "${CAP[tests]}" "$PY" -m pytest -p no:cacheprovider "${TIMEOUT_OPT[@]/%/=45}" "${XDIST_OPT[@]}" \
        -q -rfEs -m needs_cuda tests > "$OUT/tests-cuda.log" 2>&1
      rc=$?
    fi
    tail -1 "$OUT/tests-cuda.log" | sed 's/^/  tests: /' | tee -a "$OUT/summary.txt"
    result tests "$rc" "$start" "$OUT/tests-cuda.log"
    exit $((rc != 0))
  ) < /dev/null &
  group+=($!)
  background
fi
if want memcheck || want racecheck; then
  if [ -z "$SANITIZER" ] && [ "$DRY" != 1 ]; then
    for s in memcheck racecheck; do want $s && say "stage $s: SKIP (no compute-sanitizer)"; done
  else
    [ -z "$SANITIZER" ] && dry_note "no compute-sanitizer here: the shards' node ids are collected instead"
    [ "$DRY" = 1 ] && [ -n "$SANITIZER" ] && dry_note "compute-sanitizer found but no GPU: shards collected only"
    for s in memcheck racecheck; do
      want $s || continue
      (
        start=$(date +%s)
        sanitize "$s" "${CAP[$s]}" > "$OUT/$s.log" 2>&1
        rc=$?
        grep -h -E '(ERROR SUMMARY|RACECHECK SUMMARY|[0-9]+ (passed|failed)|tests collected|^shard [0-9]+: rc=[1-9])' \
          "$OUT/$s.log" | grep -v '::' | tail -6 \
          | sed "s/^/  $s: /" | tee -a "$OUT/summary.txt"
        result "$s" "$rc" "$start" "$OUT/$s.log"
        exit $((rc != 0))
      ) < /dev/null &
      group+=($!)
      background
    done
  fi
fi
if want accuracy; then
  (
    start=$(date +%s)
    quick=()
    [ "$DRY" = 1 ] && quick=(--quick) && dry_note "accuracy on the CPU, --quick"
    timeout -k 5 "${CAP[accuracy]}" "$PY" benchmarks/accuracy.py --device "$DEV" "${quick[@]}" \
      --out "$OUT/accuracy-$DEV.json" > "$TMP/accuracy.log" 2>&1
    rc=$?
    { echo "=================== accuracy"; cat "$TMP/accuracy.log"; } >> "$OUT/accuracy-bench.log"
    result accuracy "$rc" "$start" "$OUT/accuracy-$DEV.json"
    exit $((rc != 0))
  ) < /dev/null &
  group+=($!)
  background
fi
for pid in "${group[@]}"; do wait "$pid" || failed=$((failed + 1)); done

# ---------------------------------------------------------------- stage bench (alone on the device)
if want bench; then
  start=$(date +%s)
  cap=$((CAP[bench] + kit_left))
  budget=$((cap - 25 < 150 ? cap - 25 : 150))
  args=(--device "$DEV" --out "$OUT/bench-$DEV.jsonl" --budget "$budget")
  [ "$DRY" = 1 ] && args+=(--tiny --no-compile) && dry_note "bench on the CPU, tiny sizes, no torch.compile rows"
  echo "=================== bench (cap $cap s, budget $budget s)" >> "$OUT/accuracy-bench.log"
  timeout -k 5 "$cap" "$PY" benchmarks/gpu_bench.py "${args[@]}" < /dev/null 2>&1 | tee -a "$OUT/accuracy-bench.log"
  rc=${PIPESTATUS[0]}
  CAP[bench]=$cap
  result bench "$rc" "$start" "$OUT/bench-$DEV.jsonl"
fi

say "gpu_check: $failed stage(s) failed in $(($(date +%s) - T0)) s; kit used: $kit_used; $(ls "$OUT" | wc -l) files in $OUT"
for f in "$OUT"/tests-cuda.log "$OUT"/memcheck.log "$OUT"/racecheck.log; do
  [ -f "$f" ] && grep -q -E 'FAILED|ERROR|TIMEOUT|Timeout' "$f" && { echo "--- tail of $(basename "$f")"; tail -15 "$f"; }
done
exit "$failed"
