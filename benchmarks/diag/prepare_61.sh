#!/usr/bin/env bash
# GPU host, #12: where the 61 x 4096^2 engine run spends its prepare stage (38.8 s on the H200,
# 20.2 s of it the NST; prepare 10.4 s after the start). Run with .gpu carried (.gpu/bin/py-spy:
# a copy of the py-spy binary); results under $OUT:
#   facts.txt   cores, memory, the page cache's writeback settings, /tmp's and /dev/shm's space
#   disk.*      the end-to-end run as bench-gpu makes it (store in /tmp), its driver sampled by
#               py-spy (raw stacks of it and its subprocesses, the engine's driver among them)
#   noise.log   the noise step's numpy work alone on all cores (bench_noise.py)
#   shm.*       the same run with TMPDIR=/dev/shm (inputs and store in memory): the disk's share
# About 4 minutes on the H200 machine (each end-to-end run about 100 s with its 8 GB of inputs): give
# run() a timeout_s of 280 or more (205 s ended it during the /dev/shm run). SMOKE=1: tiny sizes on
# the CPU (checks the script).
set -uo pipefail
OUT=${OUT:-/tmp/prepare61}
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
unset RAY_ADDRESS
if [ -z "${SMOKE:-}" ]; then
    bash .gpu/env.sh > "$OUT/env.log" 2>&1 || { tail -5 "$OUT/env.log"; exit 1; }
    PY=python3 SPY=.gpu/bin/py-spy
else
    PY=${PY:-.venv/bin/python} SPY=${SPY:-/tmp/pyspy/bin/py-spy}
fi
{ nproc; free -g; df -h /tmp /dev/shm; grep . /proc/sys/vm/dirty_*; } > "$OUT/facts.txt" 2>&1
B=("$PY" benchmarks/bench_gpu.py --skip per_tilt,engine,profile,deviation,published ${SMOKE:+--smoke-cpu})
"$SPY" record -r 20 --idle --threads --subprocesses --nonblocking -f raw -o "$OUT/disk.txt" -- \
    "${B[@]}" --out-dir "$OUT/disk" > "$OUT/disk.log" 2>&1 || echo "py-spy rc=$?" >> "$OUT/disk.log"
# the noise alone (numpy, no store, no Ray) on all cores: its compute share of the prepare stage
"$PY" benchmarks/bench_noise.py --size "${NOISE_SIZE:-4096}" --tilts 32 --workers "$(nproc)" --repeats 1 \
    > "$OUT/noise.log" 2>&1
# /dev/shm holds the inputs (8 GB) and the store (about 14 GB) only where it has room
if [ -n "${SMOKE:-}" ] || [ "$(df --output=avail -BG /dev/shm | tail -1 | tr -dc 0-9)" -gt 40 ]; then
    TMPDIR=/dev/shm "${B[@]}" --out-dir "$OUT/shm" > "$OUT/shm.log" 2>&1
fi
rm -f "$OUT"/*/*.md  # the JSON holds it (at most 8 files come back)
gzip -f "$OUT/disk.txt"  # every Ray process's stacks: megabytes (16 MB a file at most come back)
grep -h "^engine" "$OUT"/disk.log "$OUT"/shm.log
