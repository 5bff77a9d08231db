#!/usr/bin/env bash
# The published code and what the GPU image lacks to run it, into .gpu/ (after gpu-bundle.sh), so that
# benchmarks/gpu_check.sh on the GPU machine times the published command (benchmarks/published.py).
#   usage: benchmarks/gpu_published.sh /path/to/checkout/of/paloha/faket [TORCHVISION_VERSION]
# TORCHVISION_VERSION is the one made for the image's torch (0.26.0 for its torch 2.11). Only its
# Python part is kept (the published code uses its VGG-19 and transforms, no compiled operator):
# that keeps .gpu/ under 64 MiB and imports beside any CUDA build of that torch. The image has the
# published code's other dependencies (tqdm comes with the bundle: pass it to gpu-bundle.sh).
set -euo pipefail
SRC=${1:?give a checkout of github.com/paloha/faket}
TV=${2:-0.26.0}
[ -f "$SRC/faket/style_transfer/cli.py" ] || { echo "gpu_published.sh: $SRC has no faket/style_transfer/cli.py" >&2; exit 2; }
[ -d .gpu ] || { echo "gpu_published.sh: build .gpu/ first (../shared/tools/gpu-bundle.sh)" >&2; exit 2; }
rm -rf .gpu/published .gpu/published-deps
mkdir -p .gpu/published .gpu/published-deps
cp -r "$SRC/faket" .gpu/published/
find .gpu/published -name __pycache__ -prune -exec rm -rf {} +
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download -q --no-deps --only-binary :all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 "torchvision==$TV" -d "$tmp" 2>&1 | grep -v '^WARNING: Location' || true
python3 -m zipfile -e "$tmp"/torchvision-*.whl .gpu/published-deps
rm -rf .gpu/published-deps/torchvision.libs .gpu/published-deps/torchvision/_C.so .gpu/published-deps/torchvision/image.so
: > .gpu/published-deps/torchvision/_meta_registrations.py  # it registers the compiled operators' shapes
du -sh .gpu
