//! What a server's answer may tell the flusher, read as untrusted input. A
//! proxy, a load balancer or a buggy gateway can send anything: every number
//! is parsed with checked arithmetic and held to what a rate limiter could
//! mean. A value outside that is ignored (a wait: cut to `max_backoff`) with
//! a warning naming the header, never turned into an overflow, a panic or a
//! stall. The error body is read with a bound, and only as text.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use tracing::warn;

/// A limit or a remaining count above this is no rate limit anyone runs.
pub const MAX_RATE_NUMBER: u64 = 1_000_000_000;
/// A window that resets further ahead than this is not the API's minute.
pub const MAX_RESET_AHEAD: Duration = Duration::from_secs(3600);
/// Most bytes of an error body read: a WAF's page can be megabytes.
pub const MAX_ERROR_BODY: usize = 16 << 10;
/// One warning per header this often, whatever the server repeats.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The `X-RateLimit-*` headers of one answer, checked for sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    pub remaining: u64,
    /// Unix seconds, at most [`MAX_RESET_AHEAD`] from now.
    pub reset: u64,
    pub limit: Option<u64>,
}

/// The rate headers of an answer, or None when absent or not to be
/// trusted (each such header warned about, at most once a minute).
pub fn rate_headers(headers: &HeaderMap, now: SystemTime) -> Option<RateHeaders> {
    let remaining = number(headers, "x-ratelimit-remaining")?;
    let reset = number(headers, "x-ratelimit-reset")?;
    let limit = number(headers, "x-ratelimit-limit");
    if let Some(limit) = limit {
        if limit == 0 {
            warn_header("x-ratelimit-limit", "0", "a limit of 0 requests; ignored");
            return None;
        }
        if remaining > limit {
            warn_header(
                "x-ratelimit-remaining",
                &remaining.to_string(),
                &format!("more than X-RateLimit-Limit ({limit}); the rate headers are ignored"),
            );
            return None;
        }
    }
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if reset.saturating_sub(now_secs) > MAX_RESET_AHEAD.as_secs() {
        warn_header(
            "x-ratelimit-reset",
            &reset.to_string(),
            "more than an hour ahead; the rate headers are ignored",
        );
        return None;
    }
    Some(RateHeaders {
        remaining,
        reset,
        limit,
    })
}

/// How long a 429 asks to wait: `Retry-After` (delta-seconds or an HTTP
/// date), else `X-RateLimit-Reset`. Not cut here: see [`clamp_wait`].
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(raw) = headers.get(RETRY_AFTER) {
        let text = raw.to_str().unwrap_or("").trim();
        if let Ok(secs) = text.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Some(at) = http_date(text) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
        warn_header(
            "retry-after",
            text,
            "neither seconds nor an HTTP date; ignored",
        );
    }
    let rate = rate_headers(headers, now)?;
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Some(Duration::from_secs(
        rate.reset.saturating_sub(now_secs).max(1),
    ))
}

/// A server's wait, cut to `max`: a `Retry-After` of a week (or of 2^64
/// seconds) waits `max_backoff`, with a warning.
pub fn clamp_wait(wait: Duration, max: Duration, header: &'static str) -> Duration {
    if wait > max {
        warn_header(
            header,
            &format!("{}s", wait.as_secs()),
            &format!("longer than max_backoff; waiting {}s", max.as_secs()),
        );
        return max;
    }
    wait
}

/// `now + wait`, or `now + fallback` where that would overflow the clock.
pub fn after(
    now: tokio::time::Instant,
    wait: Duration,
    fallback: Duration,
) -> tokio::time::Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(fallback))
        .unwrap_or(now)
}

/// A header's decimal value; a header present but not a number in
/// `0..=MAX_RATE_NUMBER` (or, for the reset, any u64) is warned about.
fn number(headers: &HeaderMap, name: &'static str) -> Option<u64> {
    let raw = headers.get(name)?;
    let text = raw.to_str().unwrap_or("").trim();
    match text.parse::<u64>() {
        Ok(n) if name == "x-ratelimit-reset" || n <= MAX_RATE_NUMBER => Some(n),
        Ok(_) => {
            warn_header(name, text, "out of any rate limit's range; ignored");
            None
        }
        Err(_) => {
            warn_header(name, text, "not a whole non-negative number; ignored");
            None
        }
    }
}

fn http_date(s: &str) -> Option<SystemTime> {
    let t = time::PrimitiveDateTime::parse(
        s,
        time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ),
    )
    .ok()?;
    let secs = u64::try_from(t.assume_utc().unix_timestamp()).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Warns about a header's value at most once a minute per header; the value
