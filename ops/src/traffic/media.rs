//! The synthetic endpoints' audio: one RTP leg over a tokio UDP socket that sends a tone in
//! real-time 20 ms packets, counts what arrives, and can send an RFC 4733 key press. The
//! server's `media::session::CallMedia` is far more than a phone needs.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use media::dtmf::DtmfSender;
use media::g711::{self, Codec};
use media::prompt::Prompt;
use media::rtp::{RtpPacket, RtpSender, SAMPLES_PER_PACKET};
use media::sdp::{Direction, MediaDescription, DEFAULT_DTMF_PAYLOAD_TYPE};

/// Packetisation interval (RFC 3551 default for G.711).
const PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// RFC 4733 start packets are 50 ms apart (what `DtmfSender` stamps); end packets follow.
const DTMF_START_INTERVAL: Duration = Duration::from_millis(50);

/// Our offer or answer: PCMA, PCMU and telephone-event 101 on `port`.
pub fn local_description(addr: IpAddr, port: u16) -> MediaDescription {
    MediaDescription {
        addr,
        port,
        codecs: vec![Codec::Pcma, Codec::Pcmu],
        dtmf_payload_type: Some(DEFAULT_DTMF_PAYLOAD_TYPE),
        ptime_ms: 20,
        direction: Direction::SendRecv,
    }
}

/// An SDP body for `description`.
pub fn sdp_body(description: &MediaDescription) -> String {
    media::sdp::build_sdp(u64::from(rand::random::<u32>()), 1, description)
}

/// What was negotiated with the far end: where to send, which codec, which DTMF type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub remote: SocketAddr,
    pub codec: Codec,
    pub dtmf_payload_type: Option<u8>,
}

/// Reads the far end's SDP (offer or answer) and picks the first codec we support.
pub fn negotiate(body: &[u8]) -> Option<Negotiated> {
    let text = std::str::from_utf8(body).ok()?;
    let remote = media::sdp::parse_sdp(text).ok()?;
    let (codec, dtmf_payload_type) = media::sdp::negotiate(&remote, &[Codec::Pcma, Codec::Pcmu])?;
    Some(Negotiated {
        remote: SocketAddr::new(remote.addr, remote.port),
        codec,
        dtmf_payload_type,
    })
}

#[derive(Debug, Default)]
pub struct RtpCounters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

enum LegCommand {
    Dtmf(char),
}

/// A running RTP leg; dropping it (or `stop`) ends the task.
pub struct RtpLeg {
    counters: Arc<RtpCounters>,
    commands: mpsc::UnboundedSender<LegCommand>,
    task: tokio::task::JoinHandle<()>,
}

impl RtpLeg {
    /// Starts sending `tone_hz` to `negotiated.remote` from `socket`, and counting input.
    pub fn start(socket: UdpSocket, negotiated: Negotiated, tone_hz: f32) -> RtpLeg {
        let counters = Arc::new(RtpCounters::default());
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_leg(
            socket,
            negotiated,
            tone_hz,
            Arc::clone(&counters),
            rx,
        ));
        RtpLeg {
            counters,
            commands,
            task,
        }
    }

    /// Sends one RFC 4733 key press (ignored if no telephone-event was negotiated).
    pub fn dtmf(&self, key: char) {
        let _ = self.commands.send(LegCommand::Dtmf(key));
    }

    /// (received, sent) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counters.received.load(Ordering::Relaxed),
            self.counters.sent.load(Ordering::Relaxed),
        )
    }

    /// Stops the leg and returns (received, sent).
    pub fn stop(self) -> (u64, u64) {
        self.task.abort();
        self.counts()
    }
}

