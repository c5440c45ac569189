//! Small lexical helpers shared by the header parsers.
//!
//! SIP's grammar nests quoted strings and `<...>` inside comma- and
//! semicolon-separated lists, so a plain `str::split` breaks real messages;
//! these helpers split only at separators that sit outside quotes and angle
//! brackets.

/// A SIP generic parameter: a name and an optional value (kept as written).
pub type Param = (String, Option<String>);

/// RFC 3261 25.1 `token` characters.
pub(crate) fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

/// Splits `s` at every `sep` that is outside a quoted string and outside
/// `<...>`. Backslash escapes inside quotes are honoured.
pub(crate) fn split_outside(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut angle = 0usize;
    let mut start = 0usize;
    for (i, c) in s.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '<' => angle += 1,
            '>' => angle = angle.saturating_sub(1),
            _ if c == sep && angle == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Parses `;name=value;name` parameter lists (the leading `;` already
/// removed). Whitespace around names, `=` and values is allowed (RFC 3261
/// 25.1 SEMI/EQUAL are SWS-padded). Empty parameters are an error: RFC 4475
/// badinv01 uses `;;` to test exactly that.
pub(crate) fn parse_params(s: &str) -> Result<Vec<Param>, &'static str> {
    let mut params = Vec::new();
    for raw in split_outside(s, ';') {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("empty parameter");
        }
        let (name, value) = match raw.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (raw, None),
        };
        if !is_token(name) {
            return Err("parameter name is not a token");
        }
        if let Some(v) = value {
            if v.is_empty() {
                return Err("empty parameter value");
            }
            if v.starts_with('"') && !(v.len() >= 2 && v.ends_with('"')) {
                return Err("unterminated quoted parameter value");
            }
        }
        params.push((name.to_string(), value.map(str::to_string)));
    }
    Ok(params)
}

pub(crate) fn write_params(f: &mut std::fmt::Formatter<'_>, params: &[Param]) -> std::fmt::Result {
    for (name, value) in params {
        match value {
            Some(v) => write!(f, ";{name}={v}")?,
            None => write!(f, ";{name}")?,
        }
    }
    Ok(())
}

pub(crate) fn find_param<'a>(params: &'a [Param], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

pub(crate) fn set_param(params: &mut Vec<Param>, name: &str, value: Option<String>) {
    if let Some(slot) = params
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    {
        slot.1 = value;
    } else {
        params.push((name.to_string(), value));
    }
}

/// Reads a quoted string at the start of `s` (which must begin with `"`),
/// returning the unescaped content and the rest after the closing quote.
pub(crate) fn take_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut escaped = false;
    let mut chars = s.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    for (i, c) in chars {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some((out, &s[i + 1..]));
        } else {
            out.push(c);
        }
    }
    None
}

pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Strips one pair of surrounding double quotes, if present.
pub(crate) fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s)
}
