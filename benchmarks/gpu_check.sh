#!/usr/bin/env bash
# One call on a lent GPU machine, with .gpu/ carried: install, `make bench-gpu`'s benchmark, then the
# test suite in parallel. Results under $OUT (at most 8 files come back: keep to those written here).
# Build .gpu/ first (here, with network):
#   ../shared/tools/gpu-bundle.sh pydantic jsonschema pytest-xdist starfile mdocfile ome-zarr-models ome-zarr tqdm crc32c
#   rm -f .gpu/whl/{aiobotocore,botocore,s3fs,jmespath,aioitertools,iniconfig,pluggy}-*.whl  # < 64 MiB
# and, for the published command (optional):  benchmarks/gpu_published.sh /path/to/published/checkout
# then, e.g. (FIRST: test files to run before the rest; TEST_S=0: those alone; BENCH_S=0: no benchmark),
# the whole `make bench-gpu` in one call and the whole suite in a second one on the still-warm machine:
#   run(command="export PYTHONUNBUFFERED=1; OUT=$OUT BENCH_S=400 TEST_S=0 bash benchmarks/gpu_check.sh",
#       carry=[".gpu"], timeout_s=440)
#   run(command="export PYTHONUNBUFFERED=1; OUT=$OUT BENCH_S=0 TEST_S=330 WORKERS=14 bash benchmarks/gpu_check.sh",
#       carry=[".gpu"], timeout_s=370)
# (a 15-minute lease: the suite took more than 190 s on 14 workers of an H100 machine, its Ray tests last;
# on the H200 in session 17 the benchmark took 287 s and the suite 237 s, the machine's start about 30 s;
# in session 19 the benchmark without the published comparison 129 s, the suite 233 s)
# Session 19's lease: the benchmark without the 11-tilt published comparison, then the published command
# at 61 x 4096^2 (176 s, faket's 34 s beside it) in one call of 423 s, the suite in a second of 244 s.
# Session 24's lease measured what sessions 19-23 built (gpu-h200-20261128/, b/): 61 x 4096^2 in
# 29.5-31.6 s on processes (36.8 s on threads), the start-up (Ray, then the actor's start or the
# prepare, whichever ends last) 13-15 s and the NST 16 s. Session 25 (no GPU) took the group's
# attributes off that path (written beside the NST: `attrs_written` in the timeline) and asks for
# the actor before the weights are put. Next: more runs of the same, for the spread and for what
# those two gained, and the attrs write (0.05-3.2 s, no CPU) against 14 writers as the pool has:
#   run(command="export PYTHONUNBUFFERED=1; OUT=$OUT BENCH_S=0 TEST_S=0 ATTRS_ARGS='. 9 --writers 14'
#       FEED_ARGS='--size 4096 --tilts 61 --real-nst --no-loop --device cuda --inputs /dev/shm/faket-feed|
#       <the same>|<the same>' FEED_S=70 bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=330)
# and, where the lease has 4 minutes or more left (its time is an estimate), another call on the
# same warm machine:
#   run(command="OUT=$OUT bash benchmarks/diag/prepare_61.sh", carry=[".gpu"], timeout_s=240)
# or, for #12's x6 against the published command on 61 x 4096^2 (an estimate: 4-5 minutes):
#   run(command="OUT=$OUT BENCH_S=0 TEST_S=0 PUB_ARGS='--size 4096 --tilts 61' PUB_S=330
#       bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=360)
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 FAKET_TEST_FAILLOG="$OUT/failures.log"
unset RAY_ADDRESS
bash .gpu/env.sh > "$OUT/env.log" 2>&1 || { tail -20 "$OUT/env.log"; exit 1; }
# the bundle's Ray comes from a zip, without its console script: `ray job submit` in the tests needs one
BIN=$(dirname "$(command -v python3)")
[ -x "$BIN/ray" ] || printf '#!%s\nfrom ray.scripts.scripts import main\nmain()\n' "$(command -v python3)" > "$BIN/ray"
chmod +x "$BIN/ray"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/env.log" 2>&1
# the CPU threads' cores (are 16 threads 8 cores with two each?), the huge-page and writeback settings
{ lscpu | grep -E "^(Model name|CPU\(s\)|Thread|Core|Socket|NUMA node\(s\))"
  grep -H . /sys/kernel/mm/transparent_hugepage/{enabled,defrag} /proc/sys/vm/dirty_*ratio
  findmnt -no SOURCE,FSTYPE,OPTIONS -T "$PWD"; findmnt -no SOURCE,FSTYPE,OPTIONS -T /tmp; } >> "$OUT/env.log" 2>&1
# the published code beside the bundle (.gpu/published/faket/..., its dependencies in .gpu/published-deps):
# bench_gpu then times its whole command against faket's (benchmarks/published.py)
if [ -f .gpu/published/faket/style_transfer/cli.py ]; then
    export FAKET_PUBLISHED="$PWD/.gpu/published" FAKET_PUBLISHED_PATH="$PWD/.gpu/published-deps"
