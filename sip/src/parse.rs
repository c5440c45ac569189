//! Datagram parser and validation (RFC 3261 7, 18.3; RFC 4475).
//!
//! Parsing happens in two passes. `parse_head` is lenient: it splits the
//! start line and header lines, unfolds continuation lines and expands
//! compact names. `validate` is strict: it checks the start line, the
//! mandatory headers and their numeric ranges. The split lets
//! `error_response` reuse the lenient pass to answer a broken request with
//! 400 whenever it can find enough headers to address the reply.

use crate::headers::Headers;
use crate::message::{
    parse_cseq, Message, Method, NameAddr, Request, Response, SipMessage, Uri, Via,
};

/// RFC 3261 18.1.1 sizes UDP messages by the path MTU; we accept anything
/// that fits in one IPv4 UDP datagram and use the same cap on streams.
pub const MAX_MESSAGE_BYTES: usize = 65_535;

/// What is wrong with a message from the network. The peer is at fault in
/// every case; the usual reaction is a 400 (see [`error_response`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("empty message")]
    Empty,
    #[error("header section is not terminated by an empty line")]
    UnterminatedHeaders,
    #[error("header section exceeds {MAX_MESSAGE_BYTES} bytes")]
    HeaderSectionTooLarge,
    #[error("header section is not valid UTF-8")]
    NotUtf8,
    #[error("malformed start line")]
    BadStartLine,
    #[error("unsupported SIP version")]
    BadVersion,
    #[error("method is not a token")]
    BadMethod,
    #[error("status code is not in 100-699")]
    BadStatus,
    #[error("malformed URI: {reason}")]
    BadUri { reason: &'static str },
    #[error("Request-URI must not carry URI headers")]
    HeadersInRequestUri,
    #[error("malformed address: {reason}")]
    BadAddress { reason: &'static str },
    #[error("malformed Via: {reason}")]
    BadVia { reason: &'static str },
    #[error("malformed header line")]
    BadHeaderLine,
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("more than one {0} header")]
    DuplicateHeader(&'static str),
    #[error("malformed CSeq")]
    BadCSeq,
    #[error("CSeq method does not match the request method")]
    CSeqMethodMismatch,
    #[error("malformed Call-ID")]
    BadCallId,
    #[error("malformed Max-Forwards")]
    BadMaxForwards,
    #[error("malformed Content-Length")]
    BadContentLength,
    #[error("body shorter than Content-Length ({expected} expected, {actual} present)")]
    BodyTooShort { expected: usize, actual: usize },
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
    #[error("malformed {0} header")]
    BadHeaderValue(&'static str),
}

/// The lenient result of splitting a header section.
pub(crate) struct RawHead {
    pub start_line: String,
    pub headers: Headers,
}

/// Skips the CRLFs RFC 3261 7.5 says to ignore before a start line.
pub(crate) fn skip_leading_newlines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count()
}

/// Finds the empty line ending the header section: returns (end of the
/// header text, start of the body). Accepts CRLF and bare LF.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    scan_head(buf, 0).0
}

/// Like `find_head_end`, starting at line start `from`; when not found,
/// also returns the start of the last (incomplete) line so a stream framer
/// can resume there instead of rescanning the whole buffer.
pub(crate) fn scan_head(buf: &[u8], from: usize) -> (Option<(usize, usize)>, usize) {
    let mut pos = from;
    while pos < buf.len() {
        let Some(offset) = buf[pos..].iter().position(|b| *b == b'\n') else {
            break;
        };
        let nl = pos + offset;
        let line_end = if nl > pos && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        if line_end == pos && pos > 0 {
            return (Some((pos, nl + 1)), pos);
        }
        pos = nl + 1;
    }
    (None, pos.min(buf.len()))
}

/// Splits header text into the start line and unfolded headers. Strict mode
/// fails on a line without a colon; lenient mode skips it.
pub(crate) fn parse_head(text: &str, strict: bool) -> Result<RawHead, ParseError> {
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().ok_or(ParseError::Empty)?.to_string();
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        // RFC 3261 7.3.1: a line starting with whitespace continues the
        // previous header; the fold is equivalent to a single SP.
        if line.starts_with([' ', '\t']) {
            match entries.last_mut() {
                Some((_, value)) => {
                    let more = line.trim();
                    if !more.is_empty() {
                        if !value.is_empty() {
                            value.push(' ');
                        }
                        value.push_str(more);
                    }
                }
                None if strict => return Err(ParseError::BadHeaderLine),
                None => {}
            }
            continue;
        }
        // RFC 3261 7.3.1 allows whitespace between the name and the colon.
        let parsed = line.split_once(':').and_then(|(name, value)| {
            let name = name.trim_end();
            crate::text::is_token(name).then(|| (name.to_string(), value.trim().to_string()))
        });
        match parsed {
            Some(entry) => entries.push(entry),
            None if strict => return Err(ParseError::BadHeaderLine),
            None => {}
        }
    }
    let mut headers = Headers::new();
    for (name, value) in entries {
        headers.push(&name, value);
    }
    Ok(RawHead {
        start_line,
        headers,
    })
}

