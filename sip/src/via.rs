//! The Via header (RFC 3261 20.42, RFC 3581 rport).

use std::fmt;
use std::net::SocketAddr;

use crate::parse::ParseError;
use crate::text::{find_param, is_token, parse_params, set_param, write_params, Param};
use crate::uri::split_host_port;

/// One Via value. `host` keeps IPv6 brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Upper-cased transport token (`UDP`, `TCP`, `TLS`, ...).
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<Param>,
}

fn bad(reason: &'static str) -> ParseError {
    ParseError::BadVia { reason }
}

/// RFC 3261 8.1.1.7: branches starting with this cookie are unique per
/// transaction, which is what 17.1.3/17.2.3 matching relies on.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

impl Via {
    pub fn new(transport: &str, host: &str, port: Option<u16>, branch: &str) -> Via {
        Via {
            transport: transport.to_ascii_uppercase(),
            host: host.to_string(),
            port,
            params: vec![("branch".to_string(), Some(branch.to_string()))],
        }
    }

    /// Parses one Via value (not a comma-joined list). LWS is allowed around
    /// the `/` separators (RFC 4475 wsinv).
    pub fn parse(s: &str) -> Result<Via, ParseError> {
        let mut parts = s.splitn(3, '/');
        let name = parts.next().unwrap_or("").trim();
        let version = parts.next().unwrap_or("").trim();
        let rest = parts
            .next()
            .ok_or(bad("missing sent-protocol"))?
            .trim_start();
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return Err(bad("sent-protocol is not SIP/2.0"));
        }
        let split = rest
            .find(|c: char| c.is_whitespace())
            .ok_or(bad("missing sent-by"))?;
        let transport = &rest[..split];
        if !is_token(transport) {
            return Err(bad("transport is not a token"));
        }
        let rest = rest[split..].trim();
        let (sent_by, params) = match rest.split_once(';') {
            Some((sb, p)) => (sb, parse_params(p).map_err(bad)?),
            None => (rest, Vec::new()),
        };
        let (host, port) = split_host_port(sent_by).ok_or(bad("bad sent-by"))?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host: host.to_string(),
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// `host[:port]` as written: the sent-by used in transaction matching.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{}", self.host, p),
            None => self.host.clone(),
        }
    }

    pub fn set_received(&mut self, ip: &str) {
        set_param(&mut self.params, "received", Some(ip.to_string()));
    }

    pub fn set_rport(&mut self, port: u16) {
        set_param(&mut self.params, "rport", Some(port.to_string()));
    }

    /// Stamps the address a request actually came from.
    ///
    /// RFC 3261 18.2.1: add `received` when the sent-by host differs from
    /// the source address. RFC 3581 4: if the client asked with an empty
    /// `rport`, fill in the source port and always add `received`.
    pub fn stamp_source(&mut self, source: SocketAddr) {
        let ip = match source {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let wants_rport = matches!(self.param("rport"), Some(None));
        if wants_rport {
            self.set_rport(source.port());
            self.set_received(ip.trim_matches(|c| c == '[' || c == ']'));
        } else if self.host.trim_matches(|c| c == '[' || c == ']')
            != ip.trim_matches(|c| c == '[' || c == ']')
        {
            self.set_received(ip.trim_matches(|c| c == '[' || c == ']'));
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write_params(f, &self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lws_and_stamps() {
        let v = Via::parse("SIP  /   2.0 /UDP    192.0.2.2;branch=390skdjuw").expect("valid");
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        let mut v =
            Via::parse("SIP/2.0/UDP client.example.com:5060;branch=z9hG4bK1;rport").expect("valid");
        v.stamp_source("192.0.2.9:4000".parse().expect("addr"));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/UDP client.example.com:5060;branch=z9hG4bK1;rport=4000;received=192.0.2.9"
        );
        let mut v = Via::parse("SIP/2.0/TCP 192.0.2.9;branch=z9hG4bK1").expect("valid");
        v.stamp_source("192.0.2.9:4000".parse().expect("addr"));
        assert_eq!(v.param("received"), None);
        let v6 = Via::parse("SIP/2.0/UDP [::1]:5060;branch=z9hG4bKx").expect("valid");
        assert_eq!(v6.sent_by(), "[::1]:5060");
    }

    #[test]
    fn rejects() {
        for s in [
            "SIP/2.0/UDP 192.0.2.15;;",
            "SIP/3.0/UDP a",
            "SIP/2.0/UDP",
            "",
            "SIP/2.0/UDP a b",
        ] {
            assert!(Via::parse(s).is_err(), "{s}");
        }
    }
}
