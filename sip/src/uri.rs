//! SIP, SIPS and tel URIs (RFC 3261 19.1, RFC 3966).
//!
//! Our own type rather than rsip's: rsip cannot represent `tel:` URIs or
//! IPv6 hosts, and carriers send both. Escapes (`%41`) are kept as written so
//! that `Display` reproduces the input and comparisons stay explicit.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::parse::ParseError;
use crate::text::{find_param, parse_params, set_param, write_params, Param};

/// The URI schemes the cluster routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
        }
    }
}

/// A parsed URI.
///
/// For `tel:` URIs the telephone number is in `user` and `host` is empty.
/// IPv6 hosts keep their brackets (`[::1]`) so `host_port()` is always a
/// valid sent-by / hostport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uri {
    pub scheme: Scheme,
    /// The userinfo as written, including any `:password`.
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<Param>,
    /// The `?header=value&...` part without the `?`.
    pub headers: Option<String>,
}

fn bad(reason: &'static str) -> ParseError {
    ParseError::BadUri { reason }
}

impl Uri {
    /// A `sip:` URI with the given user and host.
    pub fn sip(user: Option<&str>, host: &str, port: Option<u16>) -> Uri {
        Uri {
            scheme: Scheme::Sip,
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
            params: Vec::new(),
            headers: None,
        }
    }

    pub fn parse(s: &str) -> Result<Uri, ParseError> {
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        {
            return Err(bad("whitespace, control character or angle bracket in URI"));
        }
        let (scheme, rest) = s.split_once(':').ok_or(bad("missing scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            _ => return Err(bad("unsupported URI scheme")),
        };
        if scheme == Scheme::Tel {
            return Self::parse_tel(rest);
        }
        // RFC 3261 25.1: user and password cannot contain an unescaped '@',
        // so the first '@' ends the userinfo, even if '?' or ';' precede it
        // (RFC 4475 intmeth and semiuri rely on that).
        let (user, rest) = match rest.split_once('@') {
            Some((u, r)) => {
                if u.is_empty() {
                    return Err(bad("empty user part"));
                }
                (Some(u.to_string()), r)
            }
            None => (None, rest),
        };
        let (rest, headers) = match rest.split_once('?') {
            Some((r, h)) => (r, Some(h.to_string())),
            None => (rest, None),
        };
        let (hostport, params) = match rest.split_once(';') {
            Some((hp, p)) => (hp, parse_params(p).map_err(bad)?),
            None => (rest, Vec::new()),
        };
        let (host, port) = split_host_port(hostport).ok_or(bad("bad host or port"))?;
        Ok(Uri {
            scheme,
            user,
            host: host.to_string(),
            port,
            params,
            headers,
        })
    }

    fn parse_tel(rest: &str) -> Result<Uri, ParseError> {
        let (number, params) = match rest.split_once(';') {
            Some((n, p)) => (n, parse_params(p).map_err(bad)?),
            None => (rest, Vec::new()),
        };
        let valid = |c: char| c.is_ascii_hexdigit() || "+-.()*#".contains(c);
        if number.is_empty() || !number.chars().all(valid) {
            return Err(bad("bad telephone number"));
        }
        Ok(Uri {
            scheme: Scheme::Tel,
            user: Some(number.to_string()),
            host: String::new(),
            port: None,
            params,
            headers: None,
        })
    }

    /// `host[:port]`, suitable for a Via sent-by or a Host-like field.
    pub fn host_port(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{}", self.host, p),
            None => self.host.clone(),
        }
    }

    /// Looks up a URI parameter; `Some(None)` means present without a value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        set_param(&mut self.params, name, value);
    }
}

/// Splits `host[:port]`, accepting `[v6]:port`. Returns `None` for an empty
/// host, bad characters or a port that is not a u16.
pub(crate) fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let s = s.trim();
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let host = &s[..=end];
        let after = &s[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.trim()),
            None if after.is_empty() => None,
            None => return None,
        };
        let inner = &host[1..host.len() - 1];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        (host, port)
    } else {
        let (h, p) = match s.split_once(':') {
            Some((h, p)) => (h.trim(), Some(p.trim())),
            None => (s, None),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
        if h.is_empty() || !h.chars().all(valid) {
            return None;
        }
        (h, p)
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    Some((host, port))
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme.as_str())?;
        if self.scheme == Scheme::Tel {
            f.write_str(self.user.as_deref().unwrap_or(""))?;
            return write_params(f, &self.params);
        }
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write_params(f, &self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Uri {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uri::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "sip:alice@example.com",
            "sips:alice:secret@example.com:5061;transport=tcp;lr",
            "sip:[::1]:5060",
            "sip:[2001:db8::1];maddr=x",
            "sip:user;par=u%40example.net@example.com",
            "sip:bob@example.com?subject=hi",
            "tel:+861012345678;phone-context=example.com",
        ] {
            let uri = Uri::parse(s).expect(s);
            assert_eq!(uri.to_string(), s);
        }
    }

    #[test]
    fn fields() {
        let u = Uri::parse("sip:[::1]:5070;transport=TCP;lr").expect("valid");
        assert_eq!(u.host, "[::1]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.host_port(), "[::1]:5070");
        assert_eq!(u.param("transport"), Some(Some("TCP")));
        assert_eq!(u.param("lr"), Some(None));
        let t = Uri::parse("tel:+8610-1234").expect("valid");
        assert_eq!(t.scheme, Scheme::Tel);
        assert_eq!(t.user.as_deref(), Some("+8610-1234"));
        let s = Uri::parse("sip:user;par=u%40example.net@example.com").expect("valid");
        assert_eq!(s.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(s.host, "example.com");
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "http://x",
            "sip:",
            "sip:a@",
            "sip:host:99999",
            "sip:ho st",
            "<sip:a@b>",
            "sip:[::1",
            "tel:xyz",
        ] {
            assert!(Uri::parse(s).is_err(), "{s}");
        }
    }
}
