#!/usr/bin/env bash
# Case "idle" (issue #11 case 6; issue #10's target): RSS per idle negotiated connection.
# For each daemon and N in IDLE_NS (default "100 1000"): start it fresh, read VmRSS at rest,
# open N connections with `idle-hold` (OPTNEG, CONNECT, HELO each, as an MTA leaves a
# connection between SMTP commands), sample VmRSS while all N are held, then close and stop
# the daemon. RSS per connection = (VmRSS held - VmRSS at rest) / N, the median over RUNS
# fresh starts; daemons alternate within each round. rspamd_proxy is the exception: Rspamd
# takes seconds to start, so its proxy worker is measured warm (started once).
#
# Daemons: noop-milter-core, noop-indymilter, noop-libmilter (tests/bench/milters/), dkim-milter
# and OpenDKIM (signing, one RSA-2048 key, the configs of tests/bench/run.sh), spam-milter and
# rspamd_proxy (Rspamd's milter proxy worker; IDLE_RSPAMD=0 leaves both Rspamd rows out).
# spam-milter's upstream is a closed loopback port: idle connections never scan.
#
# Writes $BENCH_OUT/idle.md and $BENCH_OUT/idle.csv (the shared header only: this case has no
# throughput or latency series; the per-connection RSS is in the .md).
# Standalone: `bash tests/bench/cases/idle.sh`. Env: BENCH_OUT BIN REPO HERE SMOKE RUNS,
# IDLE_NS, IDLE_HOLD (seconds held, default 2), IDLE_RSPAMD, IDLE_DAEMONS. Nothing asserts on
# memory.
set -euo pipefail

HERE=${HERE:-$(cd "$(dirname "$0")/.." && pwd)}
REPO=${REPO:-$(cd "$HERE/../.." && pwd)}
BIN=${BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release}
PY=/usr/bin/python3
SMOKE=${SMOKE:-0}
RUNS=${RUNS:-3}
IDLE_NS=${IDLE_NS:-"100 1000"}
IDLE_HOLD=${IDLE_HOLD:-2}
IDLE_RSPAMD=${IDLE_RSPAMD:-1}
if [ "$SMOKE" = 1 ]; then
    RUNS=1; IDLE_NS=20; IDLE_HOLD=0.5; IDLE_RSPAMD=0
fi
if [ -z "${BENCH_OUT:-}" ]; then
    BENCH_OUT=$(mktemp -d /tmp/milter-bench.XXXXXX)
    echo "idle: output in $BENCH_OUT" >&2
fi
W="$BENCH_OUT/idle.work"
mkdir -p "$W"

# IDLE_DAEMONS: which of them (default all; rspamd_proxy also needs IDLE_RSPAMD=1).
IDLE_DAEMONS=${IDLE_DAEMONS:-"milter-core indymilter libmilter dkim-milter opendkim spam-milter rspamd_proxy"}
[[ " $IDLE_DAEMONS " == *" rspamd_proxy "* ]] || IDLE_RSPAMD=0
NEED=(idle-hold)
for d in $IDLE_DAEMONS; do
    case $d in
        milter-core) NEED+=(noop-milter-core) ;;
        indymilter) NEED+=(noop-indymilter) ;;
        dkim-milter | spam-milter) NEED+=("$d") ;;
    esac
done
if [ -z "${SKIP_BUILD:-}" ]; then
    for b in "${NEED[@]}"; do
        if [ ! -x "$BIN/$b" ]; then
            (cd "$REPO" && cargo build --release --ignore-rust-version -p bench-milters \
                -p dkim-milter -p spam-milter)
            break
        fi
    done
fi
for b in "${NEED[@]}"; do
    [ -x "$BIN/$b" ] || { echo "idle: $BIN/$b not built" >&2; exit 2; }
done
for b in /usr/sbin/opendkim /usr/sbin/opendkim-genkey /usr/include/libmilter/mfapi.h; do
    [ -e "$b" ] || { echo "idle: $b missing (tests/stack/install-deps.sh installs it)" >&2; exit 2; }
done
gcc -O2 -Wall -o "$W/noop-libmilter" "$HERE/milters/noop-libmilter.c" -lmilter -pthread

