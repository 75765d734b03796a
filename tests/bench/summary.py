#!/usr/bin/python3
"""Tables of one benchmark case from its raw runs (tests/bench/lib.sh, `summarise`).

  summary.py RAW.tsv CLK_TCK CASE OUT.csv MEDIANS.json [OURS=THEIRS ...] [--all-modified]
  summary.py --openssl < `openssl speed rsa2048` output   -> RSA-2048 signs per second

RAW.tsv rows: group, series, C, run, count, daemon CPU ticks, milter-replay's summary line.
Prints markdown: per-series medians over the runs, then for each OURS=THEIRS pair the median
of the per-round ratios (rounds alternate the series, so each ratio compares runs made side by
side). Exits non-zero if a run has errors, an empty line, a refused message, or (with
--all-modified) a message the milter did not modify: a broken case fails, a slow one never.
"""
import csv
import json
import re
import statistics
import sys

LINE = re.compile(
    r"(\d+) messages in ([\d.]+) s .*?: ([\d.]+) msg/s, p50 ([\d.]+) ms, p90 ([\d.]+) ms, "
    r"p99 ([\d.]+) ms, (\d+) errors, (\d+) accepted, (\d+) modified"
    r"(?:, (\d+) connections, connect to answer p50 ([\d.]+) ms, p99 ([\d.]+) ms)?")


def openssl():
    """The sign/s column of the last `rsa 2048 bits` line (with -multi: the total)."""
    rate = None
    for line in sys.stdin:
        if line.startswith("rsa") and "2048" in line and "bits" in line:
            nums = [t for t in line.split("bits", 1)[1].split() if not t.endswith("s")]
            if nums:
                rate = float(nums[0])
    if rate is None:
        sys.exit("summary.py: no 'rsa 2048 bits' line in openssl speed's output")
    print(f"{rate:.1f}")


def main(argv):
    if len(argv) > 1 and argv[1] == "--openssl":
        return openssl()
    all_modified = "--all-modified" in argv
    argv = [a for a in argv if a != "--all-modified"]
    raw, hz, case, out_csv, out_json, pairs = argv[1], int(argv[2]), argv[3], argv[4], argv[5], argv[6:]
    runs = {}      # (series, C) -> [record]
    per_round = {}  # (series, C, run) -> record
    order = []
    for row in csv.DictReader(open(raw), delimiter="\t"):
        s, c, r = row["series"], int(row["C"]), int(row["run"])
        m = LINE.search(row["line"] or "")
        if not m:
            sys.exit(f"{case}: {s} C={c} run {r}: no figures from milter-replay: {row['line']!r}")
        n, _, rate, p50, _, p99, err, acc, mod, _conns, cp50, _cp99 = m.groups()
        n, err, acc, mod = int(n), int(err), int(acc), int(mod)
        if err or acc != n or (all_modified and mod != n):
            sys.exit(f"{case}: {s} C={c}: {err} errors, {acc}/{n} accepted, {mod}/{n} modified: {row['line']}")
        rec = dict(rate=float(rate), p50=float(p50), p99=float(p99), n=n,
                   cp50=float(cp50) if cp50 else None,
                   cpu_us=int(row["cpu_ticks"]) * 1e6 / hz / n)
        if s not in order:
            order.append(s)
        runs.setdefault((s, c), []).append(rec)
        per_round[(s, c, r)] = rec
    med = statistics.median
    medians = {}
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "series", "concurrency", "msgs_per_s", "p50_ms", "p99_ms"])
        print("| series | C | msg/s | p50 ms | p99 ms | connect→answer p50 ms | daemon CPU µs/msg | count × runs |")
        print("|---|---|---|---|---|---|---|---|")
        for s in order:
            for c in sorted(c for (x, c) in runs if x == s):
                v = runs[(s, c)]
                m = {k: med([x[k] for x in v]) for k in ("rate", "p50", "p99", "cpu_us")}
                cps = [x["cp50"] for x in v if x["cp50"] is not None]
                m["cp50"] = med(cps) if cps else None
                medians.setdefault(s, {})[str(c)] = m
                w.writerow([case, s, c, f"{m['rate']:.1f}", f"{m['p50']:.3f}", f"{m['p99']:.3f}"])
                cp = f"{m['cp50']:.2f}" if m["cp50"] is not None else "–"
                print(f"| {s} | {c} | {m['rate']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {cp} | "
                      f"{m['cpu_us']:.0f} | {v[0]['n']} × {len(v)} |")
    ratios = {}
    if pairs:
        print()
        print("| ours / theirs (median of per-round ratios) | C | msg/s | p50 | p99 | daemon CPU/msg |")
        print("|---|---|---|---|---|---|")
    for pair in pairs:
        ours, theirs = pair.split("=", 1)
        for c in sorted(c for (x, c) in runs if x == ours):
            rounds = [r for (x, cc, r) in per_round if x == ours and cc == c and (theirs, c, r) in per_round]
            if not rounds:
                continue
            q = {}
            for k in ("rate", "p50", "p99", "cpu_us"):
                vals = [per_round[(ours, c, r)][k] / per_round[(theirs, c, r)][k]
                        for r in rounds if per_round[(theirs, c, r)][k]]
                q[k] = med(vals) if vals else float("nan")
            ratios.setdefault(pair, {})[str(c)] = q
            print(f"| {ours} / {theirs} | {c} | {q['rate']:.2f} | {q['p50']:.3f} | {q['p99']:.3f} | {q['cpu_us']:.2f} |")
    json.dump({"medians": medians, "ratios": ratios}, open(out_json, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv)
