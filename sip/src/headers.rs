//! An ordered header list with canonical names.
//!
//! Order matters in SIP (Via and Route are processed top-down), so headers
//! are a `Vec`, not a map. Names are stored in canonical form: compact forms
//! (RFC 3261 7.3.3 plus extension compact forms) are expanded on insertion,
//! and well-known names get their usual capitalisation, so lookups can be
//! simple case-insensitive comparisons.

use crate::text::split_outside;

/// Headers whose values may be comma-joined lists (RFC 3261 7.3.1).
const LIST_HEADERS: [&str; 4] = ["Via", "Contact", "Route", "Record-Route"];

/// Canonical capitalisation for the names we care about, keyed by lowercase.
const CANONICAL: &[(&str, &str)] = &[
    ("via", "Via"),
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
    ("contact", "Contact"),
    ("content-length", "Content-Length"),
    ("content-type", "Content-Type"),
    ("content-encoding", "Content-Encoding"),
    ("max-forwards", "Max-Forwards"),
    ("route", "Route"),
    ("record-route", "Record-Route"),
    ("expires", "Expires"),
    ("min-expires", "Min-Expires"),
    ("www-authenticate", "WWW-Authenticate"),
    ("authorization", "Authorization"),
    ("proxy-authenticate", "Proxy-Authenticate"),
    ("proxy-authorization", "Proxy-Authorization"),
    ("user-agent", "User-Agent"),
    ("server", "Server"),
    ("allow", "Allow"),
    ("supported", "Supported"),
    ("require", "Require"),
    ("subject", "Subject"),
    ("event", "Event"),
    ("allow-events", "Allow-Events"),
    ("refer-to", "Refer-To"),
    ("referred-by", "Referred-By"),
    ("session-expires", "Session-Expires"),
    ("identity", "Identity"),
    ("accept", "Accept"),
    ("date", "Date"),
    ("timestamp", "Timestamp"),
];

/// Expands a compact header name (case-insensitive) to its full form.
fn expand_compact(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    Some(match c.to_ascii_lowercase() {
        'v' => "Via",
        'f' => "From",
        't' => "To",
        'i' => "Call-ID",
        'm' => "Contact",
        'l' => "Content-Length",
        'c' => "Content-Type",
        'k' => "Supported",
        's' => "Subject",
        'e' => "Content-Encoding",
        'o' => "Event",
        'u' => "Allow-Events",
        'r' => "Refer-To",
        'b' => "Referred-By",
        'x' => "Session-Expires",
        'y' => "Identity",
        _ => return None,
    })
}

/// Returns the canonical spelling of a header name.
pub fn canonical_name(name: &str) -> String {
    if let Some(full) = expand_compact(name) {
        return full.to_string();
    }
    CANONICAL
        .iter()
        .find(|(lower, _)| lower.eq_ignore_ascii_case(name))
        .map(|(_, canon)| (*canon).to_string())
        .unwrap_or_else(|| name.to_string())
}

/// Ordered (name, value) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// The first value of `name` (any spelling, compact or full).
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = canonical_name(name);
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header line's value for `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        let name = canonical_name(name);
        self.entries
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every value of `name`, with comma-joined lists split into their
    /// elements (commas inside quotes or `<...>` do not split). Only list
    /// headers (Via, Contact, Route, Record-Route) are split; other headers
    /// are returned per line, because commas in e.g. WWW-Authenticate or
    /// Date are not list separators.
    pub fn get_all_split(&self, name: &str) -> Vec<&str> {
        let canon = canonical_name(name);
        let is_list = LIST_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(&canon));
        let mut out = Vec::new();
        for value in self.get_all(&canon) {
            if is_list {
                out.extend(split_outside(value, ',').into_iter().map(str::trim));
            } else {
                out.push(value);
            }
        }
        out
    }

    /// Replaces every `name` header with one line carrying `value`, keeping
    /// the position of the first occurrence.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let canon = canonical_name(name);
        let value = value.into();
        match self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&canon))
        {
            Some(pos) => {
                self.entries[pos].1 = value;
                let mut index = 0;
                self.entries.retain(|(n, _)| {
                    let keep = index <= pos || !n.eq_ignore_ascii_case(&canon);
                    index += 1;
                    keep
                });
            }
            None => self.entries.push((canon, value)),
        }
    }

    /// Appends a header line.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.entries.push((canonical_name(name), value.into()));
    }

    /// Inserts a header line before every other header (used for Via).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.entries.insert(0, (canonical_name(name), value.into()));
    }

    /// Removes every `name` header, returning how many lines were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let canon = canonical_name(name);
        let before = self.entries.len();
        self.entries
            .retain(|(n, _)| !n.eq_ignore_ascii_case(&canon));
        before - self.entries.len()
    }

    /// Removes the first element of a list header (e.g. the top Via), which
    /// may share a line with others.
    pub fn remove_first_value(&mut self, name: &str) {
        let canon = canonical_name(name);
        let Some(pos) = self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&canon))
        else {
            return;
        };
        let parts = split_outside(&self.entries[pos].1, ',');
        if parts.len() <= 1 {
            self.entries.remove(pos);
        } else {
            let rest = parts[1..]
                .iter()
                .map(|p| p.trim())
                .collect::<Vec<_>>()
                .join(", ");
            self.entries[pos].1 = rest;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case() {
        let mut h = Headers::new();
        h.push("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b");
        h.push("VIA", "SIP/2.0/TCP c");
        h.push("i", "abc");
        h.push("m", "\"A, B\" <sip:a@b;x=1,2>, <sip:c@d>");
        assert_eq!(h.get("call-id"), Some("abc"));
        assert_eq!(h.get("I"), Some("abc"));
        assert_eq!(h.get_all("Via").len(), 2);
        assert_eq!(
            h.get_all_split("via"),
            vec![
                "SIP/2.0/UDP a;branch=z9hG4bK1",
                "SIP/2.0/UDP b",
                "SIP/2.0/TCP c"
            ]
        );
        assert_eq!(
            h.get_all_split("Contact"),
            vec!["\"A, B\" <sip:a@b;x=1,2>", "<sip:c@d>"]
        );
        h.remove_first_value("Via");
        assert_eq!(h.get("Via"), Some("SIP/2.0/UDP b"));
        h.set("Via", "x");
        assert_eq!(h.get_all("Via"), vec!["x"]);
        assert_eq!(h.remove("call-id"), 1);
        assert_eq!(h.get("Call-ID"), None);
    }
}
