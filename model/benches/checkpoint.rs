//! Checkpoint encoding: every call transition a new owner would need is a `Command::PutCall`
//! proposed to Raft, and the leader's log store writes each entry as `serde_json::to_vec`
//! of the openraft `Entry` (cluster/src/log_store.rs `append`), whose payload is this
//! command's JSON verbatim (the entry adds its log id, about 70 bytes). Followers and a
//! restarting node decode the same bytes with `serde_json::from_slice`. Checkpoints are
//! batched (`Command::Batch`) when many calls move at once, e.g. a takeover.
//!
//! The checkpoint is the largest common one: a talking call with both SIP legs (and their
//! SDPs), an IVR trail, a queue and an agent.
//!
//! Run: `cargo bench -p model --bench checkpoint`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use model::routing::Route;
use model::{
    CallCheckpoint, CallId, CallPhase, Cdr, Command, Disposition, Entry, Fence, HangupBy, IvrStep,
    LegCheckpoint,
};

const BATCH: usize = 512;

fn sdp(origin: &str, address: &str, port: u16) -> String {
    format!(
        "v=0\r\no={origin} 2890844526 2890844527 IN IP4 {address}\r\ns=-\r\n\
c=IN IP4 {address}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8 0 101\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// Call `n` talking to agent 1001 of queue `billing` after a two-step IVR walk.
fn talking_checkpoint(n: usize) -> CallCheckpoint {
    let call_id = CallId(format!("2-{n}-5f3a9c1e"));
    let t0: u64 = 1_776_000_000_000 + n as u64 * 1_000;
    let customer = LegCheckpoint {
        sip_call_id: format!("{n:08x}-4c6a8e3f5b1d9c7a2e40@203.0.113.10"),
        local_tag: "cg-5f3a9c1e".into(),
        remote_tag: "as4b7e2c19".into(),
        local_uri: "<sip:95598@198.51.100.1;user=phone>".into(),
        remote_uri: "\"13800138000\" <sip:13800138000@203.0.113.10;user=phone>".into(),
        local_seq: 1,
        remote_seq: Some(102),
        remote_target: "sip:13800138000@203.0.113.10:5060;transport=udp".into(),
        route_set: vec!["<sip:203.0.113.10:5060;lr;ftag=as4b7e2c19>".into()],
        peer: "203.0.113.10:5060".into(),
        transport: "UDP".into(),
        remote_sdp: Some(sdp("SBC", "203.0.113.20", 31_844)),
    };
    let agent = LegCheckpoint {
        sip_call_id: format!("cg-{n:08x}@198.51.100.1"),
        local_tag: "cg-77a1d03b".into(),
        remote_tag: "ph-1001-9e2f".into(),
        local_uri: "<sip:95598@198.51.100.1>".into(),
        remote_uri: "<sip:1001@gd.callgrid.example>".into(),
        local_seq: 2,
        remote_seq: None,
        remote_target: "sip:1001@192.0.2.41:5062;ob".into(),
        route_set: vec![],
        peer: "192.0.2.41:5062".into(),
        transport: "UDP".into(),
        remote_sdp: Some(sdp("-", "192.0.2.41", 4_000)),
    };
    let step = |node: &str, key: Option<&str>, at_ms: u64| IvrStep {
        node: node.into(),
        key: key.map(str::to_string),
        at_ms,
    };
    let queue: model::QueueId = "billing".parse().expect("a valid id");
    let agent_id: model::AgentId = "1001".parse().expect("a valid id");
    CallCheckpoint {
        call_id: call_id.clone(),
        fence: Fence { node: 2, epoch: 3 },
        version: 9,
        at_ms: t0 + 41_000,
        route: Route {
            tenant: "gd".parse().expect("a valid id"),
            access_code: "95598".into(),
            landing_code: Some("020".into()),
            entry: Entry::Flow("main".parse().expect("a valid id")),
        },
        phase: CallPhase::Talking {
            queue: queue.clone(),
            agent: agent_id.clone(),
            bridged_at_ms: t0 + 41_000,
        },
        cdr: Cdr {
            call_id,
            tenant: Some("gd".parse().expect("a valid id")),
            entry_node: 2,
            access_code: Some("95598".into()),
            landing_code: Some("020".into()),
            caller: "13800138000".into(),
            dialled: "02095598".into(),
            trunk: Some("carrier-a".parse().expect("a valid id")),
            started_at_ms: t0,
            answered_at_ms: Some(t0 + 120),
            ended_at_ms: t0 + 41_000,
            ivr: vec![
                step("welcome", None, t0 + 150),
                step("menu", Some("2"), t0 + 6_400),
                step("to_billing", None, t0 + 6_450),
            ],
            queue: Some(queue),
            enqueued_at_ms: Some(t0 + 6_450),
            priority: 1,
            wait_ms: 28_300,
            agent: Some(agent_id),
            extension: Some("1001".parse().expect("a valid id")),
            agent_node: Some(1),
            offered_at_ms: Some(t0 + 34_750),
            first_offered_at_ms: Some(t0 + 34_750),
            ring_started_at_ms: Some(t0 + 34_800),
            agent_answered_at_ms: Some(t0 + 40_900),
            ring_ms: 6_100,
            talk_ms: 0,
            hangup_by: HangupBy::System,
            disposition: Disposition::Answered,
            reason: None,
            recording_id: Some(format!("2-{n}-5f3a9c1e-n2")),
            failovers: vec![],
            rules: vec![],
            wait_announcements: vec![],
            periodic_announcements: 1,
            agent_announced_at_ms: Some(t0 + 40_950),
            routed_by: vec!["vip-callers".into()],
            repeat_caller: None,
            voicemail: None,
            callback: None,
            external: None,
        },
        customer,
        agent: Some(agent),
        ringing: None,
    }
}

fn put_call(n: usize) -> Command {
    Command::PutCall {
        checkpoint: Arc::new(talking_checkpoint(n)),
    }
}

fn encode(command: &Command) -> Vec<u8> {
    serde_json::to_vec(command).expect("a command always serialises")
}

fn decode(bytes: &[u8]) -> Command {
    serde_json::from_slice(bytes).expect("bytes we encoded")
}

fn checkpoint(c: &mut Criterion) {
    let single = put_call(1);
    let batch = Command::Batch {
        commands: (0..BATCH).map(put_call).collect(),
    };
    let single_bytes = encode(&single);
    let batch_bytes = encode(&batch);
    assert_eq!(decode(&single_bytes), single, "the encoding round-trips");
    eprintln!(
        "checkpoint: PutCall {} bytes, Batch of {BATCH} {} bytes",
        single_bytes.len(),
        batch_bytes.len()
    );

    let mut group = c.benchmark_group("checkpoint");
    for (name, command, bytes, calls) in [
        ("put_call", &single, &single_bytes, 1),
        ("batch", &batch, &batch_bytes, BATCH),
    ] {
        group.throughput(Throughput::Elements(calls as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), command, |b, command| {
            b.iter(|| encode(std::hint::black_box(command)))
        });
        group.bench_with_input(BenchmarkId::new("decode", name), bytes, |b, bytes| {
            b.iter(|| decode(std::hint::black_box(bytes)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = checkpoint
}
criterion_main!(benches);
