#!/usr/bin/env bash
# Bounded fuzzing, as CI runs it: builds every fuzz target once, runs each for a fixed
# time on a copy of its corpus, and fails on any crash, hang or allocation beyond the
# limits. See fuzz/README.md.
#
#   fuzz/run-bounded.sh                         # every target, 30 s each
#   FUZZ_SECONDS=600 fuzz/run-bounded.sh        # the longer run
#   FUZZ_TARGETS="mta_reply dkim_key" fuzz/run-bounded.sh
#   FUZZ_KEEP_CORPUS=1 fuzz/run-bounded.sh      # merge new inputs into fuzz/corpus/<target>
#
# Environment:
#   FUZZ_SECONDS      time per target (libFuzzer -max_total_time), default 30
#   FUZZ_TARGETS      targets to run, space-separated; default all (`cargo fuzz list`)
#   FUZZ_RSS_MB       memory limit (-rss_limit_mb, also the largest single malloc), 512
#   FUZZ_TIMEOUT      seconds one input may take (-timeout), 10
#   FUZZ_KEEP_CORPUS  1: merge what the run found (-merge=1, only inputs that add
#                     coverage) into fuzz/corpus/<target>; default 0 (the run's corpus is a
#                     temporary copy and is thrown away, so the repository stays clean)
#   FUZZ_BUILD_ONLY   1: build and stop
#
# Exit status: 0 when every target ran its time without a finding; 1 on any crash,
# timeout or out-of-memory (the artifact's path and the input in hex are printed); 2 when
# the build fails.
set -euo pipefail

FUZZ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECONDS_EACH="${FUZZ_SECONDS:-30}"
RSS_MB="${FUZZ_RSS_MB:-512}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"
KEEP="${FUZZ_KEEP_CORPUS:-0}"

say() { printf '[fuzz] %s\n' "$*"; }

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    say "cargo-fuzz missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz runs `cargo build` itself and has no --ignore-rust-version, which this
# workspace needs (mail-parser 1.0, under dkim-milter, declares rust-version 1.98; it
# builds with older compilers). A `cargo` first on PATH adds the flag to `build` and
# passes everything else through, so the build flags stay cargo-fuzz's own.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-bounded.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
REAL_CARGO="$(command -v cargo)"
export REAL_CARGO
mkdir -p "$WORK/bin"
cat >"$WORK/bin/cargo" <<'EOF'
#!/bin/sh
if [ "${1:-}" = build ]; then
    shift
    exec "$REAL_CARGO" build --ignore-rust-version "$@"
fi
exec "$REAL_CARGO" "$@"
EOF
chmod +x "$WORK/bin/cargo"

cd "$FUZZ"
say "build: RUSTC_BOOTSTRAP=1 cargo fuzz build (release, debug assertions, AddressSanitizer)"
build_start=$(date +%s)
if ! PATH="$WORK/bin:$PATH" RUSTC_BOOTSTRAP=1 cargo fuzz build; then
    say "build failed"
    exit 2
fi
say "build took $(($(date +%s) - build_start)) s"
if [ "${FUZZ_BUILD_ONLY:-0}" = 1 ]; then
    exit 0
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="$FUZZ/target/$triple/release"
read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"

# ASan's ODR check trips on Rust's duplicate symbols (cargo-fuzz sets the same).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

failed=()
summary=()
for t in "${targets[@]}"; do
    bin="$BIN_DIR/$t"
    if [ ! -x "$bin" ]; then
        say "$t: no binary at $bin"
        failed+=("$t")
        summary+=("$(printf '%-16s %12s  %s' "$t" - "not built")")
        continue
    fi
    corpus="$WORK/corpus/$t"
    mkdir -p "$corpus" "$FUZZ/artifacts/$t"
    seeds=0
    if [ -d "$FUZZ/corpus/$t" ]; then
        cp -R "$FUZZ/corpus/$t/." "$corpus/"
        seeds=$(find "$corpus" -type f | wc -l)
    fi
    log="$WORK/$t.log"
    say "$t: ${SECONDS_EACH}s from $seeds corpus files (rss ${RSS_MB} MB, timeout ${TIMEOUT}s)"
    start=$(date +%s)
    rc=0
    "$bin" "$corpus" \
        -max_total_time="$SECONDS_EACH" \
        -rss_limit_mb="$RSS_MB" \
        -malloc_limit_mb="$RSS_MB" \
        -timeout="$TIMEOUT" \
        -print_final_stats=1 \
        -artifact_prefix="$FUZZ/artifacts/$t/" \
        >"$log" 2>&1 || rc=$?
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    if [ -z "$execs" ]; then
        # No final stats (e.g. a crash on a seed): the last status line's count.
        execs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | sort -n | tail -n1 || true)
    fi
    execs="${execs:-0}"
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 | tr -dc '0-9' || true)
    added=$(($(find "$corpus" -type f | wc -l) - seeds))

    if [ "$rc" = 0 ]; then
        result="ok"
    elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then
        result="TIMEOUT"
    elif grep -qE 'ERROR: libFuzzer: (out-of-memory|malloc limit)' "$log"; then
        result="OUT-OF-MEMORY"
    elif grep -qE 'ERROR: (libFuzzer: deadly signal|AddressSanitizer)|panicked at' "$log"; then
        result="CRASH"
    else
        result="FAILED (exit $rc)"
    fi
    line="$(printf '%-16s %12s execs  %4ss  cov %-6s peak %-5s MB  +%-5s inputs  %s' \
        "$t" "$execs" "$took" "${cov:--}" "${rss:--}" "$added" "$result")"
    summary+=("$line")
    say "$line"

    if [ "$result" != ok ]; then
        failed+=("$t")
        cp "$log" "$FUZZ/artifacts/$t/last-failure.log"
        echo "----- $t: what libFuzzer reported (whole log: fuzz/artifacts/$t/last-failure.log) -----"
        grep -E -A2 'panicked at' "$log" | head -n 12 || true
        grep -E 'ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY:|^MS: |Test unit written' "$log" |
            head -n 8 || true
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        if [ -n "$artifact" ] && [ -f "$artifact" ]; then
            size=$(wc -c <"$artifact")
            echo "----- $t: artifact $artifact ($size bytes), hex: -----"
            od -An -tx1 -v "$artifact" | head -n 256
            if [ "$size" -gt 4096 ]; then echo "(hex cut at 4096 bytes)"; fi
            echo "replay: fuzz/target/$triple/release/$t $artifact"
        fi
        echo "----- $t: end -----"
    fi

    if [ "$KEEP" = 1 ]; then
        mkdir -p "$FUZZ/corpus/$t"
        before=$(find "$FUZZ/corpus/$t" -type f | wc -l)
        if ! "$bin" -merge=1 -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
            -timeout="$TIMEOUT" "$FUZZ/corpus/$t" "$corpus" >"$WORK/$t.merge.log" 2>&1; then
            say "$t: merge failed:"
            tail -n 20 "$WORK/$t.merge.log"
        fi
        after=$(find "$FUZZ/corpus/$t" -type f | wc -l)
        say "$t: kept $((after - before)) new inputs in fuzz/corpus/$t"
    fi
done

echo
say "summary (${SECONDS_EACH}s per target):"
for l in "${summary[@]}"; do echo "  $l"; done
if [ "${#failed[@]}" -gt 0 ]; then
    say "FAILED: ${failed[*]} (artifacts under fuzz/artifacts/<target>/)"
    exit 1
fi
say "all targets ran clean"
