//! Interpreting a REGISTER (RFC 3261 10.3), without any storage.
//!
//! `parse_register` turns a request into the binding changes it asks for,
//! or the status a registrar must answer with. Applying the bindings (and
//! the Call-ID/CSeq ordering check of 10.3 step 7) is the caller's job,
//! because that needs the stored bindings. A 423 reply must carry
//! `Min-Expires: 60` ([`MIN_EXPIRES_SECS`]).

use crate::message::{parse_delta_seconds, Method, Request, SipMessage};
use crate::name_addr::NameAddr;
use crate::text::unquote;
use crate::uri::{Scheme, Uri};

/// Shortest registration we accept; shorter asks get 423 (RFC 3261 10.3.7).
pub const MIN_EXPIRES_SECS: u32 = 60;
/// Longest registration we grant; longer asks are clamped.
pub const MAX_EXPIRES_SECS: u32 = 3600;
/// Used when neither the contact nor the request says (RFC 3261 10.2.1.1
/// leaves it to the registrar).
pub const DEFAULT_EXPIRES_SECS: u32 = 3600;

#[derive(Debug, Clone, PartialEq)]
pub struct ContactBinding {
    pub uri: Uri,
    /// 0 means remove this binding.
    pub expires_secs: u32,
    pub q: Option<f32>,
    /// RFC 5626 `+sip.instance`, unquoted.
    pub instance: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegisterRequest {
    pub aor_user: String,
    pub aor_domain: String,
    /// Empty with `remove_all == false` is a query (RFC 3261 10.2.3).
    pub contacts: Vec<ContactBinding>,
    /// `Contact: *` with `Expires: 0` (RFC 3261 10.2.2).
    pub remove_all: bool,
    pub call_id: String,
    pub cseq: u32,
}

pub fn parse_register(req: &Request) -> Result<RegisterRequest, (u16, &'static str)> {
    if req.method != Method::Register {
        return Err((405, "Method Not Allowed"));
    }
    let call_id = req.call_id().ok_or((400, "Missing Call-ID"))?.to_string();
    let (cseq, _) = req.cseq().ok_or((400, "Bad CSeq"))?;
    // RFC 3261 10.3 step 5: the To header names the address-of-record.
    let to = req.to().ok_or((400, "Bad To"))?;
    if to.uri.scheme == Scheme::Tel {
        return Err((404, "Not Found"));
    }
    let aor_user = to
        .uri
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or((404, "Not Found"))?;
    let aor_domain = to.uri.host.to_ascii_lowercase();
    let header_expires = match req.headers.get("Expires") {
        Some(v) => Some(parse_delta_seconds(v).ok_or((400, "Bad Expires"))?),
        None => None,
    };
    let values = req.headers.get_all_split("Contact");
    let mut registration = RegisterRequest {
        aor_user,
        aor_domain,
        contacts: Vec::new(),
        remove_all: false,
        call_id,
        cseq,
    };
    // RFC 3261 10.3 step 6: "*" is only valid alone and with Expires: 0.
    if values.contains(&"*") {
        if values.len() != 1 || header_expires != Some(0) {
            return Err((400, "Invalid wildcard Contact"));
        }
        registration.remove_all = true;
        return Ok(registration);
    }
    for value in values {
        let contact = NameAddr::parse(value).map_err(|_| (400, "Bad Contact"))?;
        registration
            .contacts
            .push(binding(&contact, header_expires)?);
    }
    Ok(registration)
}

/// RFC 3261 10.3 step 7: the contact's expires parameter wins over the
/// Expires header, which wins over the registrar default.
fn binding(
    contact: &NameAddr,
    header_expires: Option<u32>,
) -> Result<ContactBinding, (u16, &'static str)> {
    let asked = match contact.param("expires") {
        Some(Some(v)) => parse_delta_seconds(v).ok_or((400, "Bad Contact expires"))?,
        Some(None) => return Err((400, "Bad Contact expires")),
        None => header_expires.unwrap_or(DEFAULT_EXPIRES_SECS),
    };
    if asked != 0 && asked < MIN_EXPIRES_SECS {
        return Err((423, "Interval Too Brief"));
    }
    let q = match contact.param("q") {
        Some(Some(v)) => {
            let q: f32 = v.parse().map_err(|_| (400, "Bad Contact q"))?;
            if !(0.0..=1.0).contains(&q) {
                return Err((400, "Bad Contact q"));
            }
            Some(q)
        }
        Some(None) => return Err((400, "Bad Contact q")),
        None => None,
    };
    Ok(ContactBinding {
        uri: contact.uri.clone(),
        expires_secs: asked.min(MAX_EXPIRES_SECS),
        q,
        instance: contact
            .param("+sip.instance")
            .flatten()
            .map(|v| unquote(v).to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(extra: &[(&str, &str)]) -> Request {
        let mut req = Request::new(
            Method::Register,
            Uri::parse("sip:example.com").expect("uri"),
        );
        req.headers
            .push("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1");
        req.headers.push("From", "<sip:alice@example.com>;tag=1");
        req.headers.push("To", "<sip:alice@Example.COM>");
        req.headers.push("Call-ID", "reg-1");
        req.headers.push("CSeq", "7 REGISTER");
        for (n, v) in extra {
            req.headers.push(n, *v);
        }
        req
    }

    #[test]
    fn bindings() {
        let req = register(&[
            ("Expires", "1800"),
            ("Contact", "<sip:alice@192.0.2.1>;q=0.5, <sip:alice@192.0.2.2>;expires=7200;+sip.instance=\"<urn:uuid:1>\""),
            ("m", "<sip:alice@192.0.2.3>;expires=0"),
        ]);
        let r = parse_register(&req).expect("valid");
        assert_eq!(
            (r.aor_user.as_str(), r.aor_domain.as_str(), r.cseq),
            ("alice", "example.com", 7)
        );
        let got: Vec<(u32, Option<f32>)> =
            r.contacts.iter().map(|c| (c.expires_secs, c.q)).collect();
        assert_eq!(got, vec![(1800, Some(0.5)), (3600, None), (0, None)]);
        assert_eq!(r.contacts[1].instance.as_deref(), Some("<urn:uuid:1>"));
        let query = parse_register(&register(&[])).expect("query");
        assert!(query.contacts.is_empty() && !query.remove_all);
        let default = parse_register(&register(&[("Contact", "<sip:a@b>")])).expect("valid");
        assert_eq!(default.contacts[0].expires_secs, DEFAULT_EXPIRES_SECS);
    }

    #[test]
    fn wildcard_and_errors() {
        let all = parse_register(&register(&[("Contact", "*"), ("Expires", "0")])).expect("valid");
        assert!(all.remove_all);
        assert_eq!(
            parse_register(&register(&[("Contact", "*")])),
            Err((400, "Invalid wildcard Contact"))
        );
        assert_eq!(
            parse_register(&register(&[("Contact", "*, <sip:a@b>"), ("Expires", "0")])),
            Err((400, "Invalid wildcard Contact"))
        );
        assert_eq!(
            parse_register(&register(&[("Contact", "<sip:a@b>;expires=30")])),
            Err((423, "Interval Too Brief"))
        );
        assert_eq!(
            parse_register(&register(&[("Contact", "<sip:a@b>"), ("Expires", "10")])),
            Err((423, "Interval Too Brief"))
        );
        assert_eq!(
            parse_register(&register(&[("Contact", "<sip:a@b>;q=2")])),
            Err((400, "Bad Contact q"))
        );
    }
}
