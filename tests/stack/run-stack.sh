#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs the mail stack on loopback
# (Postfix MX + submission with Dovecot SASL, Dovecot IMAPS/POP3S, dkim-milter, a sink for
# remote mail) until Ctrl-C. `--check` instead sends mail through every flow, checks the
# results and exits (CI runs it that way).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
"$ROOT/tests/stack/install-deps.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --ignore-rust-version -q -p dkim-milter -p stack-tests --bins
exec "$CARGO_TARGET_DIR/debug/mail-stack" --dkim-milter "$CARGO_TARGET_DIR/debug/dkim-milter" "$@"
