//! The pure core of one call's media: two legs, optional prompt playback on
//! each, an optional bridge between them, and the recording feed.
//!
//! Call order for the driver: feed inputs with `handle_*` (datagrams,
//! commands, `handle_timeout` when `poll_timeout` is reached), then drain
//! `poll_output` until it returns `None`, then sleep until `poll_timeout`.
//! The core never reads the clock, touches a socket or writes a file: it
//! asks for transmits and recording writes through [`Output`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tracing::{debug, trace};

use crate::dtmf::{parse_telephone_event, DtmfReceiver};
use crate::g711::{self, Codec};
use crate::prompt::{Prompt, FRAME_SAMPLES, SAMPLE_RATE};
use crate::recorder::Channel;
use crate::rtp::{RtpPacket, RtpSender};
use crate::sdp::{Direction, MediaDescription};

/// Playback may fall this far behind (a stalled task) before we skip ahead
/// instead of bursting the backlog at the phone.
const MAX_PLAYBACK_LAG: Duration = Duration::from_millis(200);
/// Recording positions within this many samples (60 ms) of where the
/// previous packet ended are treated as contiguous, so network jitter does
/// not punch gaps or overlaps into the recording.
const RECORD_JITTER_SAMPLES: u64 = 480;
const FRAME_DURATION: Duration = Duration::from_millis(20);

/// The two legs a contact-center call has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegId {
    Customer,
    Agent,
}

impl LegId {
    fn index(self) -> usize {
        match self {
            LegId::Customer => 0,
            LegId::Agent => 1,
        }
    }

    fn other(self) -> LegId {
        match self {
            LegId::Customer => LegId::Agent,
            LegId::Agent => LegId::Customer,
        }
    }

    fn channel(self) -> Channel {
        match self {
            LegId::Customer => Channel::Customer,
            LegId::Agent => Channel::Agent,
        }
    }
}

/// What call control hears about a call's media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A DTMF key (RFC 4733), reported once per press, also while bridged.
    Dtmf { leg: LegId, digit: char },
    /// A non-repeating prompt finished.
    PlayDone { leg: LegId },
    /// The leg sent RTP before but has been silent for the configured time.
    RtpTimeout { leg: LegId },
    /// The leg's first RTP packet arrived (media is flowing).
    FirstPacket { leg: LegId },
}

/// Per-leg traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegStats {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams that were not RTP or carried a payload type we do not use.
    pub packets_dropped: u64,
}

/// Counters for both legs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    pub customer: LegStats,
    pub agent: LegStats,
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a datagram from the leg's socket.
    Transmit {
        leg: LegId,
        destination: SocketAddr,
        datagram: Bytes,
    },
    /// Tell call control.
    Event(MediaEvent),
    /// Push decoded audio to the call's recorder.
    Record {
        channel: Channel,
        position_samples: u64,
        samples: Vec<i16>,
    },
}

#[derive(Debug, Clone)]
struct Remote {
    address: SocketAddr,
    codec: Codec,
    dtmf_payload_type: Option<u8>,
    direction: Direction,
}

#[derive(Debug, Clone)]
struct Playback {
    prompt: Prompt,
    repeat: bool,
    next_frame: usize,
    next_due: Instant,
}

#[derive(Debug)]
struct Leg {
    remote: Option<Remote>,
    /// Where the leg's packets come from, once they do (symmetric RTP).
    latched: Option<SocketAddr>,
    sender: RtpSender,
    dtmf: DtmfReceiver,
    stats: LegStats,
    last_packet_at: Option<Instant>,
    timeout_reported: bool,
    playback: Option<Playback>,
    /// Where this leg's next recorded audio is expected to start.
    record_next: Option<u64>,
}

impl Leg {
    /// Where to send: the latched source, else the SDP address, unless the
    /// far end said it does not want media or gave no usable address.
    fn destination(&self) -> Option<SocketAddr> {
        let remote = self.remote.as_ref()?;
        if matches!(remote.direction, Direction::SendOnly | Direction::Inactive) {
            return None;
        }
        if let Some(latched) = self.latched {
            return Some(latched);
        }
        // c=0.0.0.0 (RFC 2543 hold) or port 0 means "do not send".
        (!remote.address.ip().is_unspecified() && remote.address.port() != 0)
            .then_some(remote.address)
    }
}

