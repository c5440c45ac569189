//! A phone and a caller on loopback, with a fake registrar that challenges once and then
//! accepts: registration with digest, INVITE/180/200/ACK, RTP both ways, BYE.
//!
//! The takeover tests put two stand-in nodes in front of one endpoint: "node A" sets the
//! call up and relays media, then falls silent; "node B", on other ports, re-INVITEs the
//! dialog and relays media from then on, as a surviving node does after a failover. Every
//! wait has a deadline; the only timed pause is the stimulus (300+ ms without media).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use media::rtp::{RtpPacket, RtpSender, SAMPLES_PER_PACKET};
use sip::message::{Message, Method, Request, Response};
use sip::uri::Uri;
use sip::SipMessage;

use super::caller::{run_call, CallPlan, CallerEvent};
use super::media::{local_description, negotiate, sdp_body, MediaReport};
use super::phone::{self, PhoneConfig, PhoneEvent};
use super::LOOPBACK;

/// How long any one expected event may take.
const EVENT_DEADLINE: Duration = Duration::from_secs(5);
/// The media outage the takeover tests create; the reported gap must cover it.
const OUTAGE: Duration = Duration::from_millis(350);
const MIN_REPORTED_GAP_MS: u64 = 300;

/// Answers the first REGISTER with a SHA-256 + MD5 challenge and the next with 200; returns
/// the phone's contact address.
async fn fake_registrar(socket: UdpSocket) -> std::net::SocketAddr {
    let mut buf = vec![0u8; 8192];
    loop {
        let (n, source) = socket.recv_from(&mut buf).await.expect("recv");
        let Ok(Message::Request(request)) = sip::parse_message(&buf[..n]) else {
            continue;
        };
        let response = match request.headers.get("Authorization") {
            None => {
                let mut r = Response::for_request(&request, 401, "Unauthorized");
                r.headers.push("WWW-Authenticate", "Digest realm=\"gd.callgrid.local\", nonce=\"n1\", algorithm=SHA-256, qop=\"auth\"");
                r.headers.push(
                    "WWW-Authenticate",
                    "Digest realm=\"gd.callgrid.local\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"",
                );
                r
            }
            Some(value) => {
                let credentials = sip::digest::Credentials::parse(value).expect("credentials");
                assert_eq!(credentials.algorithm, sip::digest::Algorithm::Sha256);
                let ha1 = sip::digest::ha1(
                    credentials.algorithm,
                    "1001",
                    "gd.callgrid.local",
                    "secret-1",
                );
                assert!(credentials.verify("REGISTER", &ha1), "digest verifies");
                let mut r = Response::for_request(&request, 200, "OK");
                let contact = request.contact().expect("contact");
                r.headers
                    .push("Contact", format!("<{}>;expires=300", contact.uri));
                socket.send_to(&r.to_bytes(), source).await.expect("send");
                return super::ua::target_addr(&contact.uri).expect("ip contact");
            }
        };
        socket
            .send_to(&response.to_bytes(), source)
            .await
            .expect("send");
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<phone::PhoneReport>) -> PhoneEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("phone event in time")
        .expect("open")
        .event
}

