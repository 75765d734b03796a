#!/usr/bin/env bash
# Case 2 of issue 11, "Verifying": inbound mail signed beforehand by dkimpy (RSA-2048, key
# published in a loopback DNS stub, tests/bench/dns_stub.py) through dkim-milter and OpenDKIM,
# both in verify mode and both resolving through that stub only (dkim-milter `dns-servers`,
# OpenDKIM `Nameservers 127.0.0.1@PORT`). TCP; 4 KB and 100 KB; long sessions and a connection
# per message (the matrix reduced from the signing case: no unix sockets). Writes
# $BENCH_OUT/verify.md and verify.csv.
set -euo pipefail
# shellcheck source=../lib.sh
source "$HERE/lib.sh"
bench_case verify
# shellcheck source=dkim-common.sh
source "$HERE/cases/dkim-common.sh"

# Not under .test: OpenDKIM's libunbound answers the RFC 6761 names itself, without asking the
# stub (tests/src/opendkim.rs), so the signing domain is bench.example.
DOMAIN=bench.example
make_key "$DOMAIN"
DNS_PORT=$(free_port)
start_bg dns-stub "$PY" "$HERE/dns_stub.py" "$DNS_PORT" "$SCRATCH/zone.txt" "$SCRATCH/dns-queries.log"
for _ in $(seq 100); do grep -q "^dns_stub: 127.0.0.1" "$SCRATCH/dns-stub.log" && break; sleep 0.1; done
grep -q "^dns_stub: 127.0.0.1" "$SCRATCH/dns-stub.log" || die "dns stub did not start: $(cat "$SCRATCH/dns-stub.log")"

# Inbound mail: the bench messages signed by dkimpy (relaxed/simple, d=bench.example), arriving
# from an outside client (192.0.2.10), so neither daemon would take it for outbound.
for size in 4k 100k; do
    mkdir -p "$SCRATCH/in/$size"
    "$PY" - "$MSGS/$size/$size.eml" "$SCRATCH/keys/$DOMAIN/bench.private" "$DOMAIN" \
        "$SCRATCH/in/$size/$size.eml" <<'EOF'
import dkim, sys
src, key, domain, out = sys.argv[1:]
msg = open(src, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
sig = dkim.sign(msg, b"bench", domain.encode(), open(key, "rb").read(),
                canonicalize=(b"relaxed", b"simple"),
                include_headers=[b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
                                 b"content-type", b"content-transfer-encoding"])
open(out, "wb").write(sig + msg)
EOF
    cat > "$SCRATCH/in/$size/$size.eml.json" <<'EOF'
{"client_addr": "192.0.2.10", "client_name": "mx.remote.example", "helo": "mx.remote.example",
 "sender": "alice@bench.example", "recipients": ["bob@example.net"]}
EOF
    dkimpy_verify "$SCRATCH/zone.txt" "$SCRATCH/in/$size/$size.eml" > /dev/null \
        || die "dkimpy does not verify its own $size signature"
done

ODK_PORT=$(free_port); DKM_PORT=$(free_port)
SPEC_ODK="inet:127.0.0.1:$ODK_PORT"; SPEC_DKM="inet:127.0.0.1:$DKM_PORT"
cat > "$SCRATCH/opendkim-verify.conf" <<EOF
Syslog no
Background no
Mode v
Socket inet:$ODK_PORT@127.0.0.1
PidFile $SCRATCH/opendkim-verify.pid
UMask 022
Nameservers 127.0.0.1@$DNS_PORT
EOF
# keys-dir is required by the config; it holds the one key (verify mode does not sign).
dkim_milter_conf dkim-milter-verify verify "$SPEC_DKM" "dns-servers = [\"127.0.0.1:$DNS_PORT\"]"
start_bg opendkim-verify /usr/sbin/opendkim -f -x "$SCRATCH/opendkim-verify.conf"
ODK_PID=$LAST_PID; wait_ready "$SPEC_ODK" "$ODK_PID" opendkim-verify
start_dkim_milter dkim-milter-verify "$SPEC_DKM"; DKM_PID=$LAST_PID

# Both verifiers say pass on every message before the load (their Authentication-Results).
CHECK="$SCRATCH/check.txt"
: > "$CHECK"
for d in opendkim dkim-milter; do
    spec=$SPEC_ODK; [ $d = dkim-milter ] && spec=$SPEC_DKM
    for size in 4k 100k; do
        out=$(timeout 60 "$BIN/milter-replay" --milter "$spec" "$SCRATCH/in/$size/$size.eml") \
            || die "$d on $size: $out"
        ar=$(grep -i 'authentication-results' <<< "$out" | head -1 | sed 's/^ *//')
        grep -q 'dkim=pass' <<< "$ar" || die "$d does not say dkim=pass on $size: $out"
        echo "| $d | $size | \`${ar//|/\\|}\` |" >> "$CHECK"
    done
done
Q0=$(wc -l < "$SCRATCH/dns-queries.log")

for mode in long conn; do
    args=""; [ $mode = conn ] && args="--connection-per-message"
    for size in 4k 100k; do
        add_series "dkim-milter tcp $mode $size" "$SPEC_DKM" "$DKM_PID" "$SCRATCH/in/$size/$size.eml" $args
        add_series "opendkim tcp $mode $size" "$SPEC_ODK" "$ODK_PID" "$SCRATCH/in/$size/$size.eml" $args
        echo "verify: tcp $mode $size" >&2
        rotate "tcp $mode $size" "dkim-milter tcp $mode $size" "opendkim tcp $mode $size"
    done
done
Q1=$(wc -l < "$SCRATCH/dns-queries.log")

PAIRS=()
for mode in long conn; do for size in 4k 100k; do
    PAIRS+=("dkim-milter tcp $mode $size=opendkim tcp $mode $size")
done; done
summarise --all-modified "${PAIRS[@]}" > "$SCRATCH/tables.md"

{
    echo "## Verifying: dkim-milter vs OpenDKIM"
    echo
    echo "Inbound mail signed beforehand by dkimpy (RSA-2048, relaxed/simple, d=$DOMAIN), the key"
    echo "published in a loopback DNS stub (tests/bench/dns_stub.py) that both verifiers use alone:"
    echo "dkim-milter \`mode = \"verify\"\`, \`dns-servers = [\"127.0.0.1:PORT\"]\`; OpenDKIM \`Mode v\`,"
    echo "\`Nameservers 127.0.0.1@PORT\`; neither logs per message; no result cache configured on either"
    echo "side beyond their defaults. TCP only; 4 KB and 100 KB; \`long\` sessions and \`conn\` (a"
    echo "connection per message). Levels $LEVELS, $RUNS rounds of about $RUN_SECONDS s, alternating."
    echo "DNS queries the stub answered during the load: $((Q1 - Q0)) (for every message, the number"
    echo "depends on each verifier's caching). Only the in-run ratios mean anything (shared machine)."
    echo
    echo "Both verifiers before the load (the Authentication-Results each adds):"
    echo
    echo "| verifier | message | header |"
    echo "|---|---|---|"
    cat "$CHECK"
    echo
    cat "$SCRATCH/tables.md"
    echo
    echo "Memory after the load:"
    echo
    echo "| daemon | VmRSS MiB | VmHWM MiB | threads |"
    echo "|---|---|---|---|"
    mem_line opendkim "$ODK_PID"
    mem_line dkim-milter "$DKM_PID"
} > "$BENCH_OUT/verify.md"
echo "verify: $BENCH_OUT/verify.md" >&2
