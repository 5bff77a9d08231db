#!/usr/bin/env bash
# One call on a lent GPU machine, with .gpu/ carried (../shared/tools/gpu-bundle.sh pydantic
# jsonschema pytest-xdist, then add the pytest_xdist wheel): install, `make bench-gpu`'s
# benchmark, then the whole test suite in parallel. Results under $OUT.
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"])
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 FAKET_TEST_FAILLOG="$OUT/failures.log"
unset RAY_ADDRESS
bash .gpu/env.sh > "$OUT/env.log" 2>&1 || { tail -20 "$OUT/env.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/env.log" 2>&1
timeout "${BENCH_S:-170}" python3 benchmarks/bench_gpu.py --out-dir "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
timeout "${TEST_S:-190}" python3 -m pytest -v -rfEs --tb=short -p no:cacheprovider -p no:benchmark -n "${WORKERS:-8}" \
    > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.log"
tail -32 "$OUT/bench.log"
grep -cE "PASSED" "$OUT/pytest.log" | sed 's/^/passed lines: /'
grep -E "FAILED|ERROR" "$OUT/pytest.log" | head -20
tail -3 "$OUT/pytest.log"
