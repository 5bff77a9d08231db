"""Turn benchmark results into the README's performance table.

usage: python benchmarks/table.py [--update-readme]

Reads the newest suite result of each device in benchmarks/results/ and
prints a Markdown table; with --update-readme it replaces the table between
the markers <!-- perf-table --> and <!-- /perf-table --> in README.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- perf-table -->", "<!-- /perf-table -->"


def _key(row: dict) -> tuple:
    """What a row measures: its case and size/mode/option (not its numbers)."""
    return tuple((k, row[k]) for k in ("case", "height", "width", "size", "mode", "option", "tilts")
                 if k in row)


def newest_by_device() -> dict[str, dict]:
    """Per device, the newest row of every case over all full suite files (partial runs merge)."""
    out: dict[str, dict] = {}
    for path in sorted((HERE / "results").glob("suite-*.json")):
        data = json.loads(path.read_text())
        if data.get("quick"):
            continue
        key = data["machine"].get("gpu") or data["machine"].get("cpu", "cpu")
        dev = out.setdefault(key, {"machine": data["machine"], "rows": {}, "files": set()})
        for row in data["results"]:
            k = _key(row)
            if k not in dev["rows"] or data["created"] > dev["rows"][k][0]:
                dev["rows"][k] = (data["created"], row, path.name)
    return {key: {"machine": d["machine"], "results": [r for _, r, _ in d["rows"].values()],
                  "files": sorted({f for _, _, f in d["rows"].values()})}
            for key, d in out.items()}


def table(results: dict[str, dict]) -> str:
    lines = ["| device | case | faket | baseline | speed-up | notes |", "|---|---|---|---|---|---|"]
    for device, data in results.items():
        threads = data["machine"].get("cpu_threads")
        name = device if data["machine"].get("gpu") else f"{device} ({threads} threads)"
        for r in data["results"]:
            if r["case"] == "nst":
                peak = "".join(f", {r[k]:.0%} of dense {k.split('_')[2].upper()} peak"
                               for k in ("fraction_of_fp32_peak", "fraction_of_tf32_peak") if k in r)
                lines.append(f"| {name} | NST {r['height']}x{r['width']} "
                             f"| {r['seconds_per_tilt']:.3f} s/tilt"
                             f" | {r['baseline_seconds_per_tilt']:.3f} s/tilt | x{r['speedup_vs_baseline']:.2f}"
                             f" | {r['gflops_per_second']:.0f} GFLOP/s{peak}, peak {r['peak_memory_mb']:.0f} MB |")
            elif r["case"] == "command":
                cold = f"; first run {r['faket_cold_seconds']:.2f} s (hashes the weights)" \
                    if "faket_cold_seconds" in r else ""
                lines.append(f"| {name} | `faket stylize` 9x128x128 | {r['faket_seconds']:.2f} s"
                             f" | {r['baseline_seconds']:.2f} s | x{r['speedup_vs_baseline']:.2f}"
                             f" | whole command, start-up and 548 MB weight file included{cold} |")
            elif r["case"] == "series":
                lines.append(f"| {name} | NST {r['tilts']} x {r['height']}x{r['width']} series "
                             f"| {r['seconds']:.1f} s | | | peak {r['peak_memory_mb']:.0f} MB |")
            elif r["case"] == "experiment":
                lines.append(f"| {name} | NST {r['size']}^2, {r['option'].replace('_', ' ')} "
                             f"| {r['seconds_per_tilt']:.3f} s/tilt | | x{r['speedup_vs_default']:.2f} vs default"
                             f" | max abs deviation on the golden inputs {r['max_abs_vs_default']:.2g}; "
                             f"first call {r['first_call_seconds']:.1f} s |")
            elif r["case"] == "precision":
                lines.append(f"| {name} | NST {r['size']}^2, {r['mode']} | {r['seconds_per_tilt']:.3f} s/tilt"
                             f" | | x{r['speedup_vs_float32']:.2f} vs float32 | max abs deviation on the "
                             f"golden inputs {r['max_abs_vs_float32']:.2g} |")
            else:
                lines.append(f"| {name} | {r['case']} 61 x {r['size']}^3 | {r['seconds']:.2f} s | | | |")
        lines.append("| | | | | | from " + ", ".join(f"`{f}`" for f in data["files"]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update-readme", action="store_true")
    args = ap.parse_args()
    text = table(newest_by_device())
    print(text)
    if args.update_readme:
        readme = HERE.parent / "README.md"
        body = readme.read_text()
        i, j = body.index(START) + len(START), body.index(END)
        readme.write_text(body[:i] + "\n" + text + "\n" + body[j:])


if __name__ == "__main__":
    main()
