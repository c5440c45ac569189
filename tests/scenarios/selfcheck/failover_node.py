#!/usr/bin/env python3
"""Self-check stand-in for two callgrid nodes around a failover (raw UDP, no SIPp).

Node A (SIP port --a) sets the call up and "dies" (stops answering and sending media; its
socket stays open only to notice anything the peer still sends to it). Node B (SIP port --b)
then takes the dialog over with a re-INVITE as the failover contract says: Request-URI = the
peer's Contact, Via/Contact = B, same Call-ID and tags, SDP c=127.0.0.1 m=audio <B media port>
RTP/AVP 8 0 101. Both nodes send 20 ms PCMA toward the peer's SDP address and latch on the first
RTP packet they receive (as media/src/session/engine.rs does).

  failover_node.py uas --a PA --b PB --expect-ports P1[,P2..] [--calls N] [--mode M] ...
      Answers carrier_failover.xml (the carrier is the UAC).
  failover_node.py uac --a PA --b PB --phone HOST:PORT --expect-ports P1[,P2..] [--calls N] ...
      Calls agent_phone_failover.xml N times from A (one INVITE after the other, so call i takes
      CSV line i and must answer with SDP port Pi), then re-INVITEs every call from B.

--mode reinvite      (default) after the re-INVITE, the peer must send BYE to B.
--mode node-bye      after the re-INVITE, B sends BYE (--bye-after s) and expects 200 at B.
--mode bye-before    no failover: A sends BYE at --failover-after, expects 200 at A.
--mode none          no failover, no BYE from the nodes: A answers the peer's BYE if one comes
                     (to check that the peer gives up after reinvite_ms).

Checks (each failure printed as FAIL, exit 1): SDP ports; the 200 to the re-INVITE reaches B with
the dialog's tags (To tag = the peer's tag for the carrier, From/To tags kept), same CSeq; the
ACK reaches B; the peer's BYE reaches B with Request-URI sip:callgrid@127.0.0.1:PB and the
dialog's tags; nothing for the call reaches A after the failover; RTP from the peer's media
port reaches A before and B after the failover (so a symmetric-RTP probe followed the new
source); DTMF events (any source) reported and checked with --expect-dtmf.
"""
import argparse, queue, random, re, socket, struct, sys, threading, time

IP = "127.0.0.1"
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length", "c": "content-type"}


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


class Msg:
    def __init__(self, raw, src):
        text = raw.decode("utf-8", "replace")
        head, _, self.body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        self.first = lines[0]
        self.src = src
        self.headers = []
        for line in lines[1:]:
            if ":" in line:
                n, v = line.split(":", 1)
                n = n.strip().lower()
                self.headers.append((COMPACT.get(n, n), v.strip()))
        parts = self.first.split(" ", 2)
        self.is_response = parts[0].startswith("SIP/")
        self.status = int(parts[1]) if self.is_response else 0
        self.method = None if self.is_response else parts[0]
        self.ruri = None if self.is_response else parts[1]
        self.text = text

    def h(self, name):
        for n, v in self.headers:
            if n == name.lower():
                return v
        return ""

    def all(self, name):
        return [v for n, v in self.headers if n == name.lower()]

    def cseq(self):
        n, _, m = self.h("cseq").partition(" ")
        return int(n or 0), m.strip()

    def sdp(self):
        c = re.search(r"c=IN IP4 (\S+)", self.body)
        m = re.search(r"m=audio (\d+)", self.body)
        return (c.group(1), int(m.group(1))) if c and m else None


def tag_of(v):
    m = re.search(r";tag=([^;>\s]+)", v)
    return m.group(1) if m else None


def uri_of(v):
    m = re.search(r"<([^>]+)>", v)
    return m.group(1) if m else v.split(";")[0].strip()


def hostport(uri):
    m = re.match(r"sips?:(?:[^@]*@)?([^:;>]+)(?::(\d+))?", uri)
    return (m.group(1), int(m.group(2) or 5060))


def via_addr(via):
    m = re.match(r"SIP/2\.0/\w+\s+([^:;\s]+)(?::(\d+))?", via)
    return (m.group(1), int(m.group(2) or 5060))


def rnd():
    return "%x" % random.getrandbits(48)


