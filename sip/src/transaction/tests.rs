//! Exact-output tests for the transaction layer on a virtual clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::message::{Message, Request, Response, SipMessage, Uri};
use crate::parse::parse_message;

fn peer() -> SocketAddr {
    "192.0.2.10:5060".parse().expect("addr")
}

fn make_request(method: Method, branch: &str) -> Request {
    let mut req = Request::new(
        method.clone(),
        Uri::parse("sip:bob@192.0.2.10").expect("uri"),
    );
    req.headers
        .push("Via", format!("SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"));
    req.headers.push("Max-Forwards", "70");
    req.headers.push("From", "<sip:alice@example.com>;tag=a1");
    req.headers.push("To", "<sip:bob@example.com>");
    req.headers.push("Call-ID", "call-1");
    req.headers.push("CSeq", format!("1 {method}"));
    req
}

fn drain(layer: &mut TransactionLayer) -> Vec<TransactionOutput> {
    std::iter::from_fn(|| layer.poll_output()).collect()
}

fn transmitted(outputs: &[TransactionOutput]) -> Vec<Message> {
    outputs
        .iter()
        .filter_map(|o| match o {
            TransactionOutput::Transmit { bytes, .. } => {
                Some(parse_message(bytes).expect("we emit valid SIP"))
            }
            _ => None,
        })
        .collect()
}

/// Runs timers until `until`, returning (offset ms, outputs) per firing.
fn run_until(
    layer: &mut TransactionLayer,
    t0: Instant,
    until: Duration,
) -> Vec<(u128, Vec<TransactionOutput>)> {
    let mut log = Vec::new();
    while let Some(at) = layer.poll_timeout() {
        if at > t0 + until {
            break;
        }
        layer.handle_timeout(at);
        let out = drain(layer);
        if !out.is_empty() {
            log.push(((at - t0).as_millis(), out));
        }
    }
    log
}

#[test]
fn invite_client_udp_retransmits_and_times_out_at_32s() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let key = layer.send_request(
        t0,
        make_request(Method::Invite, "z9hG4bKinv"),
        peer(),
        Transport::Udp,
    );
    assert_eq!(transmitted(&drain(&mut layer)).len(), 1);
    let log = run_until(&mut layer, t0, Duration::from_secs(60));
    let times: Vec<u128> = log.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![500, 1500, 3500, 7500, 15500, 31500, 32000]);
    assert_eq!(
        log.last().map(|(_, o)| o.clone()),
        Some(vec![TransactionOutput::Timeout { key }])
    );
    assert_eq!(layer.len(), (0, 0));
}

#[test]
fn invite_client_acks_486_itself_and_absorbs_retransmission() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let req = make_request(Method::Invite, "z9hG4bKbusy");
    let key = layer.send_request(t0, req.clone(), peer(), Transport::Udp);
    let _ = drain(&mut layer);
    let ringing = Response::for_request(&req, 180, "Ringing").with_to_tag("b1");
    layer.handle_incoming(
        t0 + Duration::from_millis(100),
        Message::Response(ringing.clone()),
        peer(),
        Transport::Udp,
    );
    assert_eq!(
        drain(&mut layer),
        vec![TransactionOutput::IncomingResponse {
            key: key.clone(),
            response: ringing
        }]
    );
    // Timer A stopped by the provisional.
    assert_eq!(layer.poll_timeout(), None);
    let busy = Response::for_request(&req, 486, "Busy Here").with_to_tag("b1");
    layer.handle_incoming(
        t0 + Duration::from_secs(1),
        Message::Response(busy.clone()),
        peer(),
        Transport::Udp,
    );
    let out = drain(&mut layer);
    let sent = transmitted(&out);
    let Some(Message::Request(ack)) = sent.first() else {
        panic!("expected an ACK, got {out:?}");
    };
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.cseq(), Some((1, Method::Ack)));
    assert_eq!(
        ack.to()
            .and_then(|t| t.tag().map(str::to_string))
            .as_deref(),
        Some("b1")
    );
    assert_eq!(
        ack.top_via()
            .and_then(|v| v.branch().map(str::to_string))
            .as_deref(),
        Some("z9hG4bKbusy")
    );
    assert_eq!(
        out.last(),
        Some(&TransactionOutput::IncomingResponse {
            key,
            response: busy.clone()
        })
    );
    // A retransmitted 486 is re-ACKed, not delivered.
    layer.handle_incoming(
        t0 + Duration::from_secs(2),
        Message::Response(busy),
        peer(),
        Transport::Udp,
    );
    let out = drain(&mut layer);
    assert_eq!(out.len(), 1);
    assert!(
        matches!(transmitted(&out).first(), Some(Message::Request(r)) if r.method == Method::Ack)
    );
    // Timer D (32 s) ends it.
    assert_eq!(layer.poll_timeout(), Some(t0 + Duration::from_secs(33)));
    layer.handle_timeout(t0 + Duration::from_secs(33));
    assert_eq!(layer.len(), (0, 0));
}