/// Parses one UDP datagram. Without Content-Length the body is the rest of
/// the datagram (RFC 3261 18.3); with it, the body is cut to that length.
pub fn parse_message(buf: &[u8]) -> Result<Message, ParseError> {
    parse_framed(buf, false)
}

/// Shared by datagrams and the stream framer; `stream` makes
/// Content-Length mandatory (RFC 3261 18.3).
pub(crate) fn parse_framed(buf: &[u8], stream: bool) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge { len: buf.len() });
    }
    let buf = &buf[skip_leading_newlines(buf)..];
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    let (head_end, body_start) = find_head_end(buf).ok_or(ParseError::UnterminatedHeaders)?;
    let text = std::str::from_utf8(&buf[..head_end]).map_err(|_| ParseError::NotUtf8)?;
    let head = parse_head(text, true)?;
    let available = buf.len() - body_start;
    let body_len = match content_length(&head.headers)? {
        Some(len) if len > available => {
            return Err(ParseError::BodyTooShort {
                expected: len,
                actual: available,
            })
        }
        Some(len) => len,
        None if stream => return Err(ParseError::MissingContentLength),
        None => available,
    };
    let body = buf[body_start..body_start + body_len].to_vec();
    let message = build(head, body)?;
    validate(&message)?;
    Ok(message)
}

/// Reads Content-Length; absent is `None`, anything but one sane decimal
/// number is an error (RFC 4475 ncl: negative; scalar02: overflow).
pub(crate) fn content_length(headers: &Headers) -> Result<Option<usize>, ParseError> {
    let values = headers.get_all("Content-Length");
    match values.as_slice() {
        [] => Ok(None),
        [one] => {
            let one = one.trim();
            if one.is_empty() || !one.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::BadContentLength);
            }
            match one.parse::<usize>() {
                Ok(n) if n <= MAX_MESSAGE_BYTES => Ok(Some(n)),
                _ => Err(ParseError::BadContentLength),
            }
        }
        _ => Err(ParseError::DuplicateHeader("Content-Length")),
    }
}

fn build(head: RawHead, body: Vec<u8>) -> Result<Message, ParseError> {
    let line = head.start_line;
    if let Some(rest) = line.strip_prefix("SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase; some
        // senders omit the reason and its SP (RFC 4475 noreason).
        let (version, rest) = rest.split_once(' ').ok_or(ParseError::BadStartLine)?;
        if version != "2.0" {
            return Err(ParseError::BadVersion);
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::BadStatus);
        }
        let status: u16 = code.parse().map_err(|_| ParseError::BadStatus)?;
        if !(100..=699).contains(&status) {
            return Err(ParseError::BadStatus);
        }
        return Ok(Message::Response(Response {
            status,
            reason: reason.to_string(),
            headers: head.headers,
            body,
        }));
    }
    // Request-Line = Method SP Request-URI SP SIP-Version CRLF, with exactly
    // one SP between elements (RFC 4475 lwsstart, lwsruri, trws).
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts.as_slice() else {
        return Err(ParseError::BadStartLine);
    };
    if !version
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        return Err(ParseError::BadStartLine);
    }
    if version.get(4..) != Some("2.0") {
        return Err(ParseError::BadVersion);
    }
    let method: Method = method.parse()?;
    let uri = Uri::parse(uri)?;
    // RFC 3261 19.1.5: headers are not allowed in a Request-URI (RFC 4475
    // escruri).
    if uri.headers.is_some() {
        return Err(ParseError::HeadersInRequestUri);
    }
    Ok(Message::Request(Request {
        method,
        uri,
        headers: head.headers,
        body,
    }))
}

