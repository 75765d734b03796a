#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/), except rspamd_reply's.

Seeds are real inputs: the sample configs of examples/deploy/, the config snippets and
table lines of the daemons' tests, reply streams that answer the real Postfix 3.7
recordings of milter-core/tests/golden/, and private keys made by openssl. Files are
named with an extension, so git tracks them (fuzz/.gitignore) and ignores what libFuzzer
adds (named by hash, no extension).

    fuzz/scripts/make-seeds.py            # write every seed (keys only when missing)
    fuzz/scripts/make-seeds.py --new-keys # also make fresh keys (test-only keys)
"""

import base64
import os
import shutil
import struct
import subprocess
import sys
import tempfile

FUZZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- mta_reply: the milter's answers to a recorded Postfix session ------------------------

def frame(code, payload=b""):
    return struct.pack(">I", len(payload) + 1) + code + payload


def frames(data):
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        out.append((data[i + 4:i + 5], data[i + 5:i + 4 + n]))
        i += 4 + n
    return out


CONTINUE = frame(b"c")
GOLDEN = [
    "postfix37-mx-two-messages-rset",
    "postfix37-submission-starttls-sasl",
    "postfix37-sendmail-pickup",
]
# Commands of the recordings that get no reply (macros, abort, quit, the offer itself).
SILENT = {b"D", b"A", b"Q", b"K", b"O"}


def ctl(script, chunk=7, limits=0, protocol=0, actions=0x1FF, version=6):
    """The target's 10 control bytes (see fuzz_targets/mta_reply.rs)."""
    return (bytes([script, chunk, limits]) + struct.pack(">I", protocol)
            + struct.pack(">H", actions) + bytes([(version - 2) % 5]))


def optneg(version=6, actions=0x1FF, protocol=0, macros=()):
    payload = struct.pack(">III", version, actions, protocol)
    for stage, names in macros:
        payload += struct.pack(">I", stage) + names.encode() + b"\0"
    return frame(b"O", payload)


def cstr(*parts):
    return b"".join(p + b"\0" for p in parts)


MODIFICATIONS = [
    frame(b"h", cstr(b"X-Fuzz", b" added")),
    frame(b"i", struct.pack(">I", 0) + cstr(b"X-Top", b" inserted\n\tfolded")),
    frame(b"m", struct.pack(">I", 1) + cstr(b"Subject", b" changed")),
    frame(b"m", struct.pack(">I", 2) + cstr(b"Received", b"")),
    frame(b"e", cstr(b"<bounce@example.test>", b"SIZE=100")),
    frame(b"+", cstr(b"<added@example.test>")),
    frame(b"2", cstr(b"<args@example.test>", b"NOTIFY=NEVER")),
    frame(b"-", cstr(b"<user@example.test>")),
    frame(b"p"),
    frame(b"b", b"replaced body\r\n"),
    frame(b"b", b"second chunk\r\n"),
    frame(b"q", cstr(b"held by the fuzz seed")),
]


def golden_replies(name, at_eom):
    """One reply per command Postfix expects an answer to (protocol 0: all of them)."""
    with open(os.path.join(ROOT, "milter-core/tests/golden", name + ".bin"), "rb") as f:
        cmds = frames(f.read())
    out = b""
    for code, _ in cmds:
        if code in SILENT:
            continue
        if code == b"E":
            out += at_eom
        out += CONTINUE
    return out


