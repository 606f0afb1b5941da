//! What the server says, made safe to keep: a server or a proxy that echoes
//! the request head in an error page (a WAF's "your request", a debug
//! 500) sends our `Authorization` back. Every text taken from an answer
//! (the error body's fields, a `Location`, a header value shown in a
//! warning) goes through [`Scrubber::scrub`] before it reaches a log,
//! `/status`, a metric or a dead letter: the key in every encoding a
//! server may echo it in is cut out, so are the values of headers that
//! carry credentials, and the rest is run through the built-in redaction.

use std::borrow::Cow;
use std::sync::OnceLock;

use base64::Engine as _;
use regex::Regex;

use crate::parse::redact::Redactor;

/// What stands where the key was.
pub const KEY_PLACEHOLDER: &str = "[REDACTED:api_key]";
/// What stands where a credential header's value was.
const HEADER_PLACEHOLDER: &str = "[REDACTED:credential]";

/// Cuts the API key and other credentials out of the server's words.
#[derive(Clone)]
pub struct Scrubber {
    /// The key as it may come back: as it is, base64 (of the key, and of
    /// `Bearer <key>` and `:<key>` as Basic schemes carry it), percent-
    /// and hex-encoded. Longest first, so a longer form is not cut in two.
    needles: Vec<String>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} forms of the key)", self.needles.len())
    }
}

fn credential_header() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // A header name an echo would carry, then `:` or `=` (or a JSON
        // `": "`), then its value up to the end of the line or the quote.
        Regex::new(
            r#"(?i)\b(authorization|proxy-authorization|x-api-key|api[-_]?key|cookie|set-cookie)("?\s*[:=]\s*"?)[^\r\n"<]*"#,
        )
        .expect("the credential header pattern compiles")
    })
}

fn bearer() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
            .expect("the bearer pattern compiles")
    })
}

fn redactor() -> &'static Redactor {
    static R: OnceLock<Redactor> = OnceLock::new();
    R.get_or_init(Redactor::builtin)
}

impl Scrubber {
    pub fn new(key: &str) -> Scrubber {
        let mut needles = Vec::new();
        if !key.is_empty() {
            // Base64 of anything holding the key (a whole echoed head, a
            // Basic `user:key`) encodes it at one of three alignments: the
            // characters that depend on the key's bytes alone, for each.
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::URL_SAFE,
            ] {
                for shift in 0..3usize {
                    let mut bytes = vec![0u8; shift];
                    bytes.extend_from_slice(key.as_bytes());
                    let encoded = engine.encode(&bytes);
                    let from = if shift == 0 { 0 } else { 4 };
                    let to = (bytes.len() / 3 * 4).min(encoded.len());
                    if from < to {
                        needles.push(encoded[from..to].to_string());
                    }
                }
            }
            needles.push(key.to_string());
            needles.push(percent_encode(key));
            needles.push(hex(key.as_bytes(), false));
            needles.push(hex(key.as_bytes(), true));
        }
        // Short forms would cut innocent text; a key is never that short.
        needles.retain(|n| n.len() >= 8);
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Scrubber { needles }
    }

    /// `text` without the key (in any of its forms, also JSON-escaped),
    /// without credential headers' values, redacted, and with control
    /// characters made spaces (an escape sequence must not reach a
    /// terminal).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = self.cut_key(text).into_owned();
        // `\u0074hoth_…` or `\/`: look at the text as a JSON decoder would.
        if out.contains('\\') {
            let decoded = json_unescape(&out);
            if decoded != out && self.cut_key(&decoded) != decoded {
                out = self.cut_key(&decoded).into_owned();
            }
        }
        let out = credential_header().replace_all(&out, |c: &regex::Captures<'_>| {
            format!("{}{}{HEADER_PLACEHOLDER}", &c[1], &c[2])
        });
        let out = bearer().replace_all(&out, |c: &regex::Captures<'_>| {
            format!("{} {HEADER_PLACEHOLDER}", &c[1])
        });
        let out = redactor().redact(&out).into_owned();
        out.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }

    fn cut_key<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for needle in &self.needles {
            if contains_ignore_ascii_case(&out, needle) {
                out = Cow::Owned(replace_ignore_ascii_case(&out, needle, KEY_PLACEHOLDER));
            }
        }
        out
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Percent- and hex-encodings differ only in case; base64 does not, but a
/// case-blind match of a 40-character base64 string is no risk to text.
fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    find_ignore_ascii_case(hay, needle, 0).is_some()
}

