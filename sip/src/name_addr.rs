//! name-addr / addr-spec values of From, To, Contact, Route (RFC 3261 20.10).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::parse::ParseError;
use crate::text::{
    find_param, is_token_char, parse_params, quote, set_param, take_quoted, write_params, Param,
};
use crate::uri::Uri;

/// An address with optional display name and header parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAddr {
    /// The display name, unescaped (quotes and backslashes removed).
    pub display: Option<String>,
    pub uri: Uri,
    /// Header parameters after the address (`tag`, `expires`, `q`, ...).
    pub params: Vec<Param>,
}

fn bad(reason: &'static str) -> ParseError {
    ParseError::BadAddress { reason }
}

impl NameAddr {
    pub fn new(uri: Uri) -> NameAddr {
        NameAddr {
            display: None,
            uri,
            params: Vec::new(),
        }
    }

    pub fn parse(s: &str) -> Result<NameAddr, ParseError> {
        let s = s.trim();
        let (display, rest) = if s.starts_with('"') {
            let (d, rest) = take_quoted(s).ok_or(bad("unterminated quoted display name"))?;
            let rest = rest.trim_start();
            if !rest.starts_with('<') {
                return Err(bad("quoted display name not followed by <uri>"));
            }
            (Some(d), rest)
        } else if let Some(lt) = s.find('<') {
            let d = s[..lt].trim();
            // RFC 3261 25.1: an unquoted display name is a sequence of
            // tokens; RFC 4475 baddn tests a comma there.
            if !d.chars().all(|c| is_token_char(c) || c == ' ' || c == '\t') {
                return Err(bad("unquoted display name has non-token characters"));
            }
            ((!d.is_empty()).then(|| d.to_string()), &s[lt..])
        } else {
            (None, s)
        };
        if let Some(inner) = rest.strip_prefix('<') {
            let end = inner.find('>').ok_or(bad("missing >"))?;
            let uri = Uri::parse(&inner[..end])?;
            let after = inner[end + 1..].trim_start();
            let params = parse_header_params(after)?;
            return Ok(NameAddr {
                display,
                uri,
                params,
            });
        }
        // RFC 3261 20.10: without <>, parameters belong to the header and the
        // URI may not contain ',', ';' or '?' (RFC 4475 regbadct).
        let (uri_text, after) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if uri_text.contains('?') || uri_text.contains(',') {
            return Err(bad(
                "addr-spec with headers or comma must be enclosed in <>",
            ));
        }
        let uri = Uri::parse(uri_text.trim())?;
        let params = parse_header_params(after)?;
        Ok(NameAddr {
            display: None,
            uri,
            params,
        })
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    pub fn set_tag(&mut self, tag: &str) {
        set_param(&mut self.params, "tag", Some(tag.to_string()));
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        set_param(&mut self.params, name, value);
    }
}

fn parse_header_params(after: &str) -> Result<Vec<Param>, ParseError> {
    let after = after.trim();
    if after.is_empty() {
        return Ok(Vec::new());
    }
    let p = after.strip_prefix(';').ok_or(bad("junk after address"))?;
    parse_params(p).map_err(bad)
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "{} ", quote(d))?;
        }
        write!(f, "<{}>", self.uri)?;
        write_params(f, &self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let a =
            NameAddr::parse("\"J Rosenberg \\\\\\\"\"  <sip:jdrosen@example.com> ; tag = 98asjd8")
                .expect("valid");
        assert_eq!(a.display.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(a.tag(), Some("98asjd8"));
        let b = NameAddr::parse("sip:user@example.com;tag=1").expect("valid");
        assert_eq!(b.tag(), Some("1"));
        assert!(b.uri.params.is_empty());
        let c = NameAddr::parse("caller<sip:caller@example.com>;tag=323").expect("valid");
        assert_eq!(c.display.as_deref(), Some("caller"));
        let mut d = NameAddr::parse("<sip:a@b;lr>").expect("valid");
        d.set_tag("x");
        assert_eq!(d.to_string(), "<sip:a@b;lr>;tag=x");
        let again = NameAddr::parse(&a.to_string()).expect("round trip");
        assert_eq!(again, a);
    }

    #[test]
    fn rejects() {
        for s in [
            "\"Mr. J. User <sip:j.user@example.com>",
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "\"Watson, Thomas\" < sip:t.watson@example.org >",
            "<sip:a@b>;;",
        ] {
            assert!(NameAddr::parse(s).is_err(), "{s}");
        }
    }
}
