//! A phone and a caller on loopback, with a fake registrar that challenges once and then
//! accepts: registration with digest, INVITE/180/200/ACK, RTP both ways, BYE.

use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use sip::message::{Message, Response};
use sip::SipMessage;

use super::caller::{run_call, CallPlan, CallerEvent};
use super::phone::{self, PhoneConfig, PhoneEvent};
use super::LOOPBACK;

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
