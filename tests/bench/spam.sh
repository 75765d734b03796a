#!/usr/bin/env bash
# Case 4 of issue 11, "Spam bridge": spam-milter vs Rspamd's own milter proxy (rspamd_proxy,
# `milter = yes`), both in front of the SAME Rspamd normal worker, plus direct /checkv2 POSTs
# to that worker as the floor. Reports added latency over the floor. Not a test; see
# BENCHMARKS.md, section "Spam bridge: spam-milter vs rspamd_proxy".
#
#   CARGO_TARGET_DIR=/work/target-bench bash tests/bench/spam.sh
#   CASES=spam CARGO_TARGET_DIR=/work/target-bench bash tests/bench/run.sh   # the same, via run.sh
#
# Knobs (environment): SPAM_LEVELS="1 16 64"  RUNS=3  RUN_SECONDS=3  MAX_COUNT=30000
#   SKIP_BUILD=1  PROFILE=1 (perf record --call-graph dwarf on spam-milter during one extra C=16 run)
#   SPAM_MILTER_THREADS=N (TOKIO_WORKER_THREADS for spam-milter only)
#   SPAM_MILTER_OLD=path (another spam-milter binary, e.g. a copy built from an older commit:
#   run as series "spam-milter-old" in the same rotation, same config on its own port)
# Conventions as run.sh: everything on 127.0.0.1 (Rspamd resolves only through a loopback
# NXDOMAIN stub started here), every load run bounded by --count and `timeout`, every daemon
# started here stopped on exit (trap, by pid), scratch in a mktemp dir kept and printed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MSGS="$HERE/messages"
LEVELS=${SPAM_LEVELS:-"1 16 64"}
RUNS=${RUNS:-3}
RUN_SECONDS=${RUN_SECONDS:-3}
MAX_COUNT=${MAX_COUNT:-30000}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN="$TARGET/release"
PY=/usr/bin/python3
# Rspamd's hyperscan/TLD caches: the first start compiles them (~10 s), later starts load them.
RSPAMD_CACHE=${RSPAMD_CACHE:-/var/tmp/milter-bench-rspamd-cache}
# spam-milter's HTTP client honours system proxies even for 127.0.0.1 (spam-milter/src/upstream.rs).
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

for b in /usr/bin/rspamd /etc/rspamd/rspamd.conf "$PY" /usr/bin/time; do
    [ -e "$b" ] || { echo "spam.sh: $b missing (tests/stack/install-deps.sh installs it)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "spam.sh: needs root (rspamd -u root -g root)" >&2; exit 2; }

if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET" cargo build --release --ignore-rust-version \
        -p spam-milter -p milter-core --features milter-core/cli)
fi
for b in spam-milter milter-replay; do
    [ -x "$BIN/$b" ] || { echo "spam.sh: $BIN/$b not built" >&2; exit 2; }
done

SCRATCH=$(mktemp -d /tmp/milter-bench-spam.XXXXXX)
# The floor client: std-only Rust, built with rustc (no cargo package to add).
rustc -O --edition 2021 -o "$SCRATCH/checkv2-load" "$HERE/checkv2-load.rs"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    # Rspamd's workers exit with their main process; any left over (by the pids read at start).
    for p in ${RSPAMD_WORKERS:-}; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # PORT PID NAME
    for _ in $(seq 600); do
        kill -0 "$2" 2>/dev/null || { echo "spam.sh: $3 exited; log:" >&2; cat "$SCRATCH/$3.log" >&2; exit 1; }
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "spam.sh: $3 did not open port $1" >&2; exit 1
}
http_get() { # PORT PATH -> body
    "$PY" -c 'import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
c.request("GET", sys.argv[2]); print(c.getresponse().read().decode())' "$1" "$2"
}

# The loopback DNS stub: answers every query NXDOMAIN and counts them (dns-stub.log).
DNS_PORT=$(free_port)
"$PY" - "$DNS_PORT" "$SCRATCH/dns-stub.log" > "$SCRATCH/dns-stub.out" 2>&1 <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
n = 0
while True:
    q, a = s.recvfrom(4096)
    if len(q) < 12:
        continue
    i = 12
    while i < len(q) and q[i]:
        i += q[i] + 1
    qname = q[12:i]
    i += 5  # zero byte, QTYPE, QCLASS
    # ID, QR|RD + RA|NXDOMAIN, QD=1, AN=NS=AR=0, the question copied.
    s.sendto(q[:2] + bytes([0x81 | (q[2] & 0x01), 0x83]) + b"\0\1\0\0\0\0\0\0" + q[12:i], a)
    n += 1
    with open(sys.argv[2], "a") as f:
        f.write(f"{n} {qname!r}\n")
