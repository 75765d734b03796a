#!/usr/bin/env bash
# Runs every check of the workspace, as CI does: dependencies, formatting,
# lints, docs, all tests (including the real-daemon stack tests; needs root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> [run-all] %s\n' "$*"; }

step "install mail-stack dependencies (tests/stack/install-deps.sh)"
"$ROOT/tests/stack/install-deps.sh"

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --ignore-rust-version -- -D warnings

step "cargo doc --workspace --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --ignore-rust-version
RUSTDOCFLAGS="-D warnings" cargo doc -p milter-core --all-features --no-deps --ignore-rust-version

# milter-core's features compose: each builds alone and in the combinations users pick.
step "cargo check -p milter-core, one feature set at a time"
for features in "" server client metrics,server testing cli; do
    echo "  --no-default-features --features '$features'"
    cargo check -q -p milter-core --no-default-features --features "$features" --ignore-rust-version
done
cargo check -q -p milter-core --all-targets --all-features --ignore-rust-version

step "milter-core MSRV: dependencies' rust-version (clippy's incompatible_msrv ran above)"
python3 tests/scripts/check-msrv.py

# Needs the crates.io index (reachable from CI); on a clean clone nothing is dirty.
step "cargo publish --dry-run -p milter-core"
cargo publish --dry-run -p milter-core

# Each stack test starts its own daemons (rspamd alone ~260 MB PSS); on the
# 2-core CI machine more than a few at once only adds contention.
THREADS="${RUST_TEST_THREADS:-4}"
step "cargo test --workspace (RUST_TEST_THREADS=$THREADS)"
RUST_TEST_THREADS="$THREADS" cargo test --workspace --ignore-rust-version

# The test kit, the replay CLI and the fuzz hooks sit behind features that the workspace
# build does not turn on; their tests run here.
step "cargo test -p milter-core --all-features (testing kit, milter-replay, fuzz hooks)"
cargo test -p milter-core --all-features --ignore-rust-version

# Every fuzz target for a bounded time on a copy of its seed corpus; any crash, hang
# (-timeout) or allocation past the limit (-rss_limit_mb) fails. Longer runs and keeping
# the grown corpus: fuzz/README.md.
step "bounded fuzzing: fuzz/run-bounded.sh (FUZZ_SECONDS=${FUZZ_SECONDS:-30} per target)"
"$ROOT/fuzz/run-bounded.sh"

step "main job: tests/stack/run-stack.sh --check (the README's first command, every flow)"
"$ROOT/tests/stack/run-stack.sh" --check

# The benchmark command's smoke (issue 11): every case of tests/bench/cases/ once with tiny
# counts (one level, one round), so the command keeps working; a case that errors fails this,
# a slow one never (nothing asserts on timing). Builds release binaries in the same target dir.
step "benchmark smoke: SMOKE=1 tests/bench/run.sh"
SMOKE=1 bash "$ROOT/tests/bench/run.sh"

step "all checks passed"
