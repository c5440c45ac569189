//! DTMF as RTP telephone-events (RFC 4733): the 4-byte payload, a receiver
//! that reports each key press exactly once, and a sender that builds the
//! packet train for one key press.
//!
//! Why key on the RTP timestamp: RFC 4733 section 2.5.1 sends every packet of
//! one event with the same timestamp (the event's start), repeats the start
//! packets while the key is held, and repeats the final "end" packet three
//! times for reliability. The timestamp is therefore the identity of a key
//! press; two presses of the same key have different timestamps.

use bytes::Bytes;

use crate::rtp::{RtpPacket, RtpSender};

/// One telephone-event payload (RFC 4733 section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code; 0-15 are the DTMF keys (RFC 4733 section 3.2).
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level in -dBm0, 0-63.
    pub volume: u8,
    /// Duration so far, in timestamp units (8 kHz samples).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Serialises the 4-byte payload.
    pub fn to_bytes(&self) -> [u8; 4] {
        let duration = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3F),
            duration[0],
            duration[1],
        ]
    }
}

/// Parses a telephone-event payload; `None` if it is too short.
///
/// RFC 4733 allows several events in one payload (redundancy); we read the
/// first, which is the one the timestamp refers to.
pub fn parse_telephone_event(payload: &[u8]) -> Option<TelephoneEvent> {
    let bytes: [u8; 4] = payload.get(..4)?.try_into().ok()?;
    Some(TelephoneEvent {
        event: bytes[0],
        end: bytes[1] & 0x80 != 0,
        volume: bytes[1] & 0x3F,
        duration: u16::from_be_bytes([bytes[2], bytes[3]]),
    })
}