EOF
DNS_PID=$!; PIDS+=("$DNS_PID")

# One Rspamd 3.4: stock /etc/rspamd/rspamd.conf, a private local.d. One normal worker (the
# scanner both bridges and the floor share), the proxy worker in milter mode pointed at it,
# the controller (for /ping). Network-dependent modules off for a deterministic scan cost.
NORMAL_PORT=$(free_port); PROXY_PORT=$(free_port); CTL_PORT=$(free_port)
RD="$SCRATCH/rspamd"
mkdir -p "$RD/etc/local.d" "$RD/run" "$RD/log" "$RSPAMD_CACHE"
L="$RD/etc/local.d"
printf 'bind_socket = "127.0.0.1:%s";\ncount = 1;\n' "$NORMAL_PORT" > "$L/worker-normal.inc"
printf 'bind_socket = "127.0.0.1:%s";\n' "$CTL_PORT" > "$L/worker-controller.inc"
cat > "$L/worker-proxy.inc" <<EOF
bind_socket = "127.0.0.1:$PROXY_PORT";
milter = yes;
timeout = 120s;
count = 1;
upstream "local" {
  default = yes;
  hosts = "127.0.0.1:$NORMAL_PORT";
}
EOF
printf 'type = "file";\nfilename = "%s";\nlevel = "warning";\n' "$RD/log/rspamd.log" > "$L/logging.inc"
cat > "$L/options.inc" <<EOF
enable_test_patterns = true;
dns {
  nameserver = ["127.0.0.1:$DNS_PORT"];
  timeout = 0.5s;
  retransmits = 1;
}
EOF
cat > "$L/milter_headers.conf" <<'EOF'
extended_spam_headers = true;
skip_local = false;
skip_authenticated = false;
use = ["x-spamd-bar", "x-spam-level", "x-spam-status", "authentication-results"];
EOF
for m in rbl asn hfilter fuzzy_check dkim_signing arc spf dkim dmarc; do
    printf 'enabled = false;\n' > "$L/$m.conf"
done
# multimap: its remote (maps.rspamd.com) maps are the network part; turn the module off.
printf 'enabled = false;\n' > "$L/multimap.conf"
RSPAMD_ARGS=(-u root -g root -c /etc/rspamd/rspamd.conf "--var=LOCAL_CONFDIR=$RD/etc"
    "--var=DBDIR=$RSPAMD_CACHE" "--var=RUNDIR=$RD/run" "--var=LOGDIR=$RD/log")
/usr/bin/rspamadm "${RSPAMD_ARGS[@]:6}" configtest -c /etc/rspamd/rspamd.conf > "$SCRATCH/configtest.log" 2>&1 \
    || { cat "$SCRATCH/configtest.log" >&2; exit 1; }
/usr/bin/rspamd -f "${RSPAMD_ARGS[@]}" </dev/null > "$SCRATCH/rspamd.log" 2>&1 &
RSPAMD_PID=$!; PIDS+=("$RSPAMD_PID")
wait_port "$CTL_PORT" "$RSPAMD_PID" rspamd
wait_port "$NORMAL_PORT" "$RSPAMD_PID" rspamd
wait_port "$PROXY_PORT" "$RSPAMD_PID" rspamd
for _ in $(seq 300); do
    [ "$(http_get "$CTL_PORT" /ping 2>/dev/null)" = pong ] && break; sleep 0.1
done
worker_pid() { # TITLE-WORD -> pid of that Rspamd worker (a child of the main process)
    ps -o pid=,args= --ppid "$RSPAMD_PID" | awk -v w="$1" '$0 ~ w {print $1; exit}'
}
NORMAL_PID=$(worker_pid 'normal process'); PROXYW_PID=$(worker_pid 'rspamd_proxy process')
RSPAMD_WORKERS=$(ps -o pid= --ppid "$RSPAMD_PID" | tr '\n' ' ')
[ -n "$NORMAL_PID" ] && [ -n "$PROXYW_PID" ] \
    || { echo "spam.sh: rspamd workers not found: $(ps -o pid=,args= --ppid "$RSPAMD_PID")" >&2; exit 1; }

