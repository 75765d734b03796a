#!/usr/bin/env bash
# Side-by-side benchmark: Debian's OpenDKIM (libmilter) vs dkim-milter, both signing with the
# same RSA-2048 key, driven by the same `milter-replay` load runs over tests/bench/messages/.
# The example `add-header` milter (milter-core, no crypto) runs in the same rotation as the
# framework's floor. Not a test: it asserts nothing about speed; see BENCHMARKS.md.
#
#   CARGO_TARGET_DIR=/work/target-bench bash tests/bench/run.sh
#
# Knobs (environment): LEVELS="1 8 64"  RUNS=3  RUN_SECONDS=3  MAX_COUNT=30000  SKIP_BUILD=1
#   CASES="dkim spam": which cases run; "spam" is spam-milter vs rspamd_proxy (tests/bench/spam.sh,
#   its own knobs there), e.g. CASES=spam for only that one.
# Everything listens on 127.0.0.1; every load run is bounded by --count and by `timeout`;
# every daemon started here is stopped on exit (trap). Scratch files: a mktemp dir in /tmp,
# kept and printed at the end (raw per-run lines, configs, daemon logs).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MSGS="$HERE/messages"
LEVELS=${LEVELS:-"1 8 64"}
RUNS=${RUNS:-3}
RUN_SECONDS=${RUN_SECONDS:-3}
MAX_COUNT=${MAX_COUNT:-30000}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN="$TARGET/release"
PY=/usr/bin/python3
CASES=${CASES:-"dkim spam"}
if [[ " $CASES " != *" dkim "* ]]; then
    [[ " $CASES " == *" spam "* ]] && exec bash "$HERE/spam.sh"
    echo "run.sh: CASES=\"$CASES\" names no known case (dkim, spam)" >&2; exit 2
fi

for b in /usr/sbin/opendkim /usr/sbin/opendkim-genkey "$PY"; do
    [ -x "$b" ] || { echo "run.sh: $b missing (tests/stack/install-deps.sh installs it)" >&2; exit 2; }
done

if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET" cargo build --release --ignore-rust-version \
        -p dkim-milter -p milter-examples -p milter-core --features milter-core/cli)
fi
for b in dkim-milter add-header milter-replay; do
    [ -x "$BIN/$b" ] || { echo "run.sh: $BIN/$b not built" >&2; exit 2; }
done

SCRATCH=$(mktemp -d /tmp/milter-bench.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        # OpenDKIM takes a few seconds to exit on SIGTERM; give up after 10 s.
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # PORT PID NAME
    for _ in $(seq 200); do
        kill -0 "$2" 2>/dev/null || { echo "run.sh: $3 exited; log:" >&2; cat "$SCRATCH/$3.log" >&2; exit 1; }
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "run.sh: $3 did not open port $1" >&2; exit 1
}

