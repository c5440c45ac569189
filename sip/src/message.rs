//! SIP requests and responses (RFC 3261 7) and their typed accessors.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

pub use crate::headers::Headers;
pub use crate::name_addr::NameAddr;
pub use crate::uri::{Scheme, Uri};
pub use crate::via::{Via, BRANCH_COOKIE};

/// A request method. Extension methods keep their exact spelling, which is
/// case-sensitive (RFC 3261 7.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Refer,
    Notify,
    Subscribe,
    Message,
    Prack,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Prack => "PRACK",
            Method::Other(s) => s,
        }
    }
}

/// Parsing a method cannot fail semantically; a non-token is rejected so
/// that a method never carries whitespace into a start line.
impl FromStr for Method {
    type Err = crate::parse::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "MESSAGE" => Method::Message,
            "PRACK" => Method::Prack,
            other if crate::text::is_token(other) => Method::Other(other.to_string()),
            _ => return Err(crate::parse::ParseError::BadMethod),
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Typed views of the headers shared by requests and responses. Accessors
/// return `None` for absent or unparsable values; `parse_message` has
/// already validated the mandatory ones for anything that came off the wire.
pub trait SipMessage {
    fn headers(&self) -> &Headers;
    fn headers_mut(&mut self) -> &mut Headers;

    fn call_id(&self) -> Option<&str> {
        self.headers().get("Call-ID")
    }
    fn cseq(&self) -> Option<(u32, Method)> {
        parse_cseq(self.headers().get("CSeq")?).ok()
    }
    fn from(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers().get("From")?).ok()
    }
    fn to(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers().get("To")?).ok()
    }
    fn vias(&self) -> Vec<Via> {
        self.headers()
            .get_all_split("Via")
            .into_iter()
            .filter_map(|v| Via::parse(v).ok())
            .collect()
    }
    fn top_via(&self) -> Option<Via> {
        Via::parse(self.headers().get_all_split("Via").first()?).ok()
    }
    fn contact(&self) -> Option<NameAddr> {
        NameAddr::parse(self.headers().get_all_split("Contact").first()?).ok()
    }
    fn content_type(&self) -> Option<&str> {
        self.headers().get("Content-Type")
    }
    fn expires(&self) -> Option<u32> {
        parse_delta_seconds(self.headers().get("Expires")?)
    }
    fn max_forwards(&self) -> Option<u8> {
        self.headers().get("Max-Forwards")?.trim().parse().ok()
    }
}

/// RFC 3261 20.19 / 10.2.1.1: delta-seconds larger than 2^32-1 count as
/// 2^32-1 instead of being an error.
pub(crate) fn parse_delta_seconds(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u32>().unwrap_or(u32::MAX))
}

/// Parses `CSeq: <number> <method>`; RFC 3261 8.1.1.5 caps the number
/// below 2^31.
pub(crate) fn parse_cseq(s: &str) -> Result<(u32, Method), crate::parse::ParseError> {
    use crate::parse::ParseError;
    let mut it = s.split_whitespace();
    let number = it.next().ok_or(ParseError::BadCSeq)?;
    let method = it.next().ok_or(ParseError::BadCSeq)?;
    if it.next().is_some() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadCSeq);
    }
    let number: u32 = number.parse().map_err(|_| ParseError::BadCSeq)?;
    if number >= 1 << 31 {
        return Err(ParseError::BadCSeq);
    }
    Ok((number, method.parse()?))
}

impl SipMessage for Request {
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
}

impl SipMessage for Response {
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
}

impl SipMessage for Message {
    fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
    fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }
}

/// Writes headers and body, replacing any Content-Length with the body's
/// real length so a serialised message can never mis-frame on a stream.
fn write_rest(out: &mut Vec<u8>, headers: &Headers, body: &[u8]) {
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
}

impl Request {
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            method,
            uri,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} SIP/2.0\r\n", self.method, self.uri).into_bytes();
        write_rest(&mut out, &self.headers, &self.body);
        out
    }
}

