#!/usr/bin/python3
"""A loopback DNS stub for the verify benchmarks: answers TXT queries from a zone file of
"name TXT-value" lines (dkim_verify.py's format), NXDOMAIN for every other name, over UDP and
TCP on 127.0.0.1:PORT. Counts queries in LOG (one line each).

  dns_stub.py PORT ZONE LOG

Bench-only and tiny on purpose: the tests' stub (tests/src/dns.rs) is Rust inside the test
harness, not a binary; wire parsing is dnspython's (python3-dnspython), not hand-written.
"""
import socketserver
import struct
import sys
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

PORT, ZONE, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3]
records = {}
for line in open(ZONE):
    if line.strip():
        name, value = line.split(None, 1)
        records[name.rstrip(".").lower() + "."] = value.strip()
lock = threading.Lock()
log = open(LOG, "a", buffering=1)


def answer(wire):
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    for question in q.question:
        name = question.name.to_text().lower()
        with lock:
            log.write(f"{name} {dns.rdatatype.to_text(question.rdtype)}\n")
        if name not in records:
            r.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            v = records[name]
            # A TXT string holds at most 255 bytes: split the value into several.
            chunks = " ".join('"%s"' % v[i:i + 255] for i in range(0, len(v), 255))
            r.answer.append(dns.rrset.from_text(question.name, 300, dns.rdataclass.IN, dns.rdatatype.TXT, chunks))
    return r.to_wire()


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        try:
            sock.sendto(answer(data), self.client_address)
        except Exception as e:  # a malformed query is dropped, the stub keeps serving
            print(f"dns_stub: {e}", file=sys.stderr)


class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while True:
                head = self.request.recv(2, 0x100)  # MSG_WAITALL
                if len(head) < 2:
                    return
                (n,) = struct.unpack(">H", head)
                out = answer(self.request.recv(n, 0x100))
                self.request.sendall(struct.pack(">H", len(out)) + out)
        except Exception as e:
            print(f"dns_stub: {e}", file=sys.stderr)


class UdpServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True


class TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


udp = UdpServer(("127.0.0.1", PORT), Udp)
tcp = TcpServer(("127.0.0.1", PORT), Tcp)
threading.Thread(target=tcp.serve_forever, daemon=True).start()
print(f"dns_stub: 127.0.0.1:{PORT}, {len(records)} names", file=sys.stderr, flush=True)
udp.serve_forever()
