#!/usr/bin/env python3
"""Self-check helper, the Python twin of tests/src/probe.rs (RtpProbe).

rtp_probe.py SECONDS PORT [PORT ...]   (binds 127.0.0.1)

Per port: records every RTP datagram (arrival time, source); once a packet has arrived it sends a
20 ms PCMA stream (PT 8, 160 bytes, fixed SSRC) to the source of the most recent packet
(symmetric RTP: it follows a new source at once). After SECONDS (or SIGTERM) it prints one JSON
line per port: port, received, sent, sources (distinct "ip:port", in order of first arrival),
per-source packet counts, max_gap_ms (largest inter-arrival gap after the first packet).
"""
import json, select, signal, socket, struct, sys, time

seconds = float(sys.argv[1])
ports = [int(p) for p in sys.argv[2:]]
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)


class Port:
    def __init__(self, port, ssrc):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.port, self.ssrc = port, ssrc
        self.target = None
        self.seq, self.ts, self.sent = 0, 0, 0
        self.received, self.sources, self.counts = 0, [], {}
        self.first = self.last = None
        self.max_gap = 0.0

    def on_packet(self, data, src, now):
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        self.received += 1
        key = "%s:%d" % src
        if key not in self.counts:
            self.sources.append(key)
            self.counts[key] = 0
        self.counts[key] += 1
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        if self.first is None:
            self.first = now
        self.last = now
        self.target = src

    def tick(self):
        if self.target is None:
            return
        hdr = struct.pack("!BBHII", 0x80, 8, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc)
        try:
            self.sock.sendto(hdr + bytes([0xD5]) * 160, self.target)
            self.sent += 1
        except OSError:
            pass
        self.seq += 1
        self.ts += 160

    def report(self):
        return {
            "port": self.port,
            "received": self.received,
            "sent": self.sent,
            "sources": self.sources,
            "counts": self.counts,
            "max_gap_ms": round(self.max_gap * 1000),
        }


probes = [Port(p, 0x5EED0000 + i) for i, p in enumerate(ports)]
by_fd = {p.sock.fileno(): p for p in probes}
end = time.monotonic() + seconds
next_tick = time.monotonic()
while not stop and time.monotonic() < end:
    now = time.monotonic()
    if now >= next_tick:
        for p in probes:
            p.tick()
        next_tick += 0.02
        if next_tick < now:
            next_tick = now + 0.02
    r, _, _ = select.select(list(by_fd), [], [], max(0.0, next_tick - time.monotonic()))
    for fd in r:
        p = by_fd[fd]
        while True:
            try:
                data, src = p.sock.recvfrom(2048)
            except BlockingIOError:
                break
            p.on_packet(data, src, time.monotonic())
for p in probes:
    print(json.dumps(p.report()), flush=True)
