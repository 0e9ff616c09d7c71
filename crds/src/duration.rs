//! Durations as users write them in specs and configs: `500ms`, `30s`, `5m`, `12h`, `7d`, `2w`,
//! or a sum such as `1h30m`. One parser for the CRD pattern and the dataplane config.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration: write e.g. 30s, 5m, 7d")]
    Empty,
    /// A number without a unit, an unknown unit or a stray character.
    #[error("invalid duration {0:?}: use numbers with ms, s, m, h, d or w, e.g. 1h30m")]
    Invalid(String),
    /// Too large to represent.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// What is wrong with a duration text; [`parse`] attaches the text.
enum Problem {
    Empty,
    Invalid,
    Overflow,
}

/// The one parser, `const` so that defaults are checked when compiling ([`parse_const`]).
const fn millis(text: &str) -> Result<u64, Problem> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(Problem::Empty);
    }
    let mut total_ms: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let mut number: u64 = 0;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            let digit = (bytes[i] - b'0') as u64;
            number = match number.checked_mul(10) {
                Some(n) => match n.checked_add(digit) {
                    Some(n) => n,
                    None => return Err(Problem::Overflow),
                },
                None => return Err(Problem::Overflow),
            };
            i += 1;
        }
        if start == i {
            return Err(Problem::Invalid);
        }
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let (_, rest) = bytes.split_at(unit_start);
        let (unit, _) = rest.split_at(i - unit_start);
        let unit_ms: u64 = match unit {
            b"ms" => 1,
            b"s" => 1_000,
            b"m" => 60_000,
            b"h" => 3_600_000,
            b"d" => 86_400_000,
            b"w" => 604_800_000,
            _ => return Err(Problem::Invalid),
        };
        let part = match number.checked_mul(unit_ms) {
            Some(p) => p,
            None => return Err(Problem::Overflow),
        };
        total_ms = match total_ms.checked_add(part) {
            Some(t) => t,
            None => return Err(Problem::Overflow),
        };
    }
    Ok(total_ms)
}

/// Parses `1h30m`-style durations.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    match millis(text) {
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(Problem::Empty) => Err(DurationError::Empty),
        Err(Problem::Invalid) => Err(DurationError::Invalid(text.to_string())),
        Err(Problem::Overflow) => Err(DurationError::Overflow(text.to_string())),
    }
}

/// [`parse`] for a duration written in the code (a default): call it in a const context,
/// `const { parse_const("10s") }`, and a text that is not a duration fails the build instead of
/// a running process.
pub const fn parse_const(text: &str) -> Duration {
    match millis(text) {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => panic!("not a duration: write e.g. 30s, 5m, 1h30m"),
    }
}

/// Formats a duration in the largest units that represent it exactly (`90m` → `1h30m`).
pub fn format(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("w", 604_800_000u128),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// Serde adapter for `Duration` fields written as duration strings.
pub mod serde_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    /// Writes a duration as a string.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*value))
    }

    /// Reads a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_sums() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(14 * 86400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        for bad in ["5", "s", "5x", "1.5h", "-5s", "5s ", "h5"] {
            assert!(
                matches!(parse(bad), Err(DurationError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for text in ["500ms", "30s", "1h30m", "6d", "1w", "2w1d", "1d1ms"] {
            let parsed = parse(text).expect("valid");
            assert_eq!(format(parsed), text);
        }
    }
}
