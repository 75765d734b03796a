#!/usr/bin/env bash
# The main job: the designed mail stack on loopback, under one state directory
# (default /var/tmp/milter-stack; MILTER_STACK_DIR=DIR or --state-dir DIR for another).
#
#   Postfix MX role      127.0.0.1:2525  spam-milter -> Rspamd -> Maildir (Dovecot IMAPS 2993, POP3S 2995)
#   Postfix submission   127.0.0.1:2587  STARTTLS + SASL (Dovecot) -> spam-milter -> dkim-milter -> sink 2526
#
# Run as root (no sudo needed). It installs the missing Debian packages, builds the milters and
# the mail-stack binary, and runs it:
#
#   run-stack.sh [up]               bring the stack up; foreground until Ctrl-C (--detach: background)
#   run-stack.sh status | down      from any shell
#   run-stack.sh add-domain D | add-mailbox USER@D PASSWORD | add-alias FROM TO | remove-domain D
#   run-stack.sh --check            check every flow (on the running stack, or bring one up, check,
#                                   and take it down again); CI runs this
#
# status, down and the add-* commands skip the install and the build when the binaries exist.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

if [[ $(id -u) -ne 0 ]]; then
  echo "run-stack.sh: the stack runs real Postfix, Dovecot and Rspamd daemons: run it as root" >&2
  exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/debug"

quick=0
for a in "$@"; do
  case "$a" in
    status|down|add-domain|add-mailbox|add-alias|remove-domain|-h|--help|help) quick=1 ;;
  esac
done

if ((quick == 0)) || [[ ! -x "$BIN/mail-stack" || ! -x "$BIN/dkim-milter" || ! -x "$BIN/spam-milter" ]]; then
  "$ROOT/tests/stack/install-deps.sh"
  command -v cargo >/dev/null || { echo "run-stack.sh: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
  cargo build --ignore-rust-version -q -p dkim-milter -p spam-milter -p stack-tests --bins
fi
exec "$BIN/mail-stack" --dkim-milter "$BIN/dkim-milter" --spam-milter "$BIN/spam-milter" "$@"
