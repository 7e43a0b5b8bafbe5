//! The area enum (`data/AreaNameEnum.csv`, shipped inside the binary).
//!
//! Areas are checked against the numbers in the file rather than a range, so
//! the file stays the one place that says which areas exist.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde_json::Value;

const CSV: &str = include_str!("../data/AreaNameEnum.csv");

static AREAS: LazyLock<BTreeSet<u64>> = LazyLock::new(|| {
    CSV.lines().skip(1).filter_map(|l| l.split(',').next()).filter_map(|n| n.trim().parse().ok()).collect()
});

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AreaError {
    #[error("area must be an integer or a string of digits")]
    NotANumber,
    #[error("area {0} is not in the area list")]
    Unknown(String),
}

/// An area given as a string of digits (`"12"`, and query parameters).
pub fn parse_str(s: &str) -> Result<i64, AreaError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AreaError::NotANumber);
    }
    // Too many digits for a u64 is just another area that does not exist.
    let unknown = || AreaError::Unknown(svc_common::http::short(s));
    let n: u64 = s.parse().map_err(|_| unknown())?;
    known(n).ok_or_else(unknown)
}

/// An area as it appears in a JSON body: an integer or a string of digits.
/// Floats (`1e3`, `12.0`) and integers too big for JSON's exact range are refused.
pub fn parse_json(v: &Value) -> Result<i64, AreaError> {
    match v {
        Value::String(s) => parse_str(s),
        Value::Number(n) => match n.as_u64() {
            Some(n) => known(n).ok_or(AreaError::Unknown(n.to_string())),
            None if n.is_i64() => Err(AreaError::Unknown(n.to_string())),
            None => Err(AreaError::NotANumber),
        },
        _ => Err(AreaError::NotANumber),
    }
}

fn known(n: u64) -> Option<i64> {
    AREAS.contains(&n).then_some(n as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_file_has_198_areas() {
        assert_eq!(AREAS.len(), 198);
        assert_eq!(AREAS.first(), Some(&1));
        assert_eq!(AREAS.last(), Some(&198));
    }

    #[test]
    fn integers_and_digit_strings() {
        assert_eq!(parse_json(&json!(12)), Ok(12));
        assert_eq!(parse_json(&json!("12")), Ok(12));
        assert_eq!(parse_json(&json!(1)), Ok(1));
        assert_eq!(parse_json(&json!(198)), Ok(198));
        assert_eq!(parse_str("007"), Ok(7));
    }

    #[test]
    fn refusals() {
        assert!(matches!(parse_json(&json!(0)), Err(AreaError::Unknown(_))));
        assert!(matches!(parse_json(&json!(199)), Err(AreaError::Unknown(_))));
        assert!(matches!(parse_json(&json!(-3)), Err(AreaError::Unknown(_))));
        assert!(matches!(parse_json(&json!("0")), Err(AreaError::Unknown(_))));
        assert!(matches!(parse_json(&json!("199")), Err(AreaError::Unknown(_))));
        assert_eq!(parse_json(&json!("1e3")), Err(AreaError::NotANumber));
        assert_eq!(parse_json(&json!(12.0)), Err(AreaError::NotANumber));
        assert_eq!(parse_json(&json!("")), Err(AreaError::NotANumber));
        assert_eq!(parse_json(&json!(" 12")), Err(AreaError::NotANumber));
        assert_eq!(parse_json(&json!("-12")), Err(AreaError::NotANumber));
        assert_eq!(parse_json(&json!(null)), Err(AreaError::NotANumber));
        assert_eq!(parse_json(&json!([12])), Err(AreaError::NotANumber));
        assert_eq!(parse_json(&json!(true)), Err(AreaError::NotANumber));
    }

    #[test]
    fn huge_numbers() {
        let big: Value = serde_json::from_str("99999999999999999999999").unwrap();
        assert!(parse_json(&big).is_err());
        assert!(serde_json::from_str::<Value>("1e400").is_err(), "the body parser already refuses it");
        let digits = "9".repeat(100_000);
        let e = parse_str(&digits).unwrap_err();
        assert!(e.to_string().len() < 200);
    }
}