def mta_reply_seeds():
    t = "mta_reply"
    for i, name in enumerate(GOLDEN):
        short = name.removeprefix("postfix37-")
        write(t, f"golden-{short}-continue.bin", ctl(i) + golden_replies(name, b""))
        write(t, f"golden-{short}-modify.bin",
              ctl(i, chunk=13) + golden_replies(name, b"".join(MODIFICATIONS)))
    # The milter's own negotiation answer: macro lists for CONNECT (0) and EOM (5).
    raw = optneg(macros=[(0, "j {daemon_name} {client_addr}"), (5, "i {auth_authen}")])
    write("mta_reply", "golden-mx-raw-negotiation.bin",
          ctl(0x80 | 0) + raw + golden_replies(GOLDEN[0], frame(b"h", cstr(b"X-A", b" 1"))))
    # An old milter (version 2: no DATA, no UNKNOWN) on the synthetic session: 15 replies.
    write(t, "synthetic-version2.bin", ctl(0x80 | 3) + optneg(version=2, actions=0x3F)
          + CONTINUE * 15)

    # The synthetic session (script 3): C H U M R R T L L N B B E, then M R L E Q.
    reply550 = frame(b"y", b"550 5.7.1 refused by the fuzz seed\0")
    first = (CONTINUE * 4            # C H U M
             + frame(b"r")           # first RCPT refused (only that recipient)
             + CONTINUE * 7          # R T L L N B B
             + frame(b"h", cstr(b"X-Spam", b" yes")) + reply550)  # E
    second = frame(b"t")             # MAIL tempfailed: the rest of message two is skipped
    write(t, "synthetic-refusals.bin", ctl(3) + first + second)
    # SKIP after the first body chunk, NR_HEADER, NO_UNKNOWN: fewer replies.
    proto = 0x400 | 0x80 | 0x100
    skip = (CONTINUE * 4             # C H M R
            + CONTINUE * 2           # R T
            + CONTINUE               # N (headers: no reply)
            + frame(b"s")            # B: skip the rest of the body
            + frame(b"d")            # E: discard
            + CONTINUE * 2 + frame(b"a"))  # M R, E accept (header: no reply)
    write(t, "synthetic-skip-noreply.bin", ctl(3, protocol=proto) + skip)
    write(t, "synthetic-shutdown.bin", ctl(3) + frame(b"4"))
    write(t, "synthetic-connect-reject.bin", ctl(3) + frame(b"y", b"421 4.7.0 go away\0"))
    # Small limits (bit 0: 256-byte frames, bit 1: 4 modifications, 64 body bytes).
    many = CONTINUE * 12 + frame(b"h", cstr(b"X-1", b" a")) * 5 + CONTINUE
    write(t, "synthetic-too-many-modifications.bin", ctl(3, limits=2) + many)
    big = CONTINUE * 12 + frame(b"b", b"x" * 300) + CONTINUE
    write(t, "synthetic-frame-over-cap.bin", ctl(3, limits=1) + big)
    # Progress while working, then a multi-line reply.
    progress = (CONTINUE * 12 + frame(b"p") * 3
                + frame(b"y", b"451-4.3.0 first line\r\n451 4.3.0 second line\0"))
    write(t, "synthetic-progress-multiline.bin", ctl(3, chunk=0) + progress)


# --- frame_decoder and milter_session: the recordings themselves ------------------------

def recording_seeds():
    for name in GOLDEN:
        with open(os.path.join(ROOT, "milter-core/tests/golden", name + ".bin"), "rb") as f:
            data = f.read()
        short = name.removeprefix("postfix37-")
        if len(data) > 16384:
            # The MX session's 64 KiB body frames would make every input that long: keep
            # the frames before the first body chunk.
            cut, i = b"", 0
            for code, payload in frames(data):
                if code == b"B":
                    break
                cut += frame(code, payload)
            data, short = cut, short + "-until-body"
        # milter_session: 8 control bytes (fuzz README), then the MTA's stream.
        write("milter_session", short + ".bin", b"\x00\x10\x00\xff\xff\x01\x3f\x07" + data)
        # frame_decoder: a cap byte (255: frames up to 16 KiB), then the frames.
        write("frame_decoder", short + ".bin", b"\xff" + data)


# --- config and table seeds --------------------------------------------------------------

