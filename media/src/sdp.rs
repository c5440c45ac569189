//! The audio subset of SDP (RFC 4566 / RFC 3264) a contact-center B2BUA needs:
//! read the far end's first audio stream, write our own offer or answer, and
//! pick a codec.
//!
//! Parsing and serialising go through the `sdp` crate (its lexer follows the
//! RFC 4566 line order, which SIP phones respect); this module turns its
//! general model into the one [`MediaDescription`] call control works with.

use std::io::Cursor;
use std::net::IpAddr;

use ::sdp::description::common::{Address, Attribute, ConnectionInformation};
use ::sdp::description::media::{MediaName, RangedPort};
use ::sdp::description::session::{Origin, TimeDescription, Timing};

use crate::error::MediaError;
use crate::g711::Codec;

/// Default packetisation when the peer does not say (RFC 3551 section 4.5).
const DEFAULT_PTIME_MS: u32 = 20;
/// The payload type we offer for telephone-event when we choose one.
pub const DEFAULT_DTMF_PAYLOAD_TYPE: u8 = 101;

/// Media direction attribute (RFC 3264 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The attribute name as written in SDP.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer takes for an offer (RFC 3264 section 6.1):
    /// a sendonly offer is answered recvonly and vice versa.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    fn from_attribute(key: &str) -> Option<Direction> {
        match key {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// One audio stream: where to send RTP and what it may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    pub addr: IpAddr,
    pub port: u16,
    /// The G.711 codecs offered, in the peer's preference (m-line) order.
    pub codecs: Vec<Codec>,
    /// The payload type mapped to telephone-event/8000, if any.
    pub dtmf_payload_type: Option<u8>,
    pub ptime_ms: u32,
    pub direction: Direction,
}

/// Parses an SDP body and returns its first audio stream.
///
/// The connection address comes from the media level if present, else the
/// session level (RFC 4566 section 5.7). Payload types we do not understand
/// (G.729, Opus, comfort noise) are skipped, not rejected.
pub fn parse_sdp(text: &str) -> Result<MediaDescription, MediaError> {
    let mut reader = Cursor::new(text.as_bytes());
    let session = ::sdp::SessionDescription::unmarshal(&mut reader)
        .map_err(|e| MediaError::MalformedSdp(e.to_string()))?;
    let media = session
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "audio")
        .ok_or_else(|| MediaError::NoAudio("no m=audio line".into()))?;

    let connection = media
        .connection_information
        .as_ref()
        .or(session.connection_information.as_ref())
        .and_then(|c| c.address.as_ref())
        .ok_or_else(|| MediaError::NoAudio("no c= line for the audio stream".into()))?;
    // Some stacks write "IP4 1.2.3.4/127"; the crate splits the TTL off already.
    let addr: IpAddr = connection.address.parse().map_err(|_| {
        MediaError::NoAudio(format!("c= address {:?} is not an IP", connection.address))
    })?;
    let port = u16::try_from(media.media_name.port.value).map_err(|_| {
        MediaError::MalformedSdp(format!("bad audio port {}", media.media_name.port.value))
    })?;

    let mut codecs = Vec::new();
    let mut dtmf_payload_type = None;
    for format in &media.media_name.formats {
        let Ok(payload_type) = format.parse::<u8>() else {
            continue;
        };
        match rtpmap(&media.attributes, payload_type) {
            Some((name, rate)) if name.eq_ignore_ascii_case("telephone-event") && rate == 8000 => {
                dtmf_payload_type = dtmf_payload_type.or(Some(payload_type));
            }
            Some((name, rate)) => {
                // We only send G.711 on its static payload type, so a dynamic
                // PT mapped to PCMU/PCMA is not something we could honour.
                if let Some(codec) = Codec::from_name(name) {
                    if rate == 8000
                        && codec.payload_type() == payload_type
                        && !codecs.contains(&codec)
                    {
                        codecs.push(codec);
                    }
                }
            }
            // Static payload types need no rtpmap (RFC 3551 section 6).
            None => {
                if let Some(codec) = Codec::from_payload_type(payload_type) {
                    if !codecs.contains(&codec) {
                        codecs.push(codec);
                    }
                }
            }
        }
    }

    let ptime_ms = attribute(&media.attributes, "ptime")
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&p| p > 0)
        .unwrap_or(DEFAULT_PTIME_MS);
    // A media-level direction overrides the session-level one (RFC 3264 section 5.1).
    let direction = direction_of(&media.attributes)
        .or_else(|| direction_of(&session.attributes))
        .unwrap_or_default();

    Ok(MediaDescription {
        addr,
        port,
        codecs,
        dtmf_payload_type,
        ptime_ms,
        direction,
    })
}

