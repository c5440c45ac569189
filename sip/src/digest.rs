//! Digest authentication (RFC 2617, RFC 7616, RFC 8760 for SIP).
//!
//! The server side issues [`Challenge`]s with nonces from a
//! [`NonceIssuer`], parses [`Credentials`] and verifies them against a
//! stored HA1 (so plain passwords need not be stored). The client side is
//! [`authorize`]. Nonces are stateless: a timestamp plus a keyed hash, so
//! any node sharing the secret can validate a nonce another node issued.

use std::sync::atomic::{AtomicU64, Ordering};

use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::text::{split_outside, unquote};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.trim() {
            a if a.eq_ignore_ascii_case("MD5") => Some(Algorithm::Md5),
            a if a.eq_ignore_ascii_case("SHA-256") => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// HA1 = H(username:realm:password), hex encoded (RFC 7616 3.4.2).
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&format!("{user}:{realm}:{password}"))
}

/// The request-digest of RFC 7616 3.4.1 (with qop) or RFC 2069 (without).
fn response_digest(
    algorithm: Algorithm,
    ha1_hex: &str,
    nonce: &str,
    qop: Option<(&str, &str, &str)>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = algorithm.hash(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce, qop)) => {
            algorithm.hash(&format!("{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))
        }
        None => algorithm.hash(&format!("{ha1_hex}:{nonce}:{ha2}")),
    }
}

/// Splits `Digest a="b", c=d` into lowercase-name/unquoted-value pairs.
fn parse_auth_params(value: &str) -> Option<Vec<(String, String)>> {
    let value = value.trim();
    let scheme_end = value.find(char::is_whitespace)?;
    if !value[..scheme_end].eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut out = Vec::new();
    for part in split_outside(&value[scheme_end..], ',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, v) = part.split_once('=')?;
        let v = unquote(v.trim()).replace("\\\"", "\"");
        out.push((name.trim().to_ascii_lowercase(), v));
    }
    Some(out)
}

fn get(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// A WWW-Authenticate / Proxy-Authenticate challenge with qop="auth".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: Algorithm,
    pub opaque: Option<String>,
    pub stale: bool,
}

