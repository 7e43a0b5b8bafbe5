//! The rides timestamp: `DD-MM-YYYY:SS-MM-HH` in UTC, stored as unix seconds.

use chrono::{DateTime, NaiveDateTime};

const FORMAT: &str = "%d-%m-%Y:%S-%M-%H";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimestampError {
    #[error("timestamp must look like DD-MM-YYYY:SS-MM-HH")]
    Shape,
    #[error("timestamp names a time that does not exist")]
    Impossible,
}

/// Unix seconds of a `DD-MM-YYYY:SS-MM-HH` timestamp.
///
/// The shape is checked byte by byte first: chrono alone would also take
/// one-digit fields, signed or five-digit years and leap second 60.
pub fn parse(s: &str) -> Result<i64, TimestampError> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            2 | 5 | 13 | 16 => *c == b'-',
            10 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(TimestampError::Shape);
    }
    if &s[11..13] > "59" {
        return Err(TimestampError::Impossible);
    }
    let t = NaiveDateTime::parse_from_str(s, FORMAT).map_err(|_| TimestampError::Impossible)?;
    Ok(t.and_utc().timestamp())
}

/// The answer's form of a stored start time.
pub fn format(secs: i64) -> String {
    match DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format(FORMAT).to_string(),
        // Only this service writes start_time, always from `parse`.
        None => String::from("00-00-0000:00-00-00"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = "26-01-2030:05-04-03";
        let t = parse(s).unwrap();
        assert_eq!(t, 1895627045, "2030-01-26 03:04:05 UTC");
        assert_eq!(format(t), s);
        assert_eq!(parse("01-01-1970:00-00-00"), Ok(0));
        assert_eq!(parse("29-02-2024:59-59-23").map(format).as_deref(), Ok("29-02-2024:59-59-23"));
    }

    #[test]
    fn impossible_dates() {
        assert_eq!(parse("31-02-2025:00-00-00"), Err(TimestampError::Impossible));
        assert_eq!(parse("29-02-2025:00-00-00"), Err(TimestampError::Impossible));
        assert_eq!(parse("00-01-2025:00-00-00"), Err(TimestampError::Impossible));
        assert_eq!(parse("01-13-2025:00-00-00"), Err(TimestampError::Impossible));
        assert_eq!(parse("01-01-2025:60-00-00"), Err(TimestampError::Impossible));
        assert_eq!(parse("01-01-2025:00-60-00"), Err(TimestampError::Impossible));
        assert_eq!(parse("01-01-2025:00-00-24"), Err(TimestampError::Impossible));
    }

    #[test]
    fn bad_shapes() {
        for s in [
            "",
            "1-1-2025:0-0-0",
            "2025-01-01 00:00:00",
            "01-01-2025:00-00-00Z",
            "01-01-+2025:00-00-0",
            "01/01/2025:00-00-00",
            "01-01-2025:00:00:00",
            "é1-01-2025:00-00-00",
        ] {
            assert_eq!(parse(s), Err(TimestampError::Shape), "{s:?}");
        }
        assert_eq!(parse(&"1".repeat(1 << 20)), Err(TimestampError::Shape));
    }
}