DKIM_CONFIGS = {
    "full.toml": '''
socket = "unix:/run/dkim.sock"
keys-dir = "/srv/keys"
internal-hosts = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
originating-daemon-names = ["ORIGINATING"]
canonicalization = "relaxed/simple"
authserv-id = "mx.example.net"
mode = "sign"
on-key-error = "accept"
sign-subdomains = true
require-sasl-domain-match = true
signature-ttl = 864000
key-table = "file:/etc/opendkim/KeyTable"
signing-table = "refile:/etc/opendkim/SigningTable"
selector-rule = "newest"
log-level = "debug"
[domain."example.com"]
selectors = ["2025", "ed"]
''',
    "operations.toml": '''
socket = "local:/run/dkim-milter/dkim.sock"
socket-owner = "opendkim"
socket-group = "postfix"
pid-file = "/run/dkim-milter/dkim-milter.pid"
user = "opendkim:opendkim"
allow-root = true
empty-domain-dir = "key-error"
''',
    "dns.toml": '''
dns-servers = ["127.0.0.1:5353", "192.0.2.53", " [::1]:5300 ", "2001:db8::53", "[2001:db8::1]"]
dns-timeout = "1500ms"
metrics-listen = "inet:9102@127.0.0.1"
socket-mode = "0660"
''',
    "tables-postfix-keys.toml":
        'key-table = "file:/etc/opendkim/KeyTable"\nsigning-table = "refile:/etc/opendkim/SigningTable"\n',
    "error-cidr.toml": 'mode = "sv"\n\ninternal-hosts = ["10.0.0.0/33"]\n',
    "error-unknown-option.toml": 'socket = "x"\nbogus-option = 1\n',
    "error-tables-alone.toml": 'key-table = "/etc/opendkim/KeyTable"\n',
    "error-sign-headers.toml": 'sign-headers = ["Subject"]\n',
    "error-owner-inet.toml": 'socket-group = "postfix"\n',
    "empty.toml": "",
}

SPAM_CONFIGS = {
    "full.toml": '''
socket = "unix:/run/spam-milter/milter.sock"
socket-mode = "0660"
max-message-size = 1048576
on-oversize = "tempfail"
[rspamd]
upstreams = ["http://10.0.0.5:11333", "http://10.0.0.6:11333/"]
selection = "round-robin"
attempt-timeout = "5s"
scan-deadline = 15
breaker-failures = 2
breaker-cooldown = "10s"
mta-name = "mx.example.net"
[actions]
reject-with = "quarantine"
greylist = "tempfail"
score-header = "X-Spam-Score"
symbols-header = "X-Spam-Symbols"
remove-forged = ["X-Spam*", "X-Virus-Scanned"]
[inbound]
on-error = "tempfail"
settings-id = "inbound"
[outbound]
mode = "observe"
[listener.ORIGINATING]
outbound = true
[listener.relay]
skip = true
[domain."example.com"]
settings = '{"actions": {"reject": 20}}'
[address."ceo@example.com"]
settings-id = "strict"
''',
    "observe.toml": '[inbound]\nmode = "observe"\nlabel = true\n[actions]\nstatus-header = "X-Spam-Status"\n',
    "error-upstreams.toml": '[rspamd]\nupstreams = ["ftp://x"]\n',
    "error-deadline.toml": '[rspamd]\nscan-deadline = "10 minutes"\n',
    "error-reject-with.toml": '\n[actions]\nreject-with = "bounce"\n',
    "error-settings.toml": "[domain.\"a.com\"]\nsettings = '[1]'\n",
    "error-message.toml": '[actions]\nreject-message = "two\\nlines"\n',
    "empty.toml": "",
}

TABLES = {
    "keytable-panel.table": (
        "# ISPConfig style\n"
        "default._domainkey.example.com example.com:default:/etc/opendkim/keys/example.com/default.private\n"
        "\n"
        "wild %:mail:/etc/opendkim/keys/%/mail.private  # comment\n"),
    "keytable-postfix-keys.table": (
        "shopkey shop.test:2026:/etc/opendkim/keys/shop.test/2026.private\n"
        "blogkey blog.test:mail:./keys/blog.test/mail.private\n"),
    "keytable-error.table": "a x.com:s:/k\nbroken example.com\na y.com:s:/k\n",
    "signingtable-refile.table": (
        "*@example.com first\n*@*.example.com sub\n*@Example.com second\n*@* catchall\n"),
    "signingtable-panel.table": (
        "*@example.com default._domainkey.example.com\n"
        "*@*.example.net mail._domainkey.example.net\n"
        "*@example.net mail._domainkey.example.net\n"),
    "signingtable-file.table": (
        ".example.com parent\nexample.com dom\nboss@example.com boss:boss@example.com\n"
        "user@* anywhere %\n* fallback\n"),
}