# spam-milter, one upstream: the same normal worker. log-level warn: nothing per message
# (Rspamd logs at "warning" too, so neither bridge writes a log line per message).
SPAM_PORT=$(free_port)
cat > "$SCRATCH/spam-milter.toml" <<EOF
socket = "inet:127.0.0.1:$SPAM_PORT"
log-level = "warn"
reload-poll-seconds = 3600
allow-root = true
[rspamd]
upstreams = ["http://127.0.0.1:$NORMAL_PORT"]
EOF
"$BIN/spam-milter" --config "$SCRATCH/spam-milter.toml" --check-config > "$SCRATCH/check-config.log" 2>&1 \
    || { cat "$SCRATCH/check-config.log" >&2; exit 1; }
# SPAM_MILTER_THREADS=N: tokio worker threads of spam-milter only (an experiment knob).
env ${SPAM_MILTER_THREADS:+TOKIO_WORKER_THREADS=$SPAM_MILTER_THREADS} \
    "$BIN/spam-milter" --config "$SCRATCH/spam-milter.toml" </dev/null > "$SCRATCH/spam-milter.log" 2>&1 &
SPAM_PID=$!; PIDS+=("$SPAM_PID")
wait_port "$SPAM_PORT" "$SPAM_PID" spam-milter
OLD_PID=""
if [ -n "${SPAM_MILTER_OLD:-}" ]; then
    OLD_PORT=$(free_port)
    sed "s/^socket = .*/socket = \"inet:127.0.0.1:$OLD_PORT\"/" "$SCRATCH/spam-milter.toml" > "$SCRATCH/spam-milter-old.toml"
    env ${SPAM_MILTER_THREADS:+TOKIO_WORKER_THREADS=$SPAM_MILTER_THREADS} \
        "$SPAM_MILTER_OLD" --config "$SCRATCH/spam-milter-old.toml" </dev/null > "$SCRATCH/spam-milter-old.log" 2>&1 &
    OLD_PID=$!; PIDS+=("$OLD_PID")
    wait_port "$OLD_PORT" "$OLD_PID" spam-milter-old
fi

# The envelope both milters get from milter-replay (the sidecars: all three are the same),
# sent to /checkv2 as rspamd_proxy sends it (shared/notes/stack.md): IP, Helo, Hostname,
# From, Rcpt, Queue-Id, MTA-Name, Flags: milter.
FLOOR_HDRS=(--header "IP: 127.0.0.1" --header "Helo: client.example.test" --header "Hostname: localhost"
    --header "From: <alice@example.test>" --header "Rcpt: <bob@example.net>"
    --header "Queue-Id: BENCH0001" --header "MTA-Name: mx.example.test" --header "Flags: milter")
MSG_FILES=("$MSGS"/*.eml)
floor() { # CONCURRENCY COUNT [FILES...]
    local c=$1 n=$2; shift 2
    [ $# -gt 0 ] || set -- "${MSG_FILES[@]}"
    timeout 600 "$SCRATCH/checkv2-load" --port "$NORMAL_PORT" --concurrency "$c" --count "$n" \
        "${FLOOR_HDRS[@]}" "$@"
}
# Warm-up: the first scans after a start are slow (hs_helper still loading, lazy maps).
floor 4 300 > "$SCRATCH/warmup.txt"
echo "warm-up: $(cat "$SCRATCH/warmup.txt")" >&2

# Correctness: every bench message plus Rspamd's test patterns (reject / add header / rewrite
# subject) once through each milter and once directly; the verdicts must agree.
PAT="$SCRATCH/patterns"; mkdir -p "$PAT"
"$PY" - "$MSGS/01-2k.eml" "$PAT" <<'EOF'
import shutil, sys
src, out = sys.argv[1], sys.argv[2]
head = open(src, "rb").read().split(b"\n\n", 1)[0]
tail = b"*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
for name, p in (("gtube-reject", b"XJS"), ("gtube-add-header", b"YJS"), ("gtube-rewrite-subject", b"ZJS")):
    open(f"{out}/{name}.eml", "wb").write(head + b"\n\nTest message.\n\n" + p + tail + b"\n\nBye.\n")
    shutil.copy(src + ".json", f"{out}/{name}.eml.json")
EOF
declare -A MPORT=([spam-milter]=$SPAM_PORT [rspamd_proxy]=$PROXY_PORT [spam-milter-old]=${OLD_PORT:-})
{
    printf '%-24s | %-16s | %-40s | %-40s\n' message "direct action" "spam-milter" "rspamd_proxy"
    for f in "${MSG_FILES[@]}" "$PAT"/*.eml; do
        m=$(basename "$f")
        direct=$(floor 1 1 "$f" | sed -n 's/.*actions \(.*\)=1$/\1/p')
        declare -A V=()
        for d in spam-milter rspamd_proxy; do
            timeout 60 "$BIN/milter-replay" --milter "inet:127.0.0.1:${MPORT[$d]}" "$f" \
                > "$SCRATCH/verdict-$d-$m.txt" 2>&1 || true
            # "name: verdict at stage" (+ reply text), then one line per modification.
            V[$d]="$(head -1 "$SCRATCH/verdict-$d-$m.txt" | sed 's/^[^:]*: //') [$(($(wc -l < "$SCRATCH/verdict-$d-$m.txt") - 1)) mods]"
        done
        printf '%-24s | %-16s | %-40s | %-40s\n' "$m" "$direct" "${V[spam-milter]}" "${V[rspamd_proxy]}"
        unset V
    done
} | tee "$SCRATCH/verdicts.txt"
awk -F' [|] ' 'NR > 1 { a = $3; b = $4; sub(/ at .*/, "", a); sub(/ at .*/, "", b); if (a != b || $3 !~ / at / || $4 !~ / at /) bad = 1 }
    END { exit bad }' "$SCRATCH/verdicts.txt" \
    || { [ -n "${SPAM_ALLOW_MISMATCH:-}" ] || { echo "spam.sh: the milters' verdicts differ (see above)" >&2; exit 1; }; }

