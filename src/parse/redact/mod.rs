//! Redaction: finds secrets in every string copied from a log line into an
//! event (content, metadata keys and values at any depth, tool name,
//! session, user and agent ids) and replaces them with `[REDACTED:<kind>]`
//! before the event is written anywhere.
//!
//! Text is screened as decoded text: JSON values are walked as trees, and a
//! string still holding `\uXXXX` or `\/` escapes (raw JSON copied as
//! content) is screened unescaped too, so an escape cannot hide a secret.
//! Most text holds no secret, so the cost that matters is the miss: one
//! Aho-Corasick scan of the lowercased text looks for the trigger substrings
//! every built-in detector needs ([`detectors`]); only the detectors whose
//! triggers occur run their regex. User patterns have no triggers and are
//! screened by one `RegexSet`.

mod counts;
mod detectors;
mod explain;

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexSet};
use serde_json::value::RawValue;

pub use counts::redactions_by_detector;
pub use detectors::BUILTINS;
pub use explain::{explain_start, explain_take, Fired};

/// True while `parse --explain` records what fired.
pub fn explain_active() -> bool {
    explain::active()
}

/// Records a value redacted whole because its key names a secret.
pub fn record_named(field: &str) {
    fired("secret-assignment", field);
}

/// A replacement by detector `kind` in `field`: counted, and recorded for
/// `parse --explain`.
fn fired(kind: &str, field: &str) {
    counts::add(kind);
    explain::record(kind, field);
}

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("redaction pattern `{name}`: {err}")]
    BadPattern {
        name: String,
        #[source]
        err: regex::Error,
    },
    #[error(
        "redaction.disable: no built-in detector is called `{0}` (see the README's list of detectors)"
    )]
    UnknownDetector(String),
}

/// Runs `f` on `s` with ASCII letters lowercased, in a buffer reused by
/// the thread (redaction runs once per copied string).
fn with_lowercase<R>(s: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static LOWER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    LOWER.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.extend_from_slice(s.as_bytes());
        buf.make_ascii_lowercase();
        let result = f(&buf);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new(); // a huge line does not pin its size for good
        }
        result
    })
}

pub use crate::config::UserPattern;

struct Detector {
    kind: String,
    regex: Regex,
    /// Capture groups whose first participant is the secret; empty: the
    /// whole match.
    secret_groups: Vec<usize>,
    needs_digit: bool,
    contextual: bool,
}

pub struct Redactor {
    /// Whether any trigger occurs: the fast test most text stops at.
    screen: AhoCorasick,
    /// Which triggers occur (overlapping matches), once the screen hit.
    triggers: AhoCorasick,
    /// For each trigger pattern, the built-in detector it belongs to.
    trigger_owner: Vec<usize>,
    /// Case-sensitive triggers, looked for in the text as it is, with the
    /// detector each belongs to.
    exact: Vec<(memchr::memmem::Finder<'static>, usize)>,
    /// Words of secret names ([`detectors::SECRET_WORDS`]), and the
    /// detectors they wake.
    names: AhoCorasick,
    by_name: u64,
    builtins: Vec<Detector>,
    user_screen: Option<RegexSet>,
    user: Vec<Detector>,
    /// Object keys that name a secret: their whole value is redacted.
    secret_name: Regex,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("builtins", &self.builtins.len())
            .field("user", &self.user.len())
            .finish()
    }
}

fn compile(name: &str, pattern: &str) -> Result<Regex, RedactError> {
    Regex::new(pattern).map_err(|err| RedactError::BadPattern {
        name: name.to_string(),
        err,
    })
}

impl Redactor {
    /// The built-in detectors only.
    pub fn builtin() -> Redactor {
        match Redactor::new(&[]) {
            Ok(r) => r,
            Err(e) => unreachable!("built-in patterns are tested: {e}"),
        }
    }

    /// The built-in detectors and `user` patterns after them.
    pub fn new(user: &[UserPattern]) -> Result<Redactor, RedactError> {
        Redactor::with_disabled(user, &[])
    }

