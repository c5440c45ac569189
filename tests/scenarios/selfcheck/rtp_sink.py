#!/usr/bin/env python3
"""Self-check helper: count RTP packets per payload type (and DTMF event codes) on a UDP port."""
import socket, sys, collections
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
s.settimeout(seconds)
pts, events = collections.Counter(), set()
try:
    while True:
        d, _ = s.recvfrom(2048)
        pt = d[1] & 0x7F
        pts[pt] += 1
        if pt == 101:
            events.add(d[12])
except socket.timeout:
    pass
print("rtp", port, dict(pts), "dtmf events", sorted(events))