/// One call's media decisions. See the module docs for the call order.
#[derive(Debug)]
pub struct MediaCore {
    legs: [Option<Leg>; 2],
    bridged: bool,
    /// Recording positions are measured from here; set by the first bridge
    /// that records, kept across unbridge so a hold becomes silence.
    recording_started: Option<Instant>,
    /// Recording the legs' audio without relaying it (a queue voicemail, R3.20).
    recording_unbridged: bool,
    rtp_timeout: Duration,
    outputs: VecDeque<Output>,
}

impl MediaCore {
    pub fn new(rtp_timeout: Duration) -> MediaCore {
        MediaCore {
            legs: [None, None],
            bridged: false,
            recording_started: None,
            recording_unbridged: false,
            rtp_timeout,
            outputs: VecDeque::new(),
        }
    }

    /// Creates a leg (idempotent). The RNG seeds its SSRC and numbering.
    pub fn handle_add_leg<R: Rng + ?Sized>(&mut self, leg: LegId, rng: &mut R) {
        let slot = &mut self.legs[leg.index()];
        if slot.is_none() {
            *slot = Some(Leg {
                remote: None,
                latched: None,
                sender: RtpSender::new(rng),
                dtmf: DtmfReceiver::new(),
                stats: LegStats::default(),
                last_packet_at: None,
                timeout_reported: false,
                playback: None,
                record_next: None,
            });
        }
    }

    /// Applies the far end's SDP and the negotiated codec. A new SDP may
    /// move the far end, so latching starts over.
    pub fn handle_set_remote(
        &mut self,
        leg: LegId,
        remote: &MediaDescription,
        codec: Codec,
        dtmf_payload_type: Option<u8>,
    ) {
        let Some(state) = self.legs[leg.index()].as_mut() else {
            debug!(?leg, "set_remote for a leg that was never added; ignored");
            return;
        };
        state.remote = Some(Remote {
            address: SocketAddr::new(remote.addr, remote.port),
            codec,
            dtmf_payload_type,
            direction: remote.direction,
        });
        state.latched = None;
    }

    /// Starts playing a prompt on a leg from `now`, replacing any current one.
    pub fn handle_play(&mut self, now: Instant, leg: LegId, prompt: Prompt, repeat: bool) {
        let Some(state) = self.legs[leg.index()].as_mut() else {
            return;
        };
        state.sender.start_talkspurt();
        state.playback = Some(Playback {
            prompt,
            repeat,
            next_frame: 0,
            next_due: now,
        });
    }

    /// Stops a prompt without a `PlayDone` (the caller asked for it).
    pub fn handle_stop_play(&mut self, leg: LegId) {
        if let Some(state) = self.legs[leg.index()].as_mut() {
            if state.playback.take().is_some() {
                state.sender.start_talkspurt();
            }
        }
    }

