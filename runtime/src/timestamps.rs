//! Record timestamps taken from the data: a source may say that its event
//! time is a field of the JSON value (`timestamp: { field: ts, format:
//! millis | iso8601 }` in the spec) instead of the Kafka record's timestamp.
//! A record whose field is missing or not a valid time meets the source's
//! error policy (kind `bad-timestamp`) and does not move stream time.

use serde::{Deserialize, Serialize};

/// How a timestamp field is written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TimestampFormat {
    /// Milliseconds since the Unix epoch: a JSON integer, or a string of digits.
    #[default]
    Millis,
    /// ISO 8601 / RFC 3339 text with a UTC offset: `2026-12-01T13:45:00Z`,
    /// `2026-12-01T14:45:00.250+01:00`; a date alone (`2026-12-01`) is
    /// midnight UTC.
    Iso8601,
}

/// Where a source's record timestamps come from (absent: the Kafka timestamp).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimestampSpec {
    /// A field of the JSON value; dots go into nested objects (`meta.ts`).
    pub field: String,
    #[serde(default)]
    pub format: TimestampFormat,
}

impl TimestampSpec {
    /// The timestamp of a record with value `value`, or why there is none.
    pub fn extract(&self, value: Option<&[u8]>) -> Result<i64, String> {
        let value = value.ok_or_else(|| format!("no value to read timestamp field `{}` from", self.field))?;
        let json: serde_json::Value = serde_json::from_slice(value)
            .map_err(|e| format!("timestamp field `{}`: the value is not JSON: {e}", self.field))?;
        let mut at = &json;
        for part in self.field.split('.') {
            at = at.get(part).ok_or_else(|| format!("the value has no timestamp field `{}`", self.field))?;
        }
        let millis = match (self.format, at) {
            (TimestampFormat::Millis, serde_json::Value::Number(n)) => n.as_i64(),
            (TimestampFormat::Millis, serde_json::Value::String(s)) => s.trim().parse::<i64>().ok(),
            (TimestampFormat::Iso8601, serde_json::Value::String(s)) => {
                Some(parse_iso8601(s).map_err(|e| format!("timestamp field `{}` = {s:?}: {e}", self.field))?)
            }
            _ => None,
        };
        match millis {
            Some(ms) if ms >= 0 => Ok(ms),
            Some(ms) => Err(format!("timestamp field `{}` = {ms} is before 1970 (timestamps are ≥ 0 ms)", self.field)),
            None => Err(format!(
                "timestamp field `{}` = {at} is not {}",
                self.field,
                match self.format {
                    TimestampFormat::Millis => "milliseconds since the epoch (an integer)",
                    TimestampFormat::Iso8601 => "an ISO 8601 time (text)",
                }
            )),
        }
    }
}

/// Milliseconds since the epoch of an ISO 8601 time with a UTC offset.
pub fn parse_iso8601(text: &str) -> Result<i64, String> {
    let bad = |what: &str| format!("not an ISO 8601 time ({what}; e.g. 2026-12-01T13:45:00Z)");
    let b = text.trim().as_bytes();
    let digits = |s: &[u8]| -> Option<i64> {
        (!s.is_empty() && s.iter().all(u8::is_ascii_digit))
            .then(|| s.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad("the date must be YYYY-MM-DD"));
    }
    let (year, month, day) = match (digits(&b[0..4]), digits(&b[5..7]), digits(&b[8..10])) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => return Err(bad("the date must be YYYY-MM-DD")),
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    let days = days_from_civil(year, month, day);
    let rest = &b[10..];
    if rest.is_empty() {
        return Ok(days * 86_400_000);
    }
    if !matches!(rest[0], b'T' | b't' | b' ') || rest.len() < 9 || rest[3] != b':' || rest[6] != b':' {
        return Err(bad("the time must be THH:MM:SS"));
    }
    let (hour, minute, second) = match (digits(&rest[1..3]), digits(&rest[4..6]), digits(&rest[7..9])) {
        (Some(h), Some(m), Some(s)) if h < 24 && m < 60 && s < 60 => (h, m, s),
        _ => return Err(bad("the time must be THH:MM:SS")),
    };
    let mut rest = &rest[9..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(bad("a fraction of a second needs digits"));
        }
        // Milliseconds: the first three digits, the rest truncated.
        let mut ms = frac[..n.min(3)].iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        for _ in n.min(3)..3 {
            ms *= 10;
        }
        millis = ms;
        rest = &frac[n..];
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            match (digits(&[*h1, *h2]), digits(&[*m1, *m2])) {
                (Some(h), Some(m)) if h < 24 && m < 60 => (h * 60 + m) * if *sign == b'-' { -1 } else { 1 },
                _ => return Err(bad("the UTC offset must be ±HH:MM")),
            }
        }
        [] => return Err(bad("a time needs a UTC offset: Z or ±HH:MM")),
        _ => return Err(bad("the UTC offset must be Z or ±HH:MM")),
    };
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_times_with_offsets_and_fractions() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_iso8601("1970-01-01"), Ok(0));
        assert_eq!(parse_iso8601("2026-12-01T13:45:00Z"), Ok(1_796_132_700_000));
        assert_eq!(parse_iso8601("2026-12-01T14:45:00+01:00"), Ok(1_796_132_700_000));
        assert_eq!(parse_iso8601("2026-12-01T08:45:00-0500"), Ok(1_796_132_700_000));
        assert_eq!(parse_iso8601("2026-12-01 13:45:00.25z"), Ok(1_796_132_700_250));
        assert_eq!(parse_iso8601("2026-12-01T13:45:00.123456Z"), Ok(1_796_132_700_123));
        assert_eq!(parse_iso8601("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in [
            "2026-12-01T13:45:00",
            "2023-02-29",
            "2026-13-01",
            "2026-12-01T25:00:00Z",
            "2026-12-01T13:45Z",
            "2026-12-01T13:45:00.Z",
            "2026-12-01T13:45:00+1",
            "yesterday",
            "",
        ] {
            assert!(parse_iso8601(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn fields_are_found_nested_and_bad_ones_are_named() {
        let millis = TimestampSpec { field: "meta.ts".into(), format: TimestampFormat::Millis };
        assert_eq!(millis.extract(Some(br#"{"meta":{"ts":1234}}"#)), Ok(1234));
        assert_eq!(millis.extract(Some(br#"{"meta":{"ts":"1234"}}"#)), Ok(1234));
        let err = millis.extract(Some(br#"{"meta":{}}"#)).unwrap_err();
        assert!(err.contains("no timestamp field `meta.ts`"), "{err}");
        assert!(millis.extract(Some(br#"{"meta":{"ts":-5}}"#)).unwrap_err().contains("before 1970"));
        assert!(millis.extract(Some(br#"{"meta":{"ts":1.5}}"#)).unwrap_err().contains("is not milliseconds"));
        assert!(millis.extract(Some(b"not json")).unwrap_err().contains("not JSON"));
        assert!(millis.extract(None).unwrap_err().contains("no value"));
        let iso = TimestampSpec { field: "at".into(), format: TimestampFormat::Iso8601 };
        assert_eq!(iso.extract(Some(br#"{"at":"1970-01-01T00:00:01.5Z"}"#)), Ok(1500));
        assert!(iso.extract(Some(br#"{"at":15}"#)).unwrap_err().contains("ISO 8601"));
    }
}
