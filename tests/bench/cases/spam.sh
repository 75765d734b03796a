#!/usr/bin/env bash
# Case 4 of issue 11, "Spam bridge", in the shared layout: runs tests/bench/spam.sh (its logic,
# knobs and method are there; SPAM_LEVELS defaults to run.sh's LEVELS) with the binaries run.sh
# built, and turns its stdout into $BENCH_OUT/spam.md and its first table into spam.csv.
set -euo pipefail
OUT="$BENCH_OUT/spam"
mkdir -p "$OUT"
SKIP_BUILD=1 bash "$HERE/spam.sh" > "$OUT/stdout.md" 2> "$OUT/stderr.txt" \
    || { tail -30 "$OUT/stderr.txt" >&2; echo "spam: tests/bench/spam.sh failed" >&2; exit 1; }
/usr/bin/python3 - "$OUT/stdout.md" "$BENCH_OUT/spam.csv" <<'PY'
import csv, sys
rows = []
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    # The first table: | path | C | msg/s | p50 ms | p99 ms | ...
    if len(cells) > 5 and cells[0] in ("spam-milter", "rspamd_proxy", "direct /checkv2 (floor)") and cells[1].isdigit():
        rows.append(["spam", cells[0], cells[1], cells[2], cells[3], cells[4]])
if not rows:
    sys.exit("spam: no table rows in spam.sh's output")
with open(sys.argv[2], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["case", "series", "concurrency", "msgs_per_s", "p50_ms", "p99_ms"])
    w.writerows(rows)
PY
{
    echo "## Spam bridge: spam-milter vs rspamd_proxy"
    echo
    echo "tests/bench/spam.sh (method: BENCHMARKS.md, \"Spam bridge\"), levels ${SPAM_LEVELS:-1 16 64},"
    echo "$RUNS rounds. Scratch: $(sed -n 's/^scratch[^:]*: //p' "$OUT/stderr.txt" | tail -1)."
    echo
    echo '```text'
    # The verdict check and OPTNEG lines are fixed-width text, not markdown.
    sed -n '1,/^OPTNEG rspamd_proxy/p' "$OUT/stdout.md"
    echo '```'
    echo
    sed -n '/^OPTNEG rspamd_proxy/,$p' "$OUT/stdout.md" | tail -n +2 | sed 's/^\([0-9][0-9]* \/.*VmRSS.*\)$/- \1/; s/^\(DNS queries.*\)$/- \1/'
} > "$BENCH_OUT/spam.md"
