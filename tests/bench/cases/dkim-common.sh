# Shared by the DKIM cases (sign, verify, large); sourced after lib.sh and bench_case.
# One RSA-2048 key (opendkim-genkey layout: $SCRATCH/keys/DOMAIN/bench.private + bench.txt) and
# the zone files the verifiers read: "$SCRATCH/zone.txt" for dkimpy ("name TXT-value").

for b in /usr/sbin/opendkim /usr/sbin/opendkim-genkey /usr/bin/openssl "$PY"; do
    [ -x "$b" ] || { echo "$CASE: $b missing (tests/stack/install-deps.sh installs it)" >&2; exit 2; }
done
for b in dkim-milter milter-replay; do
    [ -x "$BIN/$b" ] || { echo "$CASE: $BIN/$b not built" >&2; exit 2; }
done

make_key() { # DOMAIN -> key in $SCRATCH/keys/DOMAIN/bench.private, TXT line appended to zone.txt
    local dir="$SCRATCH/keys/$1"
    mkdir -p "$dir"
    /usr/sbin/opendkim-genkey -b 2048 -h sha256 -d "$1" -s bench -D "$dir"
    printf 'bench._domainkey.%s %s\n' "$1" \
        "$(tr -d '\n' < "$dir/bench.txt" | grep -o '"[^"]*"' | tr -d '"' | tr -d '\n')" >> "$SCRATCH/zone.txt"
}

# OpenDKIM and dkim-milter configs with the same key and settings. Both log nothing per
# message (OpenDKIM: Syslog no; dkim-milter: log-level warn).
opendkim_conf() { # NAME MODE SOCKET(opendkim syntax) [EXTRA LINES] -> $SCRATCH/NAME.conf
    local name=$1 mode=$2 sock=$3
    printf '127.0.0.1\n' > "$SCRATCH/InternalHosts"
    cat > "$SCRATCH/$name.conf" <<CONF
Syslog no
Background no
Mode $mode
Canonicalization relaxed/simple
OversignHeaders From
KeyTable file:$SCRATCH/KeyTable
SigningTable refile:$SCRATCH/SigningTable
InternalHosts refile:$SCRATCH/InternalHosts
RequireSafeKeys false
Socket $sock
PidFile $SCRATCH/$name.pid
UMask 022
${4:-}
CONF
}

dkim_milter_conf() { # NAME MODE SOCKET [EXTRA LINES] -> $SCRATCH/NAME.toml, checked
    cat > "$SCRATCH/$1.toml" <<CONF
socket = "$3"
mode = "$2"
keys-dir = "$SCRATCH/keys"
internal-hosts = ["127.0.0.1"]
canonicalization = "relaxed/simple"
oversign-headers = ["From"]
key-permissions = "ignore"
log-level = "warn"
# The benchmark runs as root; the daemon refuses that unless told (or given \`user\`).
allow-root = true
${4:-}
CONF
    "$BIN/dkim-milter" --config "$SCRATCH/$1.toml" --check-config > "$SCRATCH/$1.check.log" 2>&1 \
        || { cat "$SCRATCH/$1.check.log" >&2; die "dkim-milter --check-config refused $1.toml"; }
}

start_opendkim() { # NAME SPEC -> LAST_PID
    start_bg "$1" /usr/sbin/opendkim -f -x "$SCRATCH/$1.conf"
    wait_ready "$2" "$LAST_PID" "$1"
}

start_dkim_milter() { # NAME SPEC -> LAST_PID
    start_bg "$1" "$BIN/dkim-milter" --config "$SCRATCH/$1.toml"
    wait_ready "$2" "$LAST_PID" "$1"
}

mem_line() { # LABEL PID -> "| label | VmRSS MiB | VmHWM MiB | threads |"
    awk -v l="$1" '$1 == "VmRSS:" {r = $2} $1 == "VmHWM:" {h = $2} $1 == "Threads:" {t = $2}
        END {printf "| %s | %.1f | %.1f | %s |\n", l, r / 1024, h / 1024, t}' "/proc/$2/status"
}
