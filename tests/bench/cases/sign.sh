#!/usr/bin/env bash
# Case 1 of issue 11, "Signing": dkim-milter vs Debian's OpenDKIM, the same RSA-2048 key and
# settings, over TCP and over unix sockets (each daemon once per transport), 4 KB and 100 KB
# messages, long sessions and a new connection per message; the machine's RSA-2048 signing
# rate (`openssl speed`) in the same run. Run by tests/bench/run.sh (env: BENCH_OUT BIN REPO
# HERE SMOKE LEVELS RUNS RUN_SECONDS); writes $BENCH_OUT/sign.md and sign.csv.
set -euo pipefail
# shellcheck source=../lib.sh
source "$HERE/lib.sh"
bench_case sign
# shellcheck source=dkim-common.sh
source "$HERE/cases/dkim-common.sh"

make_key example.test
printf 'bench._domainkey.example.test example.test:bench:%s\n' "$SCRATCH/keys/example.test/bench.private" \
    > "$SCRATCH/KeyTable"
printf '*@example.test bench._domainkey.example.test\n' > "$SCRATCH/SigningTable"

declare -A SPEC PID
for tr in tcp unix; do
    if [ $tr = tcp ]; then
        p=$(free_port); SPEC[opendkim-$tr]="inet:127.0.0.1:$p"; odk_sock="inet:$p@127.0.0.1"
        p=$(free_port); SPEC[dkim-milter-$tr]="inet:127.0.0.1:$p"
    else
        SPEC[opendkim-$tr]="unix:$SCRATCH/opendkim.sock"; odk_sock="local:$SCRATCH/opendkim.sock"
        SPEC[dkim-milter-$tr]="unix:$SCRATCH/dkim-milter.sock"
    fi
    opendkim_conf "opendkim-$tr" s "$odk_sock"
    dkim_milter_conf "dkim-milter-$tr" sign "${SPEC[dkim-milter-$tr]}"
    start_opendkim "opendkim-$tr" "${SPEC[opendkim-$tr]}"; PID[opendkim-$tr]=$LAST_PID
    start_dkim_milter "dkim-milter-$tr" "${SPEC[dkim-milter-$tr]}"; PID[dkim-milter-$tr]=$LAST_PID
done