# What each milter negotiates when offered everything (version 6, all actions, all protocol
# bits): which steps it wants replies for (NR_*) and which it skips (NO_*).
for d in spam-milter rspamd_proxy; do
    "$PY" - "${MPORT[$d]}" "$d" <<'PYEOF'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(struct.pack(">IcIII", 13, b"O", 6, 0x1FF, 0x1FFFFF))
ln = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
d = s.recv(ln, socket.MSG_WAITALL)
v, act, proto = struct.unpack(">III", d[1:13])
bits = ["NOCONNECT", "NOHELO", "NOMAIL", "NORCPT", "NOBODY", "NOHDRS", "NOEOH", "NR_HDR", "NOUNKNOWN",
        "NODATA", "SKIP", "RCPT_REJ", "NR_CONN", "NR_HELO", "NR_MAIL", "NR_RCPT", "NR_DATA", "NR_UNKN",
        "NR_EOH", "NR_BODY", "HDR_LEADSPC"]
print(f"OPTNEG {sys.argv[2]}: version {v} actions 0x{act:x} protocol 0x{proto:x} = "
      + ("|".join(b for i, b in enumerate(bits) if proto >> i & 1) or "none"))
PYEOF
done | tee "$SCRATCH/optneg.txt"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
NAMES=(spam-milter ${OLD_PID:+spam-milter-old} rspamd_proxy direct)
load() { # NAME CONCURRENCY COUNT -> summary line (+ " ; client_ticks U S" for milter-replay)
    case $1 in
        direct) floor "$2" "$3" ;;
        *) /usr/bin/time -f '%U %S' -o "$SCRATCH/time.txt" timeout 600 "$BIN/milter-replay" \
               --milter "inet:127.0.0.1:${MPORT[$1]}" --concurrency "$2" --count "$3" "$MSGS" \
           | sed -n 's/^concurrency [0-9]*: //p'
           awk '{printf "; client cpu %.0f s*1e6\n", ($1 + $2) * 1e6}' "$SCRATCH/time.txt" ;;
    esac | tr '\n' ' '
}
bridge_pid() { case $1 in spam-milter) echo "$SPAM_PID" ;; spam-milter-old) echo "$OLD_PID" ;; rspamd_proxy) echo "$PROXYW_PID" ;; *) echo "" ;; esac; }