impl Response {
    pub fn new(status: u16, reason: &str) -> Response {
        Response {
            status,
            reason: reason.to_string(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// RFC 3261 8.2.6.2: a response copies Via (all values, in order), From,
    /// To, Call-ID and CSeq from the request. The To tag is added by
    /// `with_to_tag` when the response needs one.
    pub fn for_request(req: &Request, status: u16, reason: &str) -> Response {
        let mut resp = Response::new(status, reason);
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            for value in req.headers.get_all(name) {
                resp.headers.push(name, value);
            }
        }
        resp
    }

    /// Adds a To tag unless one is present (RFC 3261 8.2.6.2: keep the tag
    /// of an in-dialog request).
    pub fn with_to_tag(mut self, tag: &str) -> Response {
        if let Some(mut to) = self.to() {
            if to.tag().is_none() {
                to.set_tag(tag);
                self.headers.set("To", to.to_string());
            }
        }
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let reason: String = self
            .reason
            .chars()
            .filter(|c| *c != '\r' && *c != '\n')
            .collect();
        let mut out = format!("SIP/2.0 {} {}\r\n", self.status, reason).into_bytes();
        write_rest(&mut out, &self.headers, &self.body);
        out
    }
}

impl Message {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

fn random_token(rng: &mut impl Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// A fresh RFC 3261 branch (magic cookie + randomness).
pub fn new_branch(rng: &mut impl Rng) -> String {
    format!("{BRANCH_COOKIE}{}", random_token(rng, 16))
}

/// A fresh From/To tag (RFC 3261 19.3: at least 32 bits of randomness).
pub fn new_tag(rng: &mut impl Rng) -> String {
    random_token(rng, 12)
}

/// A fresh Call-ID, `random@host`.
pub fn new_call_id(rng: &mut impl Rng, host: &str) -> String {
    format!("{}@{host}", random_token(rng, 20))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn response_for_request_and_bytes() {
        let mut req = Request::new(
            Method::Invite,
            Uri::parse("sip:bob@example.com").expect("uri"),
        );
        req.headers.push("Via", "SIP/2.0/UDP a;branch=z9hG4bK1");
        req.headers.push("Via", "SIP/2.0/UDP b;branch=z9hG4bK2");
        req.headers.push("From", "<sip:alice@a>;tag=1");
        req.headers.push("To", "<sip:bob@example.com>");
        req.headers.push("Call-ID", "c1");
        req.headers.push("CSeq", "1 INVITE");
        req.headers.push("Content-Length", "999");
        req.body = b"hello".to_vec();
        let bytes = req.to_bytes();
        let text = String::from_utf8(bytes).expect("utf8");
        assert!(text.starts_with("INVITE sip:bob@example.com SIP/2.0\r\n"));
        assert!(text.ends_with("Content-Length: 5\r\n\r\nhello"));
        let resp = Response::for_request(&req, 486, "Busy Here").with_to_tag("t9");
        assert_eq!(resp.vias().len(), 2);
        assert_eq!(
            resp.to()
                .and_then(|t| t.tag().map(str::to_string))
                .as_deref(),
            Some("t9")
        );
        assert_eq!(resp.cseq(), Some((1, Method::Invite)));
        let text = String::from_utf8(resp.to_bytes()).expect("utf8");
        assert!(text.starts_with("SIP/2.0 486 Busy Here\r\n"));
    }

    #[test]
    fn ids() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert!(new_branch(&mut rng).starts_with("z9hG4bK"));
        assert_ne!(new_tag(&mut rng), new_tag(&mut rng));
        assert!(new_call_id(&mut rng, "node1").ends_with("@node1"));
        assert_eq!(
            "FOO".parse::<Method>().ok(),
            Some(Method::Other("FOO".into()))
        );
        assert_eq!("INVITE".parse::<Method>().ok(), Some(Method::Invite));
    }
}