    /// As [`Redactor::new`], without the built-in detectors named in `disabled`.
    pub fn with_disabled(
        user: &[UserPattern],
        disabled: &[String],
    ) -> Result<Redactor, RedactError> {
        if let Some(unknown) = disabled
            .iter()
            .find(|d| !BUILTINS.iter().any(|b| b.kind == d.as_str()))
        {
            return Err(RedactError::UnknownDetector(unknown.clone()));
        }
        let mut trigger_words: Vec<String> = Vec::new();
        let mut trigger_owner = Vec::new();
        let mut exact = Vec::new();
        let mut by_name = 0u64;
        let mut builtins = Vec::new();
        for b in BUILTINS
            .iter()
            .filter(|b| !disabled.iter().any(|d| d == b.kind))
        {
            if b.exact {
                for t in b.triggers {
                    exact.push((memchr::memmem::Finder::new(t.as_bytes()), builtins.len()));
                }
            }
            if b.by_name {
                by_name |= 1 << builtins.len();
            }
            let words: Vec<String> = if b.exact {
                Vec::new()
            } else {
                b.triggers.iter().map(|t| t.to_string()).collect()
            };
            for w in words {
                trigger_words.push(w.to_ascii_lowercase());
                trigger_owner.push(builtins.len());
            }
            let regex = compile(b.kind, b.pattern)?;
            builtins.push(Detector {
                kind: b.kind.to_string(),
                secret_groups: secret_groups(&regex),
                regex,
                needs_digit: b.needs_digit,
                contextual: b.contextual,
            });
        }
        // Both automata run on ASCII-lowercased text (see `with_lowercase`).
        // The screen is case-sensitive and leftmost-first, which keeps the
        // SIMD (Teddy) prefilter that case-insensitive or overlapping
        // matching gives up: 0.27 ns a byte instead of 1.65 on this VM, so
        // even with the lowercase copy about five times faster on text with
        // no trigger. A detector that is itself case-sensitive only gets
        // more candidates this way; its regex still decides.
        let build = |kind| match AhoCorasickBuilder::new()
            .match_kind(kind)
            .build(&trigger_words)
        {
            Ok(ac) => ac,
            Err(e) => unreachable!("fixed trigger words always build: {e}"),
        };
        let screen = build(MatchKind::LeftmostFirst);
        let triggers = build(MatchKind::Standard);
        let names = match AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(detectors::SECRET_WORDS)
        {
            Ok(ac) => ac,
            Err(e) => unreachable!("fixed secret words always build: {e}"),
        };

        let mut user_detectors = Vec::new();
        for p in user {
            let regex = compile(&p.name, &p.regex)?;
            user_detectors.push(Detector {
                kind: p.name.clone(),
                secret_groups: Vec::new(),
                regex,
                needs_digit: false,
                contextual: false,
            });
        }
        let user_screen = if user.is_empty() {
            None
        } else {
            let set = RegexSet::new(user.iter().map(|p| p.regex.as_str())).map_err(|err| {
                RedactError::BadPattern {
                    name: user
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    err,
                }
            })?;
            Some(set)
        };
        Ok(Redactor {
            screen,
            triggers,
            trigger_owner,
            exact,
            names,
            by_name,
            builtins,
            user_screen,
            user: user_detectors,
            secret_name: compile("secret-name", detectors::SECRET_NAME)?,
        })
    }

    /// Which built-in detectors could match `s` (`lower` is `s` lowercased).
    fn candidates(&self, s: &str, lower: &[u8]) -> u64 {
        let mut mask = 0u64;
        if self.screen.is_match(lower) {
            for m in self.triggers.find_overlapping_iter(lower) {
                mask |= 1 << self.trigger_owner[m.pattern().as_usize()];
            }
        }
        for (finder, owner) in &self.exact {
            if finder.find(s.as_bytes()).is_some() {
                mask |= 1 << owner;
            }
        }
        if self.by_name != 0 && self.names.is_match(lower) {
            mask |= self.by_name;
        }
        mask
    }