# Both signers really sign: every message once through each daemon, checked by dkimpy.
CHECK="$SCRATCH/dkimpy.txt"
: > "$CHECK"
for d in opendkim-tcp dkim-milter-tcp opendkim-unix dkim-milter-unix; do
    for size in 4k 100k; do
        timeout 60 "$BIN/milter-replay" --milter "${SPEC[$d]}" --out "$SCRATCH/signed-$d" \
            "$MSGS/$size/$size.eml" > "$SCRATCH/replay-$d-$size.txt"
        f="$SCRATCH/signed-$d/$size.eml"
        v=$(dkimpy_verify "$SCRATCH/zone.txt" "$f" | tr '\n' ' ') || die "dkimpy: $d's $size signature: $v"
        tags=$("$PY" -c 'import email, re, sys; h = email.message_from_binary_file(open(sys.argv[1], "rb"))["DKIM-Signature"]
print(" ".join(re.findall(r"\b[ach]=[^;]*", re.sub(r"\s+", "", h))))' "$f")
        echo "| $d | $size | $v | $tags |" >> "$CHECK"
    done
done

read -r RSA_ALL RSA_ONE < <(rsa2048_speed)
echo "openssl speed rsa2048: $RSA_ALL sign/s on $(nproc) cores, $RSA_ONE on one" >&2

{
    echo "| daemon | VmRSS MiB | VmHWM MiB | threads |"
    echo "|---|---|---|---|"
} > "$SCRATCH/mem-before.md"
for d in opendkim-tcp dkim-milter-tcp; do mem_line "$d" "${PID[$d]}" >> "$SCRATCH/mem-before.md"; done

for tr in tcp unix; do
    for mode in long conn; do
        args=""; [ $mode = conn ] && args="--connection-per-message"
        for size in 4k 100k; do
            for d in dkim-milter opendkim; do
                add_series "$d $tr $mode $size" "${SPEC[$d-$tr]}" "${PID[$d-$tr]}" "$MSGS/$size/$size.eml" $args
            done
            echo "sign: $tr $mode $size" >&2
            rotate "$tr $mode $size" "dkim-milter $tr $mode $size" "opendkim $tr $mode $size"
        done
    done
done

PAIRS=()
for tr in tcp unix; do for mode in long conn; do for size in 4k 100k; do
    PAIRS+=("dkim-milter $tr $mode $size=opendkim $tr $mode $size")
done; done; done
summarise --all-modified "${PAIRS[@]}" > "$SCRATCH/tables.md"

{
    echo "| daemon | VmRSS MiB | VmHWM MiB | threads |"
    echo "|---|---|---|---|"
    for d in opendkim-tcp dkim-milter-tcp opendkim-unix dkim-milter-unix; do mem_line "$d" "${PID[$d]}"; done
} > "$SCRATCH/mem-after.md"

"$PY" - "$SCRATCH/medians.json" "$RSA_ALL" "$RSA_ONE" "$LEVELS" > "$SCRATCH/targets.md" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
rsa_all, rsa_one = float(sys.argv[2]), float(sys.argv[3])
levels = sorted(int(x) for x in sys.argv[4].split())
lo, hi = str(levels[0]), str(levels[-1])
med, rat = d["medians"], d["ratios"]
sig_us = 1e6 / rsa_one
ok = lambda b: "**met**" if b else "**missed**"
print(f"One RSA-2048 signature costs {sig_us:.0f} µs of one core here (`openssl speed`: {rsa_one:.0f} sign/s "
      f"on one core, {rsa_all:.0f} sign/s on all cores = the machine's signing limit).")
print()
print("| target | measured | |")
print("|---|---|---|")
for mode in ("conn", "long"):
    for tr, goal in (("tcp", 5), ("unix", 3)):
        k = f"dkim-milter {tr} {mode} 4k=opendkim {tr} {mode} 4k"
        r = rat[k][hi]["rate"]
        print(f"| ≥ {goal}× OpenDKIM msg/s, C={hi}, {tr}, {mode}, 4 KB | {r:.2f}× | {ok(r >= goal)} |")
for mode in ("conn", "long"):
    cpu = med[f"dkim-milter tcp {mode} 4k"][hi]["cpu_us"]
    print(f"| daemon CPU per 4 KB message ≤ 1.25× one signature ({1.25 * sig_us:.0f} µs), tcp {mode}, C={hi} | "
          f"{cpu:.0f} µs = {cpu / sig_us:.2f}× | {ok(cpu <= 1.25 * sig_us)} |")
for mode in ("long", "conn"):
    for tr in ("tcp", "unix"):
        p = med[f"dkim-milter {tr} {mode} 4k"][lo]["p50"]
        print(f"| p50 < 1 ms at C={lo}, {tr}, {mode}, 4 KB | {p:.2f} ms | {ok(p < 1)} |")
print()
print("Share of the machine's RSA-2048 signing limit (msg/s at C=" + hi + " / all-core sign/s; the load "
      "generator runs on the same cores, so 100 % is out of reach by construction):")
print()
for mode in ("conn", "long"):
    for tr in ("tcp", "unix"):
        for who in ("dkim-milter", "opendkim"):
            r = med[f"{who} {tr} {mode} 4k"][hi]["rate"]
            print(f"- {who} {tr} {mode} 4 KB: {r:.0f} msg/s = {100 * r / rsa_all:.0f} %")
EOF

{
    echo "## Signing: dkim-milter vs OpenDKIM"
    echo
    echo "Both daemons sign with the same RSA-2048 key (opendkim-genkey), relaxed/simple, From"
    echo "oversigned, nothing logged per message; one instance of each per transport (TCP on"
    echo "127.0.0.1, unix sockets). Messages: tests/bench/messages/4k and 100k (sidecar envelopes)."
    echo "\`long\` = one connection carries many messages; \`conn\` = a new connection (CONNECT, HELO)"
    echo "for every message, as Postfix without connection caching (\`--connection-per-message\`)."
    echo "Latencies are MAIL..final answer; connect→answer includes the connection's setup. Levels"
    echo "$LEVELS, $RUNS rounds of about $RUN_SECONDS s per series, dkim-milter and OpenDKIM alternating"
    echo "within each round; figures are medians, ratios the median of per-round ratios. The machine"
    echo "is shared with other work: only the in-run ratios mean anything."
    echo
    echo "dkimpy verdicts on each signer's output before the load:"
    echo
    echo "| signer | message | dkimpy | tags |"
    echo "|---|---|---|---|"
    cat "$CHECK"
    echo
    cat "$SCRATCH/tables.md"
    echo
    cat "$SCRATCH/targets.md"
    echo
    echo "Memory before the load (TCP instances):"
    echo
    cat "$SCRATCH/mem-before.md"
    echo
    echo "Memory after the load:"
    echo
    cat "$SCRATCH/mem-after.md"
} > "$BENCH_OUT/sign.md"
echo "sign: $BENCH_OUT/sign.md" >&2