#[tokio::test]
async fn phone_registers_answers_and_talks_with_a_caller() {
    let registrar = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind");
    let registrar_addr = registrar.local_addr().expect("addr");
    let (phone_tx, mut phone_rx) = mpsc::unbounded_channel();
    let (_stop_tx, stop_rx) = watch::channel(false);
    let config = PhoneConfig {
        tenant: "gd".into(),
        domain: "gd.callgrid.local".into(),
        extension: "1001".into(),
        password: "secret-1".into(),
        registrar: registrar_addr,
        bind_ip: LOOPBACK,
        ring_time: Duration::from_millis(100),
        talk_time: Duration::from_secs(30)..Duration::from_secs(31),
    };
    let _phone = phone::spawn(config, phone_tx, stop_rx.clone());
    let phone_addr = tokio::time::timeout(Duration::from_secs(5), fake_registrar(registrar))
        .await
        .expect("registered in time");
    assert_eq!(next(&mut phone_rx).await, PhoneEvent::Registered);

    let plan = CallPlan {
        node: phone_addr,
        bind_ip: LOOPBACK,
        caller: "13900000000".into(),
        landing_code: "0755".into(),
        access_code: "95598".into(),
        digit: Some('1'),
        digit_delay: Duration::from_millis(300),
        stay: Duration::from_millis(1500),
        limit: Duration::from_secs(20),
    };
    let mut events = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        run_call(plan, |e| events.push(e), stop_rx),
    )
    .await
    .expect("call ends in time")
    .expect("call placed");
    assert!(
        matches!(events.first(), Some(CallerEvent::Answered { .. })),
        "{events:?}"
    );
    match events.get(1) {
        Some(CallerEvent::Ended {
            rtp_in,
            rtp_out,
            by_me,
            ..
        }) => {
            assert!(*by_me);
            assert!(
                *rtp_in > 20 && *rtp_out > 20,
                "rtp in {rtp_in} out {rtp_out}"
            );
        }
        other => panic!("expected Ended, got {other:?}"),
    }
    assert!(matches!(
        next(&mut phone_rx).await,
        PhoneEvent::Ringing { .. }
    ));
    assert!(matches!(
        next(&mut phone_rx).await,
        PhoneEvent::Answered { .. }
    ));
    match next(&mut phone_rx).await {
        PhoneEvent::Ended {
            hung_up_by_me,
            rtp_in,
            ..
        } => {
            assert!(!hung_up_by_me);
            assert!(rtp_in > 20, "phone received {rtp_in}");
        }
        other => panic!("expected Ended, got {other:?}"),
    }
}

// ---- takeover (failover re-INVITE) -------------------------------------------------------

/// A stand-in node's SIP side: a UDP socket and helpers to wait for one kind of message.
struct StandIn {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl StandIn {
    async fn bind() -> StandIn {
        let socket = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        StandIn { socket, addr }
    }

    /// `sip:callgrid@<addr>`, as a node writes its Contact.
    fn contact(&self) -> Uri {
        Uri::sip(
            Some("callgrid"),
            &LOOPBACK.to_string(),
            Some(self.addr.port()),
        )
    }

    async fn send(&self, bytes: Vec<u8>, dest: SocketAddr) {
        self.socket.send_to(&bytes, dest).await.expect("send");
    }

    /// The next message `want` accepts (others, e.g. retransmissions, are skipped), within
    /// the event deadline.
    async fn expect<T>(
        &self,
        what: &str,
        mut want: impl FnMut(Message) -> Option<T>,
    ) -> (T, SocketAddr) {
        let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
        let mut buf = vec![0u8; 8192];
        loop {
            let (n, source) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what} within {EVENT_DEADLINE:?}"))
                .expect("recv");
            let Ok(message) = sip::parse_message(&buf[..n]) else {
                continue;
            };
            if let Some(found) = want(message) {
                return (found, source);
            }
        }
    }

    async fn expect_request(&self, method: Method) -> (Request, SocketAddr) {
        self.expect(&format!("a {method}"), |m| match m {
            Message::Request(r) if r.method == method => Some(r),
            _ => None,
        })
        .await
    }

    /// The final response to the request with CSeq `cseq` `method`.
    async fn expect_final(&self, cseq: u32, method: Method) -> Response {
        let what = format!("a final response to {cseq} {method}");
        self.expect(&what, |m| match m {
            Message::Response(r) if r.status >= 200 && r.cseq() == Some((cseq, method.clone())) => {
                Some(r)
            }
            _ => None,
        })
        .await
        .0
    }

    /// Every datagram waiting on the socket now, without waiting for more.
    fn pending_messages(&self) -> Vec<Message> {
        let mut buf = vec![0u8; 8192];
        let mut out = Vec::new();
        while let Ok((n, _)) = self.socket.try_recv_from(&mut buf) {
            if let Ok(message) = sip::parse_message(&buf[..n]) {
                out.push(message);
            }
        }
        out
    }
}