    /// Starts relaying between the legs; `record` asks for [`Output::Record`].
    /// Samples of wall-clock time since the recording started, if it did.
    pub fn recording_length(&self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.recording_started?);
        Some((elapsed.as_micros() * u128::from(SAMPLE_RATE) / 1_000_000) as u64)
    }

    pub fn handle_bridge(&mut self, now: Instant, record: bool) {
        self.bridged = true;
        if record && self.recording_started.is_none() {
            self.recording_started = Some(now);
        }
        for state in self.legs.iter_mut().flatten() {
            state.sender.start_talkspurt();
        }
    }

    /// Records what the legs send without relaying it (a voicemail, R3.20): the caller's
    /// audio goes to its channel of [`Output::Record`], from `now`.
    pub fn handle_record(&mut self, now: Instant) {
        self.recording_unbridged = true;
        if self.recording_started.is_none() {
            self.recording_started = Some(now);
        }
    }

    /// Stops relaying; the recording, if any, stays open and records silence.
    pub fn handle_unbridge(&mut self) {
        self.bridged = false;
    }

    pub fn is_bridged(&self) -> bool {
        self.bridged
    }

    pub fn stats(&self) -> MediaStats {
        let stats = |leg: LegId| {
            self.legs[leg.index()]
                .as_ref()
                .map(|l| l.stats)
                .unwrap_or_default()
        };
        MediaStats {
            customer: stats(LegId::Customer),
            agent: stats(LegId::Agent),
        }
    }

    /// A datagram arrived on a leg's socket from `source`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        leg: LegId,
        source: SocketAddr,
        datagram: &[u8],
    ) {
        let Some(state) = self.legs[leg.index()].as_mut() else {
            return;
        };
        state.stats.bytes_in += datagram.len() as u64;
        let packet = match RtpPacket::parse(datagram) {
            Ok(packet) => packet,
            Err(error) => {
                state.stats.packets_dropped += 1;
                trace!(?leg, %source, %error, "dropped non-RTP datagram");
                return;
            }
        };
        state.stats.packets_in += 1;
        // RFC 4961 symmetric RTP: NAT'd phones can only be reached at the address
        // their packets come from. We latch on the first packet after each SDP
        // only, so a stray or spoofed packet later cannot steal the stream; but
        // a packet from the SDP address itself always wins. A stray packet may
        // latch first: a node that restarts hands its calls new ports, and a
        // port of this leg may be one another call's phone still sends to until
        // its own re-INVITE reaches it (the leg's phone would then get nothing).
        let from_sdp = state.remote.as_ref().is_some_and(|r| r.address == source);
        if state.latched.is_none() || (from_sdp && state.latched != Some(source)) {
            state.latched = Some(source);
            debug!(?leg, %source, "RTP source latched");
        }
        if state.last_packet_at.is_none() {
            self.outputs
                .push_back(Output::Event(MediaEvent::FirstPacket { leg }));
        }
        state.last_packet_at = Some(now);
        state.timeout_reported = false;

        let dtmf_payload_type = state.remote.as_ref().and_then(|r| r.dtmf_payload_type);
        if Some(packet.payload_type) == dtmf_payload_type {
            self.on_telephone_event(leg, &packet);
        } else if let Some(codec) = Codec::from_payload_type(packet.payload_type) {
            // Accept either G.711 law whatever was negotiated: some phones
            // switch among the codecs they offered.
            self.on_audio(now, leg, codec, &packet);
        } else {
            // Comfort noise, G.729 and anything else we never agreed to.
            state.stats.packets_dropped += 1;
            trace!(
                ?leg,
                payload_type = packet.payload_type,
                "dropped unexpected payload type"
            );
        }
    }

    fn on_telephone_event(&mut self, leg: LegId, packet: &RtpPacket) {
        let Some(state) = self.legs[leg.index()].as_mut() else {
            return;
        };
        let Some(event) = parse_telephone_event(&packet.payload) else {
            state.stats.packets_dropped += 1;
            return;
        };
        if let Some(digit) = state.dtmf.handle_event(packet.timestamp, event) {
            debug!(?leg, "DTMF digit received");
            self.outputs
                .push_back(Output::Event(MediaEvent::Dtmf { leg, digit }));
        }
        if !self.bridged {
            return;
        }
        let Some(other) = self.legs[leg.other().index()].as_mut() else {
            return;
        };
        // The other leg may use a different payload type for telephone-event,
        // or none, in which case it cannot receive relayed DTMF.
        let (Some(destination), Some(payload_type)) = (
            other.destination(),
            other.remote.as_ref().and_then(|r| r.dtmf_payload_type),
        ) else {
            return;
        };
        if other.playback.is_some() {
            return;
        }
        let out = other
            .sender
            .relay(packet, payload_type, packet.payload.clone(), 0);
        transmit(&mut self.outputs, leg.other(), other, destination, &out);
    }

    fn on_audio(&mut self, now: Instant, leg: LegId, codec: Codec, packet: &RtpPacket) {
        if !self.bridged && !self.recording_unbridged {
            return;
        }
        if let Some(started) = self.recording_started {
            let samples = g711::decode(codec, &packet.payload);
            if let Some(state) = self.legs[leg.index()].as_mut() {
                let elapsed = now.saturating_duration_since(started);
                let arrival = (elapsed.as_micros() * u128::from(SAMPLE_RATE) / 1_000_000) as u64;
                let position = match state.record_next {
                    Some(expected) if arrival.abs_diff(expected) <= RECORD_JITTER_SAMPLES => {
                        expected
                    }
                    _ => arrival,
                };
                state.record_next = Some(position + samples.len() as u64);
                self.outputs.push_back(Output::Record {
                    channel: leg.channel(),
                    position_samples: position,
                    samples,
                });
            }
        }
        if !self.bridged {
            return;
        }
        let Some(other) = self.legs[leg.other().index()].as_mut() else {
            return;
        };
        // A prompt playing to the other leg (e.g. a whisper or a hold
        // message) takes precedence over the relayed voice.
        if other.playback.is_some() {
            return;
        }
        let (Some(destination), Some(remote)) = (other.destination(), other.remote.as_ref()) else {
            return;
        };
        let out_codec = remote.codec;
        let payload = if out_codec == codec {
            packet.payload.clone()
        } else {
            Bytes::from(g711::transcode(codec, out_codec, &packet.payload))
        };
        let samples = packet.payload.len() as u32;
        let out = other
            .sender
            .relay(packet, out_codec.payload_type(), payload, samples);
        transmit(&mut self.outputs, leg.other(), other, destination, &out);
    }

    /// Advances playback and checks RTP timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        for leg in [LegId::Customer, LegId::Agent] {
            self.advance_playback(now, leg);
            let Some(state) = self.legs[leg.index()].as_mut() else {
                continue;
            };
            if let Some(last) = state.last_packet_at {
                if !state.timeout_reported && now >= last + self.rtp_timeout {
                    state.timeout_reported = true;
                    debug!(?leg, "RTP timeout");
                    self.outputs
                        .push_back(Output::Event(MediaEvent::RtpTimeout { leg }));
                }
            }
        }
    }

    fn advance_playback(&mut self, now: Instant, leg: LegId) {
        let Some(state) = self.legs[leg.index()].as_mut() else {
            return;
        };
        let destination = state.destination();
        if destination.is_none() {
            // Nobody to send to (a=inactive or sendonly, or no address yet): the prompt's
            // time passes without encoding a frame every 20 ms, so a call on hold costs no
            // timer and no work until the far end wants media again or the prompt ends.
            if let Some(playback) = state.playback.as_mut() {
                if playback.next_due > now {
                    return;
                }
                let frames = ((now - playback.next_due).as_micros() / FRAME_DURATION.as_micros())
                    as usize
                    + 1;
                let count = playback.prompt.frame_count();
                playback.next_due += FRAME_DURATION * frames as u32;
                state.sender.skip(FRAME_SAMPLES as u32 * frames as u32);
                if playback.repeat && count > 0 {
                    playback.next_frame = (playback.next_frame + frames) % count;
                } else {
                    playback.next_frame += frames;
                    // Past the last frame's slot, as on a leg that sends (PlayDone comes 20
                    // ms after the last frame was due).
                    if playback.next_frame > count {
                        state.playback = None;
                        state.sender.start_talkspurt();
                        self.outputs
                            .push_back(Output::Event(MediaEvent::PlayDone { leg }));
                    }
                }
            }
            return;
        }
        let codec = state.remote.as_ref().map_or(Codec::Pcmu, |r| r.codec);
        while let Some(playback) = state.playback.as_mut() {
            if playback.next_due > now {
                break;
            }
            if now - playback.next_due > MAX_PLAYBACK_LAG {
                // We were not scheduled for a while (or the far end did not want
                // media); resume from now rather than flood the phone's jitter
                // buffer with the backlog, as a new talkspurt.
                // The media clock runs on over the gap (skip also starts a talkspurt).
                let gap = (now - playback.next_due).as_micros() as u64 * 8 / 1000;
                state.sender.skip(gap as u32);
                playback.next_due = now;
            }
            let frame = match playback.prompt.frame(playback.next_frame) {
                Some(frame) => frame,
                None if playback.repeat && playback.prompt.frame_count() > 0 => {
                    playback.next_frame = 0;
                    continue;
                }
                None => {
                    state.playback = None;
                    state.sender.start_talkspurt();
                    self.outputs
                        .push_back(Output::Event(MediaEvent::PlayDone { leg }));
                    break;
                }
            };
            playback.next_frame += 1;
            // Deadline schedule: the next frame is due 20 ms after this one
            // was due, not after now, so pacing does not drift.
            playback.next_due += FRAME_DURATION;
            let payload = Bytes::from(g711::encode(codec, &frame));
            let packet = state
                .sender
                .audio(codec.payload_type(), payload, FRAME_SAMPLES as u32);
            if let Some(destination) = destination {
                transmit(&mut self.outputs, leg, state, destination, &packet);
            }
        }
    }

    /// When `handle_timeout` next needs to run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.legs
            .iter()
            .flatten()
            .flat_map(|state| {
                let playback = state.playback.as_ref().and_then(|p| {
                    if state.destination().is_some() {
                        Some(p.next_due)
                    } else if p.repeat {
                        // Music nobody receives: nothing to do until media is wanted again.
                        None
                    } else {
                        // A prompt nobody receives still ends on time (the IVR waits on it).
                        let left = p.prompt.frame_count().saturating_sub(p.next_frame);
                        Some(p.next_due + FRAME_DURATION * left as u32)
                    }
                });
                let timeout = state
                    .last_packet_at
                    .filter(|_| !state.timeout_reported)
                    .map(|last| last + self.rtp_timeout);
                [playback, timeout]
            })
            .flatten()
            .min()
    }

    /// The next piece of work for the driver.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The leg's destination right now, for diagnostics and tests.
    pub fn destination(&self, leg: LegId) -> Option<SocketAddr> {
        self.legs[leg.index()].as_ref().and_then(Leg::destination)
    }
}

