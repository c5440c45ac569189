//! Framing SIP messages on a byte stream (RFC 3261 18.3, RFC 5626 4.4.1).
//!
//! On TCP a message ends where its Content-Length says, so the framer waits
//! for the empty line, reads Content-Length, waits for the body and then
//! hands exactly that slice to the datagram parser. Bare CRLFs between
//! messages are keep-alives and are skipped. The buffer is bounded: a
//! header section that never ends is an error, after which the connection
//! should be closed because the stream position can no longer be trusted.

use crate::message::Message;
use crate::parse::{
    content_length, parse_framed, parse_head, scan_head, skip_leading_newlines, ParseError,
    MAX_MESSAGE_BYTES,
};

#[derive(Debug, Default)]
pub struct StreamFramer {
    buffer: Vec<u8>,
    /// Set after a framing error: the stream cannot be resynchronised.
    broken: bool,
    /// Where the search for the end of the header section resumes, so a
    /// peer trickling bytes cannot make us rescan the buffer each time.
    scan_from: usize,
    /// Total length of the current message once its header is known.
    frame_len: Option<usize>,
}

impl StreamFramer {
    pub fn new() -> StreamFramer {
        StreamFramer::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if !self.broken {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// True once a framing error was reported; the caller should close.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes held waiting for the rest of a message.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Returns the next complete message, `None` if more bytes are needed.
    /// A message that frames correctly but fails validation is returned as
    /// an error and the stream continues; an unframeable stream returns one
    /// error and then `None` forever.
    pub fn next_message(&mut self) -> Option<Result<Message, ParseError>> {
        self.next_message_with_bytes().map(|(result, _)| result)
    }

    /// Like `next_message`, also returning the bytes the result came from
    /// (the frame, or on a framing error the discarded buffer) so a driver
    /// can log or answer them.
    pub fn next_message_with_bytes(&mut self) -> Option<(Result<Message, ParseError>, Vec<u8>)> {
        if self.broken {
            return None;
        }
        if self.frame_len.is_none() {
            // RFC 5626 4.4.1: CRLF keep-alives between messages.
            let skip = skip_leading_newlines(&self.buffer);
            if skip > 0 {
                self.buffer.drain(..skip);
                self.scan_from = 0;
            }
            if self.buffer.is_empty() {
                return None;
            }
            match self.frame_len() {
                Ok(Some(total)) => self.frame_len = Some(total),
                Ok(None) => return None,
                Err(error) => return Some(self.fail(error)),
            }
        }
        let total = self.frame_len?;
        if self.buffer.len() < total {
            return None;
        }
        self.frame_len = None;
        self.scan_from = 0;
        let frame: Vec<u8> = self.buffer.drain(..total).collect();
        Some((parse_framed(&frame, true), frame))
    }

    /// The full length of the message at the front of the buffer, `None`
    /// while the header section is incomplete.
    fn frame_len(&mut self) -> Result<Option<usize>, ParseError> {
        let (found, resume) = scan_head(&self.buffer, self.scan_from);
        self.scan_from = resume;
        let Some((head_end, body_start)) = found else {
            if self.buffer.len() > MAX_MESSAGE_BYTES {
                return Err(ParseError::HeaderSectionTooLarge);
            }
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&self.buffer[..head_end]);
        let head = parse_head(&text, false)?;
        let body_len = content_length(&head.headers)?.ok_or(ParseError::MissingContentLength)?;
        let total = body_start + body_len;
        if total > MAX_MESSAGE_BYTES {
            return Err(ParseError::TooLarge { len: total });
        }
        Ok(Some(total))
    }

    fn fail(&mut self, error: ParseError) -> (Result<Message, ParseError>, Vec<u8>) {
        self.broken = true;
        self.frame_len = None;
        (Err(error), std::mem::take(&mut self.buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SipMessage;

    const OPTIONS: &str = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn frames_byte_by_byte_with_keepalives() {
        let mut framer = StreamFramer::new();
        let stream = format!("\r\n\r\n{OPTIONS}\r\n{OPTIONS}");
        let mut got = Vec::new();
        for b in stream.as_bytes() {
            framer.push(&[*b]);
            while let Some(m) = framer.next_message() {
                got.push(m.expect("valid"));
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].call_id(), Some("c"));
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn missing_length_and_oversize_break_the_stream() {
        let mut framer = StreamFramer::new();
        framer.push(OPTIONS.replace("Content-Length: 4\r\n", "").as_bytes());
        assert_eq!(
            framer.next_message(),
            Some(Err(ParseError::MissingContentLength))
        );
        assert!(framer.is_broken());
        assert_eq!(framer.next_message(), None);
        let mut framer = StreamFramer::new();
        framer.push(b"INVITE sip:a@b SIP/2.0\r\n");
        for _ in 0..7000 {
            framer.push(b"X-Pad: 0123456789\r\n");
        }
        assert_eq!(
            framer.next_message(),
            Some(Err(ParseError::HeaderSectionTooLarge))
        );
    }

    #[test]
    fn trickled_header_is_scanned_incrementally() {
        // One byte at a time up to the limit: with rescanning this would
        // be quadratic; it must stay fast and end in one error.
        let mut framer = StreamFramer::new();
        let line = b"X-Pad: 0123456789abcdef\r\n";
        let mut errors = 0;
        for i in 0..(MAX_MESSAGE_BYTES + 100) {
            framer.push(&line[i % line.len()..i % line.len() + 1]);
            if let Some(result) = framer.next_message() {
                assert_eq!(result, Err(ParseError::HeaderSectionTooLarge));
                errors += 1;
            }
        }
        assert_eq!(errors, 1);
    }
}
