//! The synthetic endpoints' audio: one RTP leg over a tokio UDP socket that sends a tone in
//! real-time 20 ms packets, counts what arrives, and can send an RFC 4733 key press. The
//! server's `media::session::CallMedia` is far more than a phone needs.
//!
//! [`Audio`] is what the phone and the caller hold for one call. Besides counting packets it
//! measures what a failover drill asks of the media path: the longest silence between two
//! received packets, and what arrived before and after the last target refresh (the
//! re-INVITE a surviving node sends when it takes a call over), so a drill can tell "audio
//! came back within X ms" from "audio never came back".

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Why a far end's SDP cannot be used; a re-INVITE carrying it is refused with
/// [`OfferError::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferError {
    /// Not SDP we can read (bad UTF-8, syntax, no audio stream or no IP `c=`).
    Malformed(String),
    /// Readable, but no codec in common, or the audio stream is disabled (port 0).
    NotAcceptable(String),
}

impl OfferError {
    /// 400 for what is broken, 488 (RFC 3261 13.3.1.1) for what we merely cannot do.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            OfferError::Malformed(_) => (400, "Bad Request"),
            OfferError::NotAcceptable(_) => (488, "Not Acceptable Here"),
        }
    }
}

impl std::fmt::Display for OfferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfferError::Malformed(why) => write!(f, "malformed SDP: {why}"),
            OfferError::NotAcceptable(why) => write!(f, "unacceptable SDP: {why}"),
        }
    }
}

/// Reads the far end's SDP (offer or answer) and picks the first codec we support.
pub fn negotiate(body: &[u8]) -> Option<Negotiated> {
    negotiate_checked(body).ok()
}

/// [`negotiate`], telling a broken body from one we only cannot accept, so a re-INVITE can
/// be answered with the right status.
pub fn negotiate_checked(body: &[u8]) -> Result<Negotiated, OfferError> {
    let text =
        std::str::from_utf8(body).map_err(|_| OfferError::Malformed("body is not UTF-8".into()))?;
    let remote =
        media::sdp::parse_sdp(text).map_err(|error| OfferError::Malformed(error.to_string()))?;
    if remote.port == 0 {
        // RFC 3264 8.2: port 0 removes the stream; a call without audio is not one we play.
        return Err(OfferError::NotAcceptable("audio stream disabled".into()));
    }
    let (codec, dtmf_payload_type) = media::sdp::negotiate(&remote, &[Codec::Pcma, Codec::Pcmu])
        .ok_or_else(|| OfferError::NotAcceptable("no PCMA or PCMU".into()))?;
    Ok(Negotiated {
        remote: SocketAddr::new(remote.addr, remote.port),
        codec,
        dtmf_payload_type,
    })
}

/// What one endpoint measured about a call's audio, reported when the call ends.
///
/// Each side only knows what it received; "both ways after the failover" is the caller's
/// and the agent's `rtp_in_after_refresh` together (see `traffic::CallRecord`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MediaReport {
    pub rtp_in: u64,
    pub rtp_out: u64,
    /// The longest time without received RTP (ms): between two received packets, or from
    /// the last one to the end of the call, so audio that never came back still shows. The
    /// wait for the first packet is not counted (that is call setup, not an outage); if no
    /// packet ever arrived it is the whole time media ran. 0 when no media ran at all.
    pub max_gap_ms: u64,
    /// Target refreshes (accepted re-INVITEs) during the call.
    pub refreshes: u32,
    /// When the last one was accepted, in Unix ms (to line up with a drill's own clock).
    pub last_refresh_unix_ms: Option<u64>,
    /// RTP received up to the last refresh, and after it.
    pub rtp_in_before_refresh: u64,
    pub rtp_in_after_refresh: u64,
    /// RTP sent after the last refresh (to the new node, if it moved the media).
    pub rtp_out_after_refresh: u64,
    /// The outage a takeover caused: from the last packet received before the last refresh
    /// to the first one after it (None without a refresh, or if media never came back).
    pub refresh_gap_ms: Option<u64>,
    /// RFC 3550 interarrival jitter of the received stream at the end, in microseconds.
    pub jitter_us: u64,
}

