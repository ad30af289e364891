//! Durations in config files: seconds as a number (`30`, `0.5`) or a string with
//! units (`"30s"`, `"500ms"`, `"5m"`, `"1h"`, `"1m30s"`). Serialized back as the
//! shortest exact string, so plans and JSON output read naturally.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Parses a duration string. A bare number means seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = compact.parse::<f64>() {
        return from_secs(secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = compact.as_str();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}` is missing a unit (ms, s, m or h)"))?;
        if digits == 0 {
            return Err(format!("`{text}` is not a duration (use e.g. 30s, 500ms, 5m)"));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` is not a duration"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{text}` (use ms, s, m or h)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += from_secs(value * factor)?;
    }
    Ok(total)
}

fn from_secs(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err("a duration must be a non-negative number".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "duration is too large".into())
}

/// Formats a duration as the shortest exact string: `500ms`, `30s`, `1m30s`, `2h`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    out
}

/// Serde adapter: `#[serde(with = "duration")]`.
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("seconds as a number or a string such as \"30s\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration must be a non-negative number"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            from_secs(v).map_err(E::custom)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(V)
}

/// The same adapter for `Option<Duration>`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_units() {
        assert_eq!(parse("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse(" 2 s ").unwrap(), Duration::from_secs(2));
    }

    #[test]
    fn rejects_bad_durations() {
        assert!(parse("").is_err());
        assert!(parse("5x").unwrap_err().contains("unknown duration unit `x`"));
        assert!(parse("s").is_err());
        assert!(parse("-1").is_err());
    }

    #[test]
    fn formats_shortest_exact() {
        for (text, want) in [
            ("500ms", "500ms"),
            ("30", "30s"),
            ("90s", "1m30s"),
            ("3600", "1h"),
            ("0", "0s"),
            ("1.25", "1250ms"),
        ] {
            assert_eq!(format(parse(text).unwrap()), want);
        }
    }
}