/// is shown cut to 64 printable characters.
fn warn_header(name: &'static str, value: &str, why: &str) {
    static LAST: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());
    let now = Instant::now();
    {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        match last.iter_mut().find(|(n, _)| *n == name) {
            Some((_, at)) if now.duration_since(*at) < WARN_EVERY => return,
            Some((_, at)) => *at = now,
            None => last.push((name, now)),
        }
    }
    // Shown only if it could be a number or a date: a server that echoes
    // the request head may have put our key in any header.
    let plain = value.len() <= 40
        && value
            .chars()
            .all(|c| c.is_ascii_digit() || " ,.:+-".contains(c) || is_date_word(c));
    let shown = if plain {
        value.to_string()
    } else {
        format!("({} bytes, not shown)", value.len())
    };
    warn!(header = name, value = %shown, "server answer: {why}");
}

/// Letters of an HTTP date's day and month names and its `GMT`.
fn is_date_word(c: char) -> bool {
    "MonTueWdhFriSatJnFbMrApyJlAugSpOctNvDGMT".contains(c)
}

/// The documented error body, `{"error": {"code", "message", "requestId"}}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: String,
}

impl ErrorBody {
    pub fn reason(&self, status: u16) -> crate::queue::DeadReason {
        crate::queue::DeadReason {
            status,
            code: self.code.clone(),
            message: self.message.clone(),
            request_id: self.request_id.clone(),
        }
    }

    pub fn parse(body: &str) -> ErrorBody {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let field = |k: &str| {
            let s = v["error"][k].as_str().unwrap_or_default();
            crate::event::truncate_utf8(s, 1024).to_string()
        };
        let mut parsed = ErrorBody {
            code: field("code"),
            message: field("message"),
            request_id: field("requestId"),
        };
        if parsed.message.is_empty() {
            // An HTML page from a proxy or WAF: keep a short, printable excerpt.
            parsed.message = body.chars().take(200).filter(|c| !c.is_control()).collect();
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn retry_after_forms() {
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(retry_after(&h, now()), Some(Duration::from_secs(7)));
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(
            retry_after(&h, now()),
            Some(Duration::ZERO),
            "a past date is now"
        );
        let reset = (NOW + 30).to_string();
        let h = headers(&[
            ("x-ratelimit-reset", &reset),
            ("x-ratelimit-remaining", "0"),
        ]);
        assert_eq!(retry_after(&h, now()), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&HeaderMap::new(), now()), None);
    }

    #[test]
    fn absurd_waits_are_cut_to_max_backoff() {
        let h = headers(&[("retry-after", "18446744073709551615")]);
        let wait = retry_after(&h, now()).unwrap();
        let max = Duration::from_secs(300);
        assert_eq!(clamp_wait(wait, max, "retry-after"), max);
        let t = tokio::time::Instant::now();
        assert_eq!(after(t, Duration::MAX, max), t + max, "never an overflow");
        for bad in ["-5", "1e3", "", "soon", "99999999999999999999999"] {
            let h = headers(&[("retry-after", bad)]);
            assert_eq!(retry_after(&h, now()), None, "{bad:?}");
        }
    }

    #[test]
    fn rate_headers_out_of_sense_are_ignored() {
        let ok = |rem: &str, reset: u64, limit: &str| {
            let reset = reset.to_string();
            rate_headers(
                &headers(&[
                    ("x-ratelimit-remaining", rem),
                    ("x-ratelimit-reset", &reset),
                    ("x-ratelimit-limit", limit),
                ]),
                now(),
            )
        };
        assert_eq!(
            ok("5", NOW + 30, "20"),
            Some(RateHeaders {
                remaining: 5,
                reset: NOW + 30,
                limit: Some(20)
            })
        );
        assert_eq!(ok("5", u64::MAX, "20"), None, "a reset at 2^64");
        assert_eq!(ok("5", NOW + 7200, "20"), None, "two hours ahead");
        assert_eq!(ok("30", NOW + 30, "20"), None, "more left than the limit");
        assert_eq!(ok("5", NOW + 30, "0"), None, "a limit of 0");
        assert_eq!(ok("-1", NOW + 30, "20"), None);
        assert_eq!(ok("99999999999", NOW + 30, "99999999999"), None);
        assert!(
            ok("5", NOW - 10, "20").is_some(),
            "a past reset: a window just ended"
        );
    }

    #[test]
    fn error_body() {
        let e = ErrorBody::parse(
            r#"{"error":{"code":"INVALID_TENANT","message":"no","requestId":"req_1"}}"#,
        );
        assert_eq!(e.code, "INVALID_TENANT");
        assert_eq!(e.request_id, "req_1");
        assert_eq!(
            ErrorBody::parse("<html>blocked</html>").message,
            "<html>blocked</html>"
        );
    }
}
