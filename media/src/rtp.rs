//! RTP packets (RFC 3550) for G.711 audio and telephone-events, and the
//! per-leg sender that stamps outgoing packets.
//!
//! Parsing and serialising go through the `rtp` crate; this module narrows
//! its general `Packet` to the fields a B2BUA uses and maps its errors to
//! [`MediaError`], so the rest of the crate never sees CSRCs or extensions.

use bytes::Bytes;
use rand::Rng;
use webrtc_util::{Marshal, Unmarshal};

use crate::error::MediaError;

/// Samples in one 20 ms G.711 frame at 8 kHz (the ptime every phone supports).
pub const SAMPLES_PER_PACKET: u32 = 160;

/// The fields of an RTP packet a B2BUA relays or originates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Bytes,
}

impl RtpPacket {
    /// Parses a datagram. CSRCs and header extensions are accepted and
    /// dropped; padding is removed by the underlying parser.
    pub fn parse(datagram: &[u8]) -> Result<RtpPacket, MediaError> {
        // The rtp crate does not check the version bits; anything that is not
        // RTP version 2 on a media port is STUN, a keep-alive or junk.
        if datagram.len() < 12 || datagram[0] >> 6 != 2 {
            return Err(MediaError::MalformedRtp(format!(
                "not RTP v2 ({} bytes)",
                datagram.len()
            )));
        }
        let mut buf = datagram;
        let packet = ::rtp::packet::Packet::unmarshal(&mut buf)
            .map_err(|e| MediaError::MalformedRtp(e.to_string()))?;
        Ok(RtpPacket {
            payload_type: packet.header.payload_type,
            marker: packet.header.marker,
            sequence: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            ssrc: packet.header.ssrc,
            payload: packet.payload,
        })
    }

    /// Serialises the packet (version 2, no padding, CSRCs or extensions).
    pub fn to_bytes(&self) -> Bytes {
        let packet = ::rtp::packet::Packet {
            header: ::rtp::header::Header {
                version: 2,
                marker: self.marker,
                payload_type: self.payload_type & 0x7F,
                sequence_number: self.sequence,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: self.payload.clone(),
        };
        // Marshalling a header without extensions into a buffer sized by
        // marshal_size cannot fail, so fall back to the hand-built layout
        // rather than panic if the crate ever disagrees.
        packet.marshal().unwrap_or_else(|_| self.to_bytes_by_hand())
    }

    fn to_bytes_by_hand(&self) -> Bytes {
        let mut out = Vec::with_capacity(12 + self.payload.len());
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7F));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&self.payload);
        Bytes::from(out)
    }
}

/// Stamps outgoing packets for one leg: our own SSRC, a continuous sequence
/// number and a media clock, whatever the packets' origin (a prompt, a relay
/// from the other leg, or DTMF).
///
/// Invariant: sequence numbers increase by exactly one per packet sent, and
/// the timestamp of audio never goes backwards across a change of source,
/// because the far end's jitter buffer would otherwise discard our audio.
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    next_sequence: u16,
    /// Media clock for the next packet (8 kHz units).
    next_timestamp: u32,
    /// Set at the start of a talkspurt; the next audio packet carries the marker.
    talkspurt_pending: bool,
    /// While relaying: the incoming SSRC and `out_ts - in_ts` for it.
    relay_mapping: Option<(u32, u32)>,
}

impl RtpSender {
    /// Creates a sender with random SSRC, sequence and timestamp, as RFC 3550
    /// section 5.1 asks (it makes known-plaintext attacks on SRTP harder and
    /// keeps SSRCs distinct). The RNG is an argument so tests replay.
    pub fn new<R: Rng + ?Sized>(rng: &mut R) -> RtpSender {
        RtpSender {
            ssrc: rng.gen(),
            next_sequence: rng.gen(),
            next_timestamp: rng.gen(),
            talkspurt_pending: true,
            relay_mapping: None,
        }
    }

    /// Our SSRC on this leg.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The media timestamp the next audio packet will carry.
    pub fn next_timestamp(&self) -> u32 {
        self.next_timestamp
    }

    /// Marks the start of a talkspurt: the next audio packet gets the marker
    /// bit (RFC 3551 section 4.1) and relaying re-anchors its timestamp mapping.
    pub fn start_talkspurt(&mut self) {
        self.talkspurt_pending = true;
        self.relay_mapping = None;
    }

    /// Lets `samples` of silence pass without sending (the far end does not want media
    /// now): the media clock runs on, no sequence number is used, and the next audio packet
    /// starts a talkspurt.
    pub fn skip(&mut self, samples: u32) {
        self.next_timestamp = self.next_timestamp.wrapping_add(samples);
        self.start_talkspurt();
    }

    fn take_sequence(&mut self) -> u16 {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        sequence
    }

    /// Stamps one locally originated audio packet of `samples` samples.
    pub fn audio(&mut self, payload_type: u8, payload: Bytes, samples: u32) -> RtpPacket {
        let packet = RtpPacket {
            payload_type,
            marker: std::mem::take(&mut self.talkspurt_pending),
            sequence: self.take_sequence(),
            timestamp: self.next_timestamp,
            ssrc: self.ssrc,
            payload,
        };
        self.next_timestamp = self.next_timestamp.wrapping_add(samples);
        // A prompt interrupts any relay; the relay must re-anchor afterwards.
        self.relay_mapping = None;
        packet
    }

