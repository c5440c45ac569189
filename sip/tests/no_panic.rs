//! Property tests: nothing from the network can panic the parser, the
//! framer, the header parsers or the transaction layer.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use sip::digest::{Challenge, Credentials};
use sip::message::{NameAddr, Uri, Via};
use sip::{error_response, parse_message, Message, StreamFramer, TransactionLayer, Transport};

const VALID: &str = "INVITE sip:bob@example.com SIP/2.0\r\nv: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK77;rport\r\nMax-Forwards: 70\r\nf: \"A\" <sip:alice@example.com>;tag=1\r\nt: <sip:bob@example.com>\r\ni: prop@x\r\nCSeq: 1 INVITE\r\nm: <sip:alice@192.0.2.1>\r\nRecord-Route: <sip:p.example.com;lr>\r\nc: application/sdp\r\nl: 4\r\n\r\nv=0\n";

/// A valid message with random bytes spliced in, which reaches far deeper
/// into the parser than uniformly random bytes do.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<usize>(),
        0usize..8,
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(at, cut, insert)| {
            let mut bytes = VALID.as_bytes().to_vec();
            let at = at % bytes.len();
            let cut_end = (at + cut).min(bytes.len());
            bytes.splice(at..cut_end, insert);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_message(&bytes) {
            let _ = error_response(&bytes, &e);
        }
    }

    #[test]
    fn mutated_messages_never_panic_and_reparse(bytes in mutated()) {
        match parse_message(&bytes) {
            Ok(message) => {
                // What we accept, we serialise into something we accept again.
                let again = parse_message(&message.to_bytes());
                prop_assert!(again.is_ok(), "{:?}", again);
            }
            Err(e) => {
                if let Some(reply) = error_response(&bytes, &e) {
                    prop_assert_eq!(reply.status, 400);
                }
            }
        }
    }

    #[test]
    fn framer_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024), chunk in 1usize..64) {
        let mut framer = StreamFramer::new();
        for piece in bytes.chunks(chunk) {
            framer.push(piece);
            while framer.next_message().is_some() {}
        }
    }

    #[test]
    fn framer_splits_mutated_streams(a in mutated(), b in mutated(), chunk in 1usize..97) {
        let mut framer = StreamFramer::new();
        let stream: Vec<u8> = [a, b"\r\n".to_vec(), b].concat();
        for piece in stream.chunks(chunk) {
            framer.push(piece);
            while framer.next_message().is_some() {}
        }
    }

    #[test]
    fn field_parsers_never_panic(s in "\\PC{0,80}") {
        let _ = Uri::parse(&s);
        let _ = NameAddr::parse(&s);
        let _ = Via::parse(&s);
        let _ = Challenge::parse(&s);
        let _ = Credentials::parse(&s);
        let _ = Uri::parse(&format!("sip:{s}"));
        let _ = NameAddr::parse(&format!("\"{s}\" <sip:{s}>;{s}"));
        let _ = Via::parse(&format!("SIP/2.0/UDP {s}"));
        let _ = Credentials::parse(&format!("Digest {s}"));
    }

    #[test]
    fn transaction_layer_never_panics(messages in proptest::collection::vec(mutated(), 1..12)) {
        let mut layer = TransactionLayer::new();
        let t0 = Instant::now();
        let source = "192.0.2.1:5060".parse().expect("addr");
        for (i, bytes) in messages.iter().enumerate() {
            let now = t0 + Duration::from_millis(300 * i as u64);
            if let Ok(message) = parse_message(bytes) {
                let is_request = matches!(message, Message::Request(_));
                layer.handle_incoming(now, message, source, Transport::Udp);
                while let Some(output) = layer.poll_output() {
                    if let (true, sip::TransactionOutput::IncomingRequest { key, request, .. }) = (is_request, output) {
                        let _ = layer.send_response(now, &key, sip::Response::for_request(&request, 486, "Busy Here"));
                    }
                }
            }
            layer.handle_timeout(now);
            while layer.poll_output().is_some() {}
        }
        layer.handle_timeout(t0 + Duration::from_secs(120));
        while layer.poll_output().is_some() {}
        prop_assert_eq!(layer.len(), (0, 0));
    }

    #[test]
    fn framing_is_independent_of_chunking(chunk in 1usize..200, keepalives in 0usize..4) {
        let stream = format!("{}{VALID}{}{VALID}", "\r\n".repeat(keepalives), "\r\n\r\n".repeat(keepalives));
        let mut framer = StreamFramer::new();
        let mut got = Vec::new();
        for piece in stream.as_bytes().chunks(chunk) {
            framer.push(piece);
            while let Some(m) = framer.next_message() {
                got.push(m);
            }
        }
        prop_assert_eq!(got.len(), 2);
        prop_assert!(got.iter().all(|m| m.is_ok()));
        prop_assert_eq!(framer.buffered(), 0);
    }
}