# 1,000 connections on each side of loopback, plus the daemons' own files: raise the soft
# limit to the hard one (at least 4096 needed for N = 1000).
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= 4096 )) || { echo "idle: RLIMIT_NOFILE $(ulimit -n) < 4096" >&2; exit 2; }

# The shared helpers (daemons stopped by pid on exit, stop_pid, free_port, wait_ready,
# /proc reads).
# shellcheck source=../lib.sh
source "$HERE/lib.sh"
bench_attach idle "$W"

# One RSA-2048 key and the signing configs of tests/bench/run.sh.
KEYDIR="$W/keys/example.test"
mkdir -p "$KEYDIR"
/usr/sbin/opendkim-genkey -b 2048 -h sha256 -d example.test -s bench -D "$KEYDIR"
printf '127.0.0.1\n' > "$W/InternalHosts"
printf 'bench._domainkey.example.test example.test:bench:%s\n' "$KEYDIR/bench.private" > "$W/KeyTable"
printf '*@example.test bench._domainkey.example.test\n' > "$W/SigningTable"
opendkim_conf() { # PORT
    cat <<EOF
Syslog no
Background no
Mode s
Canonicalization relaxed/simple
OversignHeaders From
KeyTable file:$W/KeyTable
SigningTable refile:$W/SigningTable
InternalHosts refile:$W/InternalHosts
RequireSafeKeys false
Socket inet:$1@127.0.0.1
PidFile $W/opendkim.pid
UMask 022
EOF
}
dkim_milter_conf() { # PORT
    cat <<EOF
socket = "inet:127.0.0.1:$1"
mode = "sign"
keys-dir = "$W/keys"
internal-hosts = ["127.0.0.1"]
canonicalization = "relaxed/simple"
oversign-headers = ["From"]
key-permissions = "ignore"
log-level = "warn"
max-connections = 4096
allow-root = true
EOF
}
spam_milter_conf() { # PORT CLOSED_PORT
    cat <<EOF
socket = "inet:127.0.0.1:$1"
log-level = "warn"
max-connections = 4096
reload-poll-seconds = 3600
allow-root = true
[rspamd]
upstreams = ["http://127.0.0.1:$2"]
EOF
}

# start NAME PORT -> sets STARTED_PID (the daemon itself: each branch execs it in the
# background subshell, so $! is the process whose RSS is measured).
start() {
    local name=$1 port=$2
    case $name in
        milter-core) RUST_LOG=warn exec "$BIN/noop-milter-core" --socket "inet:127.0.0.1:$port" ;;
        indymilter) exec "$BIN/noop-indymilter" --socket "inet:127.0.0.1:$port" ;;
        libmilter) exec "$W/noop-libmilter" --socket "inet:127.0.0.1:$port" ;;
        opendkim)
            opendkim_conf "$port" > "$W/opendkim.conf"
            exec /usr/sbin/opendkim -f -x "$W/opendkim.conf" ;;
        dkim-milter)
            dkim_milter_conf "$port" > "$W/dkim-milter.toml"
            exec "$BIN/dkim-milter" --config "$W/dkim-milter.toml" ;;
        spam-milter)
            spam_milter_conf "$port" "$(free_port)" > "$W/spam-milter.toml"
            exec "$BIN/spam-milter" --config "$W/spam-milter.toml" ;;
    esac </dev/null > "$W/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_port "$port" "$STARTED_PID" "$name"
}