# One RSA-2048 key, opendkim-genkey layout: keys/example.test/bench.private (+ bench.txt).
KEYDIR="$SCRATCH/keys/example.test"
mkdir -p "$KEYDIR"
/usr/sbin/opendkim-genkey -b 2048 -h sha256 -d example.test -s bench -D "$KEYDIR"
# dkimpy's offline zone: "name TXT-value" (the quoted strings of bench.txt joined).
printf 'bench._domainkey.example.test %s\n' \
    "$(tr -d '\n' < "$KEYDIR/bench.txt" | grep -o '"[^"]*"' | tr -d '"' | tr -d '\n')" > "$SCRATCH/zone.txt"

# OpenDKIM, signing (Mode s), as in baselines.md.
ODK_PORT=$(free_port)
printf '127.0.0.1\n' > "$SCRATCH/InternalHosts"
printf 'bench._domainkey.example.test example.test:bench:%s\n' "$KEYDIR/bench.private" > "$SCRATCH/KeyTable"
printf '*@example.test bench._domainkey.example.test\n' > "$SCRATCH/SigningTable"
cat > "$SCRATCH/opendkim.conf" <<EOF
Syslog no
Background no
Mode s
Canonicalization relaxed/simple
OversignHeaders From
KeyTable file:$SCRATCH/KeyTable
SigningTable refile:$SCRATCH/SigningTable
InternalHosts refile:$SCRATCH/InternalHosts
RequireSafeKeys false
Socket inet:$ODK_PORT@127.0.0.1
PidFile $SCRATCH/opendkim.pid
UMask 022
EOF
/usr/sbin/opendkim -n -x "$SCRATCH/opendkim.conf"

# dkim-milter, the same key and signing policy. Both daemons log nothing per message
# (OpenDKIM: Syslog no; dkim-milter: log-level warn).
DKM_PORT=$(free_port)
cat > "$SCRATCH/dkim-milter.toml" <<EOF
socket = "inet:127.0.0.1:$DKM_PORT"
mode = "sign"
keys-dir = "$SCRATCH/keys"
internal-hosts = ["127.0.0.1"]
canonicalization = "relaxed/simple"
oversign-headers = ["From"]
key-permissions = "ignore"
log-level = "warn"
# The benchmark runs as root; the daemon refuses that unless told (or given `user`).
allow-root = true
EOF
"$BIN/dkim-milter" --config "$SCRATCH/dkim-milter.toml" --check-config > "$SCRATCH/check-config.log" 2>&1 \
    || { cat "$SCRATCH/check-config.log" >&2; exit 1; }

ADD_PORT=$(free_port)

/usr/sbin/opendkim -f -x "$SCRATCH/opendkim.conf" > "$SCRATCH/opendkim.log" 2>&1 &
ODK_PID=$!; PIDS+=("$ODK_PID")
"$BIN/dkim-milter" --config "$SCRATCH/dkim-milter.toml" > "$SCRATCH/dkim-milter.log" 2>&1 &
DKM_PID=$!; PIDS+=("$DKM_PID")
RUST_LOG=warn "$BIN/add-header" --socket "inet:127.0.0.1:$ADD_PORT" --name X-Bench --value yes \
    > "$SCRATCH/add-header.log" 2>&1 &
ADD_PID=$!; PIDS+=("$ADD_PID")
wait_port "$ODK_PORT" "$ODK_PID" opendkim
wait_port "$DKM_PORT" "$DKM_PID" dkim-milter
wait_port "$ADD_PORT" "$ADD_PID" add-header

NAMES=(opendkim dkim-milter add-header)
declare -A PORT=([opendkim]=$ODK_PORT [dkim-milter]=$DKM_PORT [add-header]=$ADD_PORT)
declare -A PID=([opendkim]=$ODK_PID [dkim-milter]=$DKM_PID [add-header]=$ADD_PID)

# Both signers really sign: one replay of every message with --out, checked by dkimpy.
for d in opendkim dkim-milter; do
    "$BIN/milter-replay" --milter "inet:127.0.0.1:${PORT[$d]}" --out "$SCRATCH/signed-$d" "$MSGS" \
        > "$SCRATCH/replay-$d.txt"
    for f in "$SCRATCH/signed-$d"/*.eml; do
        printf '%-12s %-12s ' "$d" "$(basename "$f")"
        "$PY" "$REPO/tests/stack/tools/dkim_verify.py" "$SCRATCH/zone.txt" "$f" | tr '\n' ' '
        "$PY" -c 'import email, re, sys; h = email.message_from_binary_file(open(sys.argv[1], "rb"))["DKIM-Signature"]
print(" ".join(re.findall(r"\b[ach]=[^;]*", re.sub(r"\s+", "", h))))' "$f"
    done
done | tee "$SCRATCH/verify.txt"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

load() { # DAEMON CONCURRENCY COUNT -> milter-replay's summary line
    timeout 600 "$BIN/milter-replay" --milter "inet:127.0.0.1:${PORT[$1]}" \
        --concurrency "$2" --count "$3" "$MSGS"
}

RAW="$SCRATCH/raw.tsv"
MEM="$SCRATCH/mem.tsv"
printf 'daemon\tC\trun\tcount\tline\tcpu_ticks\n' > "$RAW"
printf 'daemon\tC\tVmRSS_kB\tVmHWM_kB\tThreads\n' > "$MEM"
declare -A COUNT
for c in $LEVELS; do
    # Calibration (also warm-up): each daemon's count = its rate x RUN_SECONDS, a multiple of
    # the number of messages (equal mix of sizes), at least 3 messages per connection.
    for d in "${NAMES[@]}"; do
        line=$(load "$d" "$c" $(( c * 6 > 30 ? c * 6 : 30 )))
        rate=$(sed -n 's/.* \([0-9.]*\) msg\/s.*/\1/p' <<< "$line")
        COUNT[$d]=$("$PY" -c "import math; n=max(math.ceil($rate*$RUN_SECONDS/3)*3, 3*$c, 30); print(min(n, $MAX_COUNT))")
        echo "calibrate $d C=$c: $line -> count ${COUNT[$d]}" >&2
    done
    for r in $(seq "$RUNS"); do
        for d in "${NAMES[@]}"; do
            t0=$(cpu_ticks "${PID[$d]}")
            line=$(load "$d" "$c" "${COUNT[$d]}")
            t1=$(cpu_ticks "${PID[$d]}")
            echo "run $r $d C=$c: $line" >&2
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$d" "$c" "$r" "${COUNT[$d]}" "$line" $((t1 - t0)) >> "$RAW"
        done
    done
    for d in "${NAMES[@]}"; do
        printf '%s\t%s\t%s\t%s\t%s\n' "$d" "$c" "$(status_kib "${PID[$d]}" VmRSS)" \
            "$(status_kib "${PID[$d]}" VmHWM)" "$(status_kib "${PID[$d]}" Threads)" >> "$MEM"
    done
done

"$PY" - "$RAW" "$MEM" "$(getconf CLK_TCK)" <<'EOF'
import csv, re, statistics, sys
raw, mem, hz = sys.argv[1], sys.argv[2], int(sys.argv[3])
pat = re.compile(r"(\d+) messages in ([\d.]+) s .*?: ([\d.]+) msg/s, p50 ([\d.]+) ms, p90 ([\d.]+) ms, "
                 r"p99 ([\d.]+) ms, (\d+) errors, (\d+) accepted, (\d+) modified")
runs = {}
for row in csv.DictReader(open(raw), delimiter="\t"):
    m = pat.search(row["line"])
    if not m:
        sys.exit(f"unparsable milter-replay line: {row['line']}")
    n, _, rate, p50, _, p99, err, acc, mod = m.groups()
    n, err, mod = int(n), int(err), int(mod)
    if err or mod != n:
        sys.exit(f"{row['daemon']} C={row['C']}: {err} errors, {mod}/{n} modified: {row['line']}")
    cpu_us = int(row["cpu_ticks"]) * 1e6 / hz / n
    runs.setdefault((row["daemon"], int(row["C"])), []).append(
        (float(rate), float(p50), float(p99), cpu_us, n))
memo = {(r["daemon"], int(r["C"])): r for r in csv.DictReader(open(mem), delimiter="\t")}
med = {k: [statistics.median(x[i] for x in v) for i in range(4)] + [v[0][4], len(v)]
       for k, v in runs.items()}
mib = lambda kb: f"{int(kb) / 1024:.1f}"
print("| daemon | C | msg/s | p50 ms | p99 ms | daemon CPU µs/msg | VmRSS / VmHWM MiB after | threads | count × runs |")
print("|---|---|---|---|---|---|---|---|---|")
levels = sorted({c for _, c in med})
for d in ("opendkim", "dkim-milter", "add-header"):
    for c in levels:
        rate, p50, p99, cpu, n, k = med[(d, c)]
        m = memo[(d, c)]
        print(f"| {d} | {c} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} | "
              f"{mib(m['VmRSS_kB'])} / {mib(m['VmHWM_kB'])} | {m['Threads']} | {n} × {k} |")
print()
print("| ratio dkim-milter / OpenDKIM | C | msg/s | p50 | p99 | CPU/msg | VmRSS after |")
print("|---|---|---|---|---|---|---|")
for c in levels:
    a, b = med[("dkim-milter", c)], med[("opendkim", c)]
    ra, rb = int(memo[("dkim-milter", c)]["VmRSS_kB"]), int(memo[("opendkim", c)]["VmRSS_kB"])
    print(f"| | {c} | {a[0] / b[0]:.2f} | {a[1] / b[1]:.3f} | {a[2] / b[2]:.3f} | "
          f"{a[3] / b[3]:.2f} | {ra / rb:.2f} |")
EOF
echo "scratch (raw runs, configs, logs, signed messages): $SCRATCH" >&2
if [[ " $CASES " == *" spam "* ]]; then
    cleanup; PIDS=()   # the DKIM daemons are done; spam.sh starts its own
    bash "$HERE/spam.sh"
fi