fn transmit(
    outputs: &mut VecDeque<Output>,
    leg: LegId,
    state: &mut Leg,
    destination: SocketAddr,
    packet: &RtpPacket,
) {
    let datagram = packet.to_bytes();
    state.stats.packets_out += 1;
    state.stats.bytes_out += datagram.len() as u64;
    outputs.push_back(Output::Transmit {
        leg,
        destination,
        datagram,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::DtmfSender;
    use rand::SeedableRng;

    const CUSTOMER_SDP: &str = "192.0.2.1:4000";
    const AGENT_SDP: &str = "192.0.2.2:5000";

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test literal")
    }

    fn remote(address: &str, codec: Codec) -> MediaDescription {
        let address = addr(address);
        MediaDescription {
            addr: address.ip(),
            port: address.port(),
            codecs: vec![codec],
            dtmf_payload_type: Some(101),
            ptime_ms: 20,
            direction: Direction::SendRecv,
        }
    }

    fn core_with_legs(customer: Codec, agent: Codec) -> MediaCore {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut core = MediaCore::new(Duration::from_secs(30));
        core.handle_add_leg(LegId::Customer, &mut rng);
        core.handle_add_leg(LegId::Agent, &mut rng);
        core.handle_set_remote(
            LegId::Customer,
            &remote(CUSTOMER_SDP, customer),
            customer,
            Some(101),
        );
        core.handle_set_remote(LegId::Agent, &remote(AGENT_SDP, agent), agent, Some(101));
        core
    }

    fn drain(core: &mut MediaCore) -> Vec<Output> {
        std::iter::from_fn(|| core.poll_output()).collect()
    }

    fn transmits(outputs: &[Output]) -> Vec<(LegId, SocketAddr, RtpPacket)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Transmit {
                    leg,
                    destination,
                    datagram,
                } => Some((
                    *leg,
                    *destination,
                    RtpPacket::parse(datagram).expect("we send valid RTP"),
                )),
                _ => None,
            })
            .collect()
    }

    fn events(outputs: &[Output]) -> Vec<MediaEvent> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn phone_packet(sequence: u16, timestamp: u32, payload_type: u8, payload: Vec<u8>) -> Bytes {
        RtpPacket {
            payload_type,
            marker: false,
            sequence,
            timestamp,
            ssrc: 0xC0FFEE,
            payload: Bytes::from(payload),
        }
        .to_bytes()
    }

    #[test]
    fn prompt_is_paced_on_a_deadline_schedule_then_play_done() {
        let mut core = core_with_legs(Codec::Pcma, Codec::Pcmu);
        let t0 = Instant::now();
        let prompt = Prompt::tone("t", &[400.0], 200, 0, 200); // 10 frames
        core.handle_play(t0, LegId::Customer, prompt, false);
        assert_eq!(core.poll_timeout(), Some(t0));
        core.handle_timeout(t0);
        let first = transmits(&drain(&mut core));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, addr(CUSTOMER_SDP));
        assert_eq!(first[0].2.payload_type, 8, "encoded for the leg's codec");
        assert!(first[0].2.marker);
        // Woken 5 ms late: the schedule stays at 20 ms multiples of t0.
        core.handle_timeout(t0 + Duration::from_millis(105));
        let more = transmits(&drain(&mut core));
        assert_eq!(more.len(), 5);
        assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_millis(120)));
        core.handle_timeout(t0 + Duration::from_millis(200));
        let outputs = drain(&mut core);
        assert_eq!(transmits(&outputs).len(), 4);
        assert_eq!(
            events(&outputs),
            vec![MediaEvent::PlayDone {
                leg: LegId::Customer
            }]
        );
        assert_eq!(core.poll_timeout(), None);
        assert_eq!(core.stats().customer.packets_out, 10);
    }

    #[test]
    fn a_leg_that_wants_no_media_costs_no_frames_but_prompts_end_on_time() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcmu);
        let mut inactive = remote(CUSTOMER_SDP, Codec::Pcmu);
        inactive.direction = Direction::Inactive;
        core.handle_set_remote(LegId::Customer, &inactive, Codec::Pcmu, Some(101));
        let t0 = Instant::now();
        // Music on hold nobody receives: no deadline at all.
        let music = Prompt::tone("moh", &[400.0], 200, 0, 200);
        core.handle_play(t0, LegId::Customer, music, true);
        assert_eq!(core.poll_timeout(), None);
        core.handle_timeout(t0 + Duration::from_secs(5));
        assert!(transmits(&drain(&mut core)).is_empty());
        // A prompt nobody receives still ends when it would have (10 frames, 200 ms).
        let prompt = Prompt::tone("t", &[400.0], 200, 0, 200);
        let t1 = t0 + Duration::from_secs(6);
        core.handle_play(t1, LegId::Customer, prompt, false);
        assert_eq!(core.poll_timeout(), Some(t1 + Duration::from_millis(200)));
        core.handle_timeout(t1 + Duration::from_millis(200));
        let outputs = drain(&mut core);
        assert!(transmits(&outputs).is_empty());
        assert_eq!(
            events(&outputs),
            vec![MediaEvent::PlayDone {
                leg: LegId::Customer
            }]
        );
        // Media wanted again: music resumes from now, as a new talkspurt.
        let music = Prompt::tone("moh", &[400.0], 200, 0, 200);
        let t2 = t1 + Duration::from_secs(1);
        core.handle_play(t2, LegId::Customer, music, true);
        core.handle_set_remote(
            LegId::Customer,
            &remote(CUSTOMER_SDP, Codec::Pcmu),
            Codec::Pcmu,
            Some(101),
        );
        let t3 = t2 + Duration::from_secs(3);
        assert_eq!(core.poll_timeout(), Some(t2));
        core.handle_timeout(t3);
        let sent = transmits(&drain(&mut core));
        assert_eq!(sent.len(), 1, "no backlog flood");
        assert!(sent[0].2.marker);
        assert_eq!(core.poll_timeout(), Some(t3 + Duration::from_millis(20)));
    }

    #[test]
    fn a_voicemail_records_the_caller_without_relaying_it() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcmu);
        let t0 = Instant::now();
        let pcm = vec![1000i16; 160];
        let payload = g711::encode(Codec::Pcmu, &pcm);
        let packet = |seq| phone_packet(seq, u32::from(seq) * 160, 0, payload.clone());
        // Neither bridged nor recording: nothing to record.
        core.handle_datagram(t0, LegId::Customer, addr(CUSTOMER_SDP), &packet(1));
        assert!(!drain(&mut core)
            .iter()
            .any(|o| matches!(o, Output::Record { .. })));
        core.handle_record(t0);
        core.handle_datagram(t0, LegId::Customer, addr(CUSTOMER_SDP), &packet(2));
        let outputs = drain(&mut core);
        let recorded: Vec<(u64, usize)> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Record {
                    channel,
                    position_samples,
                    samples,
                } => {
                    assert_eq!(*channel, LegId::Customer.channel());
                    Some((*position_samples, samples.len()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(recorded, vec![(0, 160)]);
        assert!(
            transmits(&outputs).is_empty(),
            "nothing relayed to the agent leg"
        );
    }

    #[test]
    fn bridge_transcodes_rewrites_and_latches() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcma);
        let t0 = Instant::now();
        core.handle_bridge(t0, false);
        let nat_source = addr("198.51.100.7:31000");
        let pcm = vec![1000i16; 160];
        let payload = g711::encode(Codec::Pcmu, &pcm);
        core.handle_datagram(
            t0,
            LegId::Customer,
            nat_source,
            &phone_packet(1, 100, 0, payload.clone()),
        );
        let outputs = drain(&mut core);
        assert_eq!(
            events(&outputs),
            vec![MediaEvent::FirstPacket {
                leg: LegId::Customer
            }]
        );
        let sent = transmits(&outputs);
        assert_eq!(sent.len(), 1);
        let (leg, destination, packet) = &sent[0];
        assert_eq!(*leg, LegId::Agent);
        assert_eq!(
            *destination,
            addr(AGENT_SDP),
            "agent has not sent yet: SDP address"
        );
        assert_eq!(packet.payload_type, 8);
        assert_eq!(
            &packet.payload[..],
            &g711::transcode(Codec::Pcmu, Codec::Pcma, &payload)[..]
        );
        assert_ne!(packet.ssrc, 0xC0FFEE, "our own SSRC on the agent leg");
        // The customer is now latched: agent audio goes to the NAT address.
        let agent_audio = g711::encode(Codec::Pcma, &pcm);
        core.handle_datagram(
            t0,
            LegId::Agent,
            addr(AGENT_SDP),
            &phone_packet(9, 5, 8, agent_audio),
        );
        let sent = transmits(&drain(&mut core));
        assert_eq!(sent[0].1, nat_source);
        assert_eq!(sent[0].2.payload_type, 0);
        let stats = core.stats();
        assert_eq!((stats.customer.packets_in, stats.agent.packets_out), (1, 1));
    }

    #[test]
    fn dtmf_reported_once_and_relayed_while_bridged() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcmu);
        let t0 = Instant::now();
        core.handle_bridge(t0, false);
        let mut phone = RtpSender::new(&mut rand::rngs::StdRng::seed_from_u64(3));
        let packets = DtmfSender::new(101)
            .packets('5', &mut phone)
            .expect("valid key");
        for packet in &packets {
            core.handle_datagram(t0, LegId::Customer, addr(CUSTOMER_SDP), &packet.to_bytes());
        }
        let outputs = drain(&mut core);
        let digits: Vec<_> = events(&outputs)
            .into_iter()
            .filter(|e| matches!(e, MediaEvent::Dtmf { .. }))
            .collect();
        assert_eq!(
            digits,
            vec![MediaEvent::Dtmf {
                leg: LegId::Customer,
                digit: '5'
            }]
        );
        let relayed = transmits(&outputs);
        assert_eq!(relayed.len(), packets.len());
        assert!(relayed
            .iter()
            .all(|(leg, _, p)| *leg == LegId::Agent && p.payload_type == 101));
        assert!(relayed
            .iter()
            .all(|(_, _, p)| p.timestamp == relayed[0].2.timestamp));
    }

    #[test]
    fn rtp_timeout_only_after_first_packet_and_once() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcmu);
        let t0 = Instant::now();
        assert_eq!(core.poll_timeout(), None, "no timer before any packet");
        core.handle_datagram(
            t0,
            LegId::Agent,
            addr(AGENT_SDP),
            &phone_packet(1, 1, 0, vec![0xFF; 160]),
        );
        let _ = drain(&mut core);
        assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        core.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(
            events(&drain(&mut core)),
            vec![MediaEvent::RtpTimeout { leg: LegId::Agent }]
        );
        core.handle_timeout(t0 + Duration::from_secs(60));
        assert!(drain(&mut core).is_empty());
        assert_eq!(core.poll_timeout(), None);
    }

    #[test]
    fn garbage_and_unknown_payloads_are_counted_and_dropped() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcmu);
        let t0 = Instant::now();
        core.handle_bridge(t0, true);
        core.handle_datagram(t0, LegId::Customer, addr(CUSTOMER_SDP), b"\x00\x01 not rtp");
        core.handle_datagram(
            t0,
            LegId::Customer,
            addr(CUSTOMER_SDP),
            &phone_packet(1, 1, 13, vec![0x40]),
        );
        let outputs = drain(&mut core);
        assert!(transmits(&outputs).is_empty());
        assert_eq!(core.stats().customer.packets_dropped, 2);
    }

    #[test]
    fn recording_positions_absorb_jitter() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcmu);
        let t0 = Instant::now();
        core.handle_bridge(t0, true);
        let mut positions = Vec::new();
        // Arrivals at 0, 25, 38, 60 ms: jittery but contiguous audio.
        for (i, ms) in [0u64, 25, 38, 60].into_iter().enumerate() {
            let packet = phone_packet(i as u16, i as u32 * 160, 0, vec![0xFF; 160]);
            core.handle_datagram(
                t0 + Duration::from_millis(ms),
                LegId::Agent,
                addr(AGENT_SDP),
                &packet,
            );
            for output in drain(&mut core) {
                if let Output::Record {
                    channel,
                    position_samples,
                    ..
                } = output
                {
                    assert_eq!(channel, Channel::Agent);
                    positions.push(position_samples);
                }
            }
        }
        assert_eq!(positions, vec![0, 160, 320, 480]);
    }

    #[test]
    fn a_packet_from_the_sdp_address_wins_over_a_stray_latch() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcmu);
        let t0 = Instant::now();
        // Another call's phone, still sending to this port after a restart.
        let stray = addr("127.0.0.1:41000");
        let audio = phone_packet(1, 1, 0, vec![0xFF; 160]);
        core.handle_datagram(t0, LegId::Agent, stray, &audio);
        assert_eq!(core.destination(LegId::Agent), Some(stray));
        core.handle_datagram(t0, LegId::Agent, addr(AGENT_SDP), &audio);
        assert_eq!(core.destination(LegId::Agent), Some(addr(AGENT_SDP)));
        // And it keeps the stream: the stray cannot take it back.
        core.handle_datagram(t0, LegId::Agent, stray, &audio);
        assert_eq!(core.destination(LegId::Agent), Some(addr(AGENT_SDP)));
    }

    #[test]
    fn new_sdp_restarts_latching() {
        let mut core = core_with_legs(Codec::Pcmu, Codec::Pcmu);
        let t0 = Instant::now();
        let first = addr("198.51.100.7:31000");
        let moved = addr("198.51.100.8:32000");
        let audio = phone_packet(1, 1, 0, vec![0xFF; 160]);
        core.handle_datagram(t0, LegId::Customer, first, &audio);
        core.handle_datagram(t0, LegId::Customer, moved, &audio);
        assert_eq!(
            core.destination(LegId::Customer),
            Some(first),
            "no re-latch mid-stream"
        );
        core.handle_set_remote(
            LegId::Customer,
            &remote(CUSTOMER_SDP, Codec::Pcmu),
            Codec::Pcmu,
            Some(101),
        );
        assert_eq!(core.destination(LegId::Customer), Some(addr(CUSTOMER_SDP)));
        core.handle_datagram(t0, LegId::Customer, moved, &audio);
        assert_eq!(core.destination(LegId::Customer), Some(moved));
        let first_packets = events(&drain(&mut core))
            .into_iter()
            .filter(|e| matches!(e, MediaEvent::FirstPacket { .. }))
            .count();
        assert_eq!(first_packets, 1);
    }
}
