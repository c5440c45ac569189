//! Dialog state (RFC 3261 12) and in-dialog request construction.
//!
//! A `Dialog` is plain data so the cluster can checkpoint it (serde). It is
//! created from the dialog-creating INVITE on the UAS side or from the
//! 2xx/1xx-with-tag on the UAC side, and builds the requests that follow.

use serde::{Deserialize, Serialize};

use crate::message::{Method, Request, Response, SipMessage};
use crate::name_addr::NameAddr;
use crate::uri::{Scheme, Uri};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialogError {
    #[error("dialog-creating message lacks a usable {0} header")]
    MissingHeader(&'static str),
    #[error("response has no To tag, so it cannot create a dialog")]
    MissingRemoteTag,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    pub local_uri: NameAddr,
    pub remote_uri: NameAddr,
    /// The CSeq of the last request we sent (0 before the first).
    pub local_seq: u32,
    pub remote_seq: Option<u32>,
    pub remote_target: Uri,
    /// Route set as header values, in the order requests must carry them.
    pub route_set: Vec<String>,
    pub secure: bool,
    /// Our Contact for this dialog.
    pub local_target: Uri,
}

fn strip_tag(mut addr: NameAddr) -> NameAddr {
    addr.params.retain(|(n, _)| !n.eq_ignore_ascii_case("tag"));
    addr
}

impl Dialog {
    /// RFC 3261 12.1.1: the UAS builds the dialog from the request. The
    /// route set is the Record-Route list in order, the remote target is
    /// the request's Contact and the remote sequence number its CSeq.
    pub fn uas_from_invite(
        req: &Request,
        local_tag: &str,
        local_contact: &Uri,
    ) -> Result<Dialog, DialogError> {
        let from = req.from().ok_or(DialogError::MissingHeader("From"))?;
        let to = req.to().ok_or(DialogError::MissingHeader("To"))?;
        let (cseq, _) = req.cseq().ok_or(DialogError::MissingHeader("CSeq"))?;
        let contact = req.contact().ok_or(DialogError::MissingHeader("Contact"))?;
        Ok(Dialog {
            call_id: req
                .call_id()
                .ok_or(DialogError::MissingHeader("Call-ID"))?
                .to_string(),
            local_tag: local_tag.to_string(),
            // RFC 3261 12.1.1: an RFC 2543 peer may omit the From tag; the
            // remote tag is then empty.
            remote_tag: from.tag().unwrap_or("").to_string(),
            local_uri: strip_tag(to),
            remote_uri: strip_tag(from),
            local_seq: 0,
            remote_seq: Some(cseq),
            remote_target: contact.uri,
            route_set: req
                .headers
                .get_all_split("Record-Route")
                .into_iter()
                .map(str::to_string)
                .collect(),
            secure: req.uri.scheme == Scheme::Sips,
            local_target: local_contact.clone(),
        })
    }

    /// RFC 3261 12.1.2: the UAC builds the dialog from its request and the
    /// response: route set is the Record-Route list reversed, remote target
    /// the response's Contact, local sequence number the request's CSeq.
    pub fn uac_from_response(req: &Request, resp: &Response) -> Result<Dialog, DialogError> {
        let from = req.from().ok_or(DialogError::MissingHeader("From"))?;
        let to = resp.to().ok_or(DialogError::MissingHeader("To"))?;
        let remote_tag = to.tag().ok_or(DialogError::MissingRemoteTag)?.to_string();
        let (cseq, _) = req.cseq().ok_or(DialogError::MissingHeader("CSeq"))?;
        let contact = resp
            .contact()
            .ok_or(DialogError::MissingHeader("Contact"))?;
        let local_target = req
            .contact()
            .map(|c| c.uri)
            .unwrap_or_else(|| req.uri.clone());
        let mut route_set: Vec<String> = resp
            .headers
            .get_all_split("Record-Route")
            .into_iter()
            .map(str::to_string)
            .collect();
        route_set.reverse();
        Ok(Dialog {
            call_id: req
                .call_id()
                .ok_or(DialogError::MissingHeader("Call-ID"))?
                .to_string(),
            local_tag: from.tag().unwrap_or("").to_string(),
            remote_tag,
            local_uri: strip_tag(from),
            remote_uri: strip_tag(to),
            local_seq: cseq,
            remote_seq: None,
            remote_target: contact.uri,
            route_set,
            secure: req.uri.scheme == Scheme::Sips,
            local_target,
        })
    }

    /// RFC 3261 12.2.2: a request with a CSeq lower than the last one seen
    /// is out of order (answer 500). Records the new number when accepted.
    pub fn accept_remote_cseq(&mut self, cseq: u32) -> bool {
        if self.remote_seq.is_some_and(|last| cseq < last) {
            return false;
        }
        self.remote_seq = Some(cseq);
        true
    }

    /// RFC 3261 12.2.1.1: builds the next in-dialog request, incrementing
    /// the local CSeq.
    pub fn new_request(
        &mut self,
        method: Method,
        local_contact: &Uri,
        via_host_port: &str,
        branch: &str,
    ) -> Request {
        self.local_seq = self.local_seq.saturating_add(1);
        self.build(
            method.clone(),
            self.local_seq,
            method,
            local_contact,
            via_host_port,
            branch,
        )
    }

    /// RFC 3261 13.2.2.4: the ACK for a 2xx carries the INVITE's CSeq number
    /// and is built like any in-dialog request otherwise.
    pub fn ack_for_2xx(
        &self,
        invite_cseq: u32,
        local_contact: &Uri,
        via_host_port: &str,
        branch: &str,
    ) -> Request {
        self.build(
            Method::Ack,
            invite_cseq,
            Method::Ack,
            local_contact,
            via_host_port,
            branch,
        )
    }

    fn build(
        &self,
        method: Method,
        seq: u32,
        cseq_method: Method,
        local_contact: &Uri,
        via_host_port: &str,
        branch: &str,
    ) -> Request {
        let (uri, routes) = self.target_and_routes();
        let mut req = Request::new(method, uri);
        let transport = match self.remote_target.param("transport").flatten() {
            Some(t) => t.to_ascii_uppercase(),
            None => "UDP".to_string(),
        };
        req.headers.push(
            "Via",
            format!("SIP/2.0/{transport} {via_host_port};branch={branch};rport"),
        );
        for route in routes {
            req.headers.push("Route", route);
        }
        req.headers.push("Max-Forwards", "70");
        let mut from = self.local_uri.clone();
        if !self.local_tag.is_empty() {
            from.set_tag(&self.local_tag);
        }
        let mut to = self.remote_uri.clone();
        if !self.remote_tag.is_empty() {
            to.set_tag(&self.remote_tag);
        }
        req.headers.push("From", from.to_string());
        req.headers.push("To", to.to_string());
        req.headers.push("Call-ID", self.call_id.clone());
        req.headers.push("CSeq", format!("{seq} {cseq_method}"));
        req.headers.push("Contact", format!("<{local_contact}>"));
        req
    }

    /// RFC 3261 12.2.1.1: with a loose router (`lr`) first in the route set
    /// the Request-URI is the remote target; with a strict router it is the
    /// first route and the remote target goes last in Route.
    fn target_and_routes(&self) -> (Uri, Vec<String>) {
        let first = self.route_set.first().and_then(|r| NameAddr::parse(r).ok());
        match first {
            Some(first) if first.uri.param("lr").is_none() => {
                let mut uri = first.uri;
                uri.params.retain(|(n, _)| {
                    n.eq_ignore_ascii_case("transport") || n.eq_ignore_ascii_case("user")
                });
                let mut routes: Vec<String> = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.remote_target));
                (uri, routes)
            }
            _ => (self.remote_target.clone(), self.route_set.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Request {
        let mut req = Request::new(
            Method::Invite,
            Uri::parse("sip:bob@example.com").expect("uri"),
        );
        req.headers
            .push("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1");
        req.headers.push(
            "Record-Route",
            "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        );
        req.headers
            .push("From", "\"Alice\" <sip:alice@example.com>;tag=a1");
        req.headers.push("To", "<sip:bob@example.com>");
        req.headers.push("Call-ID", "dlg-1");
        req.headers.push("CSeq", "10 INVITE");
        req.headers.push("Contact", "<sip:alice@192.0.2.1:5060>");
        req
    }

    #[test]
    fn uas_and_uac_agree() {
        let req = invite();
        let contact = Uri::parse("sip:bob@192.0.2.2").expect("uri");
        let mut uas = Dialog::uas_from_invite(&req, "b1", &contact).expect("dialog");
        assert_eq!(uas.remote_seq, Some(10));
        assert_eq!(
            uas.route_set,
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        let bye = uas.new_request(Method::Bye, &contact, "192.0.2.2:5060", "z9hG4bKbye");
        assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.1:5060");
        assert_eq!(bye.cseq(), Some((1, Method::Bye)));
        assert_eq!(
            bye.headers.get_all("Route"),
            vec!["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(
            bye.from()
                .and_then(|f| f.tag().map(str::to_string))
                .as_deref(),
            Some("b1")
        );
        assert_eq!(
            bye.to()
                .and_then(|f| f.tag().map(str::to_string))
                .as_deref(),
            Some("a1")
        );
        assert!(crate::parse::parse_message(&bye.to_bytes()).is_ok());

        let mut resp = Response::for_request(&req, 200, "OK").with_to_tag("b1");
        resp.headers.push(
            "Record-Route",
            "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        );
        resp.headers.push("Contact", "<sip:bob@192.0.2.2>");
        let mut uac = Dialog::uac_from_response(&req, &resp).expect("dialog");
        assert_eq!(
            uac.route_set,
            vec!["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
        );
        let ack = uac.ack_for_2xx(10, &contact, "192.0.2.1:5060", "z9hG4bKack");
        assert_eq!(ack.cseq(), Some((10, Method::Ack)));
        assert_eq!(ack.uri.to_string(), "sip:bob@192.0.2.2");
        let reinvite = uac.new_request(Method::Invite, &contact, "192.0.2.1:5060", "z9hG4bKre");
        assert_eq!(reinvite.cseq(), Some((11, Method::Invite)));
        assert!(uac.accept_remote_cseq(5));
        assert!(!uac.accept_remote_cseq(4));
    }

    #[test]
    fn strict_router_and_missing_tag() {
        let req = invite();
        let contact = Uri::parse("sip:bob@192.0.2.2").expect("uri");
        let mut d = Dialog::uas_from_invite(&req, "b1", &contact).expect("dialog");
        d.route_set = vec![
            "<sip:strict.example.com;maddr=x>".into(),
            "<sip:p2.example.com;lr>".into(),
        ];
        let bye = d.new_request(Method::Bye, &contact, "h", "z9hG4bK2");
        assert_eq!(bye.uri.to_string(), "sip:strict.example.com");
        assert_eq!(
            bye.headers.get_all("Route"),
            vec!["<sip:p2.example.com;lr>", "<sip:alice@192.0.2.1:5060>"]
        );
        let resp = Response::for_request(&req, 200, "OK");
        assert_eq!(
            Dialog::uac_from_response(&req, &resp),
            Err(DialogError::MissingRemoteTag)
        );
    }
}