    /// Stamps a packet relayed from the other leg, keeping the sender's
    /// timing (gaps and DTMF event timestamps) but in our numbering space.
    ///
    /// `samples` is the audio length of the packet, or 0 for telephone-events,
    /// whose timestamp is the start of the event and repeats across packets.
    pub fn relay(
        &mut self,
        incoming: &RtpPacket,
        payload_type: u8,
        payload: Bytes,
        samples: u32,
    ) -> RtpPacket {
        let offset = match self.relay_mapping {
            Some((ssrc, offset)) if ssrc == incoming.ssrc => offset,
            _ => {
                // New source (first packet, or the far end restarted): continue our
                // clock from where it is, and flag the discontinuity with the marker.
                self.talkspurt_pending = true;
                let offset = self.next_timestamp.wrapping_sub(incoming.timestamp);
                self.relay_mapping = Some((incoming.ssrc, offset));
                offset
            }
        };
        let timestamp = incoming.timestamp.wrapping_add(offset);
        let marker = incoming.marker || std::mem::take(&mut self.talkspurt_pending);
        let end = timestamp.wrapping_add(samples);
        // Serial-number comparison (RFC 1982): only move the clock forward.
        if end.wrapping_sub(self.next_timestamp) < 0x8000_0000 {
            self.next_timestamp = end;
        }
        RtpPacket {
            payload_type,
            marker,
            sequence: self.take_sequence(),
            timestamp,
            ssrc: self.ssrc,
            payload,
        }
    }

    /// Stamps one telephone-event packet (RFC 4733): all packets of an event
    /// share `event_timestamp`; only the first carries the marker.
    pub fn event(
        &mut self,
        payload_type: u8,
        event_timestamp: u32,
        marker: bool,
        payload: Bytes,
    ) -> RtpPacket {
        RtpPacket {
            payload_type,
            marker,
            sequence: self.take_sequence(),
            timestamp: event_timestamp,
            ssrc: self.ssrc,
            payload,
        }
    }

    /// Moves the media clock forward without sending, e.g. past a DTMF event
    /// so the following audio does not overlap it.
    pub fn advance(&mut self, samples: u32) {
        self.next_timestamp = self.next_timestamp.wrapping_add(samples);
        self.relay_mapping = None;
        self.talkspurt_pending = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn round_trip_through_bytes() {
        let packet = RtpPacket {
            payload_type: 8,
            marker: true,
            sequence: 65535,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x1234_5678,
            payload: Bytes::from_static(&[1, 2, 3, 4]),
        };
        let bytes = packet.to_bytes();
        assert_eq!(bytes.len(), 16);
        assert_eq!(bytes, packet.to_bytes_by_hand());
        assert_eq!(RtpPacket::parse(&bytes).expect("valid"), packet);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(RtpPacket::parse(&[]).is_err());
        assert!(RtpPacket::parse(&[0x80; 5]).is_err());
        assert!(RtpPacket::parse(&[0x00; 40]).is_err());
        // CSRC count of 15 with no room for the CSRCs.
        let mut short = vec![0x8F, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        short.extend_from_slice(&[0; 4]);
        assert!(RtpPacket::parse(&short).is_err());
    }

    #[test]
    fn sender_stamps_continuous_packets_with_marker_on_first() {
        let mut sender = RtpSender::new(&mut rng());
        let a = sender.audio(0, Bytes::from(vec![0xFF; 160]), SAMPLES_PER_PACKET);
        let b = sender.audio(0, Bytes::from(vec![0xFF; 160]), SAMPLES_PER_PACKET);
        assert!(a.marker);
        assert!(!b.marker);
        assert_eq!(b.sequence, a.sequence.wrapping_add(1));
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(160));
        assert_eq!(a.ssrc, b.ssrc);
        sender.start_talkspurt();
        assert!(sender.audio(0, Bytes::new(), 160).marker);
    }

    #[test]
    fn relay_rewrites_into_our_number_space_and_keeps_gaps() {
        let mut sender = RtpSender::new(&mut rng());
        let start = sender.next_timestamp();
        let incoming = |sequence: u16, timestamp: u32| RtpPacket {
            payload_type: 0,
            marker: false,
            sequence,
            timestamp,
            ssrc: 99,
            payload: Bytes::from_static(&[0xFF; 160]),
        };
        let first = sender.relay(&incoming(10, 1000), 8, Bytes::new(), 160);
        let second = sender.relay(&incoming(11, 1480), 8, Bytes::new(), 160);
        assert!(first.marker, "a new source starts a talkspurt");
        assert_eq!(first.timestamp, start);
        assert_eq!(
            second.timestamp,
            start.wrapping_add(480),
            "the gap survives"
        );
        assert_eq!(second.sequence, first.sequence.wrapping_add(1));
        assert_eq!(first.ssrc, sender.ssrc());
        assert_eq!(second.payload_type, 8);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = RtpPacket::parse(&bytes);
        }

        #[test]
        fn serialise_then_parse_is_identity(
            payload_type in 0u8..128,
            marker: bool,
            sequence: u16,
            timestamp: u32,
            ssrc: u32,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200),
        ) {
            let packet = RtpPacket { payload_type, marker, sequence, timestamp, ssrc, payload: Bytes::from(payload) };
            proptest::prop_assert_eq!(RtpPacket::parse(&packet.to_bytes()).expect("own output"), packet);
        }
    }
}