    /// True if some detector might match: the cheap test before any work.
    pub fn might_match(&self, s: &str) -> bool {
        let (screened, named) = with_lowercase(s, |lower| {
            (
                self.screen.is_match(lower),
                self.by_name != 0 && self.names.is_match(lower),
            )
        });
        // A secret's name is a common word (`input_tokens`): it counts only
        // where a context detector finds something.
        // Escaped text (JSON inside a JSON string) is decoded first.
        let named = named
            && (memchr::memchr(b'\\', s.as_bytes()).is_some()
                || self
                    .builtins
                    .iter()
                    .enumerate()
                    .any(|(i, d)| self.by_name & (1 << i) != 0 && d.regex.is_match(s)));
        screened
            || named
            || self
                .exact
                .iter()
                .any(|(f, _)| f.find(s.as_bytes()).is_some())
            || self.user_screen.as_ref().is_some_and(|u| u.is_match(s))
    }

    /// `s` with every secret replaced; borrowed when nothing was found.
    pub fn redact<'a>(&self, s: &'a str) -> Cow<'a, str> {
        self.redact_field("", s)
    }

    /// As [`Redactor::redact`]; `field` names where `s` is, for
    /// `parse --explain`.
    pub fn redact_field<'a>(&self, field: &str, s: &'a str) -> Cow<'a, str> {
        let out = self.redact_text(field, s);
        if matches!(out, Cow::Owned(_)) || !has_hiding_escape(s) {
            return out;
        }
        // `\u0067hp_...` or `postgres:\/\/u:pw@`: screen the text with those
        // escapes decoded, and keep that form if it held a secret.
        let decoded = unescape_hiding(s);
        match self.redact_text(field, &decoded) {
            Cow::Owned(r) => Cow::Owned(r),
            Cow::Borrowed(_) => out,
        }
    }

    fn redact_text<'a>(&self, field: &str, s: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(s);
        let mask = with_lowercase(s, |lower| self.candidates(s, lower));
        if mask != 0 {
            for (i, d) in self.builtins.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    out = replace_all(out, d, field);
                }
            }
        }
        if let Some(screen) = &self.user_screen {
            let hits = screen.matches(&out);
            if hits.matched_any() {
                for i in hits.iter() {
                    out = replace_all(out, &self.user[i], field);
                }
            }
        }
        out
    }

    /// True when an object key says its value is a secret (`password`,
    /// `aws_secret_access_key`, `clientSecret`, `GITHUB_TOKEN`).
    pub fn is_secret_name(&self, key: &str) -> bool {
        // Most keys hold none of these: no regex for them.
        const PARTS: [&[u8]; 6] = [b"pass", b"pwd", b"secret", b"credential", b"key", b"token"];
        let k = key.as_bytes();
        k.len() <= 256
            && PARTS
                .iter()
                .any(|p| k.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p)))
            && self.secret_name.is_match(key)
    }

    /// A JSON value with every key and string in it redacted, or None if
    /// nothing in it held a secret (the raw text is then used as is).
    pub fn redact_json(&self, field: &str, raw: &RawValue) -> Option<RedactedJson> {
        let text = raw.get();
        if !self.might_match(text) && !has_hiding_escape(text) {
            return None;
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(mut value) => {
                let mut path = String::from(field);
                self.redact_value(&mut value, &mut path)
                    .then_some(RedactedJson::Value(value))
            }
            // Nested deeper than serde_json's limit: keep it as redacted text
            // rather than copying an unchecked secret.
            Err(_) => match self.redact_field(field, text) {
                Cow::Owned(t) => Some(RedactedJson::Text(t)),
                Cow::Borrowed(_) => None,
            },
        }
    }

    /// Redacts a JSON tree in place; true if anything changed.
    fn redact_value(&self, v: &mut serde_json::Value, path: &mut String) -> bool {
        use serde_json::Value;
        match v {
            Value::String(s) => match self.redact_field(path, s) {
                Cow::Owned(r) => {
                    *s = r;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, i| self.redact_value(i, path) | changed),
            Value::Object(map) => {
                let mut changed = false;
                let entries = std::mem::take(map);
                for (key, mut value) in entries {
                    let len = path.len();
                    if explain::active() {
                        path.push('.');
                        path.push_str(&key);
                    }
                    changed |= if self.is_secret_name(&key) {
                        self.redact_named(&mut value, path)
                    } else {
                        self.redact_value(&mut value, path)
                    };
                    let mut key = match self.redact_field(path, &key) {
                        Cow::Owned(k) => {
                            changed = true;
                            k
                        }
                        Cow::Borrowed(_) => key,
                    };
                    // Two keys redacted alike both stay. The suffix starts at
                    // the map's size, so a line of many such keys costs one
                    // probe each, not a growing string per collision.
                    if map.contains_key(&key) {
                        let mut n = map.len();
                        while map.contains_key(&format!("{key}#{n}")) {
                            n += 1;
                        }
                        key = format!("{key}#{n}");
                    }
                    map.insert(key, value);
                    path.truncate(len);
                }
                changed
            }
            _ => false,
        }
    }

    /// The value of a key that names a secret, redacted whole (every
    /// string and number in it, unless a placeholder).
    pub fn redact_named_value(&self, v: &mut serde_json::Value, field: &str) {
        self.redact_named(v, field);
    }

    fn redact_named(&self, v: &mut serde_json::Value, path: &str) -> bool {
        use serde_json::Value;
        match v {
            Value::String(s) if !is_placeholder(s, true) => {
                fired("secret-assignment", path);
                *v = Value::String("[REDACTED:secret-assignment]".into());
                true
            }
            Value::Number(_) => {
                fired("secret-assignment", path);
                *v = Value::String("[REDACTED:secret-assignment]".into());
                true
            }
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, i| self.redact_named(i, path) | changed),
            Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, i| self.redact_named(i, path) | changed),
            _ => false,
        }
    }
}