impl MediaReport {
    pub fn refreshed(&self) -> bool {
        self.refreshes > 0
    }

    /// This side's half of "RTP flows both ways after the takeover".
    pub fn received_after_refresh(&self) -> bool {
        self.refreshed() && self.rtp_in_after_refresh > 0
    }
}

/// The counters at the moment of a target refresh.
#[derive(Debug, Clone, Copy)]
struct RefreshMark {
    unix_ms: u64,
    received: u64,
    sent: u64,
    /// The last packet before the refresh, and the gap to the first one after it.
    last_received: Option<Instant>,
    gap: Option<Duration>,
}

/// Shared between [`Audio`] and its RTP task; plain arithmetic on instants passed in, so
/// the gap logic is tested without sockets.
#[derive(Debug, Default)]
struct LegStats {
    received: u64,
    sent: u64,
    /// When the RTP task started (the gap clock starts here if nothing ever arrives).
    started: Option<Instant>,
    last_received: Option<Instant>,
    max_gap: Duration,
    refreshes: u32,
    last_refresh: Option<RefreshMark>,
    /// RFC 3550 6.4.1 interarrival jitter, in RTP timestamp units (8 kHz), and the last
    /// packet's transit time it is computed from.
    jitter: f64,
    last_transit: Option<f64>,
}

