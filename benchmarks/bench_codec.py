"""The run store's codec, chosen by measured bytes and seconds on noisy float32 tilts.

usage: python benchmarks/bench_codec.py [--size 1024] [--tilts 16] [--json OUT]

A simulated tilt (a noisy float32 image, as NOISY, CONTENT and FakET are)
barely compresses, so a codec must be cheap before it is small. Each codec
writes and reads the same tilts through a sharded Zarr v3 array laid out like
the store's (one 1024^2 chunk per tilt and shard); times are per tilt, best of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr


def codecs() -> dict[str, list | None]:
    return {
        "none": None,
        "zstd-1": [zarr.codecs.ZstdCodec(level=1)],
        "zstd-3": [zarr.codecs.ZstdCodec(level=3)],
        "blosc-lz4-shuffle-1": [zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")],
        "blosc-zstd-bitshuffle-1": [zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")],
    }


def measure(name: str, comp, tilts: np.ndarray) -> dict:
    n, h, w = tilts.shape
    best_w = best_r = float("inf")
    with tempfile.TemporaryDirectory() as d:
        for rep in range(3):
            arr = zarr.open_group(os.path.join(d, str(rep)), mode="w").create_array(
                "a", shape=tilts.shape, dtype="float32", chunks=(1, h, w), shards=(1, h, w),
                compressors=comp, fill_value=0.0)
            t = time.perf_counter()
            for i in range(n):
                arr[i] = tilts[i]
            best_w = min(best_w, (time.perf_counter() - t) / n)
            t = time.perf_counter()
            for i in range(n):
                np.asarray(arr[i])
            best_r = min(best_r, (time.perf_counter() - t) / n)
        size = sum(f.stat().st_size for f in Path(d, "0").rglob("*") if f.is_file()) / n
    return {"codec": name, "write_ms": best_w * 1e3, "read_ms": best_r * 1e3,
            "bytes_per_tilt": size, "ratio": size / (h * w * 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tilts", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # NOISY-like tilts: a smooth projection plus per-pixel noise, stats of a real tilt (mean 5, std 0.3)
    yy, xx = np.mgrid[: args.size, : args.size] / args.size
    base = np.sin(6 * xx) * np.cos(4 * yy)
    tilts = (5 + 0.1 * base + 0.3 * rng.standard_normal((args.tilts, args.size, args.size))).astype(np.float32)
    rows = [measure(name, comp, tilts) for name, comp in codecs().items()]
    for r in rows:
        print(f"{r['codec']:>24}: write {r['write_ms']:6.1f} ms, read {r['read_ms']:6.1f} ms, "
              f"{r['ratio']:.3f} of raw", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"size": args.size, "tilts": args.tilts, "zarr": zarr.__version__,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