/// A stand-in node's media side: plays 20 ms PCMA packets to a target (when it has one) and
/// counts what arrives; dropping it stops the task.
struct RtpPeer {
    addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
    received: watch::Receiver<u64>,
    sent: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl RtpPeer {
    async fn bind() -> RtpPeer {
        let socket = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (target, target_rx) = watch::channel(None::<SocketAddr>);
        let (count_tx, received) = watch::channel(0u64);
        let (sent_tx, sent_rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut sender = RtpSender::new(&mut rand::thread_rng());
            let payload = Bytes::from(vec![0xd5u8; SAMPLES_PER_PACKET as usize]);
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            let mut buf = vec![0u8; 2048];
            let mut count = 0u64;
            let mut sent = 0u64;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let dest = *target_rx.borrow();
                        if let Some(dest) = dest {
                            let packet = sender.audio(8, payload.clone(), SAMPLES_PER_PACKET);
                            if socket.send_to(&packet.to_bytes(), dest).await.is_ok() {
                                sent += 1;
                                let _ = sent_tx.send(sent);
                            }
                        }
                    }
                    received = socket.recv_from(&mut buf) => {
                        if let Ok((n, _)) = received {
                            if RtpPacket::parse(&buf[..n]).is_ok() {
                                count += 1;
                                let _ = count_tx.send(count);
                            }
                        }
                    }
                }
            }
        });
        RtpPeer {
            addr,
            target,
            received,
            sent: sent_rx,
            task,
        }
    }

    fn play_to(&self, dest: Option<SocketAddr>) {
        let _ = self.target.send(dest);
    }

    fn received(&self) -> u64 {
        *self.received.borrow()
    }

    /// Waits until `n` more packets have arrived.
    async fn wait_received(&mut self, n: u64, what: &str) {
        let target = self.received() + n;
        tokio::time::timeout(EVENT_DEADLINE, self.received.wait_for(|c| *c >= target))
            .await
            .unwrap_or_else(|_| panic!("{what}: {n} RTP packets within {EVENT_DEADLINE:?}"))
            .expect("peer task alive");
    }

    /// Waits until `n` more packets have been sent.
    async fn wait_sent(&mut self, n: u64, what: &str) {
        let target = *self.sent.borrow() + n;
        tokio::time::timeout(EVENT_DEADLINE, self.sent.wait_for(|c| *c >= target))
            .await
            .unwrap_or_else(|_| panic!("{what}: {n} RTP packets sent within {EVENT_DEADLINE:?}"))
            .expect("peer task alive");
    }

    /// An SDP offer or answer for this peer's port.
    fn sdp(&self) -> Vec<u8> {
        sdp_body(&local_description(LOOPBACK, self.addr.port())).into_bytes()
    }
}