class SipSock:
    """One node's SIP socket; dispatches by Call-ID. When dead, records and drops."""

    def __init__(self, port, name):
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((IP, port))
        self.port = port
        self.queues = {}
        self.new = queue.Queue()
        self.dead_calls = set()
        self.after_death = []  # (call_id, first line) received for a dead call
        self.lock = threading.Lock()
        threading.Thread(target=self.rx, daemon=True).start()

    def rx(self):
        while True:
            try:
                raw, src = self.sock.recvfrom(65535)
            except OSError:
                return
            if not raw.strip():
                continue
            try:
                m = Msg(raw, src)
            except Exception as e:  # noqa
                log(self.name, "unparsable datagram from", src, e)
                continue
            cid = m.h("call-id")
            with self.lock:
                if cid in self.dead_calls:
                    self.after_death.append((cid, m.first))
                    continue
                q = self.queues.get(cid)
            if q is not None:
                q.put(m)
            elif m.method == "INVITE":
                self.new.put(m)
            else:
                log(self.name, "stray message", m.first, "call-id", cid)

    def register(self, cid):
        with self.lock:
            q = self.queues.setdefault(cid, queue.Queue())
        return q

    def kill(self, cid):
        with self.lock:
            self.dead_calls.add(cid)
            self.queues.pop(cid, None)

    def send(self, text, addr):
        self.sock.sendto(text.replace("\n", "\r\n").encode(), addr)


class Media:
    """20 ms PCMA sender that latches on the first RTP packet (engine behaviour)."""

    def __init__(self, name):
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((IP, 0))
        self.sock.settimeout(0.005)
        self.port = self.sock.getsockname()[1]
        self.sdp_target = None
        self.latched = None
        self.from_ports = {}
        self.dtmf = []
        self.running = True
        self.ssrc = random.getrandbits(32)
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        seq = ts = 0
        next_tick = time.monotonic()
        while self.running:
            now = time.monotonic()
            if now >= next_tick:
                target = self.latched or self.sdp_target
                if target:
                    hdr = struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, ts, self.ssrc)
                    try:
                        self.sock.sendto(hdr + bytes([0x55]) * 160, target)
                    except OSError:
                        pass
                    seq += 1
                    ts = (ts + 160) & 0xFFFFFFFF
                next_tick += 0.02
            try:
                data, src = self.sock.recvfrom(2048)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            if len(data) < 12:
                continue
            if self.latched is None:
                self.latched = src
            self.from_ports[src[1]] = self.from_ports.get(src[1], 0) + 1
            if data[1] & 0x7F == 101 and data[12] not in self.dtmf:
                self.dtmf.append(data[12])

    def stop(self):
        self.running = False
        time.sleep(0.05)
        self.sock.close()


SDP = """v=0
o=callgrid 1 {v} IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio {port} RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
"""


