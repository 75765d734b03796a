#!/usr/bin/env bash
# The benchmark command (issue 11): every anchor side by side with ours, in one run.
#
#   bash tests/bench/run.sh                  # all cases, then prints every table
#   SMOKE=1 bash tests/bench/run.sh          # seconds per case: proves each still runs
#   WRITE_DOC=1 bash tests/bench/run.sh      # also writes BENCHMARKS.md's generated part + plots
#
# Knobs (environment): CASES="sign verify large spam library idle" (those that exist in
# cases/; a missing one is skipped with a note)  LEVELS="1 16 64"  RUNS=3  RUN_SECONDS=3
# MAX_COUNT=30000  SKIP_BUILD=1  CARGO_TARGET_DIR (the release binaries come from there).
#
# Builds the release binaries once, makes an output dir BENCH_OUT (mktemp in /tmp, printed),
# runs each case as `bash cases/NAME.sh` with BENCH_OUT BIN REPO HERE SMOKE LEVELS RUNS
# RUN_SECONDS in its environment. A case writes $BENCH_OUT/NAME.md (its section) and NAME.csv
# (case,series,concurrency,msgs_per_s,p50_ms,p99_ms) and keeps its scratch in $BENCH_OUT/NAME/.
# Everything listens on 127.0.0.1, every load is bounded by --count and `timeout`. Nothing
# asserts on timing: a case fails only when it breaks, and then this command fails.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN="$TARGET/release"
PY=/usr/bin/python3
CASES=${CASES:-"sign verify large spam library idle"}
SMOKE=${SMOKE:-}
if [ -n "$SMOKE" ]; then
    LEVELS=${LEVELS:-4}; RUNS=${RUNS:-1}; RUN_SECONDS=${RUN_SECONDS:-1}
else
    LEVELS=${LEVELS:-"1 16 64"}; RUNS=${RUNS:-3}; RUN_SECONDS=${RUN_SECONDS:-3}
fi
export HERE REPO BIN SMOKE LEVELS RUNS RUN_SECONDS
export MAX_COUNT=${MAX_COUNT:-30000}
# The spam case's own knobs follow the shared ones unless set.
export SPAM_LEVELS=${SPAM_LEVELS:-$LEVELS}
# A proxy in the environment must never see loopback traffic.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

if [ -z "${SKIP_BUILD:-}" ]; then
    # Every binary any case needs, in one cargo invocation.
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET" cargo build --release --ignore-rust-version \
        -p dkim-milter -p spam-milter -p milter-examples -p bench-milters -p milter-core --features milter-core/cli)
fi
[ -x "$BIN/milter-replay" ] || { echo "run.sh: $BIN/milter-replay not built" >&2; exit 2; }

BENCH_OUT=$(mktemp -d /tmp/milter-bench.XXXXXX)
export BENCH_OUT
echo "run.sh: output in $BENCH_OUT" >&2

RAN=()
FAILED=()
for c in $CASES; do
    script="$HERE/cases/$c.sh"
    if [ ! -f "$script" ]; then
        echo "run.sh: no case '$c' (tests/bench/cases/$c.sh does not exist); skipped" >&2
        echo "$c: skipped, tests/bench/cases/$c.sh does not exist" >> "$BENCH_OUT/skipped.txt"
        continue
    fi
    echo "run.sh: case $c" >&2
    t0=$(date +%s)
    if bash "$script" > "$BENCH_OUT/$c.log" 2>&1 && [ -s "$BENCH_OUT/$c.md" ]; then
        RAN+=("$c")
        echo "run.sh: case $c done in $(( $(date +%s) - t0 )) s" >&2
    else
        FAILED+=("$c")
        echo "run.sh: case $c FAILED after $(( $(date +%s) - t0 )) s; the end of its log:" >&2
        tail -30 "$BENCH_OUT/$c.log" >&2
    fi
done

# Plots of whatever CSVs exist (throughput, p50/p99 against concurrency, one set per case).
if [ ${#RAN[@]} -gt 0 ]; then
    "$PY" "$HERE/plot.py" "$BENCH_OUT" "${RAN[@]}" || FAILED+=("plots")
fi

[ -n "$SMOKE" ] && printf '\n**SMOKE run (a few messages per series, one round): it proves the cases run; its figures and target verdicts mean nothing.**\n'
for c in "${RAN[@]}"; do
    echo
    cat "$BENCH_OUT/$c.md"
done
[ -f "$BENCH_OUT/skipped.txt" ] && { echo; sed 's/^/- /' "$BENCH_OUT/skipped.txt"; }

if [ -n "${WRITE_DOC:-}" ] && [ ${#FAILED[@]} -eq 0 ]; then
    bash "$HERE/write-doc.sh" "$BENCH_OUT" "${RAN[@]}"
fi
echo >&2
echo "run.sh: output (sections, CSVs, SVGs, raw runs, logs) in $BENCH_OUT" >&2
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "run.sh: FAILED: ${FAILED[*]}" >&2
    exit 1
fi