impl Drop for RtpPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An in-dialog request from a stand-in node: `from`/`to` are header values with tags (the
/// node's tag in From).
#[allow(clippy::too_many_arguments)] // A request is these fields; a struct would only rename them.
fn node_request(
    method: Method,
    target: &Uri,
    node: &StandIn,
    branch: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
) -> Request {
    let mut request = Request::new(method.clone(), target.clone());
    request.headers.push(
        "Via",
        format!("SIP/2.0/UDP {};branch=z9hG4bK{branch}", node.addr),
    );
    request.headers.push("Max-Forwards", "70");
    request.headers.push("From", from);
    request.headers.push("To", to);
    request.headers.push("Call-ID", call_id);
    request.headers.push("CSeq", format!("{cseq} {method}"));
    request
        .headers
        .push("Contact", format!("<{}>", node.contact()));
    request
}

/// A re-INVITE from `node` offering `rtp`.
fn reinvite(
    target: &Uri,
    node: &StandIn,
    rtp: &RtpPeer,
    branch: &str,
    (from, to, call_id): (&str, &str, &str),
    cseq: u32,
) -> Request {
    let mut request = node_request(
        Method::Invite,
        target,
        node,
        branch,
        from,
        to,
        call_id,
        cseq,
    );
    request.headers.push("Content-Type", "application/sdp");
    request.body = rtp.sdp();
    request
}

fn ack_for(request: &Request, node: &StandIn, branch: &str) -> Request {
    let mut ack = request.clone();
    ack.method = Method::Ack;
    ack.body.clear();
    ack.headers.remove("Content-Type");
    ack.headers.set(
        "Via",
        format!("SIP/2.0/UDP {};branch=z9hG4bK{branch}", node.addr),
    );
    let cseq = request.cseq().map_or(0, |(n, _)| n);
    ack.headers.set("CSeq", format!("{cseq} ACK"));
    ack
}

fn tag_of(value: Option<sip::name_addr::NameAddr>) -> Option<String> {
    value.and_then(|v| v.tag().map(str::to_string))
}

/// The refresh part of a report every takeover test expects.
fn assert_taken_over(media: &MediaReport, side: &str) {
    assert_eq!(media.refreshes, 1, "{side}: {media:?}");
    assert!(media.last_refresh_unix_ms.is_some(), "{side}: {media:?}");
    assert!(media.rtp_in_before_refresh > 0, "{side}: {media:?}");
    assert!(media.rtp_in_after_refresh > 0, "{side}: {media:?}");
    assert!(media.rtp_out_after_refresh > 0, "{side}: {media:?}");
    assert!(media.received_after_refresh(), "{side}: {media:?}");
}

/// Node A answers the caller, node B takes the call over with a re-INVITE (sent twice, as a
/// lost 200 makes a node do), relays media, and gets the caller's BYE.
#[tokio::test]
async fn caller_follows_a_takeover_to_the_new_node() {
    let node_a = StandIn::bind().await;
    let node_b = StandIn::bind().await;
    let mut rtp_a = RtpPeer::bind().await;
    let mut rtp_b = RtpPeer::bind().await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let plan = CallPlan {
        node: node_a.addr,
        bind_ip: LOOPBACK,
        caller: "13900000001".into(),
        landing_code: "0755".into(),
        access_code: "95598".into(),
        digit: None,
        digit_delay: Duration::ZERO,
        stay: Duration::from_secs(60),
        limit: Duration::from_secs(90),
    };
    let call = tokio::spawn(run_call(
        plan,
        move |event| {
            let _ = events_tx.send(event);
        },
        stop_rx,
    ));

    // Node A answers.
    let (invite, caller_addr) = node_a.expect_request(Method::Invite).await;
    let caller_rtp = negotiate(&invite.body).expect("caller offer").remote;
    let caller_contact = invite.contact().expect("caller contact").uri;
    let mut ok = Response::for_request(&invite, 200, "OK").with_to_tag("node-a");
    ok.headers
        .push("Contact", format!("<{}>", node_a.contact()));
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = rtp_a.sdp();
    node_a.send(ok.to_bytes(), caller_addr).await;
    let (ack, _) = node_a.expect_request(Method::Ack).await;
    assert_eq!(ack.uri, node_a.contact());
    rtp_a.play_to(Some(caller_rtp));
    rtp_a.wait_received(15, "caller to node A").await;

    // Node A dies: its media stops, and after the outage node B re-INVITEs from elsewhere.
    rtp_a.play_to(None);
    tokio::time::sleep(OUTAGE).await;
    let node_from = format!("{};tag=node-a", invite.headers.get("To").expect("To"));
    let caller_to = invite.headers.get("From").expect("From").to_string();
    let call_id = invite.call_id().expect("Call-ID").to_string();
    let dialog = (node_from.as_str(), caller_to.as_str(), call_id.as_str());
    let re = reinvite(&caller_contact, &node_b, &rtp_b, "b-re1", dialog, 101);
    node_b.send(re.to_bytes(), caller_addr).await;
    let ok = node_b.expect_final(101, Method::Invite).await;
    assert_eq!(ok.status, 200);
    assert_eq!(tag_of(ok.to()), tag_of(invite.from()), "same dialog");
    assert!(ok.contact().is_some(), "a Contact in the 200");
    let answer = negotiate(&ok.body).expect("an SDP answer");
    assert_eq!(answer.remote, caller_rtp, "same media port");
    // The same re-INVITE again before any ACK (our 200 "was lost"): the 200 comes again.
    node_b.send(re.to_bytes(), caller_addr).await;
    let again = node_b.expect_final(101, Method::Invite).await;
    assert_eq!((again.status, &again.body), (200, &ok.body));
    // And once more on a new transaction: the same 200, no second refresh.
    let copy = reinvite(&caller_contact, &node_b, &rtp_b, "b-re2", dialog, 101);
    node_b.send(copy.to_bytes(), caller_addr).await;
    let again = node_b.expect_final(101, Method::Invite).await;
    assert_eq!((again.status, &again.body), (200, &ok.body));
    node_b
        .send(ack_for(&re, &node_b, "b-ack1").to_bytes(), caller_addr)
        .await;

    // The caller's RTP now goes to node B only, and node B's reaches the caller.
    rtp_b.play_to(Some(caller_rtp));
    rtp_b.wait_sent(10, "node B to caller").await;
    rtp_b.wait_received(10, "caller to node B").await;
    let at_a = rtp_a.received();
    rtp_b.wait_received(10, "caller to node B").await;
    assert_eq!(rtp_a.received(), at_a, "no more RTP to node A");

    // Hang up: the BYE goes to node B's Contact.
    stop_tx.send(true).expect("caller running");
    let (bye, source) = node_b.expect_request(Method::Bye).await;
    assert_eq!(bye.uri, node_b.contact());
    assert_eq!(bye.call_id(), Some(call_id.as_str()));
    node_b
        .send(Response::for_request(&bye, 200, "OK").to_bytes(), source)
        .await;
    tokio::time::timeout(EVENT_DEADLINE, call)
        .await
        .expect("call ends in time")
        .expect("task")
        .expect("call placed");
    assert!(
        !node_a
            .pending_messages()
            .iter()
            .any(|m| matches!(m, Message::Request(r) if r.method == Method::Bye)),
        "no BYE to the dead node"
    );

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        matches!(seen.first(), Some(CallerEvent::Answered { .. })),
        "{seen:?}"
    );
    let refreshes = seen
        .iter()
        .filter(|e| matches!(e, CallerEvent::Refreshed { .. }))
        .count();
    assert_eq!(refreshes, 1, "{seen:?}");
    match seen.last() {
        Some(CallerEvent::Ended { by_me, media, .. }) => {
            assert!(*by_me);
            assert_taken_over(media, "caller");
            assert!(
                media.max_gap_ms >= MIN_REPORTED_GAP_MS,
                "gap {} ms covers the outage",
                media.max_gap_ms
            );
            assert!(media.max_gap_ms < 5_000, "gap {} ms", media.max_gap_ms);
        }
        other => panic!("expected Ended, got {other:?}"),
    }
}

