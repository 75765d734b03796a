#!/usr/bin/env bash
# Case "library" (issue #11 case 5; issue #10's target): the same no-op milter on
# milter-core, indymilter 0.3 and Sendmail's libmilter, alternating A B C A B C in one run,
# driven by milter-replay's load mode over long sessions (one connection per worker, ABORT
# between messages) with a 4 KB message. Modes: `replied` (every step waits for a reply)
# and `nr` (every NR_* flag offered); LIB_MODES="replied nr hdr" adds the issue's earlier
# comparison (replied + one header added at end of message).
#
# Writes $BENCH_OUT/library.md and $BENCH_OUT/library.csv (tests/bench/BENCHMARKS.md).
# Standalone: `bash tests/bench/cases/library.sh` (builds what is missing unless SKIP_BUILD=1).
# Env: BENCH_OUT BIN REPO HERE SMOKE LEVELS RUNS RUN_SECONDS, LIB_MODES, MAX_COUNT, and
# LIB_BASELINE=/path/to/noop-milter-core of another build (e.g. before a change): run in the
# same rotation as "milter-core-base", for an in-run before/after ratio.
# Everything on 127.0.0.1; each load run bounded by --count and `timeout`; every daemon
# started here is stopped by pid on exit. Nothing asserts on timing.
set -euo pipefail

HERE=${HERE:-$(cd "$(dirname "$0")/.." && pwd)}
REPO=${REPO:-$(cd "$HERE/../.." && pwd)}
BIN=${BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release}
PY=/usr/bin/python3
SMOKE=${SMOKE:-0}
LEVELS=${LEVELS:-"1 16 64"}
RUNS=${RUNS:-3}
RUN_SECONDS=${RUN_SECONDS:-3}
MAX_COUNT=${MAX_COUNT:-60000}
LIB_MODES=${LIB_MODES:-"replied nr"}
if [ "$SMOKE" = 1 ]; then
    LEVELS=${LEVELS%% *}; RUNS=1
fi
if [ -z "${BENCH_OUT:-}" ]; then
    BENCH_OUT=$(mktemp -d /tmp/milter-bench.XXXXXX)
    echo "library: output in $BENCH_OUT" >&2
fi
W="$BENCH_OUT/library.work"
mkdir -p "$W"

if [ -z "${SKIP_BUILD:-}" ]; then
    for b in noop-milter-core noop-indymilter milter-replay; do
        if [ ! -x "$BIN/$b" ]; then
            (cd "$REPO" && cargo build --release --ignore-rust-version -p bench-milters \
                -p milter-core --features milter-core/cli)
            break
        fi
    done
fi
for b in noop-milter-core noop-indymilter milter-replay; do
    [ -x "$BIN/$b" ] || { echo "library: $BIN/$b not built" >&2; exit 2; }
done
[ -f /usr/include/libmilter/mfapi.h ] \
    || { echo "library: libmilter-dev missing (tests/stack/install-deps.sh installs it)" >&2; exit 2; }
gcc -O2 -Wall -o "$W/noop-libmilter" "$HERE/milters/noop-libmilter.c" -lmilter -pthread

# The shared helpers (daemons stopped by pid on exit, free_port, wait_ready, /proc reads).
# shellcheck source=../lib.sh
source "$HERE/lib.sh"
bench_attach library "$W"

# A 4 KB text message (7 header fields, one body chunk), as in the baselines.
MSG="$W/4k.eml"
"$PY" - "$MSG" <<'EOF'
import sys
head = ("From: Alice <alice@example.test>\r\nTo: Bob <bob@example.net>\r\n"
        "Subject: library benchmark\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
        "Message-ID: <bench-4k@example.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n")
line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
body = line * ((3967 - len(head)) // len(line))
open(sys.argv[1], "w", newline="").write(head + body)
EOF

# Three libraries x the modes: one daemon each, all up for the whole run.
LIBS=(milter-core indymilter libmilter)
[ -n "${LIB_BASELINE:-}" ] && LIBS+=(milter-core-base)
declare -A PORT PID
for mode in $LIB_MODES; do
    flags=(--mode replied)
    case $mode in
        replied) ;;
        nr) flags=(--mode nr) ;;
        hdr) flags=(--mode replied --add-header) ;;
        *) echo "library: unknown mode $mode (replied, nr, hdr)" >&2; exit 2 ;;
    esac
    for lib in "${LIBS[@]}"; do
        k="$lib-$mode"; PORT[$k]=$(free_port)
        case $lib in
            milter-core) exe="$BIN/noop-milter-core" ;;
            milter-core-base) exe=$LIB_BASELINE ;;
            indymilter) exe="$BIN/noop-indymilter" ;;
            libmilter) exe="$W/noop-libmilter" ;;
        esac
        RUST_LOG=warn "$exe" --socket "inet:127.0.0.1:${PORT[$k]}" "${flags[@]}" > "$W/$k.log" 2>&1 &
        PID[$k]=$!; PIDS+=("${PID[$k]}")
    done
