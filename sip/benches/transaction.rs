//! Transaction matching (RFC 3261 17.1.3 / 17.2.3) with a node's table full: every
//! message that arrives goes through `TransactionLayer::handle_incoming`, which finds its
//! transaction by key. A B2BUA holds two transactions per ringing call: the carrier's INVITE
//! (server) and ours to the agent phone (client). The tables here hold half of each, all
//! in Proceeding (180 sent or received), and the benches feed one message that matches a
//! transaction in the middle: a retransmitted carrier INVITE (absorbed, our 180 resent)
//! and a 180 from an agent phone (passed up as `IncomingResponse`).
//!
//! Run: `cargo bench -p sip --bench transaction`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sip::{
    parse_message, Message, Request, Response, TransactionLayer, TransactionOutput, Transport,
};

const SDP: &str = "v=0\r\no=SBC 1 1 IN IP4 203.0.113.10\r\ns=-\r\nc=IN IP4 203.0.113.20\r\nt=0 0\r\nm=audio 31844 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n";

fn carrier() -> SocketAddr {
    "203.0.113.10:5060".parse().expect("literal")
}

fn phone(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, (i % 250) as u8 + 1], 5060 + (i / 250) as u16))
}

/// The carrier's INVITE for call `i`, as it comes off the wire.
fn carrier_invite(i: usize) -> Message {
    let text = format!(
        "INVITE sip:95598@198.51.100.1:5060;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-sbc-{i:08x};rport\r\n\
Record-Route: <sip:203.0.113.10:5060;lr>\r\n\
Max-Forwards: 69\r\n\
From: \"13800138000\" <sip:13800138000@203.0.113.10;user=phone>;tag=as{i:08x}\r\n\
To: <sip:95598@198.51.100.1;user=phone>\r\n\
Call-ID: {i:08x}-4c6a8e3f5b1d9c7a2e40@203.0.113.10\r\n\
CSeq: 102 INVITE\r\n\
Contact: <sip:13800138000@203.0.113.10:5060>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    parse_message(text.as_bytes()).expect("a valid INVITE")
}

/// Our INVITE to the agent phone of call `i` (its own Via branch, as `send_request` needs).
fn agent_invite(i: usize) -> Request {
    let text = format!(
        "INVITE sip:1001@{phone} SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK-cg-{i:08x};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:95598@198.51.100.1>;tag=cg{i:08x}\r\n\
To: <sip:1001@{phone}>\r\n\
Call-ID: cg-{i:08x}@198.51.100.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:95598@198.51.100.1:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len(),
        phone = phone(i),
    );
    match parse_message(text.as_bytes()).expect("a valid INVITE") {
        Message::Request(request) => request,
        Message::Response(_) => unreachable!("an INVITE is a request"),
    }
}

fn drain(layer: &mut TransactionLayer) -> usize {
    std::iter::from_fn(|| layer.poll_output()).count()
}

/// A layer holding `calls` ringing calls: `calls` server and `calls` client INVITE
/// transactions, all in Proceeding.
fn full_layer(now: Instant, calls: usize) -> TransactionLayer {
    let mut layer = TransactionLayer::new();
    for i in 0..calls {
        layer.handle_incoming(now, carrier_invite(i), carrier(), Transport::Udp);
        let (key, request) = match layer.poll_output() {
            Some(TransactionOutput::IncomingRequest { key, request, .. }) => (key, request),
            other => panic!("expected the INVITE, got {other:?}"),
        };
        let ringing = Response::for_request(&request, 180, "Ringing").with_to_tag("cgtag");
        layer
            .send_response(now, &key, ringing)
            .expect("the transaction is live");
        layer.send_request(now, agent_invite(i), phone(i), Transport::Udp);
        drain(&mut layer);
    }
    for i in 0..calls {
        let ringing = ringing_from_phone(i);
        layer.handle_incoming(now, ringing, phone(i), Transport::Udp);
    }
    drain(&mut layer);
    assert_eq!(layer.len(), (calls, calls), "every transaction is live");
    layer
}

/// The agent phone's 180 for call `i`, as it comes off the wire.
fn ringing_from_phone(i: usize) -> Message {
    let response = Response::for_request(&agent_invite(i), 180, "Ringing").with_to_tag("ph1001");
    parse_message(&response.to_bytes()).expect("we serialise valid SIP")
}

fn lookup(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("sip_transaction");
    group.throughput(Throughput::Elements(1));
    for calls in [50, 5_000] {
        let mut layer = full_layer(now, calls);
        let live = 2 * calls;
        let middle = calls / 2;
        let retransmission = carrier_invite(middle);
        group.bench_with_input(
            BenchmarkId::new("request_retransmission", format!("{live}_live")),
            &retransmission,
            |b, message| {
                b.iter_batched(
                    || message.clone(),
                    |message| {
                        layer.handle_incoming(now, message, carrier(), Transport::Udp);
                        // Absorbed: our 180 goes out again, nothing reaches the TU.
                        assert_eq!(drain(&mut layer), 1);
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        let response = ringing_from_phone(middle);
        group.bench_with_input(
            BenchmarkId::new("response", format!("{live}_live")),
            &response,
            |b, message| {
                b.iter_batched(
                    || message.clone(),
                    |message| {
                        layer.handle_incoming(now, message, phone(middle), Transport::Udp);
                        assert_eq!(drain(&mut layer), 1);
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        assert_eq!(layer.len(), (calls, calls), "no transaction ended");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = lookup
}
criterion_main!(benches);
