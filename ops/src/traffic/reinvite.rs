//! In-dialog re-INVITEs for the synthetic endpoints (RFC 3261 14.2 and 12.2.2).
//!
//! When the node anchoring a call dies, a surviving node takes the call over and sends a
//! re-INVITE on both legs: same Call-ID and tags, a CSeq above any the dead node used, its
//! own Contact and an SDP offer with its own media address, from a source address our UA has
//! never seen. The caller (UAC of its dialog) and the phone (UAS of its dialog) answer it the
//! same way, so the rules live here, free of sockets and clocks: check that the request is in
//! order and usable, refresh the dialog's remote target from its Contact, answer 200 with our
//! unchanged SDP, and resend that 200 until the ACK (RFC 3261 13.3.1.4). The endpoint then
//! sends the response and moves its RTP.
//!
//! Nothing is changed by a re-INVITE we refuse: the remote target, the remote CSeq and the
//! media stay as they were, so a bad request from a confused node cannot hijack a call.

use std::net::SocketAddr;
use std::time::Instant;

use sip::dialog::Dialog;
use sip::message::{Request, Response};
use sip::transaction::{Retransmit2xx, Retransmit2xxOutput, Transport};
use sip::uri::Uri;
use sip::SipMessage;

use super::media::{negotiate_checked, Negotiated};
use super::ua::target_addr;

/// RFC 3261 12.2.2: whether `request` belongs to `dialog`: same Call-ID, the remote tag in
/// From and ours in To. (An RFC 2543 peer may send no From tag; its dialog then has an empty
/// remote tag, and the empty tag matches.)
pub fn in_dialog(dialog: &Dialog, request: &Request) -> bool {
    request.call_id() == Some(dialog.call_id.as_str())
        && request
            .from()
            .is_some_and(|from| from.tag().unwrap_or("") == dialog.remote_tag)
        && request
            .to()
            .is_some_and(|to| to.tag() == Some(dialog.local_tag.as_str()))
}

/// Whether the request's To carries a tag (RFC 3261 12.2: every in-dialog request does).
pub fn has_to_tag(request: &Request) -> bool {
    request.to().is_some_and(|to| to.tag().is_some())
}

/// A 200 to an INVITE or re-INVITE with our tag, our Contact and `sdp`.
pub fn ok_with_sdp(request: &Request, local_tag: &str, contact: &Uri, sdp: &str) -> Response {
    let mut response = Response::for_request(request, 200, "OK").with_to_tag(local_tag);
    response.headers.set("Contact", format!("<{contact}>"));
    response.headers.set("Content-Type", "application/sdp");
    response.body = sdp.as_bytes().to_vec();
    response
}

/// What to do about one re-INVITE; the endpoint sends `response()` on the request's server
/// transaction in every case.
#[derive(Debug)]
pub enum Reinvite {
    /// The target was refreshed. Move the media to `media`; `None` means the re-INVITE had
    /// no offer, so our 200 carried one and the answer comes with the ACK.
    Accepted {
        response: Response,
        media: Option<Negotiated>,
    },
    /// The re-INVITE we accepted last, again on a new transaction (the transaction layer
    /// absorbs same-branch copies; a node may also resend it afresh): the same 200 again,
    /// nothing else changes.
    Repeated { response: Response },
    /// Refused: out of order, malformed or with SDP we cannot use. The dialog is untouched.
    Rejected { response: Response, reason: String },
}

impl Reinvite {
    pub fn into_response(self) -> Response {
        match self {
            Reinvite::Accepted { response, .. }
            | Reinvite::Repeated { response }
            | Reinvite::Rejected { response, .. } => response,
        }
    }
}

/// 2xx copies due now, and whether one went unacknowledged.
#[derive(Debug, Default)]
pub struct Due {
    pub transmits: Vec<(SocketAddr, Vec<u8>)>,
    /// RFC 3261 13.3.1.4: no ACK for our 2xx within 64*T1, so the session failed and the
    /// endpoint should end the call with a BYE.
    pub ack_timeout: bool,
}

#[derive(Debug)]
struct Accepted {
    cseq: u32,
    /// The re-INVITE had no offer: ours went in the 200, the answer comes in the ACK.
    offer_in_2xx: bool,
    acked: bool,
    retransmit: Option<Retransmit2xx>,
}

/// The re-INVITE state of one dialog: the last one accepted and its 2xx retransmission.
#[derive(Debug, Default)]
pub struct Reinvites {
    last: Option<Accepted>,
}

