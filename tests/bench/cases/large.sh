#!/usr/bin/env bash
# Case 3 of issue 11, "Large mail": one 50 MB message (LARGE_MB; 5 in a smoke) signed by
# dkim-milter and by OpenDKIM, and each signed copy verified by both verifiers (dkim-milter
# verify mode, OpenDKIM Mode v, through the loopback DNS stub). VmRSS/VmHWM of every daemon
# before and after; target: the message adds < 8 MB to ours. Fresh daemons, so VmHWM before is
# the start-up peak. Writes $BENCH_OUT/large.md (no CSV rows: no concurrency axis here).
set -euo pipefail
# shellcheck source=../lib.sh
source "$HERE/lib.sh"
bench_case large
# shellcheck source=dkim-common.sh
source "$HERE/cases/dkim-common.sh"

MB=${LARGE_MB:-50}; [ -n "$SMOKE" ] && MB=${LARGE_MB:-5}
DOMAIN=bench.example   # not .test: see verify.sh
make_key "$DOMAIN"
printf 'bench._domainkey.%s %s:bench:%s\n' "$DOMAIN" "$DOMAIN" "$SCRATCH/keys/$DOMAIN/bench.private" > "$SCRATCH/KeyTable"
printf '*@%s bench._domainkey.%s\n' "$DOMAIN" "$DOMAIN" > "$SCRATCH/SigningTable"

