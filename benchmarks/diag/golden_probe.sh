#!/usr/bin/env bash
# GPU-host side of the #10 diagnosis: run with .gpu carried; results under $OUT.
set -uo pipefail
bash .gpu/env.sh > "$OUT/env.log" 2>&1 || { tail -5 "$OUT/env.log"; exit 1; }
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 OMP_NUM_THREADS=2
lscpu | grep -E "Model name|L1d|L2|L3|Flags" | cut -c1-200 > "$OUT/cpu.txt"
python3 benchmarks/diag/golden_probe.py "$OUT/pin.npz"
ONEDNN_VERBOSE=1 python3 benchmarks/diag/golden_probe.py "$OUT/pin-v.npz" > "$OUT/onednn.log" 2>&1
grep -E "info,(cpu|oneDNN)" "$OUT/onednn.log" | head; grep exec "$OUT/onednn.log" | cut -d, -f4-7 | sort | uniq -c
grep "exec,cpu,convolution" "$OUT/onednn.log" | head -3
python3 benchmarks/diag/golden_probe.py "$OUT/nomkldnn.npz" nomkldnn
OMP_NUM_THREADS=1 python3 benchmarks/diag/golden_probe.py "$OUT/t1.npz"
python3 -c "import numpy; numpy.show_runtime()" > "$OUT/numpy.txt" 2>&1
python3 -c "import torch; print(torch.__config__.show())" > "$OUT/torch-config.txt" 2>&1
