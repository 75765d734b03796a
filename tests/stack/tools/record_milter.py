#!/usr/bin/python3
"""A recording milter: captures exactly what an MTA sends a milter.

Usage: /usr/bin/python3 record_milter.py --port PORT --out FILE

Listens on 127.0.0.1:PORT (stdlib only). Answers SMFIC_OPTNEG by offering back
version 6, actions 0x1FF and protocol flags 0 (every step enabled, a reply
expected for every command), and SMFIR_CONTINUE to every command that expects a
reply; sends nothing for D (macros), A (abort), Q (quit) and K (quit, new
connection). Every received frame is appended raw (4-byte big-endian length +
command byte + payload) to FILE, and also to FILE.conn<N> for the N-th
connection (1-based) so one SMTP session can be picked out. One summary line
per frame goes to FILE.log: "conn N: <cmd> <payload length>"; when a
connection closes, "conn N: closed".
"""
import argparse
import socketserver
import struct
import sys
import threading

NO_REPLY = {b"D", b"A", b"Q", b"K"}
LOCK = threading.Lock()
COUNTER = [0]


class Handler(socketserver.BaseRequestHandler):
    def record(self, raw, line):
        with LOCK:
            for path in (self.server.out, "%s.conn%d" % (self.server.out, self.conn)):
                with open(path, "ab") as f:
                    f.write(raw)
            with open(self.server.out + ".log", "a") as f:
                f.write("conn %d: %s\n" % (self.conn, line))

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.request.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def handle(self):
        with LOCK:
            COUNTER[0] += 1
            self.conn = COUNTER[0]
        try:
            while True:
                head = self.read_exact(4)
                if head is None:
                    break
                (length,) = struct.unpack(">I", head)
                if length == 0 or length > 64 * 1024 * 1024:
                    self.record(head, "bad length %d" % length)
                    break
                payload = self.read_exact(length)
                if payload is None:
                    self.record(head, "truncated frame")
                    break
                cmd = payload[:1]
                self.record(head + payload, "%s %d" % (cmd.decode("latin-1"), length - 1))
                if cmd == b"O":
                    reply = b"O" + struct.pack(">III", 6, 0x1FF, 0)
                elif cmd in NO_REPLY:
                    if cmd == b"Q":
                        break
                    continue
                else:
                    reply = b"c"
                self.request.sendall(struct.pack(">I", len(reply)) + reply)
        finally:
            with LOCK:
                with open(self.server.out + ".log", "a") as f:
                    f.write("conn %d: closed\n" % self.conn)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    srv = Server(("127.0.0.1", args.port), Handler)
    srv.out = args.out
    print("listening on 127.0.0.1:%d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