RAW="$SCRATCH/raw.tsv"
printf 'name\tC\trun\tcount\tline\tbridge_ticks\tnormal_ticks\n' > "$RAW"
declare -A COUNT
for c in $LEVELS; do
    for d in "${NAMES[@]}"; do
        line=$(load "$d" "$c" $(( c * 6 > 30 ? c * 6 : 30 )))
        rate=$(sed -n 's/.* \([0-9.]*\) msg\/s.*/\1/p' <<< "$line")
        COUNT[$d]=$("$PY" -c "import math; n=max(math.ceil($rate*$RUN_SECONDS/3)*3, 3*$c, 30); print(min(n, $MAX_COUNT))")
        echo "calibrate $d C=$c: $line -> count ${COUNT[$d]}" >&2
    done
    for r in $(seq "$RUNS"); do
        for d in "${NAMES[@]}"; do
            bp=$(bridge_pid "$d")
            b0=0; [ -n "$bp" ] && b0=$(cpu_ticks "$bp")
            n0=$(cpu_ticks "$NORMAL_PID")
            line=$(load "$d" "$c" "${COUNT[$d]}")
            n1=$(cpu_ticks "$NORMAL_PID")
            b1=0; [ -n "$bp" ] && b1=$(cpu_ticks "$bp")
            echo "run $r $d C=$c: $line" >&2
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$d" "$c" "$r" "${COUNT[$d]}" "$line" $((b1 - b0)) $((n1 - n0)) >> "$RAW"
        done
    done
done
for p in "$SPAM_PID" $OLD_PID "$PROXYW_PID" "$NORMAL_PID"; do
    printf '%s %s VmRSS %s kB VmHWM %s kB Threads %s\n' "$p" "$(tr '\0' ' ' < "/proc/$p/cmdline" | cut -c1-40)" \
        "$(awk '$1=="VmRSS:"{print $2}' "/proc/$p/status")" "$(awk '$1=="VmHWM:"{print $2}' "/proc/$p/status")" \
        "$(awk '$1=="Threads:"{print $2}' "/proc/$p/status")"
done > "$SCRATCH/mem.txt"
echo "DNS queries Rspamd sent to the stub during the whole run: $(wc -l < "$SCRATCH/dns-stub.log" 2>/dev/null || echo 0)" \
    > "$SCRATCH/dns.txt"

"$PY" - "$RAW" "$(getconf CLK_TCK)" <<'EOF'
import csv, re, statistics, sys
raw, hz = sys.argv[1], int(sys.argv[2])
pat = re.compile(r"(\d+) messages in ([\d.]+) s .*?: ([\d.]+) msg/s, p50 ([\d.]+) ms, p90 ([\d.]+) ms, "
                 r"p99 ([\d.]+) ms, (\d+) errors, (\d+) accepted, (\d+) modified.*client cpu (\d+)")
runs, per_run = {}, {}
for row in csv.DictReader(open(raw), delimiter="\t"):
    m = pat.search(row["line"])
    if not m:
        sys.exit(f"unparsable line: {row['line']}")
    n, _, rate, p50, _, p99, err, acc, mod, ccpu = m.groups()
    n, err = int(n), int(err)
    if err or int(acc) != n:
        sys.exit(f"{row['name']} C={row['C']}: {err} errors, {acc}/{n} accepted: {row['line']}")
    name, c, r = row["name"], int(row["C"]), int(row["run"])
    client_us = int(ccpu) / n if name != "direct" else int(ccpu)
    rec = dict(rate=float(rate), p50=float(p50), p99=float(p99), n=n,
               bridge=int(row["bridge_ticks"]) * 1e6 / hz / n, normal=int(row["normal_ticks"]) * 1e6 / hz / n,
               client=client_us)
    runs.setdefault((name, c), []).append(rec)
    per_run[(name, c, r)] = rec
med = lambda xs: statistics.median(xs)
levels = sorted({c for _, c in runs})
label = {"spam-milter": "spam-milter", "spam-milter-old": "spam-milter-old (SPAM_MILTER_OLD)",
         "rspamd_proxy": "rspamd_proxy", "direct": "direct /checkv2 (floor)"}
