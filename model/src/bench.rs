//! Fixtures for benchmarks: a call checkpoint the size and shape of a real one (a caller in
//! the IVR of a sample tenant, its SIP dialog and SDP), used by the node's Raft bench
//! (`POST /api/v1/bench/raft`), and the reserved ids of its synthetic calls.

use crate::config::Entry;
use crate::ids::CallId;
use crate::runtime::*;

/// Synthetic calls' ids start with this; real call ids (`node-seq-random`) never do.
pub const SYNTHETIC_PREFIX: &str = "bench-";

/// The id of synthetic call `n` of Raft bench run `run`.
pub fn synthetic_id(run: u64, n: u64) -> String {
    format!("{SYNTHETIC_PREFIX}{run}-{n}")
}

/// A synthetic call of the Raft bench: never a call, so never taken over.
pub fn is_synthetic(call_id: &str) -> bool {
    call_id.starts_with(SYNTHETIC_PREFIX)
}

/// The SDP of a carrier's G.711 offer, as a checkpoint keeps it.
const CARRIER_SDP: &str = "v=0\r\no=carrier 2890844526 2890844526 IN IP4 127.0.0.1\r\n\
s=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 0 101\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

/// A realistic checkpoint of call `call_id` owned under `fence`: answered by the platform,
/// two IVR steps walked, at the menu of tenant `gd`.
pub fn call_checkpoint(call_id: &str, fence: Fence, version: u64, at_ms: u64) -> CallCheckpoint {
    let id = CallId(call_id.to_string());
    let customer = LegCheckpoint {
        sip_call_id: format!("{call_id}@carrier.example"),
        local_tag: "cg-5f3a9c1e".into(),
        remote_tag: "carrier-77a1".into(),
        local_uri: "<sip:02095598@127.0.0.11>".into(),
        remote_uri: "<sip:13800138000@127.0.0.1>".into(),
        local_seq: 1,
        remote_seq: Some(1),
        remote_target: "sip:13800138000@127.0.0.1:5070".into(),
        route_set: vec![],
        peer: "127.0.0.1:5070".into(),
        transport: "udp".into(),
        remote_sdp: Some(CARRIER_SDP.into()),
    };
    let started = at_ms.saturating_sub(6_000);
    CallCheckpoint {
        call_id: id.clone(),
        fence,
        version,
        at_ms,
        route: crate::routing::Route {
            tenant: "gd".parse().expect("valid id"),
            access_code: "95598".into(),
            landing_code: Some("020".into()),
            entry: Entry::Flow("main".parse().expect("valid id")),
        },
        phase: CallPhase::Ivr {
            node: "menu".into(),
            flow: None,
        },
        cdr: Cdr {
            call_id: id,
            tenant: Some("gd".parse().expect("valid id")),
            entry_node: fence.node,
            access_code: Some("95598".into()),
            landing_code: Some("020".into()),
            caller: "13800138000".into(),
            dialled: "02095598".into(),
            trunk: Some("carrier".parse().expect("valid id")),
            started_at_ms: started,
            answered_at_ms: Some(started + 20),
            ended_at_ms: 0,
            ivr: vec![
                IvrStep {
                    node: "welcome".into(),
                    key: None,
                    at_ms: started + 40,
                },
                IvrStep {
                    node: "menu".into(),
                    key: None,
                    at_ms: started + 3_000,
                },
            ],
            queue: None,
            enqueued_at_ms: None,
            priority: 0,
            wait_ms: 0,
            agent: None,
            extension: None,
            agent_node: None,
            offered_at_ms: None,
            first_offered_at_ms: None,
            ring_started_at_ms: None,
            agent_answered_at_ms: None,
            ring_ms: 0,
            talk_ms: 0,
            hangup_by: HangupBy::Caller,
            disposition: Disposition::Answered,
            reason: None,
            recording_id: None,
            failovers: vec![],
            rules: vec![],
            wait_announcements: vec![],
            agent_announced_at_ms: None,
            periodic_announcements: 0,
            repeat_caller: None,
            routed_by: Vec::new(),
            voicemail: None,
            callback: None,
            external: None,
        },
        customer,
        agent: None,
        ringing: None,
    }
}