done
for mode in $LIB_MODES; do
    for lib in "${LIBS[@]}"; do wait_port "${PORT[$lib-$mode]}" "${PID[$lib-$mode]}" "$lib-$mode"; done
done

load() { # KEY CONCURRENCY COUNT -> milter-replay's summary line
    timeout 300 "$BIN/milter-replay" --milter "inet:127.0.0.1:${PORT[$1]}" \
        --concurrency "$2" --count "$3" "$MSG"
}

RAW="$W/raw.tsv"
printf 'lib\tmode\tC\trun\tcount\tline\tcpu_ticks\tVmRSS_kB\tThreads\n' > "$RAW"
declare -A COUNT
for mode in $LIB_MODES; do
    for c in $LEVELS; do
        # Calibration (also warm-up): one count for the three, the median calibrated rate x
        # RUN_SECONDS, so every run of a round does the same work (a noisy calibration of
        # one library then does not shorten only its runs).
        rates=()
        for lib in "${LIBS[@]}"; do
            k="$lib-$mode"
            if [ "$SMOKE" = 1 ]; then rates+=(0); continue; fi
            line=$(load "$k" "$c" $(( c * 20 > 300 ? c * 20 : 300 )))
            rates+=("$(sed -n 's/.* \([0-9.]*\) msg\/s.*/\1/p' <<< "$line")")
            echo "library: calibrate $k C=$c: $line" >&2
        done
        n=$("$PY" -c "import statistics; r = statistics.median([$(IFS=,; echo "${rates[*]}")])
print(max(5 * $c, 50) if $SMOKE == 1 else min(max(int(r * $RUN_SECONDS), 10 * $c, 100), $MAX_COUNT))")
        for lib in "${LIBS[@]}"; do COUNT[$lib-$mode]=$n; done
        for r in $(seq "$RUNS"); do
            for lib in "${LIBS[@]}"; do
                k="$lib-$mode"
                t0=$(cpu_ticks "${PID[$k]}")
                line=$(load "$k" "$c" "${COUNT[$k]}")
                t1=$(cpu_ticks "${PID[$k]}")
                echo "library: run $r $k C=$c: $line" >&2
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$lib" "$mode" "$c" "$r" "${COUNT[$k]}" \
                    "$line" $((t1 - t0)) "$(status_kib "${PID[$k]}" VmRSS)" \
                    "$(status_kib "${PID[$k]}" Threads)" >> "$RAW"
            done
        done
    done
done

"$PY" - "$RAW" "$(getconf CLK_TCK)" "$BENCH_OUT" "$RUNS" "$RUN_SECONDS" "$SMOKE" <<'EOF'
import csv, re, statistics, sys
raw, hz, out, runs_n, secs, smoke = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
pat = re.compile(r"(\d+) messages in ([\d.]+) s .*?: ([\d.]+) msg/s, p50 ([\d.]+) ms, p90 ([\d.]+) ms, "
                 r"p99 ([\d.]+) ms, (\d+) errors, (\d+) accepted, (\d+) modified")
runs = {}
for row in csv.DictReader(open(raw), delimiter="\t"):
    m = pat.search(row["line"])
    if not m:
        sys.exit(f"library: unparsable milter-replay line: {row['line']}")
    n, _, rate, p50, _, p99, err, acc, mod = m.groups()
    n, err, acc, mod = int(n), int(err), int(acc), int(mod)
    want_mod = n if row["mode"] == "hdr" else 0
    if err or acc != n or mod != want_mod:
        sys.exit(f"library: {row['lib']} {row['mode']} C={row['C']}: {err} errors, {acc}/{n} accepted, "
                 f"{mod} modified (want {want_mod}): {row['line']}")
    cpu_us = int(row["cpu_ticks"]) * 1e6 / hz / n
    runs.setdefault((row["mode"], int(row["C"]), row["lib"]), []).append(
        (float(rate), float(p50), float(p99), cpu_us, int(row["VmRSS_kB"]), int(row["Threads"]), n))
med = {k: [statistics.median(x[i] for x in v) for i in range(4)] + [v[-1][4], max(x[5] for x in v), v[0][6], len(v)]
       for k, v in runs.items()}
libs = [l for l in ("milter-core", "indymilter", "libmilter", "milter-core-base") if any(k[2] == l for k in med)]
modes = [m for m in ("replied", "nr", "hdr") if any(k[0] == m for k in med)]
levels = sorted({k[1] for k in med})
label = {"replied": "every step replied", "nr": "every NR_* flag", "hdr": "every step replied, one header added"}
with open(f"{out}/library.csv", "w") as f:
    f.write("case,series,concurrency,msgs_per_s,p50_ms,p99_ms\n")
    for mode in modes:
        for lib in libs:
            for c in levels:
                rate, p50, p99 = med[(mode, c, lib)][:3]
                f.write(f"library,{lib} {mode} tcp long 4k,{c},{rate:.1f},{p50:.3f},{p99:.3f}\n")
md = ["## Library: no-op milter on milter-core vs indymilter vs libmilter", ""]
md.append("Method: three no-op milters (tests/bench/milters/: `noop-milter-core`, `noop-indymilter` "
          "on indymilter 0.3, `noop-libmilter.c` on Debian's libmilter), each continuing at every step and "
          "accepting at end of message, one daemon per library and mode, all up for the whole run. "
          "milter-replay's load mode, long sessions (one milter connection per worker, ABORT between "
          "messages), one 4 KB message (7 header fields, one body chunk), TCP on 127.0.0.1. "
          f"Per mode and concurrency: a calibration run each, then {runs_n} round(s) alternating "
          f"milter-core, indymilter, libmilter (A B C A B C), each run the same count of messages (the "
          f"median calibrated rate × {secs} s). Figures are medians of the runs; CPU = the daemon's utime+stime per message "
          "(/proc), RSS = VmRSS after the last run. The load generator shares the machine's cores with "
          "the daemon (and, here, with other work): only the in-run ratios are meant to be compared.")
if smoke == "1":
    md.append("")
    md.append("**SMOKE run: tiny counts, one run; the figures prove only that the case works.**")
for mode in modes:
    md += ["", f"### Mode `{mode}`: {label[mode]}", "",
           "| library | C | msg/s | p50 ms | p99 ms | daemon CPU µs/msg | VmRSS after MiB | threads max | count × runs |",
           "|---|---|---|---|---|---|---|---|---|"]
    for lib in libs:
        for c in levels:
            rate, p50, p99, cpu, rss, thr, n, k = med[(mode, c, lib)]
            md.append(f"| {lib} | {c} | {rate:.0f} | {p50:.3f} | {p99:.3f} | {cpu:.0f} | {rss / 1024:.1f} | {thr} | {n} × {k} |")
md += ["", "In-run ratios (throughput; p50 as milter-core / other, lower is better):", "",
       "| mode | C | milter-core / indymilter msg/s | milter-core / libmilter msg/s | p50 vs indymilter | p50 vs libmilter | CPU/msg vs indymilter | CPU/msg vs libmilter |"
       + (" milter-core / milter-core-base msg/s | CPU/msg vs base |" if "milter-core-base" in libs else ""),
       "|---|---|---|---|---|---|---|---|" + ("---|---|" if "milter-core-base" in libs else "")]
verdicts = []
for mode in modes:
    for c in levels:
        a, b, l = med[(mode, c, "milter-core")], med[(mode, c, "indymilter")], med[(mode, c, "libmilter")]
        ri, rl = a[0] / b[0], a[0] / l[0]
        q = lambda x, y: f"{x / y:.2f}" if y else "–"  # CPU ticks can be 0 in a short run
        row = f"| {mode} | {c} | **{ri:.2f}** | {rl:.2f} | {q(a[1], b[1])} | {q(a[1], l[1])} | {q(a[3], b[3])} | {q(a[3], l[3])} |"
        if "milter-core-base" in libs:
            z = med[(mode, c, "milter-core-base")]
            row += f" {q(a[0], z[0])} | {q(a[3], z[3])} |"
        md.append(row)
        if mode == "replied" and c in (1, 64):
            verdicts.append(f"C={c}: {ri:.2f}x ({'met' if ri >= 1.2 else 'missed'})")
md += ["", "Target (issue #10): milter-core no-op ≥ 1.2x indymilter's throughput with every step replied "
       "at concurrency 1 and 64: " + ("; ".join(verdicts) if verdicts else "not measured in this run (levels 1 and 64 not both run)") + "."]
open(f"{out}/library.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
echo "library: wrote $BENCH_OUT/library.md and library.csv (raw runs: $RAW)" >&2