fn attribute<'a>(attributes: &'a [Attribute], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_deref())
}

fn direction_of(attributes: &[Attribute]) -> Option<Direction> {
    attributes
        .iter()
        .find_map(|a| Direction::from_attribute(&a.key))
}

/// Finds `a=rtpmap:<pt> <name>/<rate>[/<channels>]` for a payload type.
fn rtpmap(attributes: &[Attribute], payload_type: u8) -> Option<(&str, u32)> {
    attributes
        .iter()
        .filter(|a| a.key == "rtpmap")
        .find_map(|a| {
            let value = a.value.as_deref()?;
            let (pt, encoding) = value.split_once(' ')?;
            if pt.trim().parse::<u8>().ok()? != payload_type {
                return None;
            }
            let mut parts = encoding.trim().split('/');
            let name = parts.next()?;
            let rate = parts.next()?.parse().ok()?;
            Some((name, rate))
        })
}

fn value_attribute(key: &str, value: String) -> Attribute {
    Attribute {
        key: key.to_owned(),
        value: Some(value),
    }
}

/// Writes an SDP body for our side of the call.
///
/// `session_id` stays fixed for the dialog and `version` must increase with
/// each new offer (RFC 3264 section 8), which is why both are arguments.
pub fn build_sdp(session_id: u64, version: u64, local: &MediaDescription) -> String {
    let address_type = if local.addr.is_ipv4() { "IP4" } else { "IP6" };
    let connection = ConnectionInformation {
        network_type: "IN".into(),
        address_type: address_type.into(),
        address: Some(Address {
            address: local.addr.to_string(),
            ttl: None,
            range: None,
        }),
    };
    let mut formats: Vec<String> = local
        .codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .collect();
    let mut attributes: Vec<Attribute> = local
        .codecs
        .iter()
        .map(|c| value_attribute("rtpmap", format!("{} {}/8000", c.payload_type(), c.name())))
        .collect();
    if let Some(pt) = local.dtmf_payload_type {
        formats.push(pt.to_string());
        attributes.push(value_attribute(
            "rtpmap",
            format!("{pt} telephone-event/8000"),
        ));
        attributes.push(value_attribute("fmtp", format!("{pt} 0-15")));
    }
    attributes.push(value_attribute("ptime", local.ptime_ms.to_string()));
    attributes.push(Attribute {
        key: local.direction.as_str().into(),
        value: None,
    });

    let session = ::sdp::SessionDescription {
        version: 0,
        origin: Origin {
            username: "callgrid".into(),
            session_id,
            session_version: version,
            network_type: "IN".into(),
            address_type: address_type.into(),
            unicast_address: local.addr.to_string(),
        },
        session_name: "callgrid".into(),
        connection_information: Some(connection),
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        media_descriptions: vec![::sdp::MediaDescription {
            media_name: MediaName {
                media: "audio".into(),
                port: RangedPort {
                    // Every u16 fits in isize on the platforms we build for (32 and 64 bit).
                    value: local.port as isize,
                    range: None,
                },
                protos: vec!["RTP".into(), "AVP".into()],
                formats,
            },
            media_title: None,
            connection_information: None,
            bandwidth: vec![],
            encryption_key: None,
            attributes,
        }],
        ..empty_session()
    };
    session.marshal()
}