/// Node B's refusals leave the call alone; its good re-INVITE moves it; its BYE ends it.
#[tokio::test]
async fn caller_refuses_bad_reinvites_and_takes_the_new_nodes_bye() {
    let node_a = StandIn::bind().await;
    let node_b = StandIn::bind().await;
    let rtp_a = RtpPeer::bind().await;
    let mut rtp_b = RtpPeer::bind().await;
    let (_stop_tx, stop_rx) = watch::channel(false);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let plan = CallPlan {
        node: node_a.addr,
        bind_ip: LOOPBACK,
        caller: "13900000002".into(),
        landing_code: "0755".into(),
        access_code: "95598".into(),
        digit: None,
        digit_delay: Duration::ZERO,
        stay: Duration::from_secs(60),
        limit: Duration::from_secs(90),
    };
    let call = tokio::spawn(run_call(
        plan,
        move |event| {
            let _ = events_tx.send(event);
        },
        stop_rx,
    ));
    let (invite, caller_addr) = node_a.expect_request(Method::Invite).await;
    let caller_rtp = negotiate(&invite.body).expect("caller offer").remote;
    let caller_contact = invite.contact().expect("caller contact").uri;
    let mut ok = Response::for_request(&invite, 200, "OK").with_to_tag("node-a");
    ok.headers
        .push("Contact", format!("<{}>", node_a.contact()));
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = rtp_a.sdp();
    node_a.send(ok.to_bytes(), caller_addr).await;
    node_a.expect_request(Method::Ack).await;

    let node_from = format!("{};tag=node-a", invite.headers.get("To").expect("To"));
    let caller_to = invite.headers.get("From").expect("From").to_string();
    let call_id = invite.call_id().expect("Call-ID").to_string();
    let dialog = (node_from.as_str(), caller_to.as_str(), call_id.as_str());
    // Garbage SDP: 400.
    let mut bad = reinvite(&caller_contact, &node_b, &rtp_b, "bad1", dialog, 50);
    bad.body = b"v=0 nonsense".to_vec();
    node_b.send(bad.to_bytes(), caller_addr).await;
    assert_eq!(node_b.expect_final(50, Method::Invite).await.status, 400);
    // Someone else's dialog (wrong To tag): 481.
    let stranger_to = format!(
        "{};tag=someone-else",
        invite
            .headers
            .get("From")
            .expect("From")
            .split(";tag=")
            .next()
            .unwrap_or("")
    );
    let stranger = reinvite(
        &caller_contact,
        &node_b,
        &rtp_b,
        "bad2",
        (node_from.as_str(), stranger_to.as_str(), call_id.as_str()),
        51,
    );
    node_b.send(stranger.to_bytes(), caller_addr).await;
    assert_eq!(node_b.expect_final(51, Method::Invite).await.status, 481);
    // The real takeover.
    let re = reinvite(&caller_contact, &node_b, &rtp_b, "good", dialog, 52);
    node_b.send(re.to_bytes(), caller_addr).await;
    assert_eq!(node_b.expect_final(52, Method::Invite).await.status, 200);
    node_b
        .send(ack_for(&re, &node_b, "good-ack").to_bytes(), caller_addr)
        .await;
    // An older CSeq after it is out of order: 500.
    let late = reinvite(&caller_contact, &node_b, &rtp_b, "late", dialog, 51);
    node_b.send(late.to_bytes(), caller_addr).await;
    assert_eq!(node_b.expect_final(51, Method::Invite).await.status, 500);
    rtp_b.play_to(Some(caller_rtp));
    rtp_b.wait_sent(10, "node B to caller").await;
    rtp_b.wait_received(10, "caller to node B").await;

    // Node B hangs up.
    let bye = node_request(
        Method::Bye,
        &caller_contact,
        &node_b,
        "bye",
        &node_from,
        &caller_to,
        &call_id,
        53,
    );
    node_b.send(bye.to_bytes(), caller_addr).await;
    assert_eq!(node_b.expect_final(53, Method::Bye).await.status, 200);
    tokio::time::timeout(EVENT_DEADLINE, call)
        .await
        .expect("call ends in time")
        .expect("task")
        .expect("call placed");
    let mut last = None;
    while let Ok(event) = events.try_recv() {
        last = Some(event);
    }
    match last {
        Some(CallerEvent::Ended { by_me, media, .. }) => {
            assert!(!by_me);
            assert_eq!(media.refreshes, 1, "{media:?}");
            assert!(media.rtp_in_after_refresh > 0, "{media:?}");
        }
        other => panic!("expected Ended, got {other:?}"),
    }
}