fi
# BENCH_ARGS: e.g. "--sizes 2048,4096 --modes tf32 --skip deviation,profile,engine"; BENCH_S=0: no benchmark
if [ "${BENCH_S:-170}" != 0 ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    timeout "${BENCH_S:-170}" python3 benchmarks/bench_gpu.py --out-dir "$OUT" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
    echo "bench rc=$? seconds=$(( $(date +%s) - start ))" >> "$OUT/bench.log"
fi
# PIPE_ARGS: several tomograms through the GPU actor, each one's NST once prepared against staged,
# e.g. "--size 4096 --tilts 11 --tomograms 3 --repeats 1" (benchmarks/engine_pipeline.py)
if [ -n "${PIPE_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    timeout "${PIPE_S:-150}" python3 benchmarks/engine_pipeline.py --device cuda $PIPE_ARGS \
        --json "$OUT/pipeline.json" > "$OUT/pipeline.log" 2>&1
    echo "pipeline rc=$?" >> "$OUT/pipeline.log"
    tail -3 "$OUT/pipeline.log"
fi
# NOISE_ARGS: the noise step's CPU work per tilt on this machine's cores, e.g. "--size 4096 --tilts 14
# --workers 1,14 --repeats 1" (benchmarks/bench_noise.py; its JSON goes to the end of bench.log)
if [ -n "${NOISE_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    timeout "${NOISE_S:-90}" python3 benchmarks/bench_noise.py $NOISE_ARGS >> "$OUT/bench.log" 2>&1
    echo "noise rc=$?" >> "$OUT/bench.log"
fi
# CORES_ARGS: how many cores one tilt-pool process keeps busy writing 4096^2 tilts, its chunks coded
# in its own thread (since session 23) or on its shard threads (8 here), e.g. "4096 8 2" (about 20 s;
# benchmarks/diag/pool_cores.py, its lines to the end of bench.log)
if [ -n "${CORES_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    timeout "${CORES_S:-60}" python3 benchmarks/diag/pool_cores.py $CORES_ARGS >> "$OUT/bench.log" 2>&1
    echo "cores rc=$?" >> "$OUT/bench.log"
fi
# ATTRS_ARGS: a run-store group's attrs update (the prepare stage's last step) timed while other
# processes fill the dirty page cache, e.g. ". 120" (one writer, about 30 s) or ". 9 --writers 14"
# (benchmarks/diag/attrs_under_writeback.py)
if [ -n "${ATTRS_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    timeout "${ATTRS_S:-90}" python3 benchmarks/diag/attrs_under_writeback.py $ATTRS_ARGS >> "$OUT/bench.log" 2>&1
    echo "attrs rc=$?" >> "$OUT/bench.log"
fi
# FEED_ARGS: more engine runs (benchmarks/engine_feed.py), separated by "|", e.g. the 61 x 4096^2 run
# with the driver's noise model and prepare on threads, not in processes: "--size 4096 --tilts 61
# --real-nst --no-loop --device cuda --inputs /dev/shm/faket-feed --tilt-processes 0" (about a minute
# with its inputs written; FEED_S each); JSON to $OUT/feed1.json, feed2.json, ..., logs to $OUT/feed.log
if [ -n "${FEED_ARGS:-}" ]; then
    IFS='|' read -r -a FEEDS <<< "$FEED_ARGS"
    for k in "${!FEEDS[@]}"; do
        echo "== feed $((k + 1)): ${FEEDS[$k]}" >> "$OUT/feed.log"
        # shellcheck disable=SC2086
        timeout "${FEED_S:-120}" python3 benchmarks/engine_feed.py ${FEEDS[$k]} --json "$OUT/feed$((k + 1)).json" \
            >> "$OUT/feed.log" 2>&1
        echo "feed $((k + 1)) rc=$?" >> "$OUT/feed.log"
    done
    tail -4 "$OUT/feed.log"
fi
# PUB_ARGS: the published command against `faket stylize` on a series of its own, e.g. "--size 4096
# --tilts 61" for #12's x6 on 61 x 4096^2 (about 4-5 minutes: give PUB_S and the call's timeout room;
# needs the published code in .gpu/published, benchmarks/gpu_published.sh); JSON to $OUT/published.json
if [ -n "${PUB_ARGS:-}" ] && [ -n "${FAKET_PUBLISHED:-}" ]; then
    # shellcheck disable=SC2086
    timeout "${PUB_S:-330}" python3 benchmarks/published.py $PUB_ARGS --json "$OUT/published.json" \
        > "$OUT/published.log" 2>&1
    echo "published rc=$?" >> "$OUT/published.log"
    tail -3 "$OUT/published.log"
fi
# -k: the copick test installs copick with pip, and the GPU machine has no network
# worksteal: an idle worker takes queued tests from a busy one (the Ray tests are the long tail)
PYTEST=(python3 -m pytest -v -rfEs --tb=short -p no:cacheprovider -p no:benchmark -n "${WORKERS:-8}"
        --dist worksteal --durations=10 -k "not copick")
IGNORE=()
if [ -n "${FIRST:-}" ]; then  # these test files first (e.g. the ones a change touches), then the rest
    # shellcheck disable=SC2086
    timeout "${FIRST_S:-90}" "${PYTEST[@]}" $FIRST > "$OUT/pytest-first.log" 2>&1
    echo "pytest rc=$?" >> "$OUT/pytest-first.log"
    tail -4 "$OUT/pytest-first.log"
    for f in $FIRST; do IGNORE+=(--ignore "$f"); done
fi
if [ "${TEST_S:-190}" != 0 ]; then  # TEST_S=0: the FIRST files alone
    start=$(date +%s)
    timeout "${TEST_S:-190}" "${PYTEST[@]}" "${IGNORE[@]}" > "$OUT/pytest.log" 2>&1
    echo "pytest rc=$? seconds=$(( $(date +%s) - start ))" >> "$OUT/pytest.log"
fi
[ -f "$OUT/bench.log" ] && tail -32 "$OUT/bench.log"
[ -f "$OUT/pytest.log" ] && grep -cE "PASSED" "$OUT/pytest.log" | sed 's/^/passed lines: /'
grep -hE "FAILED|ERROR" "$OUT"/pytest*.log | head -20
tail -3 "$OUT"/pytest*.log