#[test]
fn invite_2xx_terminates_and_retransmitted_2xx_is_stray() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let req = make_request(Method::Invite, "z9hG4bKok");
    let key = layer.send_request(t0, req.clone(), peer(), Transport::Udp);
    let _ = drain(&mut layer);
    let ok = Response::for_request(&req, 200, "OK").with_to_tag("b2");
    layer.handle_incoming(t0, Message::Response(ok.clone()), peer(), Transport::Udp);
    assert_eq!(
        drain(&mut layer),
        vec![TransactionOutput::IncomingResponse {
            key,
            response: ok.clone()
        }]
    );
    layer.handle_incoming(t0, Message::Response(ok.clone()), peer(), Transport::Udp);
    assert_eq!(
        drain(&mut layer),
        vec![TransactionOutput::StrayResponse {
            response: ok,
            source: peer()
        }]
    );
}

#[test]
fn non_invite_client_caps_at_t2_and_times_out() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let key = layer.send_request(
        t0,
        make_request(Method::Options, "z9hG4bKopt"),
        peer(),
        Transport::Udp,
    );
    let _ = drain(&mut layer);
    let log = run_until(&mut layer, t0, Duration::from_secs(60));
    let times: Vec<u128> = log.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500, 32000]
    );
    assert_eq!(
        log.last().map(|(_, o)| o.clone()),
        Some(vec![TransactionOutput::Timeout { key }])
    );
}

#[test]
fn tcp_client_never_retransmits() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let req = make_request(Method::Invite, "z9hG4bKtcp");
    let key = layer.send_request(t0, req.clone(), peer(), Transport::Tcp);
    assert_eq!(drain(&mut layer).len(), 1);
    let log = run_until(&mut layer, t0, Duration::from_secs(60));
    assert_eq!(
        log,
        vec![(32000, vec![TransactionOutput::Timeout { key: key.clone() }])]
    );
    // A 486 over TCP: ACK sent, transaction gone at once (timer D = 0).
    let key = layer.send_request(t0, req.clone(), peer(), Transport::Tcp);
    let _ = drain(&mut layer);
    let busy = Response::for_request(&req, 486, "Busy Here").with_to_tag("x");
    layer.handle_incoming(t0, Message::Response(busy.clone()), peer(), Transport::Tcp);
    let out = drain(&mut layer);
    assert_eq!(transmitted(&out).len(), 1);
    assert_eq!(
        out.last(),
        Some(&TransactionOutput::IncomingResponse {
            key,
            response: busy
        })
    );
    assert_eq!(layer.len(), (0, 0));
}

