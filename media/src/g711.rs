//! ITU-T G.711 companding (PCMU = mu-law, PCMA = A-law) between 16-bit linear
//! PCM and 8-bit codewords.
//!
//! This is the classic Sun reference algorithm (the one in most softswitches),
//! written with integer arithmetic so results match other implementations bit
//! for bit. Both laws work on 8 kHz mono; one 20 ms frame is 160 samples and
//! 160 bytes.

/// The two static-payload-type codecs every SIP phone supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law, RTP static payload type 0 (North America, Japan).
    Pcmu,
    /// G.711 A-law, RTP static payload type 8 (rest of the world).
    Pcma,
}

impl Codec {
    /// The RTP/AVP static payload type (RFC 3551 section 6).
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The encoding name as used in `a=rtpmap` (RFC 3551).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The codec for a static payload type, if it is one of ours.
    pub fn from_payload_type(payload_type: u8) -> Option<Codec> {
        match payload_type {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The codec for an rtpmap encoding name (case-insensitive per RFC 4566).
    pub fn from_name(name: &str) -> Option<Codec> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }
}

/// Segment end points for A-law, in 13-bit magnitude units.
const ALAW_SEGMENT_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
/// Segment end points for mu-law, in 14-bit biased magnitude units.
const ULAW_SEGMENT_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
/// mu-law bias added before segment search so the curve passes through zero.
const ULAW_BIAS: i32 = 0x84;
/// Largest 14-bit magnitude mu-law can represent before clipping.
const ULAW_CLIP: i32 = 8159;

fn segment(value: i32, ends: &[i32; 8]) -> usize {
    ends.iter().position(|&end| value <= end).unwrap_or(8)
}

/// Encodes one linear sample as an A-law codeword.
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law works on 13 bits; the low 3 bits of a 16-bit sample are below its resolution.
    let mut value = i32::from(sample) >> 3;
    let mask: u8 = if value >= 0 {
        0xD5
    } else {
        value = -value - 1;
        0x55
    };
    let seg = segment(value, &ALAW_SEGMENT_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mantissa = if seg < 2 { value >> 1 } else { value >> seg } & 0x0F;
    // seg < 8 and mantissa < 16, so the codeword fits in a byte.
    (((seg as u8) << 4) | mantissa as u8) ^ mask
}

/// Decodes one A-law codeword to a linear sample.
pub fn alaw_decode(codeword: u8) -> i16 {
    let a = codeword ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    // The largest magnitude is 32256, so the cast cannot overflow.
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

/// Encodes one linear sample as a mu-law codeword.
pub fn ulaw_encode(sample: i16) -> u8 {
    // mu-law works on 14 bits.
    let mut value = i32::from(sample) >> 2;
    let mask: u8 = if value < 0 {
        value = -value;
        0x7F
    } else {
        0xFF
    };
    value = value.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    let seg = segment(value, &ULAW_SEGMENT_END);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let mantissa = ((value >> (seg + 1)) & 0x0F) as u8;
    (((seg as u8) << 4) | mantissa) ^ mask
}

/// Decodes one mu-law codeword to a linear sample.
pub fn ulaw_decode(codeword: u8) -> i16 {
    let u = !codeword;
    let mut t = (i32::from(u & 0x0F) << 3) + ULAW_BIAS;
    t <<= (u & 0x70) >> 4;
    // The largest magnitude is 32124, so the cast cannot overflow.
    if u & 0x80 != 0 {
        (ULAW_BIAS - t) as i16
    } else {
        (t - ULAW_BIAS) as i16
    }
}

/// Decodes a G.711 payload (one byte per sample) to linear PCM.
pub fn decode(codec: Codec, payload: &[u8]) -> Vec<i16> {
    match codec {
        Codec::Pcmu => payload.iter().map(|&b| ulaw_decode(b)).collect(),
        Codec::Pcma => payload.iter().map(|&b| alaw_decode(b)).collect(),
    }
}

/// Encodes linear PCM to a G.711 payload (one byte per sample).
pub fn encode(codec: Codec, samples: &[i16]) -> Vec<u8> {
    match codec {
        Codec::Pcmu => samples.iter().map(|&s| ulaw_encode(s)).collect(),
        Codec::Pcma => samples.iter().map(|&s| alaw_encode(s)).collect(),
    }
}

/// Converts a payload from one law to the other without an intermediate buffer
/// the caller has to manage; used when the two legs of a bridge differ.
pub fn transcode(from: Codec, to: Codec, payload: &[u8]) -> Vec<u8> {
    if from == to {
        return payload.to_vec();
    }
    payload
        .iter()
        .map(|&b| match from {
            Codec::Pcmu => alaw_encode(ulaw_decode(b)),
            Codec::Pcma => ulaw_encode(alaw_decode(b)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_from_the_reference_tables() {
        // Silence: mu-law 0xFF and A-law 0xD5 are the idle codewords.
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        // Full scale.
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn every_codeword_is_a_fixed_point_of_decode_then_encode() {
        for b in 0..=255u8 {
            // mu-law has two zero codewords (0x7F and 0xFF); both decode to 0, which encodes as 0xFF.
            if b == 0x7F {
                continue;
            }
            assert_eq!(ulaw_encode(ulaw_decode(b)), b, "mu-law {b:#x}");
            assert_eq!(alaw_encode(alaw_decode(b)), b, "A-law {b:#x}");
        }
    }

    #[test]
    fn round_trip_error_is_within_half_a_quantisation_step() {
        // G.711 steps double every segment, and a segment starts where its step is
        // 1/16 of the magnitude, so half a step is at most 1/32 of the magnitude at the
        // segment top and 1/16 at its bottom (plus rounding); the smallest segments
        // have a floor, and magnitudes above the largest codeword clip.
        for s in i16::MIN..=i16::MAX {
            let x = i32::from(s);
            let mag = x.abs();
            let bound = (mag / 16).max(8) + 4;
            let u = i32::from(ulaw_decode(ulaw_encode(s)));
            let a = i32::from(alaw_decode(alaw_encode(s)));
            let u_bound = if mag > 32124 {
                mag - 32124 + bound
            } else {
                bound
            };
            let a_bound = if mag > 32256 {
                mag - 32256 + bound
            } else {
                bound
            };
            assert!((u - x).abs() <= u_bound, "mu-law {s} -> {u}");
            assert!((a - x).abs() <= a_bound, "A-law {s} -> {a}");
            // Companding never flips the sign of a clearly non-zero sample.
            if mag > 16 {
                assert_eq!(u.signum(), x.signum());
                assert_eq!(a.signum(), x.signum());
            }
        }
    }

    #[test]
    fn codec_metadata() {
        assert_eq!(Codec::Pcmu.payload_type(), 0);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::Pcmu.name(), "PCMU");
        assert_eq!(Codec::from_name("pcma"), Some(Codec::Pcma));
        assert_eq!(Codec::from_payload_type(9), None);
    }

    #[test]
    fn slice_helpers_and_transcode_agree() {
        let pcm: Vec<i16> = (0..160)
            .map(|i| ((i * 397) % 20000 - 10000) as i16)
            .collect();
        let u = encode(Codec::Pcmu, &pcm);
        let a = transcode(Codec::Pcmu, Codec::Pcma, &u);
        assert_eq!(a, encode(Codec::Pcma, &decode(Codec::Pcmu, &u)));
        assert_eq!(decode(Codec::Pcma, &a).len(), 160);
    }
}
