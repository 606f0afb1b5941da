//! Timestamp formats of rules: `auto`, `rfc3339`, `epoch_s`, `epoch_ms`,
//! `epoch_us`, `epoch_ns`, or a strftime pattern (chrono's syntax, such as
//! `%Y-%m-%d %H:%M:%S%.f`); a pattern without an offset is read as UTC.

use chrono::format::{Item, Parsed};

use crate::event::Timestamp;

/// Latest instant an event may carry (the end of year 9999), in microseconds.
const MAX_MICROS: i128 = 253_402_300_799_999_999;

#[derive(Debug, Clone)]
pub enum TimeFormat {
    /// RFC 3339, else an epoch number whose unit is guessed from its size.
    Auto,
    Rfc3339,
    /// An epoch number in this many nanoseconds per unit (s, ms, us, ns).
    Epoch {
        nanos_per_unit: i128,
    },
    Strftime {
        pattern: String,
        items: Vec<Item<'static>>,
    },
}

impl TimeFormat {
    /// Reads a format name or strftime pattern, checking that a pattern
    /// yields a full date and time.
    pub fn parse(spec: &str) -> Result<TimeFormat, String> {
        let epoch = |nanos_per_unit| Ok(TimeFormat::Epoch { nanos_per_unit });
        match spec {
            "auto" => return Ok(TimeFormat::Auto),
            "rfc3339" => return Ok(TimeFormat::Rfc3339),
            "epoch_s" => return epoch(1_000_000_000),
            "epoch_ms" => return epoch(1_000_000),
            "epoch_us" => return epoch(1_000),
            "epoch_ns" => return epoch(1),
            _ => {}
        }
        if !spec.contains('%') {
            return Err(format!(
                "unknown timestamp format `{spec}`: use rfc3339, epoch_s, epoch_ms, epoch_us, \
                 epoch_ns, auto or a strftime pattern such as \"%Y-%m-%d %H:%M:%S%.f\""
            ));
        }
        let items = chrono::format::StrftimeItems::new(spec)
            .parse_to_owned()
            .map_err(|e| format!("strftime pattern `{spec}`: {e}"))?;
        // A pattern must read back what it writes, and name a whole instant.
        let sample = chrono::NaiveDate::from_ymd_opt(2026, 3, 13)
            .and_then(|d| d.and_hms_micro_opt(12, 34, 56, 789_012))
            .ok_or("no sample date")?
            .and_utc();
        let text = sample.format_with_items(items.iter()).to_string();
        let format = TimeFormat::Strftime {
            pattern: spec.to_string(),
            items,
        };
        if format.read(&text).is_none() {
            return Err(format!(
                "strftime pattern `{spec}` does not give a full date and time \
                 (it needs at least year, month, day, hour and minute)"
            ));
        }
        Ok(format)
    }

    /// The instant `text` stands for in this format.
    pub fn read(&self, text: &str) -> Option<Timestamp> {
        let text = text.trim();
        match self {
            TimeFormat::Auto => Timestamp::parse_rfc3339(text).or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .and_then(Timestamp::from_epoch_number)
            }),
            TimeFormat::Rfc3339 => Timestamp::parse_rfc3339(text),
            TimeFormat::Epoch { nanos_per_unit } => epoch(text, *nanos_per_unit),
            TimeFormat::Strftime { items, .. } => {
                let mut parsed = Parsed::new();
                chrono::format::parse(&mut parsed, text, items.iter()).ok()?;
                let utc = if parsed.offset().is_some() {
                    parsed.to_datetime().ok()?.naive_utc()
                } else {
                    parsed.to_naive_datetime_with_offset(0).ok()?
                };
                let micros = utc.and_utc().timestamp_micros();
                (0..=MAX_MICROS as i64)
                    .contains(&micros)
                    .then(|| Timestamp::from_unix_micros(micros))
            }
        }
    }

    pub fn name(&self) -> &str {
        match self {
            TimeFormat::Auto => "auto",
            TimeFormat::Rfc3339 => "rfc3339",
            TimeFormat::Epoch { nanos_per_unit } => match nanos_per_unit {
                1_000_000_000 => "epoch_s",
                1_000_000 => "epoch_ms",
                1_000 => "epoch_us",
                _ => "epoch_ns",
            },
            TimeFormat::Strftime { pattern, .. } => pattern,
        }
    }
}

/// A decimal number of units (`1773403200`, `1773403200.25`) exactly, without
/// going through a float.
fn epoch(text: &str, nanos_per_unit: i128) -> Option<Timestamp> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    if int.is_empty() || int.len() > 20 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos = int.parse::<i128>().ok()?.checked_mul(nanos_per_unit)?;
    // Digits beyond a nanosecond change nothing.
    let mut scale = nanos_per_unit;
    for d in frac.bytes().take(18) {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos += i128::from(d - b'0') * scale;
    }
    let micros = nanos / 1000;
    (micros <= MAX_MICROS).then(|| Timestamp::from_unix_micros(micros as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(format: &str, text: &str) -> Option<String> {
        TimeFormat::parse(format)
            .unwrap()
            .read(text)
            .map(|t| t.to_rfc3339())
    }

    #[test]
    fn each_format() {
        let want = Some("2026-03-13T12:00:00.123000+00:00".to_string());
        assert_eq!(at("rfc3339", "2026-03-13T12:00:00.123Z"), want);
        assert_eq!(at("rfc3339", "2026-03-13T14:00:00.123+02:00"), want);
        assert_eq!(at("epoch_s", "1773403200.123"), want);
        assert_eq!(at("epoch_ms", "1773403200123"), want);
        assert_eq!(at("epoch_us", "1773403200123000"), want);
        assert_eq!(at("epoch_ns", "1773403200123000000"), want);
        assert_eq!(at("auto", "1773403200123"), want);
        assert_eq!(at("auto", "2026-03-13T12:00:00.123Z"), want);
        assert_eq!(at("%Y-%m-%d %H:%M:%S%.f", "2026-03-13 12:00:00.123"), want);
        assert_eq!(
            at("%d/%b/%Y:%H:%M:%S%.f %z", "13/Mar/2026:13:00:00.123 +0100"),
            want
        );
        assert_eq!(
            at("%Y-%m-%d %H:%M", "2026-03-13 12:00"),
            Some("2026-03-13T12:00:00.000000+00:00".into())
        );
    }

    #[test]
    fn bad_values_are_none() {
        assert_eq!(at("rfc3339", "yesterday"), None);
        assert_eq!(at("epoch_s", "-5"), None);
        assert_eq!(at("epoch_s", "1e9"), None);
        assert_eq!(at("epoch_s", "99999999999999999999"), None);
        assert_eq!(at("epoch_ms", ""), None);
        assert_eq!(at("%Y-%m-%d %H:%M:%S", "2026-13-40 12:00:00"), None);
        assert_eq!(at("%Y-%m-%d %H:%M:%S", "10000-01-01 00:00:00"), None);
    }

    #[test]
    fn bad_formats_are_refused() {
        assert!(TimeFormat::parse("iso")
            .unwrap_err()
            .contains("unknown timestamp format"));
        assert!(TimeFormat::parse("%Y-%m-%Q")
            .unwrap_err()
            .contains("strftime pattern"));
        assert!(TimeFormat::parse("%H:%M:%S")
            .unwrap_err()
            .contains("full date and time"));
    }
}
