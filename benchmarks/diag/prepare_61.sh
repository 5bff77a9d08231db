#!/usr/bin/env bash
# GPU host, #12: where the 61 x 4096^2 engine run spends its prepare stage (38.8 and 41.6 s on the
# H200, 20.2-20.6 s of it the NST; the noise phase 9.7-11.8 s where its numpy work alone takes 4.4 s:
# benchmarks/results/gpu-h200-20261127b/). Run with .gpu carried (.gpu/bin/py-spy: a copy of the
# py-spy binary); results under $OUT:
#   facts.txt   cores, memory, the page cache's writeback settings, /tmp's and /dev/shm's space
#   disk.*      `engine_feed.py --real-nst --no-loop` (bench-gpu's end-to-end run) with its inputs
#               in /dev/shm, written before (so none of theirs waits to go to the disk) and its store
#               in /tmp; its driver, where the noise model and the prepare stage run, sampled by
#               py-spy (raw stacks per thread, gzipped, not pausing the process), with its tilt
#               pools' processes (faket._procs, on 8 cores or more) and Ray's
#   shm.*       the same run with the store in /dev/shm too: the store's writes to the disk
#   noise.log   the noise step's numpy work alone on all cores (bench_noise.py)
# Since session 18 bench-gpu's own end-to-end run also keeps its inputs in /dev/shm (and reports the
# page cache's dirty peak): the disk run here is the same run, with the driver's py-spy stacks; the
# /dev/shm store run is what it adds. Session 17's bench runs had their inputs written just before,
# to the disk.
# Its first version (inputs written for each of its two runs) had not ended its second run after
# 205 s on the H200 machine; this one writes them once: about 3 minutes, an estimate, not timed
# yet. Give run() a timeout_s of 240. SMOKE=1: tiny sizes on the CPU (checks the script).
set -uo pipefail
OUT=${OUT:-/tmp/prepare61}
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
unset RAY_ADDRESS
if [ -z "${SMOKE:-}" ]; then
    # on a machine still warm from gpu_check.sh the bundle is installed already
    python3 -c "import faket, ray, zarr" 2>/dev/null ||
        bash .gpu/env.sh > "$OUT/env.log" 2>&1 || { tail -5 "$OUT/env.log"; exit 1; }
    PY=python3 SPY=.gpu/bin/py-spy SIZE=4096 TILTS=61 DEV=cuda NOISE_SIZE=4096
else
    PY=${PY:-.venv/bin/python} SPY=${SPY:-/tmp/pyspy/bin/py-spy} SIZE=32 TILTS=4 DEV=cpu NOISE_SIZE=256
fi
{ nproc; free -g; df -h /tmp /dev/shm; grep . /proc/sys/vm/dirty_*; } > "$OUT/facts.txt" 2>&1
IN=/dev/shm/faket-feed-inputs
"$PY" -c "import sys, tempfile; from pathlib import Path; sys.path.insert(0, 'benchmarks')
from engine_feed import write_inputs
with tempfile.TemporaryDirectory() as spec:
    write_inputs(Path(spec), $SIZE, $TILTS, data=Path('$IN'))" || exit 1
F=("$PY" benchmarks/engine_feed.py --size "$SIZE" --tilts "$TILTS" --real-nst --device "$DEV" --no-loop
   --inputs "$IN")
"$SPY" record -r 20 --idle --threads --subprocesses --nonblocking -f raw -o "$OUT/disk.txt" -- \
    "${F[@]}" --json "$OUT/disk.json" > "$OUT/disk.log" 2>&1 || echo "py-spy rc=$?" >> "$OUT/disk.log"
gzip -f "$OUT/disk.txt"
TMPDIR=/dev/shm "${F[@]}" --json "$OUT/shm.json" > "$OUT/shm.log" 2>&1
# the noise alone (numpy, no store, no Ray) on all cores: its compute share of the prepare stage
"$PY" benchmarks/bench_noise.py --size "$NOISE_SIZE" --tilts 32 --workers "$(nproc)" --repeats 1 \
    > "$OUT/noise.log" 2>&1
rm -rf "$IN"
for f in "$OUT"/disk.json "$OUT"/shm.json; do
    [ -f "$f" ] && "$PY" -c "import json, sys; d = json.load(open(sys.argv[1]))
print(sys.argv[1], 'run', round(d['run_seconds'], 1), 'stages', d['stage_seconds'], 'inside', d['phase_seconds'])" "$f"
done