impl Challenge {
    pub fn to_header_value(&self) -> String {
        let mut v = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm={}, qop=\"auth\"",
            self.realm,
            self.nonce,
            self.algorithm.as_str()
        );
        if let Some(opaque) = &self.opaque {
            v.push_str(&format!(", opaque=\"{opaque}\""));
        }
        if self.stale {
            v.push_str(", stale=true");
        }
        v
    }

    /// Parses a challenge; `None` if it is not Digest, lacks realm or nonce,
    /// or names an algorithm we do not support (RFC 7616 3.7 lets a client
    /// skip challenges it cannot answer).
    pub fn parse(value: &str) -> Option<Challenge> {
        let params = parse_auth_params(value)?;
        let algorithm = match get(&params, "algorithm") {
            Some(a) => Algorithm::parse(&a)?,
            None => Algorithm::Md5,
        };
        Some(Challenge {
            realm: get(&params, "realm")?,
            nonce: get(&params, "nonce")?,
            algorithm,
            opaque: get(&params, "opaque"),
            stale: get(&params, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }
}

/// An Authorization / Proxy-Authorization header's Digest credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub qop: Option<String>,
    /// The nonce count as sent (8 hex digits); it is hashed verbatim.
    pub nc: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
}

impl Credentials {
    pub fn parse(value: &str) -> Option<Credentials> {
        let params = parse_auth_params(value)?;
        let algorithm = match get(&params, "algorithm") {
            Some(a) => Algorithm::parse(&a)?,
            None => Algorithm::Md5,
        };
        Some(Credentials {
            username: get(&params, "username")?,
            realm: get(&params, "realm")?,
            nonce: get(&params, "nonce")?,
            uri: get(&params, "uri")?,
            response: get(&params, "response")?,
            algorithm,
            qop: get(&params, "qop"),
            nc: get(&params, "nc"),
            cnonce: get(&params, "cnonce"),
            opaque: get(&params, "opaque"),
        })
    }

    /// Recomputes the response from the stored HA1 and compares it in
    /// constant time, so response timing does not leak how many leading
    /// characters matched. The caller still checks the nonce
    /// ([`NonceIssuer::check`]), the realm and that `uri` names the
    /// Request-URI; this only proves knowledge of the password.
    pub fn verify(&self, method: &str, ha1_hex: &str) -> bool {
        let qop = match (&self.qop, &self.nc, &self.cnonce) {
            (Some(q), Some(nc), Some(cn)) if q.eq_ignore_ascii_case("auth") => {
                Some((nc.as_str(), cn.as_str(), q.as_str()))
            }
            (Some(_), _, _) => return false,
            (None, _, _) => None,
        };
        let expected =
            response_digest(self.algorithm, ha1_hex, &self.nonce, qop, method, &self.uri);
        constant_time_eq(
            expected.as_bytes(),
            self.response.to_ascii_lowercase().as_bytes(),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Builds an Authorization header value answering `challenge` with
/// qop=auth (RFC 7616 3.4).
pub fn authorize(
    challenge: &Challenge,
    method: &str,
    uri: &str,
    user: &str,
    password: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let nc = format!("{nc:08x}");
    let ha1_hex = ha1(challenge.algorithm, user, &challenge.realm, password);
    let response = response_digest(
        challenge.algorithm,
        &ha1_hex,
        &challenge.nonce,
        Some((&nc, cnonce, "auth")),
        method,
        uri,
    );
    let mut v = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}, cnonce=\"{cnonce}\", qop=auth, nc={nc}",
        challenge.realm,
        challenge.nonce,
        challenge.algorithm.as_str()
    );
    if let Some(opaque) = &challenge.opaque {
        v.push_str(&format!(", opaque=\"{opaque}\""));
    }
    v
}

/// Result of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Genuine but too old: challenge again with `stale=true` (RFC 7616
    /// 3.3) so the client retries without asking the user.
    Stale,
    Invalid,
}

/// Issues and checks stateless nonces: `<unix secs hex>-<counter hex>-<mac>`
/// where mac = SHA-256(secret ":" secs ":" counter). The counter only makes
/// nonces issued in the same second distinct.
#[derive(Debug)]
pub struct NonceIssuer {
    secret: Vec<u8>,
    counter: AtomicU64,
}

impl NonceIssuer {
    pub fn new(secret: &[u8]) -> NonceIssuer {
        NonceIssuer {
            secret: secret.to_vec(),
            counter: AtomicU64::new(0),
        }
    }

    fn mac(&self, stamp: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(&self.secret);
        hasher.update(b":");
        hasher.update(stamp.as_bytes());
        hex::encode(hasher.finalize())
    }

    pub fn issue(&self, now_unix_secs: u64) -> String {
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let stamp = format!("{now_unix_secs:x}-{count:x}");
        format!("{stamp}-{}", self.mac(&stamp))
    }

    pub fn check(&self, nonce: &str, now_unix_secs: u64, max_age_secs: u64) -> NonceCheck {
        let Some((stamp, mac)) = nonce.rsplit_once('-') else {
            return NonceCheck::Invalid;
        };
        if !constant_time_eq(self.mac(stamp).as_bytes(), mac.as_bytes()) {
            return NonceCheck::Invalid;
        }
        let Some(issued) = stamp
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            return NonceCheck::Invalid;
        };
        // A nonce from the future beyond the allowed age means the issuing
        // node's clock is badly off; refuse rather than accept forever.
        if issued > now_unix_secs.saturating_add(max_age_secs) {
            return NonceCheck::Invalid;
        }
        if now_unix_secs.saturating_sub(issued) > max_age_secs {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_mufasa() {
        let header = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let creds = Credentials::parse(header).expect("parses");
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert!(creds.verify("GET", &h));
        assert!(!creds.verify("POST", &h));
        let challenge = Challenge {
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            algorithm: Algorithm::Md5,
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".into()),
            stale: false,
        };
        let value = authorize(
            &challenge,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            "0a4f113b",
            1,
        );
        assert!(
            value.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{value}"
        );
        assert_eq!(
            Challenge::parse(&challenge.to_header_value()),
            Some(challenge)
        );
    }

    #[test]
    fn rfc7616_sha256() {
        let challenge = Challenge {
            realm: "http-auth@example.org".into(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
            algorithm: Algorithm::Sha256,
            opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".into()),
            stale: false,
        };
        let value = authorize(
            &challenge,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        );
        assert!(
            value.contains(
                "response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""
            ),
            "{value}"
        );
        let creds = Credentials::parse(&value).expect("parses");
        assert!(creds.verify(
            "GET",
            &ha1(
                Algorithm::Sha256,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life"
            )
        ));
        let md5 = Challenge {
            algorithm: Algorithm::Md5,
            ..challenge
        };
        let value = authorize(
            &md5,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        );
        assert!(
            value.contains("response=\"8ca523f5e9506fed4657c9700eebdbec\""),
            "{value}"
        );
    }

    #[test]
    fn nonces() {
        let issuer = NonceIssuer::new(b"cluster-secret");
        let other_node = NonceIssuer::new(b"cluster-secret");
        let n = issuer.issue(1_000);
        assert_ne!(n, issuer.issue(1_000));
        assert_eq!(other_node.check(&n, 1_010, 300), NonceCheck::Valid);
        assert_eq!(other_node.check(&n, 1_400, 300), NonceCheck::Stale);
        assert_eq!(
            NonceIssuer::new(b"other").check(&n, 1_010, 300),
            NonceCheck::Invalid
        );
        assert_eq!(issuer.check("garbage", 1_010, 300), NonceCheck::Invalid);
        let tampered = n.replacen("3e8", "3e9", 1);
        assert_eq!(issuer.check(&tampered, 1_010, 300), NonceCheck::Invalid);
    }
}