fn exactly_one<'a>(headers: &'a Headers, name: &'static str) -> Result<&'a str, ParseError> {
    match headers.get_all(name).as_slice() {
        [] => Err(ParseError::MissingHeader(name)),
        [one] => Ok(one),
        _ => Err(ParseError::DuplicateHeader(name)),
    }
}

/// RFC 3261 8.1.1: every request and response carries To, From, CSeq,
/// Call-ID and Via; we also check the values are well formed so that later
/// layers can rely on the typed accessors.
fn validate(message: &Message) -> Result<(), ParseError> {
    let headers = message.headers();
    let vias = headers.get_all_split("Via");
    if vias.is_empty() {
        return Err(ParseError::MissingHeader("Via"));
    }
    for via in vias {
        Via::parse(via)?;
    }
    NameAddr::parse(exactly_one(headers, "From")?)?;
    NameAddr::parse(exactly_one(headers, "To")?)?;
    let call_id = exactly_one(headers, "Call-ID")?;
    if call_id.is_empty() || call_id.chars().any(|c| c.is_whitespace() || c == ',') {
        return Err(ParseError::BadCallId);
    }
    let (_, cseq_method) = parse_cseq(exactly_one(headers, "CSeq")?)?;
    if let Message::Request(req) = message {
        // RFC 3261 8.1.1.5 (RFC 4475 mismatch01/02).
        if req.method != cseq_method {
            return Err(ParseError::CSeqMethodMismatch);
        }
    }
    match headers.get_all("Max-Forwards").as_slice() {
        [] => {}
        [one] => {
            let one = one.trim();
            if one.is_empty()
                || !one.bytes().all(|b| b.is_ascii_digit())
                || one.parse::<u8>().is_err()
            {
                return Err(ParseError::BadMaxForwards);
            }
        }
        _ => return Err(ParseError::DuplicateHeader("Max-Forwards")),
    }
    for contact in headers.get_all_split("Contact") {
        if contact != "*" {
            NameAddr::parse(contact)?;
        }
    }
    for name in ["Route", "Record-Route"] {
        for value in headers.get_all_split(name) {
            NameAddr::parse(value)?;
        }
    }
    if let Some(expires) = headers.get("Expires") {
        if crate::message::parse_delta_seconds(expires).is_none() {
            return Err(ParseError::BadHeaderValue("Expires"));
        }
    }
    // RFC 3261 20.17: SIP dates are always GMT (RFC 4475 baddate).
    if let Some(date) = headers.get("Date") {
        if !date.trim_end().ends_with("GMT") {
            return Err(ParseError::BadHeaderValue("Date"));
        }
    }
    Ok(())
}

/// Builds the 400 a node sends for a request it could not parse, when the
/// lenient pass finds the Via, From, To, Call-ID and CSeq needed to address
/// it (RFC 3261 8.2.6). Returns `None` for responses, ACKs (never answered,
/// 17.2.3) and anything too broken to reply to.
pub fn error_response(buf: &[u8], error: &ParseError) -> Option<Response> {
    let buf = buf.get(..buf.len().min(MAX_MESSAGE_BYTES))?;
    let buf = &buf[skip_leading_newlines(buf)..];
    let head_end = find_head_end(buf).map(|(end, _)| end).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..head_end]);
    let head = parse_head(&text, false).ok()?;
    let method = head.start_line.split(' ').next()?;
    if method.starts_with("SIP/") || method == "ACK" || method.is_empty() {
        return None;
    }
    let mut resp = Response::new(400, &reason_for(error));
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        let values = head.headers.get_all(name);
        if values.is_empty() || values.iter().all(|v| v.trim().is_empty()) {
            return None;
        }
        for value in values {
            resp.headers.push(name, value);
        }
    }
    let tag = crate::message::new_tag(&mut rand::thread_rng());
    Some(resp.with_to_tag(&tag))
}

fn reason_for(error: &ParseError) -> String {
    let text: String = error
        .to_string()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    format!("Bad Request - {text}")
}