fn find_ignore_ascii_case(hay: &str, needle: &str, from: usize) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (from..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

fn replace_ignore_ascii_case(hay: &str, needle: &str, with: &str) -> String {
    let mut out = String::with_capacity(hay.len());
    let mut at = 0;
    while let Some(i) = find_ignore_ascii_case(hay, needle, at) {
        // The needle is ASCII, so `i` and `i + len` are char boundaries.
        out.push_str(&hay[at..i]);
        out.push_str(with);
        at = i + needle.len();
    }
    out.push_str(&hay[at..]);
    out
}

/// The text with JSON string escapes (`\uXXXX`, `\/`, `\\`, ...) decoded;
/// anything that is not a valid escape is kept as it is.
fn json_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('u') => {
                let rest: String = chars.clone().skip(1).take(4).collect();
                match u32::from_str_radix(&rest, 16).ok().and_then(char::from_u32) {
                    Some(decoded) if rest.len() == 4 => {
                        out.push(decoded);
                        for _ in 0..5 {
                            chars.next();
                        }
                    }
                    _ => out.push(c),
                }
            }
            Some(e @ ('/' | '\\' | '"')) => {
                out.push(e);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "thoth_live_Zq8T1xv9MnB4rW2kLp7aSd3F";

    #[test]
    fn the_key_in_every_encoding_is_cut() {
        let s = Scrubber::new(KEY);
        let b64 = base64::engine::general_purpose::STANDARD;
        let echoes = [
            format!("<pre>Authorization: Bearer {KEY}\r\nHost: x</pre>"),
            format!("{{\"headers\":{{\"x-api-key\":\"{KEY}\"}}}}"),
            format!("you sent {KEY} which is bad"),
            format!("b64 {}", b64.encode(KEY)),
            format!("basic {}", b64.encode(format!(":{KEY}"))),
            format!("auth={}", b64.encode(format!("Bearer {KEY}"))),
            format!("q={}", percent_encode(KEY).to_lowercase()),
            format!("hex {}", hex(KEY.as_bytes(), false)),
            format!(
                "json \\u{:04x}{}",
                u32::from(b't'),
                &KEY[1..].replace('_', "\\u005f")
            ),
            format!("glued{KEY}glued"),
        ];
        for echo in echoes {
            let out = s.scrub(&echo);
            assert!(!out.contains(KEY), "{echo} -> {out}");
            assert!(!out.contains(&KEY[11..]), "{echo} -> {out}");
            assert!(
                !out.to_lowercase()
                    .contains(&hex(KEY.as_bytes(), false)[..20]),
                "{echo} -> {out}"
            );
            let b = b64.encode(KEY);
            assert!(!out.contains(&b[..20]), "{echo} -> {out}");
        }
    }

    #[test]
    fn base64_of_the_key_at_any_alignment_is_cut() {
        let s = Scrubber::new(KEY);
        let b64 = base64::engine::general_purpose::STANDARD;
        for prefix in [
            "",
            "a",
            "ab",
            "abc",
            "GET / HTTP/1.1\r\nAuthorization: Bearer ",
        ] {
            let encoded = b64.encode(format!("{prefix}{KEY}\r\nHost: x"));
            let out = s.scrub(&format!("echo: {encoded}"));
            assert!(out.contains(KEY_PLACEHOLDER), "{prefix:?}: {out}");
        }
    }

    #[test]
    fn credential_headers_lose_their_values_and_control_characters_go() {
        let s = Scrubber::new(KEY);
        let out = s.scrub("Cookie: session=abc123\nProxy-Authorization: Basic dXNlcjpwYXNz\x1b[2J");
        assert!(!out.contains("abc123"), "{out}");
        assert!(!out.contains("dXNlcjpwYXNz"), "{out}");
        assert!(!out.contains('\x1b'), "{out}");
        // Ordinary error text stays readable.
        assert_eq!(
            s.scrub("upstream timed out (request 42)"),
            "upstream timed out (request 42)"
        );
    }
}
