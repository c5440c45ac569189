//! RTP relay per packet: the pure `MediaCore` of a bridged call takes one G.711 packet
//! from a leg (`handle_datagram`) and yields the packet for the other leg (`Transmit`,
//! our SSRC and numbering) and, when recording, the decoded audio (`Record`). A call sends
//! 50 packets a second on each leg, so one bridged call costs 100 of these a second.
//!
//! `recorded_call_to_wav` is the driver's whole per-packet work for a recorded call but
//! the socket: both legs in turn, each `Record` pushed into a `DualChannelRecorder`
//! writing a WAV in the temp directory.
//!
//! Run: `cargo bench -p media --bench relay`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use media::g711::{self, Codec};
use media::prompt::{Prompt, FRAME_SAMPLES};
use media::recorder::DualChannelRecorder;
use media::sdp::{Direction, MediaDescription};
use media::session::{LegId, MediaCore, Output};
use rand::SeedableRng;

const FRAME: Duration = Duration::from_millis(20);

fn address(leg: LegId) -> SocketAddr {
    match leg {
        LegId::Customer => "203.0.113.20:31844",
        LegId::Agent => "192.0.2.41:4000",
    }
    .parse()
    .expect("literal")
}

fn remote(leg: LegId, codec: Codec) -> MediaDescription {
    let address = address(leg);
    MediaDescription {
        addr: address.ip(),
        port: address.port(),
        codecs: vec![codec],
        dtmf_payload_type: Some(101),
        ptime_ms: 20,
        direction: Direction::SendRecv,
    }
}

/// A bridged call: the customer speaks `customer`, the agent phone `agent`.
fn bridged(now: Instant, customer: Codec, agent: Codec, record: bool) -> MediaCore {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut core = MediaCore::new(Duration::from_secs(30));
    for (leg, codec) in [(LegId::Customer, customer), (LegId::Agent, agent)] {
        core.handle_add_leg(leg, &mut rng);
        core.handle_set_remote(leg, &remote(leg, codec), codec, Some(101));
    }
    core.handle_bridge(now, record);
    core
}

/// A phone's RTP stream: 20 ms of speech-band audio per packet, numbered as it goes.
struct Phone {
    datagram: Vec<u8>,
    sequence: u16,
    timestamp: u32,
}

impl Phone {
    fn new(codec: Codec, ssrc: u32) -> Phone {
        let tone = Prompt::tone("voice", &[300.0, 1100.0, 2300.0], 1000, 0, 20);
        let payload = g711::encode(codec, &tone.samples);
        assert_eq!(payload.len(), FRAME_SAMPLES);
        let mut datagram = vec![0x80, codec.payload_type(), 0, 0, 0, 0, 0, 0];
        datagram.extend_from_slice(&ssrc.to_be_bytes());
        datagram.extend_from_slice(&payload);
        Phone {
            datagram,
            sequence: 1,
            timestamp: 160_000,
        }
    }

    /// The next packet's bytes.
    fn next(&mut self) -> &[u8] {
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        self.datagram[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        self.datagram[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        &self.datagram
    }
}

fn relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("media_relay");
    group.throughput(Throughput::Elements(1));
    for (name, customer, agent, record) in [
        ("pcmu_to_pcmu", Codec::Pcmu, Codec::Pcmu, false),
        ("pcmu_to_pcmu_recording", Codec::Pcmu, Codec::Pcmu, true),
        ("pcma_to_pcmu_recording", Codec::Pcma, Codec::Pcmu, true),
    ] {
        let t0 = Instant::now();
        let mut core = bridged(t0, customer, agent, record);
        let mut phone = Phone::new(customer, 0x5EED_CA11);
        let mut now = t0;
        let outputs = if record { 2 } else { 1 };
        let source = address(LegId::Customer);
        group.bench_function(BenchmarkId::new("one_packet", name), |b| {
            b.iter(|| {
                now += FRAME;
                core.handle_datagram(now, LegId::Customer, source, phone.next());
                let mut n = 0;
                while let Some(output) = core.poll_output() {
                    std::hint::black_box(&output);
                    n += 1;
                }
                // The first packet also reports `FirstPacket`.
                assert!(n == outputs || n == outputs + 1);
            })
        });
        let stats = core.stats();
        assert_eq!(stats.customer.packets_in, stats.agent.packets_out);
        assert_eq!(stats.customer.packets_dropped, 0);
    }
    group.finish();
}

/// Relays and records one packet per leg for `iters` 20 ms frames into a fresh WAV file;
/// returns the time spent (file creation and closing excluded).
fn recorded_frames(iters: u64, file: u64) -> Duration {
    let path = std::env::temp_dir().join(format!(
        "callgrid-bench-relay-{}-{file}.wav",
        std::process::id()
    ));
    let mut recorder = DualChannelRecorder::create(&path).expect("temp dir writable");
    let t0 = Instant::now();
    let mut core = bridged(t0, Codec::Pcma, Codec::Pcmu, true);
    let mut customer = Phone::new(Codec::Pcma, 0x5EED_CA11);
    let mut agent = Phone::new(Codec::Pcmu, 0xA6E7_1001);
    let mut now = t0;
    let start = Instant::now();
    for _ in 0..iters {
        now += FRAME;
        for (leg, phone) in [(LegId::Customer, &mut customer), (LegId::Agent, &mut agent)] {
            core.handle_datagram(now, leg, address(leg), phone.next());
            while let Some(output) = core.poll_output() {
                match output {
                    Output::Record {
                        channel,
                        position_samples,
                        samples,
                    } => recorder
                        .push(channel, position_samples, &samples)
                        .expect("temp file writable"),
                    other => {
                        std::hint::black_box(other);
                    }
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let info = recorder.finish().expect("temp file writable");
    assert!(info.samples + 2 * FRAME_SAMPLES as u64 >= iters * FRAME_SAMPLES as u64);
    let _ = std::fs::remove_file(&path);
    elapsed
}

fn recorded_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("media_relay");
    // One element: 20 ms of a recorded call, a packet relayed each way and both recorded.
    group.throughput(Throughput::Elements(1));
    let mut file = 0;
    group.bench_function("recorded_call_to_wav/20ms_both_legs", |b| {
        b.iter_custom(|iters| {
            file += 1;
            recorded_frames(iters, file)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = relay, recorded_call
}
criterion_main!(benches);
