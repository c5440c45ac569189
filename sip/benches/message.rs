//! The SIP message hot path: every datagram a node receives is parsed by `parse_message`,
//! and every message it sends is serialised by `to_bytes`. The input is a carrier INVITE as
//! an SBC sends it (two Vias, Record-Route, P-Asserted-Identity, a G.711 + RFC 4733 offer).
//!
//! Run: `cargo bench -p sip --bench message`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sip::{parse_message, Message, Response, SipMessage};

/// The SDP offer of a carrier call: PCMU, PCMA and telephone-event, 20 ms.
const SDP: &str = "v=0\r\n\
o=SBC 1776012345 1776012345 IN IP4 203.0.113.10\r\n\
s=SBC Call\r\n\
c=IN IP4 203.0.113.20\r\n\
t=0 0\r\n\
m=audio 31844 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=maxptime:40\r\n\
a=sendrecv\r\n";

fn carrier_invite() -> Vec<u8> {
    let head = format!(
        "INVITE sip:95598@198.51.100.1:5060;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-524287-1---5b0e9c2f1a7d3e41;rport\r\n\
Via: SIP/2.0/UDP 10.20.30.40:5060;received=10.20.30.40;branch=z9hG4bK3f9a7c1e\r\n\
Record-Route: <sip:203.0.113.10:5060;lr;ftag=as4b7e2c19>\r\n\
Max-Forwards: 69\r\n\
From: \"13800138000\" <sip:13800138000@203.0.113.10;user=phone>;tag=as4b7e2c19\r\n\
To: <sip:95598@198.51.100.1;user=phone>\r\n\
Call-ID: 4f1c9a0e2b7d4c6a8e3f5b1d9c7a2e40@203.0.113.10\r\n\
CSeq: 102 INVITE\r\n\
Contact: <sip:13800138000@203.0.113.10:5060;transport=udp>\r\n\
P-Asserted-Identity: <sip:+8613800138000@203.0.113.10;user=phone>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY\r\n\
Supported: timer, replaces, 100rel\r\n\
Session-Expires: 1800;refresher=uac\r\n\
Min-SE: 90\r\n\
User-Agent: Carrier-SBC/7.4\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n",
        SDP.len()
    );
    [head.as_bytes(), SDP.as_bytes()].concat()
}

fn parse(c: &mut Criterion) {
    let bytes = carrier_invite();
    let mut group = c.benchmark_group("sip_message");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_carrier_invite", |b| {
        b.iter(|| parse_message(std::hint::black_box(&bytes)).expect("a valid INVITE"))
    });
    group.finish();
}

fn serialize(c: &mut Criterion) {
    let Message::Request(invite) = parse_message(&carrier_invite()).expect("a valid INVITE") else {
        panic!("an INVITE is a request");
    };
    // Our answer to it: the 200 OK with our SDP that the call actor sends.
    let mut ok = Response::for_request(&invite, 200, "OK").with_to_tag("cg7f3a91d2");
    ok.headers
        .push("Contact", "<sip:95598@198.51.100.1:5060;transport=udp>");
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = SDP.replace("203.0.113", "198.51.100").into_bytes();
    assert!(ok.call_id().is_some());

    let mut group = c.benchmark_group("sip_message");
    group.throughput(Throughput::Elements(1));
    group.bench_function("serialize_carrier_invite", |b| {
        b.iter(|| std::hint::black_box(&invite).to_bytes())
    });
    group.bench_function("serialize_200_ok_with_sdp", |b| {
        b.iter(|| std::hint::black_box(&ok).to_bytes())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = parse, serialize
}
criterion_main!(benches);