impl Reinvites {
    /// Handles a re-INVITE already known to belong to `dialog` (see [`in_dialog`]) that
    /// arrived from `source`. `local_sdp` is our SDP for the call: the media we offer does not
    /// change, so the answer is the same body as before, same `o=` version (RFC 3264 8).
    pub fn on_reinvite(
        &mut self,
        now: Instant,
        dialog: &mut Dialog,
        request: &Request,
        source: SocketAddr,
        local_contact: &Uri,
        local_sdp: &str,
    ) -> Reinvite {
        let reject = |status: u16, reason_phrase: &str, reason: String| Reinvite::Rejected {
            response: Response::for_request(request, status, reason_phrase)
                .with_to_tag(&dialog.local_tag),
            reason,
        };
        let Some((cseq, _)) = request.cseq() else {
            return reject(400, "Bad Request", "no usable CSeq".into());
        };
        if let Some(last) = self.last.as_mut().filter(|last| last.cseq == cseq) {
            let response = ok_with_sdp(request, &dialog.local_tag, local_contact, local_sdp);
            if !last.acked {
                // The sender has not seen our 200 yet: resend it where this copy came from.
                last.retransmit = Some(retransmit(now, source, &response));
            }
            return Reinvite::Repeated { response };
        }
        if let Some(seen) = dialog.remote_seq.filter(|seen| cseq <= *seen) {
            // RFC 3261 12.2.2: lower than the last request is out of order (500). Equal but not
            // the re-INVITE we answered is no retransmission either; refuse it the same way.
            let mut rejected = reject(
                500,
                "Server Internal Error",
                format!("CSeq {cseq} is not above {seen}"),
            );
            if let Reinvite::Rejected { response, .. } = &mut rejected {
                response.headers.push("Retry-After", "1");
            }
            return rejected;
        }
        let Some(contact) = request.contact() else {
            return reject(400, "Bad Request", "no usable Contact".into());
        };
        if target_addr(&contact.uri).is_none() {
            // We send in-dialog requests to the target's IP; a name we cannot route to would
            // strand the call's BYE.
            return reject(
                400,
                "Bad Request",
                format!("Contact {} is not an IP address", contact.uri),
            );
        }
        let media = if request.body.is_empty() {
            None
        } else {
            if let Some(content_type) = request.content_type() {
                let essence = content_type.split(';').next().unwrap_or("").trim();
                if !essence.eq_ignore_ascii_case("application/sdp") {
                    let mut rejected = reject(
                        415,
                        "Unsupported Media Type",
                        format!("body is {content_type}"),
                    );
                    if let Reinvite::Rejected { response, .. } = &mut rejected {
                        response.headers.push("Accept", "application/sdp");
                    }
                    return rejected;
                }
            }
            match negotiate_checked(&request.body) {
                Ok(negotiated) => Some(negotiated),
                Err(error) => {
                    let (status, phrase) = error.status();
                    return reject(status, phrase, error.to_string());
                }
            }
        };
        dialog.accept_remote_cseq(cseq);
        // RFC 3261 12.2.2: a target refresh replaces the remote target; the route set stays
        // what the dialog was created with.
        dialog.remote_target = contact.uri;
        let response = ok_with_sdp(request, &dialog.local_tag, local_contact, local_sdp);
        self.last = Some(Accepted {
            cseq,
            offer_in_2xx: media.is_none(),
            acked: false,
            retransmit: Some(retransmit(now, source, &response)),
        });
        Reinvite::Accepted { response, media }
    }

    /// An ACK in the dialog. Stops the 2xx retransmission of the re-INVITE it acknowledges,
    /// and returns where the media goes when that re-INVITE had no offer and this ACK carries
    /// the answer. ACKs for anything else are ignored.
    pub fn on_ack(&mut self, ack: &Request) -> Option<Negotiated> {
        let (cseq, _) = ack.cseq()?;
        let last = self.last.as_mut().filter(|last| last.cseq == cseq)?;
        last.retransmit = None;
        let first = !std::mem::replace(&mut last.acked, true);
        if !(first && last.offer_in_2xx) {
            return None;
        }
        match negotiate_checked(&ack.body) {
            Ok(negotiated) => Some(negotiated),
            Err(error) => {
                // RFC 3264 leaves us with our old media; the call goes on, the drill sees it.
                tracing::warn!(%error, "ACK without a usable answer to our offer");
                None
            }
        }
    }

    /// When [`Reinvites::on_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.last
            .as_ref()
            .and_then(|last| last.retransmit.as_ref())
            .and_then(Retransmit2xx::poll_timeout)
    }

    /// The 2xx copies due at `now` (RFC 3261 13.3.1.4: T1 doubling to T2 until the ACK).
    pub fn on_timeout(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        let Some(last) = self.last.as_mut() else {
            return due;
        };
        let Some(retransmit) = last.retransmit.as_mut() else {
            return due;
        };
        retransmit.handle_timeout(now);
        while let Some(output) = retransmit.poll_output() {
            match output {
                Retransmit2xxOutput::Transmit { dest, bytes, .. } => {
                    due.transmits.push((dest, bytes));
                }
                Retransmit2xxOutput::AckTimeout => due.ack_timeout = true,
            }
        }
        if retransmit.is_done() {
            last.retransmit = None;
        }
        due
    }
}