# Rspamd, once (warm), its proxy worker in milter mode; config as tests/bench/spam.sh, no
# DNS stub: nothing is scanned here.
RSPAMD_PID=; PROXYW_PID=; PROXY_PORT=
if [ "$IDLE_RSPAMD" = 1 ] && [ -x /usr/bin/rspamd ]; then
    NORMAL_PORT=$(free_port); PROXY_PORT=$(free_port); CTL_PORT=$(free_port)
    RD="$W/rspamd"; L="$RD/etc/local.d"
    mkdir -p "$L" "$RD/run" "$RD/log" "$RD/db"
    printf 'bind_socket = "127.0.0.1:%s";\ncount = 1;\n' "$NORMAL_PORT" > "$L/worker-normal.inc"
    printf 'bind_socket = "127.0.0.1:%s";\n' "$CTL_PORT" > "$L/worker-controller.inc"
    printf 'bind_socket = "127.0.0.1:%s";\nmilter = yes;\ntimeout = 120s;\ncount = 1;\nupstream "local" {\n  default = yes;\n  hosts = "127.0.0.1:%s";\n}\n' \
        "$PROXY_PORT" "$NORMAL_PORT" > "$L/worker-proxy.inc"
    printf 'type = "file";\nfilename = "%s";\nlevel = "warning";\n' "$RD/log/rspamd.log" > "$L/logging.inc"
    printf 'dns {\n  nameserver = ["127.0.0.1"];\n  timeout = 0.3s;\n  retransmits = 1;\n}\n' > "$L/options.inc"
    for m in rbl asn hfilter fuzzy_check dkim_signing arc spf dkim dmarc multimap; do
        printf 'enabled = false;\n' > "$L/$m.conf"
    done
    /usr/bin/rspamd -f -u root -g root -c /etc/rspamd/rspamd.conf "--var=LOCAL_CONFDIR=$RD/etc" \
        "--var=DBDIR=$RD/db" "--var=RUNDIR=$RD/run" "--var=LOGDIR=$RD/log" \
        </dev/null > "$W/rspamd.log" 2>&1 &
    RSPAMD_PID=$!; PIDS+=("$RSPAMD_PID")
    wait_port "$PROXY_PORT" "$RSPAMD_PID" rspamd
    for _ in $(seq 100); do
        PROXYW_PID=$(ps -o pid=,args= --ppid "$RSPAMD_PID" | awk '/rspamd_proxy process/ {print $1; exit}')
        [ -n "$PROXYW_PID" ] && break; sleep 0.1
    done
    [ -n "$PROXYW_PID" ] || { echo "idle: rspamd_proxy worker not found" >&2; exit 1; }
    sleep 2 # settle: workers finish loading
fi

DAEMONS=()
for d in $IDLE_DAEMONS; do
    [ "$d" = rspamd_proxy ] && [ -z "$PROXYW_PID" ] && continue
    DAEMONS+=("$d")
done
RAW="$W/raw.tsv"
printf 'daemon\tN\trun\trest_kB\theld_kB\tthreads_rest\tthreads_held\tline\n' > "$RAW"
for r in $(seq "$RUNS"); do
    for n in $IDLE_NS; do
        for d in "${DAEMONS[@]}"; do
            if [ "$d" = rspamd_proxy ]; then
                pid=$PROXYW_PID; port=$PROXY_PORT
            else
                port=$(free_port); start "$d" "$port"; pid=$STARTED_PID
                sleep 0.5 # settle after start
            fi
            rest=$(status_kib "$pid" VmRSS); trest=$(status_kib "$pid" Threads)
            ready="$W/ready.$d.$n.$r"; rm -f "$ready"
            timeout 120 "$BIN/idle-hold" --milter "inet:127.0.0.1:$port" --connections "$n" \
                --hold "$IDLE_HOLD" --ready-file "$ready" > "$W/hold.out" 2> "$W/hold.err" &
            hold_pid=$!
            for _ in $(seq 1200); do [ -s "$ready" ] && break; kill -0 "$hold_pid" 2>/dev/null || break; sleep 0.05; done
            # Samples while held: the median is the figure (the daemon may still settle).
            samples=(); threads=0
            for _ in $(seq 5); do
                sleep "$("$PY" -c "print($IDLE_HOLD / 6)")"
                samples+=("$(status_kib "$pid" VmRSS)")
                t=$(status_kib "$pid" Threads); (( t > threads )) && threads=$t
            done
            held=$(printf '%s\n' "${samples[@]}" | sort -n | sed -n 3p)
            if ! wait "$hold_pid"; then
                echo "idle: $d N=$n: idle-hold failed: $(cat "$W/hold.out" "$W/hold.err")" >&2; exit 1
            fi
            line=$(cat "$W/hold.out")
            echo "idle: run $r $d N=$n: rest $rest kB, held $held kB: $line" >&2
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$d" "$n" "$r" "$rest" "$held" "$trest" "$threads" "$line" >> "$RAW"
            if [ "$d" != rspamd_proxy ]; then stop_pid "$pid"; fi
        done
    done
