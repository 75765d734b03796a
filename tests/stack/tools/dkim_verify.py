#!/usr/bin/python3
"""Verify every DKIM-Signature of a message offline (no DNS) with dkimpy.

Usage: /usr/bin/python3 dkim_verify.py KEYS_FILE MESSAGE_FILE

KEYS_FILE has one record per line: "<selector>._domainkey.<domain> <TXT value>"
(the TXT value is the concatenation of the quoted strings of opendkim-genkey's
.txt). Prints one line per signature ("PASS d=.. s=.." or "FAIL d=.. s=..: why")
and exits 0 only if the message has at least one signature and all pass;
exit 1 otherwise (exit 2 on usage errors).
"""
import sys

import dkim


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    zone = {}
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            if line.strip():
                name, rec = line.split(None, 1)
                zone[name.rstrip(".").lower()] = rec.strip().encode()
    with open(sys.argv[2], "rb") as f:
        msg = f.read()

    def dnsfunc(name, timeout=5):
        return zone.get(name.decode().rstrip(".").lower())

    d = dkim.DKIM(msg, minkey=1024)
    sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
    if not sigs:
        print("FAIL no DKIM-Signature header")
        return 1
    ok_all = True
    for i, raw in enumerate(sigs):
        try:
            tags = dkim.util.parse_tag_value(raw)
            who = "d=%s s=%s" % (tags.get(b"d", b"?").decode(), tags.get(b"s", b"?").decode())
        except Exception as e:  # malformed tag list
            who = "index=%d (unparsable: %s)" % (i, e)
        try:
            ok = d.verify(idx=i, dnsfunc=dnsfunc)
            why = "" if ok else ": signature did not verify"
        except dkim.DKIMException as e:
            ok, why = False, ": %s" % e
        print("%s %s%s" % ("PASS" if ok else "FAIL", who, why))
        ok_all = ok_all and ok
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