fn retransmit(now: Instant, dest: SocketAddr, response: &Response) -> Retransmit2xx {
    Retransmit2xx::new(
        now,
        dest,
        Transport::Udp,
        response.to_bytes(),
        Default::default(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sip::message::Method;

    use super::super::media::{local_description, sdp_body};
    use super::*;

    /// The phone's dialog after answering node A's INVITE (CSeq 1).
    fn dialog() -> Dialog {
        let mut invite = Request::new(
            Method::Invite,
            Uri::parse("sip:1001@127.0.0.1:5070").expect("uri"),
        );
        invite
            .headers
            .push("Via", "SIP/2.0/UDP 127.0.0.11:5060;branch=z9hG4bKa");
        invite
            .headers
            .push("From", "<sip:13900000000@gd.callgrid.local>;tag=node");
        invite.headers.push("To", "<sip:1001@gd.callgrid.local>");
        invite.headers.push("Call-ID", "leg-1");
        invite.headers.push("CSeq", "1 INVITE");
        invite
            .headers
            .push("Contact", "<sip:callgrid@127.0.0.11:5060>");
        let contact = Uri::sip(Some("1001"), "127.0.0.1", Some(5070));
        Dialog::uas_from_invite(&invite, "phone", &contact).expect("dialog")
    }

    /// Node B's re-INVITE with CSeq `cseq`, its Contact and an offer for `rtp_port`.
    fn reinvite(cseq: u32, branch: &str, rtp_port: u16) -> Request {
        let mut request = Request::new(
            Method::Invite,
            Uri::parse("sip:1001@127.0.0.1:5070").expect("uri"),
        );
        request.headers.push(
            "Via",
            format!("SIP/2.0/UDP 127.0.0.12:5060;branch=z9hG4bK{branch}"),
        );
        request
            .headers
            .push("From", "<sip:13900000000@gd.callgrid.local>;tag=node");
        request
            .headers
            .push("To", "<sip:1001@gd.callgrid.local>;tag=phone");
        request.headers.push("Call-ID", "leg-1");
        request.headers.push("CSeq", format!("{cseq} INVITE"));
        request
            .headers
            .push("Contact", "<sip:callgrid@127.0.0.12:5060>");
        request.headers.push("Content-Type", "application/sdp");
        request.body = sdp_body(&local_description(
            "127.0.0.12".parse().expect("ip"),
            rtp_port,
        ))
        .into_bytes();
        request
    }

    fn source() -> SocketAddr {
        "127.0.0.12:5060".parse().expect("addr")
    }

    fn contact() -> Uri {
        Uri::sip(Some("1001"), "127.0.0.1", Some(5070))
    }

    const SDP: &str = "v=0\r\no=callgrid 7 1 IN IP4 127.0.0.1\r\n";

    #[test]
    fn a_takeover_refreshes_the_target_and_moves_the_media() {
        let mut dialog = dialog();
        let mut state = Reinvites::default();
        let now = Instant::now();
        let request = reinvite(2, "b1", 42_000);
        assert!(in_dialog(&dialog, &request));
        let outcome = state.on_reinvite(now, &mut dialog, &request, source(), &contact(), SDP);
        let Reinvite::Accepted { response, media } = outcome else {
            panic!("accepted: {outcome:?}");
        };
        assert_eq!(response.status, 200);
        assert_eq!(response.body, SDP.as_bytes());
        assert_eq!(response.contact().map(|c| c.uri), Some(contact()));
        assert_eq!(
            media.map(|m| m.remote),
            Some("127.0.0.12:42000".parse().expect("addr"))
        );
        assert_eq!(
            dialog.remote_target.to_string(),
            "sip:callgrid@127.0.0.12:5060"
        );
        assert_eq!(dialog.remote_seq, Some(2));
        // The BYE we send now goes to node B.
        let bye = dialog.new_request(Method::Bye, &contact(), "127.0.0.1:5070", "z9hG4bKbye");
        assert_eq!(bye.uri.to_string(), "sip:callgrid@127.0.0.12:5060");

        // The 200 is resent until the ACK.
        let first = state.poll_timeout().expect("retransmission scheduled");
        let due = state.on_timeout(first);
        assert_eq!(due.transmits.len(), 1);
        assert_eq!(due.transmits[0].0, source());
        assert_eq!(due.transmits[0].1, response.to_bytes());
        let mut ack = reinvite(2, "ack", 42_000);
        ack.method = Method::Ack;
        ack.headers.set("CSeq", "2 ACK");
        ack.body.clear();
        assert_eq!(state.on_ack(&ack), None);
        assert_eq!(state.poll_timeout(), None);
    }

    #[test]
    fn a_copy_of_the_last_reinvite_gets_the_same_200_and_changes_nothing() {
        let mut dialog = dialog();
        let mut state = Reinvites::default();
        let now = Instant::now();
        let first = state
            .on_reinvite(
                now,
                &mut dialog,
                &reinvite(5, "b1", 42_000),
                source(),
                &contact(),
                SDP,
            )
            .into_response();
        let again = state.on_reinvite(
            now,
            &mut dialog,
            &reinvite(5, "b2", 43_000),
            source(),
            &contact(),
            SDP,
        );
        let Reinvite::Repeated { response } = again else {
            panic!("repeated: {again:?}");
        };
        assert_eq!(response.status, 200);
        assert_eq!(response.body, first.body);
        assert_eq!(dialog.remote_seq, Some(5));
    }

    #[test]
    fn bad_reinvites_are_refused_and_leave_the_dialog_alone() {
        let mut dialog = dialog();
        let before = dialog.clone();
        let mut state = Reinvites::default();
        let now = Instant::now();
        let mut check = |request: Request, status: u16| {
            let outcome = state.on_reinvite(now, &mut dialog, &request, source(), &contact(), SDP);
            assert!(
                matches!(&outcome, Reinvite::Rejected { response, .. } if response.status == status),
                "{status}: {outcome:?}"
            );
        };
        // Out of order: CSeq not above node A's INVITE.
        check(reinvite(1, "old", 42_000), 500);
        let mut no_contact = reinvite(3, "c", 42_000);
        no_contact.headers.remove("Contact");
        check(no_contact, 400);
        let mut named = reinvite(3, "d", 42_000);
        named
            .headers
            .set("Contact", "<sip:callgrid@node-b.example>");
        check(named, 400);
        let mut garbage = reinvite(3, "e", 42_000);
        garbage.body = b"this is not sdp".to_vec();
        check(garbage, 400);
        let mut disabled = reinvite(3, "f", 0);
        disabled.body =
            sdp_body(&local_description("127.0.0.12".parse().expect("ip"), 0)).into_bytes();
        check(disabled, 488);
        let mut json = reinvite(3, "g", 42_000);
        json.headers.set("Content-Type", "application/json");
        check(json, 415);
        assert_eq!(dialog, before);
        assert_eq!(state.poll_timeout(), None);
    }

    #[test]
    fn requests_from_another_dialog_do_not_match() {
        let dialog = dialog();
        let mut wrong_tag = reinvite(2, "x", 42_000);
        wrong_tag
            .headers
            .set("To", "<sip:1001@gd.callgrid.local>;tag=other");
        assert!(!in_dialog(&dialog, &wrong_tag));
        let mut no_tag = reinvite(2, "y", 42_000);
        no_tag.headers.set("To", "<sip:1001@gd.callgrid.local>");
        assert!(!in_dialog(&dialog, &no_tag));
        assert!(!has_to_tag(&no_tag));
        let mut other_call = reinvite(2, "z", 42_000);
        other_call.headers.set("Call-ID", "leg-2");
        assert!(!in_dialog(&dialog, &other_call));
    }

    #[test]
    fn an_offerless_reinvite_takes_the_answer_from_the_ack() {
        let mut dialog = dialog();
        let mut state = Reinvites::default();
        let now = Instant::now();
        let mut request = reinvite(2, "b1", 42_000);
        request.body.clear();
        request.headers.remove("Content-Type");
        let outcome = state.on_reinvite(now, &mut dialog, &request, source(), &contact(), SDP);
        assert!(
            matches!(&outcome, Reinvite::Accepted { media: None, response } if response.body == SDP.as_bytes()),
            "{outcome:?}"
        );
        let mut ack = reinvite(2, "ack", 44_000);
        ack.method = Method::Ack;
        ack.headers.set("CSeq", "2 ACK");
        let moved = state.on_ack(&ack).map(|m| m.remote.port());
        assert_eq!(moved, Some(44_000));
        // A second copy of the ACK changes nothing.
        assert_eq!(state.on_ack(&ack), None);
        // Unacknowledged 2xx: the session failed after 64*T1.
        let mut state = Reinvites::default();
        let mut dialog = self::dialog();
        state.on_reinvite(
            now,
            &mut dialog,
            &reinvite(2, "b2", 42_000),
            source(),
            &contact(),
            SDP,
        );
        let due = state.on_timeout(now + Duration::from_secs(33));
        assert!(due.ack_timeout);
        assert_eq!(state.poll_timeout(), None);
    }
}