fn empty_session() -> ::sdp::SessionDescription {
    ::sdp::SessionDescription {
        version: 0,
        origin: Origin::new(),
        session_name: String::new(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: None,
        bandwidth: vec![],
        time_descriptions: vec![],
        time_zones: vec![],
        encryption_key: None,
        attributes: vec![],
        media_descriptions: vec![],
    }
}

/// Picks the codec for the answer: the first one the offer lists that we
/// support (RFC 3264 section 6.1 lets the answerer follow the offerer's
/// order), and the offer's telephone-event payload type, which the answer
/// must reuse so both sides agree on it.
pub fn negotiate(offer: &MediaDescription, supported: &[Codec]) -> Option<(Codec, Option<u8>)> {
    let codec = offer
        .codecs
        .iter()
        .copied()
        .find(|c| supported.contains(c))?;
    Some((codec, offer.dtmf_payload_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLYCOM_OFFER: &str = "v=0\r\n\
o=- 1234 1 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 18 8 0 96 101\r\n\
a=rtpmap:18 G729/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:30\r\n\
a=sendonly\r\n";

    #[test]
    fn parses_a_typical_phone_offer() {
        let md = parse_sdp(POLYCOM_OFFER).expect("valid offer");
        assert_eq!(md.addr, "192.0.2.10".parse::<IpAddr>().expect("literal"));
        assert_eq!(md.port, 49170);
        assert_eq!(md.codecs, vec![Codec::Pcma, Codec::Pcmu]);
        assert_eq!(md.dtmf_payload_type, Some(101));
        assert_eq!(md.ptime_ms, 30);
        assert_eq!(md.direction, Direction::SendOnly);
    }

    #[test]
    fn media_level_connection_wins_and_lf_only_is_accepted() {
        let text = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\n\
m=video 5000 RTP/AVP 96\nm=audio 6000 RTP/AVP 0\nc=IN IP4 10.0.0.2\n";
        let md = parse_sdp(text).expect("valid");
        assert_eq!(md.addr.to_string(), "10.0.0.2");
        assert_eq!(md.port, 6000);
        assert_eq!(md.codecs, vec![Codec::Pcmu]);
        assert_eq!(md.ptime_ms, 20);
        assert_eq!(md.direction, Direction::SendRecv);
        assert_eq!(md.dtmf_payload_type, None);
    }

    #[test]
    fn rejects_garbage_and_missing_audio() {
        assert!(parse_sdp("hello").is_err());
        assert!(parse_sdp("").is_err());
        let no_audio = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\n";
        assert!(matches!(parse_sdp(no_audio), Err(MediaError::NoAudio(_))));
        let no_c = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert!(matches!(parse_sdp(no_c), Err(MediaError::NoAudio(_))));
    }

    #[test]
    fn build_then_parse_round_trips() {
        let local = MediaDescription {
            addr: "203.0.113.5".parse().expect("literal"),
            port: 20000,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            dtmf_payload_type: Some(101),
            ptime_ms: 20,
            direction: Direction::SendRecv,
        };
        let text = build_sdp(42, 3, &local);
        assert!(text.starts_with("v=0\r\no=callgrid 42 3 IN IP4 203.0.113.5\r\ns=callgrid\r\n"));
        assert!(text.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"));
        assert!(text.contains("a=fmtp:101 0-15\r\n"));
        assert!(text.contains("a=ptime:20\r\n"));
        assert!(text.contains("a=sendrecv\r\n"));
        assert_eq!(parse_sdp(&text).expect("our own SDP parses"), local);
    }

    #[test]
    fn negotiation_follows_offer_order_and_keeps_their_dtmf_pt() {
        let offer = parse_sdp(POLYCOM_OFFER).expect("valid offer");
        assert_eq!(
            negotiate(&offer, &[Codec::Pcmu, Codec::Pcma]),
            Some((Codec::Pcma, Some(101)))
        );
        assert_eq!(
            negotiate(&offer, &[Codec::Pcmu]),
            Some((Codec::Pcmu, Some(101)))
        );
        let only_g729 = MediaDescription {
            codecs: vec![],
            ..offer
        };
        assert_eq!(negotiate(&only_g729, &[Codec::Pcmu]), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in "[vosctmab=0-9 ./:IPN4RTPAVrtpmap\r\n-]{0,200}") {
            let _ = parse_sdp(&text);
        }

        #[test]
        fn parse_never_panics_on_mutated_offers(cut in 0usize..400, junk in "[ -~\r\n]{0,20}") {
            let cut = cut.min(POLYCOM_OFFER.len());
            let text = format!("{}{}{}", &POLYCOM_OFFER[..cut], junk, &POLYCOM_OFFER[cut..]);
            let _ = parse_sdp(&text);
        }
    }
}