#[test]
fn invite_server_absorbs_retransmission_sends_trying_and_retransmits_final_until_ack() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let invite = make_request(Method::Invite, "z9hG4bKsrv");
    layer.handle_incoming(t0, Message::Request(invite.clone()), peer(), Transport::Udp);
    let out = drain(&mut layer);
    let [TransactionOutput::IncomingRequest { key, request, .. }] = out.as_slice() else {
        panic!("expected one IncomingRequest, got {out:?}");
    };
    assert_eq!(
        request
            .top_via()
            .and_then(|v| v.param("received").flatten().map(str::to_string))
            .as_deref(),
        Some("192.0.2.10")
    );
    // Retransmission before any response: absorbed.
    layer.handle_incoming(
        t0 + Duration::from_millis(50),
        Message::Request(invite.clone()),
        peer(),
        Transport::Udp,
    );
    assert_eq!(drain(&mut layer), vec![]);
    // 200 ms without an answer: automatic 100 Trying.
    assert_eq!(layer.poll_timeout(), Some(t0 + Duration::from_millis(200)));
    layer.handle_timeout(t0 + Duration::from_millis(200));
    let sent = transmitted(&drain(&mut layer));
    assert!(matches!(sent.as_slice(), [Message::Response(r)] if r.status == 100));
    // Retransmitted INVITE is answered with the 100.
    layer.handle_incoming(
        t0 + Duration::from_millis(300),
        Message::Request(invite.clone()),
        peer(),
        Transport::Udp,
    );
    assert!(
        matches!(transmitted(&drain(&mut layer)).as_slice(), [Message::Response(r)] if r.status == 100)
    );
    // 486: retransmitted by timer G at 500ms, 1s, 2s, 4s, 4s ...
    let t1 = t0 + Duration::from_secs(1);
    let busy = Response::for_request(request, 486, "Busy Here").with_to_tag("s1");
    layer
        .send_response(t1, key, busy)
        .expect("live transaction");
    assert_eq!(transmitted(&drain(&mut layer)).len(), 1);
    let log = run_until(&mut layer, t1, Duration::from_secs(12));
    let times: Vec<u128> = log.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![500, 1500, 3500, 7500, 11500]);
    // ACK stops it; it is absorbed, not delivered.
    let mut ack = request.clone();
    ack.method = Method::Ack;
    ack.headers.set("CSeq", "1 ACK");
    layer.handle_incoming(
        t1 + Duration::from_secs(13),
        Message::Request(ack),
        peer(),
        Transport::Udp,
    );
    assert_eq!(drain(&mut layer), vec![]);
    assert_eq!(layer.poll_timeout(), Some(t1 + Duration::from_secs(18)));
    layer.handle_timeout(t1 + Duration::from_secs(18));
    assert_eq!(layer.len(), (0, 0));
}

#[test]
fn invite_server_timer_h_without_ack() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    layer.handle_incoming(
        t0,
        Message::Request(make_request(Method::Invite, "z9hG4bKh")),
        peer(),
        Transport::Tcp,
    );
    let Some(TransactionOutput::IncomingRequest { key, request, .. }) = layer.poll_output() else {
        panic!("expected IncomingRequest");
    };
    layer
        .send_response(t0, &key, Response::for_request(&request, 603, "Decline"))
        .expect("live");
    let _ = drain(&mut layer);
    let log = run_until(&mut layer, t0, Duration::from_secs(60));
    assert_eq!(log, vec![(32000, vec![TransactionOutput::Timeout { key }])]);
}

#[test]
fn invite_server_2xx_then_ack_goes_to_tu_and_retransmitted_invite_is_absorbed() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let invite = make_request(Method::Invite, "z9hG4bKacc");
    layer.handle_incoming(t0, Message::Request(invite.clone()), peer(), Transport::Udp);
    let Some(TransactionOutput::IncomingRequest { key, request, .. }) = layer.poll_output() else {
        panic!("expected IncomingRequest");
    };
    layer
        .send_response(
            t0,
            &key,
            Response::for_request(&request, 200, "OK").with_to_tag("z"),
        )
        .expect("live");
    assert_eq!(transmitted(&drain(&mut layer)).len(), 1);
    assert!(layer
        .send_response(t0, &key, Response::for_request(&request, 200, "OK"))
        .is_err());
    layer.handle_incoming(
        t0 + Duration::from_millis(500),
        Message::Request(invite),
        peer(),
        Transport::Udp,
    );
    assert_eq!(drain(&mut layer), vec![]);
    let mut ack = make_request(Method::Ack, "z9hG4bKnewack");
    ack.headers.set("CSeq", "1 ACK");
    layer.handle_incoming(
        t0 + Duration::from_secs(1),
        Message::Request(ack.clone()),
        peer(),
        Transport::Udp,
    );
    let out = drain(&mut layer);
    assert!(
        matches!(out.as_slice(), [TransactionOutput::IncomingAck { request, .. }] if request.method == Method::Ack)
    );
}