class Call:
    def __init__(self, args, a, b, index):
        self.args, self.a, self.b, self.i = args, a, b, index
        self.fails = []
        self.notes = []

    def fail(self, what):
        self.fails.append(what)
        log("call", self.i, "FAIL:", what)

    def wait(self, q, pred, timeout, what):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                self.fail("timeout waiting for " + what)
                return None
            try:
                m = q.get(timeout=left)
            except queue.Empty:
                continue
            if pred(m):
                return m
            self.notes.append("ignored " + m.first)

    def transact(self, sock, q, text, addr, cseq, method, what):
        """Sends a request with UDP retransmission until a final response for (cseq, method)."""
        t, end = 0.5, time.monotonic() + 16
        sock.send(text, addr)
        while time.monotonic() < end:
            try:
                m = q.get(timeout=t)
            except queue.Empty:
                sock.send(text, addr)
                t = min(t * 2, 4)
                continue
            if m.is_response and m.cseq() == (cseq, method):
                if m.status >= 200:
                    return m
                continue
            if not m.is_response and m.method == "BYE" and method == "INVITE":
                self.fail(what + ": BYE from the peer while waiting for the answer")
            self.notes.append("ignored " + m.first)
        self.fail("no final response to " + what)
        return None

    def respond(self, sock, req, code, reason, extra="", body=""):
        vias = "".join("Via: %s\n" % v for v in req.all("via"))
        to = req.h("to")
        if not tag_of(to):
            to += ";tag=" + self.my_tag
        text = "SIP/2.0 %d %s\n%sFrom: %s\nTo: %s\nCall-ID: %s\nCSeq: %s\n%sContent-Length: %d\n\n%s" % (
            code, reason, vias, req.h("from"), to, req.h("call-id"), req.h("cseq"), extra, len(body.replace("\n", "\r\n")), body)
        sock.send(text, via_addr(req.all("via")[0]))

    def request(self, method, ruri, node, cseq, extra="", body=""):
        text = ("%s %s SIP/2.0\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s\nMax-Forwards: 70\nFrom: %s\nTo: %s\n"
                "Call-ID: %s\nCSeq: %d %s\n%sContent-Length: %d\n\n%s") % (
            method, ruri, IP, node.port, rnd(), self.local, self.remote, self.call_id, cseq, method, extra,
            len(body.replace("\n", "\r\n")), body)
        return text

    def check_sdp(self, m, what):
        sdp = m.sdp()
        want = self.args.expect_ports[self.i] if self.i < len(self.args.expect_ports) else None
        if not sdp:
            self.fail(what + ": no SDP")
            return None
        if want is not None and sdp[1] != want:
            self.fail("%s: SDP port %d, expected %d" % (what, sdp[1], want))
        return sdp

    def check_dialog(self, m, what):
        """The peer's message must carry our dialog's tags: in a response to our request our tag is
        in From, in the peer's request it is in To."""
        if m.is_response:
            mine, theirs = tag_of(m.h("from")), tag_of(m.h("to"))
        else:
            mine, theirs = tag_of(m.h("to")), tag_of(m.h("from"))
        if mine != self.my_tag:
            self.fail("%s: our tag %r, expected %r" % (what, mine, self.my_tag))
        if theirs != self.peer_tag:
            self.fail("%s: peer tag %r, expected %r" % (what, theirs, self.peer_tag))
        if m.h("call-id") != self.call_id:
            self.fail(what + ": Call-ID changed")

    def failover(self, peer_contact):
        """A dies, B re-INVITEs; returns B's media or None."""
        self.a.kill(self.call_id)
        self.media_a.stop()
        log("call", self.i, "node A dead; A media got from ports", self.media_a.from_ports, "dtmf", self.media_a.dtmf)
        if self.probe_port() not in self.media_a.from_ports:
            self.fail("no RTP from the peer media port %s at node A" % self.probe_port())
        self.qb = self.b.register(self.call_id)
        self.media_b = Media("B%d" % self.i)
        self.cseq += 1
        contact = "Contact: <sip:callgrid@%s:%d>\nContent-Type: application/sdp\n" % (IP, self.b.port)
        body = SDP.format(v=2, port=self.media_b.port)
        inv = self.request("INVITE", peer_contact, self.b, self.cseq, contact, body)
        log("call", self.i, "re-INVITE from B to", peer_contact)
        r = self.transact(self.b, self.qb, inv, hostport(peer_contact), self.cseq, "INVITE", "re-INVITE")
        if not r:
            self.fail("meanwhile the dead node A received: %s" % [f for c, f in self.a.after_death if c == self.call_id])
            return None
        if r.status != 200:
            self.fail("re-INVITE answered %s" % r.first)
            return None
        self.check_dialog(r, "200 to re-INVITE")
        sdp = self.check_sdp(r, "200 to re-INVITE")
        if sdp:
            self.media_b.sdp_target = sdp
        rc = uri_of(r.h("contact")) if r.h("contact") else peer_contact
        ack = self.request("ACK", rc, self.b, self.cseq)
        self.b.send(ack, hostport(rc))
        self.notes.append("200 to re-INVITE: " + r.h("to"))
        return rc

    def probe_port(self):
        return self.args.expect_ports[self.i] if self.i < len(self.args.expect_ports) else None

    def after_failover(self, peer_contact):
        args = self.args
        if args.mode == "reinvite":
            bye = self.wait(self.qb, lambda m: m.method == "BYE", args.bye_timeout, "BYE at node B")
            if bye:
                want = "sip:callgrid@%s:%d" % (IP, self.b.port)
                if bye.ruri != want:
                    self.fail("BYE Request-URI %s, expected %s" % (bye.ruri, want))
                self.check_dialog(bye, "BYE")
                self.respond(self.b, bye, 200, "OK")
                log("call", self.i, "BYE received at B from", bye.src, "R-URI", bye.ruri, "From", bye.h("from"), "To", bye.h("to"))
        else:
            time.sleep(args.bye_after)
            self.cseq += 1
            bye = self.request("BYE", peer_contact, self.b, self.cseq)
            r = self.transact(self.b, self.qb, bye, hostport(peer_contact), self.cseq, "BYE", "BYE from B")
            if r and r.status != 200:
                self.fail("BYE from B answered " + r.first)
            elif r:
                log("call", self.i, "B's BYE answered 200")
        time.sleep(0.3)
        self.media_b.stop()
        got = self.media_b.from_ports.get(self.probe_port(), 0)
        log("call", self.i, "B media got from ports", self.media_b.from_ports)
        if self.probe_port() is not None and got < 10:
            self.fail("only %d RTP packets from the peer media port at node B (did it follow?)" % got)
        dead = [f for c, f in self.a.after_death if c == self.call_id]
        if dead:
            self.fail("node A (dead) still received: %s" % dead)
        if args.expect_dtmf is not None and args.expect_dtmf not in self.media_a.dtmf:
            self.fail("DTMF %d not received (got %s)" % (args.expect_dtmf, self.media_a.dtmf))

    def bye_before(self, peer_contact):
        self.cseq += 1
        bye = self.request("BYE", peer_contact, self.a, self.cseq)
        r = self.transact(self.a, self.qa, bye, hostport(peer_contact), self.cseq, "BYE", "BYE from A")
        if r and r.status != 200:
            self.fail("BYE from A answered " + r.first)
        time.sleep(0.3)
        self.media_a.stop()
        if self.probe_port() not in self.media_a.from_ports:
            self.fail("no RTP from the peer media port at node A")
        log("call", self.i, "A media got from ports", self.media_a.from_ports, "dtmf", self.media_a.dtmf)

    # ---- node answers the carrier (carrier_failover.xml is the UAC)
    def run_uas(self, invite):
        args = self.args
        self.call_id = invite.h("call-id")
        self.qa = self.a.register(self.call_id)
        self.my_tag, self.peer_tag = "node" + rnd(), tag_of(invite.h("from"))
        self.remote = invite.h("from")
        self.local = invite.h("to") + ";tag=" + self.my_tag
        self.cseq = args.cseq_base
        peer_contact = uri_of(invite.h("contact"))
        sdp = self.check_sdp(invite, "INVITE")
        self.media_a = Media("A%d" % self.i)
        if sdp:
            self.media_a.sdp_target = sdp
        self.respond(self.a, invite, 100, "Trying")
        self.respond(self.a, invite, 180, "Ringing", "Contact: <sip:callgrid@%s:%d>\n" % (IP, self.a.port))
        body = SDP.format(v=1, port=self.media_a.port)
        extra = "Contact: <sip:callgrid@%s:%d>\nContent-Type: application/sdp\n" % (IP, self.a.port)
        for t in [0.5, 1, 2, 4, 4]:
            self.respond(self.a, invite, 200, "OK", extra, body)
            try:
                m = self.qa.get(timeout=t)
            except queue.Empty:
                continue
            if m.method == "ACK":
                break
        else:
            self.fail("no ACK for the 200 at A")
            return
        log("call", self.i, "established at A, carrier contact", peer_contact)
        self.run_established(peer_contact)

    # ---- node calls the agent phone (agent_phone_failover.xml is the UAS)
    def run_uac(self, phone, prev_done, done):
        args = self.args
        prev_done.wait()
        self.call_id = "fo-%d-%s@%s" % (self.i, rnd(), IP)
        self.qa = self.a.register(self.call_id)
        self.my_tag, self.peer_tag = "node" + rnd(), None
        ext = args.extensions[self.i % len(args.extensions)]
        self.local = "<sip:ivr@%s>;tag=%s" % (IP, self.my_tag)
        self.remote = "<sip:%s@%s:%d>" % (ext, phone[0], phone[1])
        self.cseq = 1
        self.media_a = Media("A%d" % self.i)
        body = SDP.format(v=1, port=self.media_a.port)
        extra = "Contact: <sip:callgrid@%s:%d>\nContent-Type: application/sdp\n" % (IP, self.a.port)
        inv = self.request("INVITE", "sip:%s@%s:%d" % (ext, phone[0], phone[1]), self.a, 1, extra, body)
        r = self.transact(self.a, self.qa, inv, phone, 1, "INVITE", "INVITE")
        done.set()
        if not r or r.status != 200:
            self.fail("INVITE answered %s" % (r.first if r else None))
            return
        self.peer_tag = tag_of(r.h("to"))
        self.remote = r.h("to")
        sdp = self.check_sdp(r, "200 to INVITE")
        if sdp:
            self.media_a.sdp_target = sdp
        peer_contact = uri_of(r.h("contact"))
        self.a.send(self.request("ACK", peer_contact, self.a, 1), hostport(peer_contact))
        log("call", self.i, "established at A, phone contact", peer_contact, "tag", self.peer_tag)
        self.run_established(peer_contact)

    def run_established(self, peer_contact):
        args = self.args
        end = time.monotonic() + args.failover_after
        while time.monotonic() < end:
            try:
                m = self.qa.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                continue
            if m.method == "BYE":
                self.fail("BYE from the peer before the failover")
                self.respond(self.a, m, 200, "OK")
                return
            self.notes.append("ignored " + m.first)
        if args.mode == "bye-before":
            self.bye_before(peer_contact)
            return
        if args.mode == "none":
            # No failover: A stays up and answers the peer's BYE if one comes (negative check).
            try:
                m = self.qa.get(timeout=args.bye_timeout)
                if m.method == "BYE":
                    self.respond(self.a, m, 200, "OK")
                self.notes.append("got " + m.first)
            except queue.Empty:
                self.notes.append("nothing from the peer")
            self.media_a.stop()
            return
        rc = self.failover(peer_contact)
        if rc:
            self.after_failover(rc)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["uas", "uac"])
    p.add_argument("--a", type=int, required=True)
    p.add_argument("--b", type=int, required=True)
    p.add_argument("--phone")
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--expect-ports", default="")
    p.add_argument("--extensions", default="1001")
    p.add_argument("--mode", choices=["reinvite", "node-bye", "bye-before", "none"], default="reinvite")
    p.add_argument("--failover-after", type=float, default=3)
    p.add_argument("--bye-after", type=float, default=2)
    p.add_argument("--bye-timeout", type=float, default=30)
    p.add_argument("--cseq-base", type=int, default=0, help="uas: CSeq before the re-INVITE (re-INVITE = base+1)")
    p.add_argument("--expect-dtmf", type=int)
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    args.expect_ports = [int(x) for x in args.expect_ports.split(",") if x]
    args.extensions = args.extensions.split(",")
    a, b = SipSock(args.a, "A"), SipSock(args.b, "B")
    calls, threads = [], []
    if args.role == "uas":
        for i in range(args.calls):
            try:
                inv = a.new.get(timeout=args.timeout)
            except queue.Empty:
                log("FAIL: no INVITE at A")
                sys.exit(1)
            c = Call(args, a, b, i)
            calls.append(c)
            t = threading.Thread(target=c.run_uas, args=(inv,), daemon=True)
            t.start()
            threads.append(t)
    else:
        host, port = args.phone.rsplit(":", 1)
        prev = threading.Event()
        prev.set()
        for i in range(args.calls):
            c = Call(args, a, b, i)
            calls.append(c)
            done = threading.Event()
            t = threading.Thread(target=c.run_uac, args=((host, int(port)), prev, done), daemon=True)
            t.start()
            threads.append(t)
            prev = done
    end = time.monotonic() + args.timeout
    for t in threads:
        t.join(max(0.1, end - time.monotonic()))
    bad = 0
    for c in calls:
        if any(t.is_alive() for t in threads):
            pass
        if c.fails:
            bad += 1
            log("call", c.i, "FAIL", c.fails, c.notes)
        else:
            log("call", c.i, "OK", c.notes)
    if any(t.is_alive() for t in threads):
        log("FAIL: calls still running at the deadline")
        bad += 1
    if len(calls) < args.calls:
        bad += 1
    print("RESULT", "PASS" if bad == 0 else "FAIL", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