def copy_text_seeds():
    write("dkim_config", "deploy-dkim-milter.toml",
          open(os.path.join(ROOT, "examples/deploy/dkim-milter.toml")).read())
    write("spam_config", "deploy-spam-milter.toml",
          open(os.path.join(ROOT, "examples/deploy/spam-milter.toml")).read())
    for name, text in DKIM_CONFIGS.items():
        write("dkim_config", name, text.lstrip("\n"))
    for name, text in SPAM_CONFIGS.items():
        write("spam_config", name, text.lstrip("\n"))
    for name, text in TABLES.items():
        write("dkim_tables", name, text)


# --- dkim_key: fresh test-only keys from openssl -----------------------------------------

def openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], input=stdin, check=True,
                          capture_output=True).stdout


def pem_body(pem):
    return b"".join(l for l in pem.splitlines() if l and not l.startswith(b"-----"))


def key_seeds(new_keys):
    d = os.path.join(CORPUS, "dkim_key")
    if not new_keys and os.path.exists(os.path.join(d, "rsa2048-pkcs8.pem")):
        return
    rsa = openssl("genrsa", "2048")                      # PKCS#8 PEM (OpenSSL 3)
    write("dkim_key", "rsa2048-pkcs8.pem", rsa)
    write("dkim_key", "rsa2048-pkcs1.pem",
          openssl("rsa", "-traditional", stdin=rsa))      # BEGIN RSA PRIVATE KEY
    write("dkim_key", "rsa2048-pkcs8-inline.b64", pem_body(rsa) + b"\n")
    legacy = openssl("genrsa", "1024")
    write("dkim_key", "rsa1024-legacy.pem", legacy)
    write("dkim_key", "rsa512-too-small.pem", openssl("genrsa", "512"))
    ed = openssl("genpkey", "-algorithm", "ed25519")
    write("dkim_key", "ed25519-pkcs8.pem", ed)
    der = base64.b64decode(pem_body(ed))
    seed = der[-32:]
    write("dkim_key", "ed25519-pkcs8-inline.b64", pem_body(ed) + b"\n")
    write("dkim_key", "ed25519-raw-seed.b64", base64.b64encode(seed) + b"\n")
    public = openssl("pkey", "-pubout", "-outform", "DER", stdin=ed)[-32:]
    write("dkim_key", "ed25519-seed-and-public.b64", base64.b64encode(seed + public) + b"\n")
    # PKCS#8 v2 (RFC 5958 OneAsymmetricKey): the seed and, as [1], the public key.
    v2 = (bytes.fromhex("3051020101300506032b657004220420") + seed
          + bytes.fromhex("812100") + public)
    write("dkim_key", "ed25519-pkcs8-v2.b64", base64.b64encode(v2) + b"\n")
    write("dkim_key", "ec-p256-unsupported.pem",
          openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"))
    # The opendkim-genkey `.txt` next to a key: the record as a zone stub.
    spki = openssl("rsa", "-pubout", "-outform", "DER", stdin=rsa)
    p = base64.b64encode(spki).decode()
    write("dkim_key", "rsa2048-selector.txt",
          'default._domainkey\tIN\tTXT\t( "v=DKIM1; h=sha256; k=rsa; "\n\t  "p='
          + p[:200] + '"\n\t  "' + p[200:] + '" )  ; ----- DKIM key default for example.com\n')
    write("dkim_key", "ed25519-record.txt",
          "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode() + "\n")


def main():
    if not shutil.which("openssl"):
        sys.exit("make-seeds: openssl is needed for the dkim_key seeds")
    mta_reply_seeds()
    recording_seeds()
    copy_text_seeds()
    key_seeds("--new-keys" in sys.argv[1:])
    # A KeyTable with keys written into it (PEM body / base64 DER, as panels do).
    inline = [open(os.path.join(CORPUS, "dkim_key", f)).read().strip()
              for f in ("ed25519-pkcs8-inline.b64", "rsa2048-pkcs8-inline.b64")]
    write("dkim_tables", "keytable-inline.table",
          f"ed._domainkey.example.org example.org:ed:{inline[0]}\n"
          f"rsa example.org:rsa:{inline[1]}\n")


if __name__ == "__main__":
    main()