/// The key for a DTMF event code (RFC 4733 section 3.2 table 3).
pub fn event_to_char(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The event code for a DTMF key; lower-case 'a'-'d' are accepted.
pub fn char_to_event(key: char) -> Option<u8> {
    match key {
        '0'..='9' => Some(key as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(key as u8 - b'A' + 12),
        'a'..='d' => Some(key as u8 - b'a' + 12),
        _ => None,
    }
}

/// Turns a stream of telephone-event packets into key presses, each once.
///
/// It reports a key at the first packet of an event (start or end), so a lost
/// start packet still yields the digit, and the IVR reacts without waiting
/// for the key to be released.
#[derive(Debug, Clone, Default)]
pub struct DtmfReceiver {
    /// Timestamp of the last event reported. One is enough: events of one
    /// stream do not interleave (RFC 4733 section 2.5.1.2).
    last_reported: Option<u32>,
}

impl DtmfReceiver {
    pub fn new() -> DtmfReceiver {
        DtmfReceiver::default()
    }

    /// Feeds one packet's RTP timestamp and payload; returns the key if this
    /// packet starts a new key press.
    pub fn handle_event(&mut self, rtp_timestamp: u32, event: TelephoneEvent) -> Option<char> {
        // Events above 15 (tones, line events) are not keys; ignore them
        // without disturbing the de-duplication state.
        let key = event_to_char(event.event)?;
        if self.last_reported == Some(rtp_timestamp) {
            return None;
        }
        self.last_reported = Some(rtp_timestamp);
        Some(key)
    }
}

/// Builds the RFC 4733 packet train for one key press.
#[derive(Debug, Clone, Copy)]
pub struct DtmfSender {
    /// The negotiated telephone-event payload type (commonly 101).
    pub payload_type: u8,
    /// How long the key is "held"; 100 ms is what most phones send.
    pub duration_ms: u32,
    /// Power level in -dBm0.
    pub volume: u8,
}

/// Interval between repeated start packets (RFC 4733 section 2.5.1.2 suggests
/// the audio packetisation interval; 50 ms is what most gateways use).
const DTMF_PACKET_INTERVAL_MS: u32 = 50;
/// The end packet is sent three times (RFC 4733 section 2.5.1.4).
const END_PACKET_REPEATS: usize = 3;

impl DtmfSender {
    pub fn new(payload_type: u8) -> DtmfSender {
        DtmfSender {
            payload_type,
            duration_ms: 100,
            volume: 10,
        }
    }

    /// The telephone-event payloads for one key press: start/update packets
    /// every 50 ms, then three end packets, all for the same event.
    pub fn events(&self, key: char) -> Option<Vec<TelephoneEvent>> {
        let event = char_to_event(key)?;
        let ms_to_units = |ms: u32| u16::try_from(ms * 8).unwrap_or(u16::MAX);
        let updates = (self.duration_ms / DTMF_PACKET_INTERVAL_MS).max(1);
        let mut out: Vec<TelephoneEvent> = (0..updates)
            .map(|i| TelephoneEvent {
                event,
                end: false,
                volume: self.volume,
                duration: ms_to_units(i * DTMF_PACKET_INTERVAL_MS),
            })
            .collect();
        let end = TelephoneEvent {
            event,
            end: true,
            volume: self.volume,
            duration: ms_to_units(self.duration_ms),
        };
        out.extend(std::iter::repeat_n(end, END_PACKET_REPEATS));
        Some(out)
    }

    /// The RTP packets for one key press, stamped by the leg's sender so they
    /// continue its sequence numbers. The caller paces them (50 ms apart for
    /// the start packets in real time; back to back is fine in tests).
    pub fn packets(&self, key: char, sender: &mut RtpSender) -> Option<Vec<RtpPacket>> {
        let events = self.events(key)?;
        let timestamp = sender.next_timestamp();
        let packets = events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                let payload = Bytes::copy_from_slice(&event.to_bytes());
                sender.event(self.payload_type, timestamp, i == 0, payload)
            })
            .collect();
        // Audio after the event must not reuse the event's time span.
        sender.advance(self.duration_ms * 8);
        Some(packets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn payload_round_trip_and_short_input() {
        let event = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(parse_telephone_event(&event.to_bytes()), Some(event));
        assert_eq!(parse_telephone_event(&[1, 2, 3]), None);
    }

    #[test]
    fn key_mapping_both_ways() {
        for event in 0..16 {
            let key = event_to_char(event).expect("0-15 are keys");
            assert_eq!(char_to_event(key), Some(event));
        }
        assert_eq!(event_to_char(10), Some('*'));
        assert_eq!(event_to_char(11), Some('#'));
        assert_eq!(event_to_char(15), Some('D'));
        assert_eq!(event_to_char(16), None);
        assert_eq!(char_to_event('x'), None);
    }

    #[test]
    fn receiver_reports_each_press_once_despite_repeats() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut sender = RtpSender::new(&mut rng);
        let dtmf = DtmfSender {
            payload_type: 101,
            duration_ms: 250,
            volume: 10,
        };
        let mut packets = dtmf.packets('5', &mut sender).expect("valid key");
        packets.extend(dtmf.packets('5', &mut sender).expect("valid key"));
        packets.extend(dtmf.packets('#', &mut sender).expect("valid key"));
        assert_eq!(packets.len(), 3 * (5 + 3));
        let mut receiver = DtmfReceiver::new();
        let keys: String = packets
            .iter()
            .filter_map(|p| {
                let event = parse_telephone_event(&p.payload)?;
                receiver.handle_event(p.timestamp, event)
            })
            .collect();
        assert_eq!(keys, "55#");
    }

    #[test]
    fn train_shape_start_marker_three_ends_same_timestamp() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut sender = RtpSender::new(&mut rng);
        let packets = DtmfSender::new(101)
            .packets('7', &mut sender)
            .expect("valid key");
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|p| !p.marker));
        assert!(packets.iter().all(|p| p.timestamp == packets[0].timestamp));
        let ends = packets
            .iter()
            .filter(|p| parse_telephone_event(&p.payload).is_some_and(|e| e.end))
            .count();
        assert_eq!(ends, 3);
    }

    #[test]
    fn lost_start_packets_still_yield_the_key() {
        let mut receiver = DtmfReceiver::new();
        let end = TelephoneEvent {
            event: 3,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(receiver.handle_event(4000, end), Some('3'));
        assert_eq!(receiver.handle_event(4000, end), None);
        assert_eq!(receiver.handle_event(4000, end), None);
    }
}