/// What [`Redactor::redact_json`] made of a value that might hold a secret.
pub enum RedactedJson {
    Value(serde_json::Value),
    /// The value could not be parsed as a tree; its redacted text, as a string.
    Text(String),
}

/// The indexes of the groups named `s`, `s2`, `s3`, `s4`.
fn secret_groups(regex: &Regex) -> Vec<usize> {
    regex
        .capture_names()
        .enumerate()
        .filter(|(_, n)| matches!(n, Some("s" | "s2" | "s3" | "s4")))
        .map(|(i, _)| i)
        .collect()
}

/// A value known by its context that is no secret: empty, a variable or a
/// template (`$DB_PASSWORD`, `${X}`, `{{ x }}`, `%(pw)s`), masked (`****`),
/// already redacted, or (bare, not quoted) an identifier of code
/// (`password=password`, `token: str`, `self.api_key`).
pub fn is_placeholder(value: &str, quoted: bool) -> bool {
    let v = value.trim();
    if v.is_empty()
        || v.starts_with('$')
        || v.starts_with("{{")
        || v.starts_with("%(")
        || v.starts_with('<')
        || v.starts_with("[REDACTED")
        || (v.len() >= 3 && v.bytes().all(|b| b == b'*' || b == b'x' || b == b'X'))
    {
        return true;
    }
    if quoted {
        return false;
    }
    // Code that passes a secret along by name: types, literals, the name
    // itself (`password=password`).
    const CODE_WORDS: &[&str] = &[
        "true",
        "false",
        "null",
        "none",
        "nil",
        "undefined",
        "str",
        "string",
        "int",
        "bool",
        "bytes",
        "optional",
        "any",
        "required",
        "secretstr",
        "env",
        "var",
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "key",
        "api_key",
        "apikey",
        "passphrase",
        "credentials",
    ];
    const TAIL: [char; 7] = [',', ')', ']', '}', ';', '(', '['];
    let ident = v.trim_end_matches(TAIL);
    if CODE_WORDS.contains(&ident.to_ascii_lowercase().as_str()) {
        return true;
    }
    let is_ident = |s: &str| {
        s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let mut segments = ident.split('.');
    let first = segments.next().unwrap_or_default();
    let lower_first = is_ident(first) && !first.bytes().any(|b| b.is_ascii_uppercase());
    // `self.api_key`, `process.env.STRIPE_KEY`, `os.environ[`, `get_token()`,
    // `user_password`: an identifier of code, not a value.
    (lower_first && ident.contains('.') && ident.split('.').skip(1).all(is_ident))
        || (lower_first
            && !first.bytes().any(|b| b.is_ascii_digit())
            && (first.contains('_') || v.contains('(')))
}

/// A bare value after a lowercase name that is only weakly a secret's
/// (`token`, `…key`): a short lowercase word is prose (`invalid token: signature
/// mismatch`), not a key.
fn is_weak_word(name: &str, value: &str) -> bool {
    let name = name.trim_end_matches(|c: char| c.is_whitespace() || "=:>\\\"'".contains(c));
    // A name written in capitals or camel case (`API_KEY`, `X-Api-Key`) is
    // an identifier, whose value is a key whatever it looks like.
    !name.bytes().any(|b| b.is_ascii_uppercase())
        && (name.ends_with("token") || name.ends_with("key"))
        && value.len() < 16
        && value.bytes().all(|b| b.is_ascii_lowercase())
}

fn replace_all<'a>(s: Cow<'a, str>, d: &Detector, field: &str) -> Cow<'a, str> {
    let text: &str = &s;
    // The lazy DFA answers this fast; captures run only where a match is.
    if !d.regex.is_match(text) {
        return s;
    }
    let mut out: Option<String> = None;
    let mut last = 0;
    for caps in d.regex.captures_iter(text) {
        let Some(whole) = caps.get(0) else { continue };
        let (secret, quoted) = if d.secret_groups.is_empty() {
            (whole, false)
        } else {
            let Some((g, m)) = d
                .secret_groups
                .iter()
                .find_map(|&g| caps.get(g).map(|m| (g, m)))
            else {
                continue;
            };
            // Of several groups, the last is the bare form of a value and
            // the others its quoted forms; a lone group is taken whole.
            let bare = d.secret_groups.len() > 1 && d.secret_groups.last() == Some(&g);
            (m, !bare)
        };
        let value = secret.as_str();
        if value.is_empty()
            || (d.needs_digit && !value.bytes().any(|b| b.is_ascii_digit()))
            || (d.contextual && is_placeholder(value, quoted))
            || (d.contextual
                && !quoted
                && is_weak_word(&text[whole.start()..secret.start()], value))
        {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
        o.push_str(&text[last..secret.start()]);
        o.push_str("[REDACTED:");
        o.push_str(&d.kind);
        o.push(']');
        last = secret.end();
        fired(&d.kind, field);
    }
    match out {
        None => s,
        Some(mut o) => {
            o.push_str(&text[last..]);
            Cow::Owned(o)
        }
    }
}