/// Node A calls the phone, node B re-INVITEs, RTP moves to B, and the phone's BYE goes to B.
#[tokio::test]
async fn phone_follows_a_takeover_to_the_new_node() {
    let registrar = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind");
    let registrar_addr = registrar.local_addr().expect("addr");
    let (phone_tx, mut phone_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let config = PhoneConfig {
        tenant: "gd".into(),
        domain: "gd.callgrid.local".into(),
        extension: "1001".into(),
        password: "secret-1".into(),
        registrar: registrar_addr,
        bind_ip: LOOPBACK,
        ring_time: Duration::from_millis(100),
        talk_time: Duration::from_secs(60)..Duration::from_secs(61),
    };
    let phone_task = phone::spawn(config, phone_tx, stop_rx);
    let phone_addr = tokio::time::timeout(EVENT_DEADLINE, fake_registrar(registrar))
        .await
        .expect("registered in time");
    assert_eq!(next(&mut phone_rx).await, PhoneEvent::Registered);

    let node_a = StandIn::bind().await;
    let node_b = StandIn::bind().await;
    let mut rtp_a = RtpPeer::bind().await;
    let mut rtp_b = RtpPeer::bind().await;
    let phone_uri = Uri::sip(Some("1001"), &LOOPBACK.to_string(), Some(phone_addr.port()));
    let node_from = "<sip:13900000003@gd.callgrid.local>;tag=node-a";
    let call_id = "agent-leg-1@127.0.0.1";
    let mut invite = node_request(
        Method::Invite,
        &phone_uri,
        &node_a,
        "a-inv",
        node_from,
        "<sip:1001@gd.callgrid.local>",
        call_id,
        1,
    );
    invite.headers.push("X-Callgrid-Call", "call-42");
    invite.headers.push("Content-Type", "application/sdp");
    invite.body = rtp_a.sdp();
    node_a.send(invite.to_bytes(), phone_addr).await;
    let ok = node_a.expect_final(1, Method::Invite).await;
    assert_eq!(ok.status, 200);
    let phone_rtp = negotiate(&ok.body).expect("phone answer").remote;
    let phone_contact = ok.contact().expect("phone contact").uri;
    let phone_to = ok.headers.get("To").expect("To").to_string();
    let mut ack = node_request(
        Method::Ack,
        &phone_contact,
        &node_a,
        "a-ack",
        node_from,
        &phone_to,
        call_id,
        1,
    );
    ack.headers.remove("Contact");
    node_a.send(ack.to_bytes(), phone_addr).await;
    assert!(matches!(
        next(&mut phone_rx).await,
        PhoneEvent::Ringing { .. }
    ));
    match next(&mut phone_rx).await {
        PhoneEvent::Answered {
            caller,
            cluster_call,
            ..
        } => {
            assert_eq!(caller, "13900000003");
            assert_eq!(cluster_call.as_deref(), Some("call-42"));
        }
        other => panic!("expected Answered, got {other:?}"),
    }
    rtp_a.play_to(Some(phone_rtp));
    rtp_a.wait_received(15, "phone to node A").await;

    // Node A dies; after the outage node B re-INVITEs from another address.
    rtp_a.play_to(None);
    tokio::time::sleep(OUTAGE).await;
    let re = reinvite(
        &phone_contact,
        &node_b,
        &rtp_b,
        "b-re",
        (node_from, phone_to.as_str(), call_id),
        2,
    );
    node_b.send(re.to_bytes(), phone_addr).await;
    let ok = node_b.expect_final(2, Method::Invite).await;
    assert_eq!(ok.status, 200);
    assert_eq!(tag_of(ok.to()), tag_of(re.to()), "same dialog");
    assert!(ok.contact().is_some(), "a Contact in the 200");
    assert_eq!(
        negotiate(&ok.body).expect("an SDP answer").remote,
        phone_rtp,
        "same media port"
    );
    node_b
        .send(ack_for(&re, &node_b, "b-ack").to_bytes(), phone_addr)
        .await;
    assert_eq!(
        next(&mut phone_rx).await,
        PhoneEvent::Refreshed {
            call: call_id.to_string()
        }
    );
    rtp_b.play_to(Some(phone_rtp));
    rtp_b.wait_sent(10, "node B to phone").await;
    rtp_b.wait_received(10, "phone to node B").await;
    let at_a = rtp_a.received();
    rtp_b.wait_received(10, "phone to node B").await;
    assert_eq!(rtp_a.received(), at_a, "no more RTP to node A");

    // The agent hangs up (the phone shuts down): the BYE goes to node B.
    stop_tx.send(true).expect("phone running");
    let (bye, source) = node_b.expect_request(Method::Bye).await;
    assert_eq!(bye.uri, node_b.contact());
    assert_eq!(bye.call_id(), Some(call_id));
    node_b
        .send(Response::for_request(&bye, 200, "OK").to_bytes(), source)
        .await;
    match next(&mut phone_rx).await {
        PhoneEvent::Ended {
            hung_up_by_me,
            caller,
            cluster_call,
            media,
            ..
        } => {
            assert!(hung_up_by_me);
            assert_eq!(caller, "13900000003");
            assert_eq!(cluster_call.as_deref(), Some("call-42"));
            assert_taken_over(&media, "phone");
            assert!(
                media.max_gap_ms >= MIN_REPORTED_GAP_MS,
                "gap {} ms covers the outage",
                media.max_gap_ms
            );
            assert!(media.max_gap_ms < 5_000, "gap {} ms", media.max_gap_ms);
        }
        other => panic!("expected Ended, got {other:?}"),
    }
    tokio::time::timeout(EVENT_DEADLINE, phone_task)
        .await
        .expect("phone stops in time")
        .expect("task")
        .expect("phone ran");
    assert!(
        !node_a
            .pending_messages()
            .iter()
            .any(|m| matches!(m, Message::Request(r) if r.method == Method::Bye)),
        "no BYE to the dead node"
    );
}
