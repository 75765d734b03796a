#!/usr/bin/python3
"""Plots of the benchmark cases: for each CASE, BENCH_OUT/CASE.csv (case,series,concurrency,
msgs_per_s,p50_ms,p99_ms) becomes CASE-throughput.svg (msg/s against concurrency) and
CASE-latency.svg (p50 solid, p99 dashed, against concurrency), both in BENCH_OUT.

  plot.py BENCH_OUT CASE...

A case without a CSV (or with rows at one level only) still gets its plots: points, no lines.
Debian's python3-matplotlib (tests/stack/install-deps.sh), Agg backend, no display needed.
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Fixed metadata so the same figures give the same SVG bytes (no date in the file).
SVG_META = {"Date": None, "Creator": None}
plt.rcParams["svg.hashsalt"] = "milter-bench"
# Text as text, not glyph outlines: smaller files, diffable, searchable.
plt.rcParams["svg.fonttype"] = "none"


def read(path):
    series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            s = series.setdefault(row["series"], [])
            s.append((int(row["concurrency"]), float(row["msgs_per_s"]),
                      float(row["p50_ms"]), float(row["p99_ms"])))
    for v in series.values():
        v.sort()
    return series


def plot(out, case, series):
    levels = sorted({c for v in series.values() for c, *_ in v})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(12, 6))
    for i, (name, v) in enumerate(sorted(series.items())):
        ax.plot([x[0] for x in v], [x[1] for x in v], marker="o", color=colors[i % len(colors)], label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrency (connections at once)")
    ax.set_ylabel("messages per second")
    ax.set_title(f"{case}: throughput (median of runs; only in-run ratios are meaningful)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{case}-throughput.svg"), metadata=SVG_META)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(12, 6))
    for i, (name, v) in enumerate(sorted(series.items())):
        col = colors[i % len(colors)]
        cs = [x[0] for x in v]
        ax.plot(cs, [x[2] for x in v], marker="o", color=col, label=f"{name} p50")
        ax.plot(cs, [x[3] for x in v], marker="x", linestyle="--", color=col, label=f"{name} p99")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrency (connections at once)")
    ax.set_ylabel("latency, ms (MAIL..final answer)")
    ax.set_title(f"{case}: p50 (solid) and p99 (dashed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{case}-latency.svg"), metadata=SVG_META)
    plt.close(fig)


def main(argv):
    out, cases = argv[1], argv[2:]
    for case in cases:
        path = os.path.join(out, f"{case}.csv")
        if not os.path.exists(path):
            print(f"plot.py: {case}: no {case}.csv, no plots", file=sys.stderr)
            continue
        series = read(path)
        if not series:
            print(f"plot.py: {case}: {case}.csv has no rows, no plots", file=sys.stderr)
            continue
        plot(out, case, series)
        print(f"plot.py: {case}-throughput.svg, {case}-latency.svg", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