/// True when `s` holds a `\uXXXX` or `\/` escape, which can split a
/// secret or the trigger that finds it.
pub fn has_hiding_escape(s: &str) -> bool {
    memchr::memchr_iter(b'\\', s.as_bytes())
        .any(|i| matches!(s.as_bytes().get(i + 1), Some(b'u' | b'/')))
}

/// `s` with `\uXXXX` (surrogate pairs too) and `\/` decoded; every other
/// escape is left as it is.
fn unescape_hiding(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('/') {
            out.push('/');
            rest = tail;
            continue;
        }
        if let Some((c, used)) = after.strip_prefix('u').and_then(decode_u) {
            out.push(c);
            rest = &after[1 + used..];
            continue;
        }
        // Another escape (`\n`, `\\`): kept whole, so `\\u` stays literal.
        let keep = after.chars().next().map_or(0, char::len_utf8);
        out.push('\\');
        out.push_str(&after[..keep]);
        rest = &after[keep..];
    }
    out.push_str(rest);
    out
}

/// The character of `XXXX` (after `\u`), with its low surrogate if it is a
/// high one, and how many bytes that used.
fn decode_u(hex: &str) -> Option<(char, usize)> {
    let unit = |s: &str| s.get(..4).and_then(|h| u16::from_str_radix(h, 16).ok());
    let first = unit(hex)?;
    if (0xD800..0xDC00).contains(&first) {
        let low = hex.get(4..)?.strip_prefix("\\u").and_then(unit)?;
        let c = char::decode_utf16([first, low]).next()?.ok()?;
        return Some((c, 10));
    }
    char::from_u32(u32::from(first)).map(|c| (c, 4))
}

#[cfg(test)]
mod tests;