#[test]
fn non_invite_server_answers_retransmissions_with_last_response() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let bye = make_request(Method::Bye, "z9hG4bKbye");
    layer.handle_incoming(t0, Message::Request(bye.clone()), peer(), Transport::Udp);
    let Some(TransactionOutput::IncomingRequest { key, request, .. }) = layer.poll_output() else {
        panic!("expected IncomingRequest");
    };
    assert_eq!(
        layer.poll_timeout(),
        None,
        "no automatic 100 for non-INVITE"
    );
    layer
        .send_response(t0, &key, Response::for_request(&request, 200, "OK"))
        .expect("live");
    let _ = drain(&mut layer);
    layer.handle_incoming(
        t0 + Duration::from_secs(1),
        Message::Request(bye),
        peer(),
        Transport::Udp,
    );
    assert!(
        matches!(transmitted(&drain(&mut layer)).as_slice(), [Message::Response(r)] if r.status == 200)
    );
    // Timer J = 64*T1.
    assert_eq!(layer.poll_timeout(), Some(t0 + Duration::from_secs(32)));
}

#[test]
fn cancel_matches_invite() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let invite = make_request(Method::Invite, "z9hG4bKcan");
    layer.handle_incoming(t0, Message::Request(invite.clone()), peer(), Transport::Udp);
    let Some(TransactionOutput::IncomingRequest {
        key: invite_key, ..
    }) = layer.poll_output()
    else {
        panic!("expected IncomingRequest");
    };
    let mut cancel = invite.clone();
    cancel.method = Method::Cancel;
    cancel.headers.set("CSeq", "1 CANCEL");
    layer.handle_incoming(t0, Message::Request(cancel), peer(), Transport::Udp);
    let out = drain(&mut layer);
    let [TransactionOutput::Cancelled {
        invite_key: k,
        cancel_key,
        request,
        ..
    }] = out.as_slice()
    else {
        panic!("expected Cancelled, got {out:?}");
    };
    assert_eq!(*k, invite_key);
    layer
        .send_response(t0, cancel_key, Response::for_request(request, 200, "OK"))
        .expect("cancel tx");
    layer
        .send_response(
            t0,
            &invite_key,
            Response::for_request(request, 487, "Request Terminated"),
        )
        .expect("invite tx");
    assert_eq!(transmitted(&drain(&mut layer)).len(), 2);
    // A CANCEL for nothing is an ordinary request (the TU answers 481).
    let mut stray = request.clone();
    stray
        .headers
        .set("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKother");
    layer.handle_incoming(t0, Message::Request(stray), peer(), Transport::Udp);
    assert!(matches!(
        drain(&mut layer).as_slice(),
        [TransactionOutput::IncomingRequest { .. }]
    ));
}

#[test]
fn transport_error_fails_client_transactions() {
    let t0 = Instant::now();
    let mut layer = TransactionLayer::new();
    let key = layer.send_request(
        t0,
        make_request(Method::Options, "z9hG4bKte"),
        peer(),
        Transport::Tcp,
    );
    let _ = drain(&mut layer);
    layer.handle_transport_error(t0, peer(), Transport::Tcp);
    assert_eq!(
        drain(&mut layer),
        vec![TransactionOutput::TransportError { key }]
    );
    assert_eq!(layer.len(), (0, 0));
}

#[test]
fn the_timer_heap_answers_the_earliest_live_timer_after_others_stop_or_fire() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut layer = TransactionLayer::new();
    let a = make_request(Method::Invite, "z9hG4bKheapA");
    let b = make_request(Method::Invite, "z9hG4bKheapB");
    layer.send_request(t0, a.clone(), peer(), Transport::Udp);
    layer.send_request(t0 + ms(100), b, peer(), Transport::Udp);
    let _ = drain(&mut layer);
    // Timer A of the first INVITE.
    assert_eq!(layer.poll_timeout(), Some(t0 + ms(500)));
    // A provisional stops A's timers: its heap entry is stale, the answer is B's Timer A.
    let ringing = Response::for_request(&a, 180, "Ringing").with_to_tag("h1");
    layer.handle_incoming(
        t0 + ms(200),
        Message::Response(ringing),
        peer(),
        Transport::Udp,
    );
    let _ = drain(&mut layer);
    assert_eq!(layer.poll_timeout(), Some(t0 + ms(600)));
    // B's Timer A fires once (a retransmission) and doubles.
    layer.handle_timeout(t0 + ms(600));
    assert_eq!(transmitted(&drain(&mut layer)).len(), 1);
    assert_eq!(layer.poll_timeout(), Some(t0 + ms(1600)));
    // Nothing fires early.
    layer.handle_timeout(t0 + ms(1599));
    assert!(drain(&mut layer).is_empty());
    assert_eq!(layer.len(), (2, 0));
}