done

"$PY" - "$RAW" "$BENCH_OUT" "$RUNS" "$IDLE_HOLD" "$SMOKE" <<'EOF'
import csv, statistics, sys
raw, out, runs_n, hold, smoke = sys.argv[1:6]
rows = {}
for r in csv.DictReader(open(raw), delimiter="\t"):
    if not r["line"].startswith(f"held {r['N']} of {r['N']} "):
        sys.exit(f"idle: {r['daemon']} N={r['N']}: not every connection held: {r['line']}")
    rows.setdefault((r["daemon"], int(r["N"])), []).append(r)
order = ["milter-core", "indymilter", "libmilter", "dkim-milter", "opendkim", "spam-milter", "rspamd_proxy"]
ours = {"milter-core", "dkim-milter", "spam-milter"}
ns = sorted({n for _, n in rows})
per = {}
md = ["## Idle connections: RSS per negotiated idle connection", "",
      "Method: each daemon started fresh for every measurement (rspamd_proxy: Rspamd started once, "
      "its proxy worker measured warm), VmRSS read at rest after 0.5 s, then `idle-hold` "
      "(tests/bench/milters/) opens N connections on 127.0.0.1 one after another and negotiates each "
      "as Postfix does (OPTNEG with Postfix's offer, CONNECT, HELO, waiting for each reply that is due), "
      f"holds them {hold} s while VmRSS is sampled 5 times (median taken), checks every one is still "
      "open, and closes them. KiB/conn = (VmRSS held − VmRSS at rest) / N; figures are medians over "
      f"{runs_n} fresh starts, daemons alternating within each round. Memory figures depend little on the "
      "machine's load, but the ratios between daemons are what to compare.",
      "", "| daemon | N | VmRSS at rest MiB | VmRSS held MiB | KiB/conn | threads at rest / held | runs |",
      "|---|---|---|---|---|---|---|"]
if smoke == "1":
    md[2:2] = ["**SMOKE run: N = 20, one run; the figures prove only that the case works.**", ""]
for d in order:
    for n in ns:
        v = rows.get((d, n))
        if not v:
            continue
        rest = statistics.median(int(x["rest_kB"]) for x in v)
        held = statistics.median(int(x["held_kB"]) for x in v)
        kib = statistics.median((int(x["held_kB"]) - int(x["rest_kB"])) / n for x in v)
        per[(d, n)] = kib
        tr = statistics.median(int(x["threads_rest"]) for x in v)
        th = max(int(x["threads_held"]) for x in v)
        md.append(f"| {d} | {n} | {rest / 1024:.1f} | {held / 1024:.1f} | **{kib:.1f}** | {tr:.0f} / {th} | {len(v)} |")
missing = [d for d in order if not any(k[0] == d for k in per)]
if missing:
    md += ["", "Not measured in this run: " + ", ".join(missing) + "."]
verdict = []
for d in order:
    if d in ours:
        for n in ns:
            if (d, n) in per:
                verdict.append(f"{d} N={n}: {per[(d, n)]:.1f} KiB ({'met' if per[(d, n)] <= 4 else 'missed'})")
md += ["", "Target (issues #10, #11): at most 4 KiB of RSS per idle negotiated connection for the "
       "milter-core-based daemons: " + "; ".join(verdict) + "."]
ratios = []
for n in ns:
    if ("milter-core", n) in per and ("indymilter", n) in per and per[("indymilter", n)] > 0:
        ratios.append(f"N={n}: milter-core / indymilter {per[('milter-core', n)] / per[('indymilter', n)]:.2f}")
if ratios:
    md += ["", "In-run ratios of KiB/conn: " + "; ".join(ratios) + "."]
with open(f"{out}/idle.csv", "w") as f:
    # The shared plot header only: this case has no throughput or latency series (its
    # figures, RSS per connection, are in idle.md).
    f.write("case,series,concurrency,msgs_per_s,p50_ms,p99_ms\n")
open(f"{out}/idle.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
echo "idle: wrote $BENCH_OUT/idle.md and idle.csv (raw: $RAW)" >&2