impl Drop for RtpLeg {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One second of tone, pre-encoded into 20 ms payloads.
fn tone_payloads(codec: Codec, tone_hz: f32) -> Vec<Bytes> {
    let prompt = Prompt::tone("synthetic", &[tone_hz], 1000, 0, 1000);
    prompt
        .frames()
        .map(|frame| Bytes::from(g711::encode(codec, &frame)))
        .collect()
}

async fn run_leg(
    socket: UdpSocket,
    negotiated: Negotiated,
    tone_hz: f32,
    counters: Arc<RtpCounters>,
    mut commands: mpsc::UnboundedReceiver<LegCommand>,
) {
    let payloads = tone_payloads(negotiated.codec, tone_hz);
    let mut sender = RtpSender::new(&mut rand::thread_rng());
    let mut ticker = tokio::time::interval(PACKET_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frame = 0usize;
    // DTMF packets waiting to go, each with the tick count at which it is due.
    let mut dtmf_queue: std::collections::VecDeque<(tokio::time::Instant, RtpPacket)> =
        Default::default();
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = tokio::time::Instant::now();
                let packets: Vec<RtpPacket> = if dtmf_queue.is_empty() {
                    let payload = payloads.get(frame % payloads.len().max(1)).cloned().unwrap_or_default();
                    frame = frame.wrapping_add(1);
                    vec![sender.audio(negotiated.codec.payload_type(), payload, SAMPLES_PER_PACKET)]
                } else {
                    // Audio pauses while a key is being sent (RFC 4733 2.5.1.1 lets either be sent;
                    // sending only the events keeps the detector on the far end simple).
                    let mut due = Vec::new();
                    while dtmf_queue.front().is_some_and(|(at, _)| *at <= now) {
                        if let Some((_, packet)) = dtmf_queue.pop_front() {
                            due.push(packet);
                        }
                    }
                    due
                };
                for packet in packets {
                    if socket.send_to(&packet.to_bytes(), negotiated.remote).await.is_ok() {
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, _)) = received {
                    if buf.get(..n).is_some_and(|d| RtpPacket::parse(d).is_ok()) {
                        counters.received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            command = commands.recv() => match command {
                Some(LegCommand::Dtmf(key)) => {
                    let Some(payload_type) = negotiated.dtmf_payload_type else { continue };
                    let dtmf = DtmfSender::new(payload_type);
                    let Some(packets) = dtmf.packets(key, &mut sender) else { continue };
                    let start = tokio::time::Instant::now();
                    dtmf_queue.extend(dtmf_schedule(start, dtmf.duration_ms, packets));
                }
                None => return,
            },
        }
    }
}

/// When each packet of one key press goes: start packets 50 ms apart, the (repeated) end
/// packets from the key's duration on, one packet interval apart.
fn dtmf_schedule(
    start: tokio::time::Instant,
    duration_ms: u32,
    packets: Vec<RtpPacket>,
) -> Vec<(tokio::time::Instant, RtpPacket)> {
    let starts = (duration_ms / 50).max(1) as usize;
    let mut out = Vec::with_capacity(packets.len());
    for (i, packet) in packets.into_iter().enumerate() {
        let at = if i < starts {
            start + DTMF_START_INTERVAL * i as u32
        } else {
            start
                + Duration::from_millis(u64::from(duration_ms))
                + PACKET_INTERVAL * (i - starts) as u32
        };
        out.push((at, packet));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_round_trips_through_negotiation() {
        let description = local_description("127.0.0.1".parse().expect("ip"), 40_000);
        let body = sdp_body(&description);
        assert!(body.contains("telephone-event/8000"), "{body}");
        let negotiated = negotiate(body.as_bytes()).expect("negotiable");
        assert_eq!(negotiated.remote, "127.0.0.1:40000".parse().expect("addr"));
        assert_eq!(negotiated.codec, Codec::Pcma);
        assert_eq!(negotiated.dtmf_payload_type, Some(101));
    }

    #[test]
    fn dtmf_packets_are_paced_starts_then_ends() {
        let mut sender = RtpSender::new(&mut rand::thread_rng());
        let dtmf = DtmfSender::new(101);
        let packets = dtmf.packets('1', &mut sender).expect("a key");
        let start = tokio::time::Instant::now();
        let schedule = dtmf_schedule(start, dtmf.duration_ms, packets);
        let offsets: Vec<u128> = schedule
            .iter()
            .map(|(at, _)| (*at - start).as_millis())
            .collect();
        assert_eq!(offsets, vec![0, 50, 100, 120, 140]);
        assert!(schedule.iter().all(|(_, p)| p.payload_type == 101));
    }
}