print("| path | C | msg/s | p50 ms | p99 ms | added p50 over floor ms | added p99 ms | bridge CPU µs/msg | normal worker CPU µs/msg | client CPU µs/msg | count × runs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name in [n for n in label if any(x == n for x, _ in runs)]:
    for c in levels:
        v = runs[(name, c)]
        rs = sorted({r for (x, cc, r) in per_run if x == name and cc == c})
        if name == "direct":
            add50 = add99 = "–"
        else:
            add50 = f"{med([per_run[(name, c, r)]['p50'] - per_run[('direct', c, r)]['p50'] for r in rs]):.2f}"
            add99 = f"{med([per_run[(name, c, r)]['p99'] - per_run[('direct', c, r)]['p99'] for r in rs]):.2f}"
        bridge = "–" if name == "direct" else f"{med([x['bridge'] for x in v]):.0f}"
        print(f"| {label[name]} | {c} | {med([x['rate'] for x in v]):.0f} | {med([x['p50'] for x in v]):.2f} | "
              f"{med([x['p99'] for x in v]):.2f} | {add50} | {add99} | {bridge} | {med([x['normal'] for x in v]):.0f} | "
              f"{med([x['client'] for x in v]):.0f} | {v[0]['n']} × {len(v)} |")
print()
print("| ratio (median of per-round ratios) | C | msg/s spam-milter / rspamd_proxy | p50 | p99 | added p50 spam-milter / rspamd_proxy | msg/s spam-milter / floor | msg/s rspamd_proxy / floor | bridge CPU spam-milter / rspamd_proxy |")
print("|---|---|---|---|---|---|---|---|---|")
for c in levels:
    rs = sorted({r for (x, cc, r) in per_run if x == "direct" and cc == c})
    S = [per_run[("spam-milter", c, r)] for r in rs]
    P = [per_run[("rspamd_proxy", c, r)] for r in rs]
    D = [per_run[("direct", c, r)] for r in rs]
    q = lambda k, a, b: med([x[k] / y[k] for x, y in zip(a, b) if y[k]])
    add = med([(s["p50"] - d["p50"]) / (p["p50"] - d["p50"]) for s, p, d in zip(S, P, D) if p["p50"] != d["p50"]]) \
        if any(p["p50"] != d["p50"] for p, d in zip(P, D)) else float("nan")
    print(f"| | {c} | {q('rate', S, P):.2f} | {q('p50', S, P):.3f} | {q('p99', S, P):.3f} | {add:.2f} | "
          f"{q('rate', S, D):.2f} | {q('rate', P, D):.2f} | {q('bridge', S, P):.2f} |")
if any(x == "spam-milter-old" for x, _ in runs):
    print()
    print("| new vs old (median of per-round ratios) | C | msg/s new / old | p50 | p99 | added p50 new / old | added p50 old / rspamd_proxy | bridge CPU new / old | bridge CPU old / rspamd_proxy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in levels:
        rs = sorted({r for (x, cc, r) in per_run if x == "direct" and cc == c})
        S = [per_run[("spam-milter", c, r)] for r in rs]
        O = [per_run[("spam-milter-old", c, r)] for r in rs]
        P = [per_run[("rspamd_proxy", c, r)] for r in rs]
        D = [per_run[("direct", c, r)] for r in rs]
        q = lambda k, a, b: med([x[k] / y[k] for x, y in zip(a, b) if y[k]])
        def addr(a, b):
            v = [(x["p50"] - d["p50"]) / (y["p50"] - d["p50"]) for x, y, d in zip(a, b, D) if y["p50"] != d["p50"]]
            return med(v) if v else float("nan")
        print(f"| | {c} | {q('rate', S, O):.2f} | {q('p50', S, O):.3f} | {q('p99', S, O):.3f} | {addr(S, O):.2f} | "
              f"{addr(O, P):.2f} | {q('bridge', S, O):.2f} | {q('bridge', O, P):.2f} |")
EOF
cat "$SCRATCH/mem.txt" "$SCRATCH/dns.txt"

if [ -n "${PROFILE:-}" ]; then
    # perf on spam-milter during one more C=16 run (call graphs; the release profile keeps debug = 1).
    perf record --call-graph dwarf,16384 -F 999 -p "$SPAM_PID" -o "$SCRATCH/perf.data" -- sleep 600 > "$SCRATCH/perf-record.log" 2>&1 &
    PERF_PID=$!
    sleep 1
    echo "profiled run: $(load spam-milter 16 $(( ${COUNT[spam-milter]:-1000} * 2 )))" >&2
    kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
    perf report -i "$SCRATCH/perf.data" --stdio --no-children --sort dso,sym 2>/dev/null \
        | grep -v '^$' | head -120 > "$SCRATCH/perf-report.txt" || true
    perf report -i "$SCRATCH/perf.data" --stdio --no-children --sort dso 2>/dev/null \
        | grep '%' | head -20 > "$SCRATCH/perf-dso.txt" || true
    # Inclusive time per function (where the user-space time goes, callers included).
    perf report -i "$SCRATCH/perf.data" --stdio --children --sort sym -g none 2>/dev/null \
        | grep '%' | head -80 > "$SCRATCH/perf-children.txt" || true
    echo "perf: $SCRATCH/perf-report.txt, $SCRATCH/perf-dso.txt, $SCRATCH/perf-children.txt" >&2
fi
echo "scratch (raw runs, configs, logs, verdicts): $SCRATCH" >&2