impl LegStats {
    /// A received packet's RTP timestamp, for the jitter estimate (RFC 3550 A.8).
    fn on_timestamp(&mut self, now: Instant, timestamp: u32) {
        let Some(started) = self.started else { return };
        let arrival = now.saturating_duration_since(started).as_secs_f64() * 8000.0;
        let transit = arrival - f64::from(timestamp);
        if let Some(last) = self.last_transit {
            // Timestamps wrap at 2^32 (and a new stream restarts them): such a jump is not
            // jitter.
            let d = (transit - last).abs();
            if d < 8000.0 {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.last_transit = Some(transit);
    }

    fn on_received(&mut self, now: Instant) {
        self.received += 1;
        if let Some(last) = self.last_received {
            self.max_gap = self.max_gap.max(now.saturating_duration_since(last));
        }
        if let Some(mark) = self.last_refresh.as_mut() {
            if mark.gap.is_none() {
                mark.gap = mark
                    .last_received
                    .map(|before| now.saturating_duration_since(before));
            }
        }
        self.last_received = Some(now);
    }

    fn on_refresh(&mut self, unix_ms: u64) {
        self.refreshes = self.refreshes.saturating_add(1);
        self.last_refresh = Some(RefreshMark {
            unix_ms,
            received: self.received,
            sent: self.sent,
            last_received: self.last_received,
            gap: None,
        });
    }

    /// The report for a call whose audio ended at `end`.
    fn report(&self, end: Instant) -> MediaReport {
        let open_since = self.last_received.or(self.started);
        let trailing = open_since.map_or(Duration::ZERO, |t| end.saturating_duration_since(t));
        let refresh = self.last_refresh;
        MediaReport {
            rtp_in: self.received,
            rtp_out: self.sent,
            max_gap_ms: ms(self.max_gap.max(trailing)),
            refreshes: self.refreshes,
            last_refresh_unix_ms: refresh.map(|r| r.unix_ms),
            rtp_in_before_refresh: refresh.map_or(0, |r| r.received),
            rtp_in_after_refresh: refresh.map_or(0, |r| self.received.saturating_sub(r.received)),
            rtp_out_after_refresh: refresh.map_or(0, |r| self.sent.saturating_sub(r.sent)),
            refresh_gap_ms: refresh.and_then(|r| r.gap).map(ms),
            jitter_us: (self.jitter / 8.0 * 1000.0) as u64,
        }
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

/// The stats lock; a panic elsewhere must not take the measurements down with it.
fn lock(stats: &Mutex<LegStats>) -> MutexGuard<'_, LegStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One call's audio: the RTP port (bound before the offer/answer so the SDP can name it)
/// and, once the far end's SDP is known, the task that plays and counts.
pub struct Audio {
    port: u16,
    tone_hz: f32,
    /// Until the first negotiated SDP: the bound socket, waiting for its task.
    socket: Option<UdpSocket>,
    leg: Option<RtpLeg>,
    stats: Arc<Mutex<LegStats>>,
}

impl Audio {
    /// Wraps the call's RTP socket; nothing is sent until [`Audio::start`].
    pub fn new(socket: UdpSocket, tone_hz: f32) -> std::io::Result<Audio> {
        let port = socket.local_addr()?.port();
        Ok(Audio {
            port,
            tone_hz,
            socket: Some(socket),
            leg: None,
            stats: Arc::default(),
        })
    }

    /// Our RTP port, for every SDP of this call (it never changes, RFC 3264 8).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Plays to `negotiated.remote`: starts the task the first time, and moves it (new
    /// address, possibly a new codec) afterwards.
    pub fn start(&mut self, negotiated: Negotiated) {
        if let Some(leg) = &self.leg {
            leg.retarget(negotiated);
            return;
        }
        let Some(socket) = self.socket.take() else {
            return;
        };
        lock(&self.stats).started = Some(Instant::now());
        self.leg = Some(RtpLeg::start(
            socket,
            negotiated,
            self.tone_hz,
            Arc::clone(&self.stats),
        ));
    }

    /// A target refresh was accepted: note it (the before/after counts split here) and move
    /// the media to `negotiated`, or keep it where it is when the re-INVITE had no offer
    /// (the answer then comes in the ACK, and [`Audio::start`] moves it).
    pub fn refresh(&mut self, negotiated: Option<Negotiated>) {
        lock(&self.stats).on_refresh(unix_ms_now());
        if let Some(negotiated) = negotiated {
            self.start(negotiated);
        }
    }

    /// Sends one RFC 4733 key press (ignored if no telephone-event was negotiated).
    pub fn dtmf(&self, key: char) {
        if let Some(leg) = &self.leg {
            leg.dtmf(key);
        }
    }

    /// Stops the audio (the call is over at `end`: a hang-up, or the far end's BYE) and
    /// returns what was measured.
    pub fn finish(mut self, end: Instant) -> MediaReport {
        if let Some(leg) = self.leg.take() {
            leg.stop();
        }
        lock(&self.stats).report(end)
    }
}

enum LegCommand {
    Dtmf(char),
    Retarget(Negotiated),
}

/// A running RTP task; dropping it (or `stop`) ends the task.
struct RtpLeg {
    commands: mpsc::UnboundedSender<LegCommand>,
    task: tokio::task::JoinHandle<()>,
}

impl RtpLeg {
    /// Starts sending `tone_hz` to `negotiated.remote` from `socket`, and counting input.
    fn start(
        socket: UdpSocket,
        negotiated: Negotiated,
        tone_hz: f32,
        stats: Arc<Mutex<LegStats>>,
    ) -> RtpLeg {
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_leg(socket, negotiated, tone_hz, stats, rx));
        RtpLeg { commands, task }
    }

    fn dtmf(&self, key: char) {
        let _ = self.commands.send(LegCommand::Dtmf(key));
    }

    fn retarget(&self, negotiated: Negotiated) {
        let _ = self.commands.send(LegCommand::Retarget(negotiated));
    }

    fn stop(self) {
        self.task.abort();
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
    mut negotiated: Negotiated,
    tone_hz: f32,
    stats: Arc<Mutex<LegStats>>,
    mut commands: mpsc::UnboundedReceiver<LegCommand>,
) {
    let mut payloads = tone_payloads(negotiated.codec, tone_hz);
    // One RTP stream for the whole call: a new remote address does not restart SSRC,
    // sequence or timestamp (the new node sees the stream continue, as a relay would).
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
                        lock(&stats).sent += 1;
                    }
                }
            }
            received = socket.recv_from(&mut buf) => {
                // From any source: after a takeover the new node's media comes from an
                // address we have never seen, before or after its re-INVITE reaches us.
                if let Ok((n, _)) = received {
                    if let Some(packet) = buf.get(..n).and_then(|d| RtpPacket::parse(d).ok()) {
                        let now = Instant::now();
                        let mut stats = lock(&stats);
                        stats.on_received(now);
                        stats.on_timestamp(now, packet.timestamp);
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
                Some(LegCommand::Retarget(next)) => {
                    if next.codec != negotiated.codec {
                        payloads = tone_payloads(next.codec, tone_hz);
                    }
                    tracing::debug!(from = %negotiated.remote, to = %next.remote, "RTP moved");
                    negotiated = next;
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
    fn jitter_is_zero_for_a_steady_stream_and_grows_with_uneven_arrivals() {
        let start = Instant::now();
        let mut steady = LegStats {
            started: Some(start),
            ..LegStats::default()
        };
        for i in 0..100u32 {
            steady.on_timestamp(start + Duration::from_millis(u64::from(i) * 20), i * 160);
        }
        assert_eq!(steady.report(start).jitter_us, 0);
        let mut uneven = LegStats {
            started: Some(start),
            ..LegStats::default()
        };
        for i in 0..200u32 {
            // Every other packet arrives 4 ms late: |D| is 4 ms each time, so J tends to 4 ms.
            let late = if i % 2 == 1 { 4 } else { 0 };
            let at = start + Duration::from_millis(u64::from(i) * 20 + late);
            uneven.on_timestamp(at, i * 160);
        }
        let jitter = uneven.report(start).jitter_us;
        assert!((3_500..=4_000).contains(&jitter), "{jitter}");
    }

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

    #[test]
    fn gaps_count_between_packets_and_to_the_end_but_not_before_the_first() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut stats = LegStats {
            started: Some(t0),
            ..Default::default()
        };
        // Setup: the first packet 500 ms after the start is not an outage.
        for t in [500, 520, 540] {
            stats.on_received(at(t));
        }
        stats.sent = 30;
        stats.on_refresh(1_700_000_000_000);
        // 340 ms of silence across the takeover, then audio again.
        for t in [880, 900, 920] {
            stats.on_received(at(t));
        }
        stats.sent = 40;
        let report = stats.report(at(950));
        assert_eq!(report.max_gap_ms, 340);
        assert_eq!(report.rtp_in, 6);
        assert_eq!(report.refreshes, 1);
        assert_eq!(report.last_refresh_unix_ms, Some(1_700_000_000_000));
        assert_eq!(
            (report.rtp_in_before_refresh, report.rtp_in_after_refresh),
            (3, 3)
        );
        assert_eq!(report.rtp_out_after_refresh, 10);
        assert!(report.received_after_refresh());
        // Audio that never came back: the open gap up to the end counts.
        assert_eq!(stats.report(at(2_920)).max_gap_ms, 2_000);
        // Nothing ever arrived: the whole time media ran.
        let silent = LegStats {
            started: Some(t0),
            ..Default::default()
        };
        assert_eq!(silent.report(at(700)).max_gap_ms, 700);
        assert_eq!(LegStats::default().report(at(700)).max_gap_ms, 0);
        assert!(!silent.report(at(700)).received_after_refresh());
    }

    #[test]
    fn offers_we_cannot_use_say_why() {
        assert!(matches!(
            negotiate_checked(b"not sdp"),
            Err(OfferError::Malformed(_))
        ));
        assert!(matches!(
            negotiate_checked(&[0xff, 0xfe]),
            Err(OfferError::Malformed(_))
        ));
        let g729 = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        let error = negotiate_checked(g729.as_bytes()).expect_err("no common codec");
        assert_eq!(error.status().0, 488);
        let disabled = sdp_body(&local_description("127.0.0.1".parse().expect("ip"), 0));
        assert_eq!(
            negotiate_checked(disabled.as_bytes())
                .expect_err("port 0")
                .status()
                .0,
            488
        );
    }
}
