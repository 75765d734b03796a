# Helpers shared by the benchmark cases (tests/bench/cases/*.sh); sourced, not run.
#
# A case calls `bench_case NAME` first: it gets a scratch dir $SCRATCH under $BENCH_OUT, and
# every daemon it starts with `start_bg` is stopped on exit by pid (trap). Loads are driven by
# milter-replay's load mode only, every run bounded by --count and `timeout`, everything on
# 127.0.0.1. Nothing here asserts on timing: a case fails only when something breaks (a daemon
# does not start, a message errors, a signature does not verify).
#
# Environment (set by run.sh): BENCH_OUT BIN REPO HERE SMOKE LEVELS RUNS RUN_SECONDS.

PY=/usr/bin/python3
SMOKE=${SMOKE:-}
LEVELS=${LEVELS:-"1 16 64"}
RUNS=${RUNS:-3}
RUN_SECONDS=${RUN_SECONDS:-3}
MAX_COUNT=${MAX_COUNT:-30000}
MSGS="$HERE/messages"
HZ=$(getconf CLK_TCK)

bench_case() { # NAME
    CASE=$1
    SCRATCH="$BENCH_OUT/$CASE"
    mkdir -p "$SCRATCH"
    PIDS=()
    RAW="$SCRATCH/raw.tsv"
    printf 'group\tseries\tC\trun\tcount\tcpu_ticks\tline\n' > "$RAW"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_attach() { # NAME DIR: as bench_case, for a case that keeps its own scratch files in DIR
    CASE=$1
    SCRATCH=$2
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
}

stop_pid() { # PID: TERM, then KILL after 10 s (OpenDKIM takes a few seconds on SIGTERM)
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

die() { echo "$CASE: $*" >&2; exit 1; }

start_bg() { # NAME CMD... -> LAST_PID; log in $SCRATCH/NAME.log
    local name=$1; shift
    "$@" < /dev/null > "$SCRATCH/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # SPEC PID NAME: SPEC inet:127.0.0.1:PORT or unix:/path
    local spec=$1
    for _ in $(seq 300); do
        kill -0 "$2" 2>/dev/null || { cat "$SCRATCH/$3.log" >&2; die "$3 exited (log above)"; }
        case $spec in
            inet:*) (exec 3<>"/dev/tcp/127.0.0.1/${spec##*:}") 2>/dev/null && return 0 ;;
            unix:*) [ -S "${spec#unix:}" ] && return 0 ;;
        esac
        sleep 0.1
    done
    die "$3 did not open $spec"
}

wait_port() { wait_ready "inet:127.0.0.1:$1" "$2" "$3"; } # PORT PID NAME

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) exit 1; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# A series: one daemon on one socket with one message and one session mode.
declare -A S_SPEC S_PID S_MSG S_ARGS
add_series() { # NAME SPEC PID MESSAGE_FILE [REPLAY_ARGS...]
    local n=$1
    S_SPEC[$n]=$2 S_PID[$n]=$3 S_MSG[$n]=$4
    shift 4
    S_ARGS[$n]="$*"
}

replay_load() { # SERIES CONCURRENCY COUNT -> milter-replay's summary line
    local s=$1
    # shellcheck disable=SC2086 # S_ARGS holds whole flags
    timeout 600 "$BIN/milter-replay" --milter "${S_SPEC[$s]}" --concurrency "$2" --count "$3" \
        ${S_ARGS[$s]} "${S_MSG[$s]}" | sed -n 's/^concurrency [0-9]*: //p'
}

# The A B A B rotation: for each level, each series is calibrated (also its warm-up) to a count
# of about RUN_SECONDS, then RUNS rounds run every series once each, in turn. A smoke runs one
# round of a few messages per connection, no calibration.
rotate() { # GROUP SERIES...
    local group=$1 c s r line rate t0 t1; shift
    declare -A count
    for c in $LEVELS; do
        for s in "$@"; do
            if [ -n "$SMOKE" ]; then
                count[$s]=$(( c * 3 > 12 ? c * 3 : 12 ))
                continue
            fi
            line=$(replay_load "$s" "$c" $(( c * 6 > 30 ? c * 6 : 30 )))
            rate=$(sed -n 's/.* \([0-9.]*\) msg\/s.*/\1/p' <<< "$line")
            [ -n "$rate" ] || die "calibration of $s C=$c failed: $line"
            count[$s]=$("$PY" -c "import math; print(min(max(math.ceil($rate * $RUN_SECONDS), 3 * $c, 30), $MAX_COUNT))")
        done
        for r in $(seq "$RUNS"); do
            for s in "$@"; do
                t0=$(cpu_ticks "${S_PID[$s]}")
                line=$(replay_load "$s" "$c" "${count[$s]}") || true
                t1=$(cpu_ticks "${S_PID[$s]}")
                echo "  $s C=$c run $r: $line" >&2
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$group" "$s" "$c" "$r" "${count[$s]}" \
                    $((t1 - t0)) "$line" >> "$RAW"
            done
        done
    done
}

# Tables from $RAW: per-series medians, and OURS/THEIRS ratios (median of per-round ratios).
# Writes $BENCH_OUT/$CASE.csv and $SCRATCH/medians.json; prints markdown on stdout.
summarise() { # [OURS=THEIRS ...]
    "$PY" "$HERE/summary.py" "$RAW" "$HZ" "$CASE" "$BENCH_OUT/$CASE.csv" "$SCRATCH/medians.json" "$@"
}

# The machine's RSA-2048 signing rate, all cores and one; "SIGN_PER_S_ALL SIGN_PER_S_ONE".
rsa2048_speed() {
    local secs=2; [ -n "$SMOKE" ] && secs=1
    local all one
    all=$(openssl speed -seconds "$secs" -multi "$(nproc)" rsa2048 2>/dev/null | "$PY" "$HERE/summary.py" --openssl)
    one=$(openssl speed -seconds "$secs" rsa2048 2>/dev/null | "$PY" "$HERE/summary.py" --openssl)
    echo "$all $one"
}

# dkimpy's verdict on a signed file against a "name TXT-value" zone file: prints pass/fail.
dkimpy_verify() { # ZONE FILE
    "$PY" "$REPO/tests/stack/tools/dkim_verify.py" "$1" "$2"
}