# The message: headers as the bench messages, a base64 attachment up to MB megabytes.
mkdir -p "$SCRATCH/msg"
"$PY" - "$SCRATCH/msg/large.eml" "$MB" "$DOMAIN" <<'EOF'
import base64, os, sys
out, mb, domain = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(out, "wb") as f:
    f.write((f"From: Alice <alice@{domain}>\nTo: bob@example.net\nSubject: large attachment\n"
             f"Date: Sat, 28 Nov 2026 10:15:01 +0000\nMessage-ID: <large.{mb}@{domain}>\nMIME-Version: 1.0\n"
             "Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\nSee attached.\n\n"
             "--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n").encode())
    block = base64.encodebytes(os.urandom(57 * 1024))  # 1024 lines of 76 characters
    for _ in range(mb * 1024 * 1024 // len(block)):
        f.write(block)
    f.write(b"--b1--\n")
EOF
cat > "$SCRATCH/msg/large.eml.json" <<EOF
{"client_addr": "127.0.0.1", "client_name": "localhost", "helo": "client.example.test",
 "sender": "alice@$DOMAIN", "recipients": ["bob@example.net"]}
EOF
SIZE=$(stat -c %s "$SCRATCH/msg/large.eml")

DNS_PORT=$(free_port)
start_bg dns-stub "$PY" "$HERE/dns_stub.py" "$DNS_PORT" "$SCRATCH/zone.txt" "$SCRATCH/dns-queries.log"
for _ in $(seq 100); do grep -q "^dns_stub: 127.0.0.1" "$SCRATCH/dns-stub.log" && break; sleep 0.1; done

declare -A SPEC PID
for d in opendkim-sign dkim-milter-sign opendkim-verify dkim-milter-verify; do
    SPEC[$d]="inet:127.0.0.1:$(free_port)"
done
opendkim_conf opendkim-sign s "inet:${SPEC[opendkim-sign]##*:}@127.0.0.1"
opendkim_conf opendkim-verify v "inet:${SPEC[opendkim-verify]##*:}@127.0.0.1" "Nameservers 127.0.0.1@$DNS_PORT"
dkim_milter_conf dkim-milter-sign sign "${SPEC[dkim-milter-sign]}"
dkim_milter_conf dkim-milter-verify verify "${SPEC[dkim-milter-verify]}" "dns-servers = [\"127.0.0.1:$DNS_PORT\"]"
for d in opendkim-sign opendkim-verify; do start_opendkim "$d" "${SPEC[$d]}"; PID[$d]=$LAST_PID; done
for d in dkim-milter-sign dkim-milter-verify; do start_dkim_milter "$d" "${SPEC[$d]}"; PID[$d]=$LAST_PID; done
sleep 0.5
declare -A RSS0 HWM0
for d in "${!PID[@]}"; do RSS0[$d]=$(status_kib "${PID[$d]}" VmRSS); HWM0[$d]=$(status_kib "${PID[$d]}" VmHWM); done

STEPS="$SCRATCH/steps.md"
: > "$STEPS"
step() { # DAEMON FILE WHAT -> a table row; the message must be accepted and modified
    local d=$1 f=$2 what=$3 t0 t1 out
    t0=$(date +%s.%N)
    out=$(timeout 300 "$BIN/milter-replay" --milter "${SPEC[$d]}" --out "$SCRATCH/out-$d-$what" "$f") \
        || die "$d on the large message ($what): $out"
    t1=$(date +%s.%N)
    grep -q ': accept at EOM' <<< "$out" || die "$d did not accept the large message ($what): $out"
    echo "$out" > "$SCRATCH/replay-$d-$what.txt"
    printf '| %s | %s | %.1f s | %s |\n' "$d" "$what" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
        "$(grep -o 'add header [A-Za-z-]*\|insert header at [0-9]* [A-Za-z-]*' <<< "$out" | head -1)" >> "$STEPS"
}
for d in dkim-milter-sign opendkim-sign; do
    step "$d" "$SCRATCH/msg/large.eml" sign
    dkimpy_verify "$SCRATCH/zone.txt" "$SCRATCH/out-$d-sign/large.eml" > "$SCRATCH/dkimpy-$d.txt" \
        || die "dkimpy: $d's signature on the large message: $(cat "$SCRATCH/dkimpy-$d.txt")"
done
for v in dkim-milter-verify opendkim-verify; do
    for s in dkim-milter-sign opendkim-sign; do
        # Inbound: from an outside client (OpenDKIM skips mail from its InternalHosts).
        cat > "$SCRATCH/out-$s-sign/large.eml.json" <<EOF
{"client_addr": "192.0.2.10", "client_name": "mx.remote.example", "helo": "mx.remote.example",
 "sender": "alice@$DOMAIN", "recipients": ["bob@example.net"]}
EOF
        step "$v" "$SCRATCH/out-$s-sign/large.eml" "verify-$s"
        grep -q 'dkim=pass' "$SCRATCH/replay-$v-verify-$s.txt" \
            || die "$v does not say dkim=pass on $s's large message: $(cat "$SCRATCH/replay-$v-verify-$s.txt")"
    done
done

"$PY" - "$SIZE" > "$SCRATCH/mem.md" <<EOF
import sys
size = int(sys.argv[1])
rows = [
$(for d in dkim-milter-sign opendkim-sign dkim-milter-verify opendkim-verify; do
    echo "    ('$d', ${RSS0[$d]}, ${HWM0[$d]}, $(status_kib "${PID[$d]}" VmRSS), $(status_kib "${PID[$d]}" VmHWM)),"
done)
]
print(f"Message: {size / 1048576:.1f} MiB ({size} bytes).")
print()
print("| daemon | VmRSS before MiB | VmHWM before MiB | VmRSS after MiB | VmHWM after MiB | peak added (VmHWM after − before) MiB | target < 8 MB added |")
print("|---|---|---|---|---|---|---|")
for name, r0, h0, r1, h1 in rows:
    added = (h1 - h0) * 1024
    verdict = ("**met**" if added < 8e6 else "**missed**") if name.startswith("dkim-milter") else "(anchor)"
    print(f"| {name} | {r0 / 1024:.1f} | {h0 / 1024:.1f} | {r1 / 1024:.1f} | {h1 / 1024:.1f} | {(h1 - h0) / 1024:.1f} | {verdict} |")
EOF

{
    echo "## Large mail: a $MB MB message signed and verified"
    echo
    echo "One message of $MB MB (a base64 attachment; From alice@$DOMAIN) through fresh daemons over"
    echo "TCP: signed once by each signer (same key, same settings as the signing case; dkimpy checks"
    echo "both outputs), then each signed copy verified by each verifier (the verify case's setup:"
    echo "loopback DNS stub). VmRSS/VmHWM from /proc before the first message and after the last;"
    echo "the target counts the peak's growth (VmHWM after − before). Times are single messages on a"
    echo "shared machine, for orientation only."
    echo
    echo "| daemon | step | time | what it added |"
    echo "|---|---|---|---|"
    cat "$STEPS"
    echo
    cat "$SCRATCH/mem.md"
} > "$BENCH_OUT/large.md"
# The message and its signed copies are large: keep only what explains the figures.
rm -rf "$SCRATCH/msg" "$SCRATCH"/out-*
echo "large: $BENCH_OUT/large.md" >&2
