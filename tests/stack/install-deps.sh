#!/usr/bin/env bash
# Installs the Debian packages the mail-stack tests need (Debian 12, run as root).
# Idempotent and fast when everything is present: it only calls apt-get when a
# package is missing. Afterwards no stock daemon from these packages is left
# running: the tests start their own sandboxed instances on random loopback ports.
set -euo pipefail

PACKAGES=(
  postfix
  dovecot-core dovecot-imapd dovecot-pop3d
  opendkim opendkim-tools
  rspamd
  swaks libnet-ssleay-perl
  python3 python3-dkim python3-aiosmtpd python3-dnspython
  # tests/bench/plot.py draws the benchmark plots (SVG) with it.
  python3-matplotlib
  openssl ca-certificates
  procps iproute2
  # systemd-analyze: tests/tests/deploy_material.rs verifies the milters' units with it
  # (nothing is started: it only installs the tools in a container without an init).
  systemd
  # tests/bench/cases/library.sh builds its libmilter no-op against it (gcc -lmilter).
  libmilter-dev
)

log() { printf '[install-deps] %s\n' "$*"; }

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  log "all ${#PACKAGES[@]} packages present"
else
  if [[ $(id -u) -ne 0 ]]; then
    log "missing packages: ${missing[*]}; run this script as root" >&2
    exit 1
  fi
  log "installing: ${missing[*]}"
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Sendmail 8.17 for the local-submission tests (dkim-milter/tests/sendmail_local.rs):
# unpacked, never installed, so Postfix's sendmail command stays (tests/src/sendmail.rs
# downloads it itself when this cache is missing).
SENDMAIL_ROOT=/var/cache/stack-tests/sendmail-bin
if [[ ! -x $SENDMAIL_ROOT/usr/libexec/sendmail/sendmail && $(id -u) -eq 0 ]]; then
  log "unpacking sendmail-bin into $SENDMAIL_ROOT"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download sendmail-bin)
  dpkg-deb -x "$tmp"/sendmail-bin_*.deb "$tmp/root"
  mkdir -p "$(dirname "$SENDMAIL_ROOT")"
  mv "$tmp/root" "$SENDMAIL_ROOT"
  rm -rf "$tmp"
fi

# Stop any stock daemon a postinst may have started (only when there is no
# policy-rc.d preventing it, or on a system with a real init). Only the stock
# instances are targeted: by their stock pid files and by the stock config path.
stop_pid() { # name pid
  local name=$1 pid=$2
  [[ -n "$pid" && -d /proc/$pid ]] || return 0
  log "stopping stock $name (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    local state
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
    [[ "$state" == gone || "$state" == Z ]] && return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}
pidfile_pid() { [[ -r "$1" ]] && tr -dc '0-9' <"$1" || true; }

if [[ $(id -u) -eq 0 ]]; then
  if [[ -f /etc/postfix/main.cf ]] && postfix status >/dev/null 2>&1; then
    log "stopping stock postfix"; postfix stop >/dev/null 2>&1 || true
  fi
  stop_pid postfix "$(pidfile_pid /var/spool/postfix/pid/master.pid)"
  stop_pid dovecot "$(pidfile_pid /run/dovecot/master.pid)"
  stop_pid rspamd "$(pidfile_pid /run/rspamd/rspamd.pid)"
  stop_pid opendkim "$(pidfile_pid /run/opendkim/opendkim.pid)"
  # A stock daemon without a pid file: match on the exact stock command line.
  for pid in $(pgrep -x opendkim || true); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- '/etc/opendkim.conf'; then
      stop_pid opendkim "$pid"
    fi
  done
fi

# Fail loudly if a required binary is still absent.
for b in /usr/sbin/postfix /usr/sbin/sendmail /usr/sbin/postmap /usr/sbin/dovecot \
         /usr/sbin/opendkim /usr/sbin/opendkim-genkey /usr/bin/rspamd /usr/bin/swaks \
         /usr/bin/openssl /usr/bin/python3; do
  [[ -x "$b" ]] || { log "required binary $b missing after install" >&2; exit 1; }
done
/usr/bin/python3 -c 'import dkim, dns, aiosmtpd, matplotlib' || { log "python3 modules dkim/dns/aiosmtpd/matplotlib missing" >&2; exit 1; }
log "ok"
