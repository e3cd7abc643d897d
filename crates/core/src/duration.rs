//! Durations as operators write them in res_scale.conf: `15s`, `1m`, `500ms`, `2h`, or a bare
//! number of seconds.

use std::time::Duration;

/// Parses `500ms`, `15s`, `1m`, `2h` or `30` (seconds). Returns a reason on failure.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err("expected a number with an optional unit (ms, s, m, h), e.g. 15s".into());
    }
    let n: u64 = digits.parse().map_err(|_| "number too large".to_string())?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => return Err(format!("unknown unit '{other}' (use ms, s, m or h)")),
    };
    n.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or_else(|| "number too large".into())
}

/// Writes a duration back the way `parse` reads it, in the largest exact unit.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse(" 30 "), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(parse("").unwrap_err().contains("expected a number"));
        assert!(parse("s").unwrap_err().contains("expected a number"));
        assert!(parse("10 years").unwrap_err().contains("unknown unit"));
        assert!(parse("-5s").is_err());
        assert!(parse("99999999999999999999s").unwrap_err().contains("too large"));
    }

    #[test]
    fn format_round_trips() {
        for text in ["15s", "1m", "2h", "250ms", "0s", "90s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
