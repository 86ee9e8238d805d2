//! Durations (`30s`, `5m`, `4h`, `4d`, `"0"`) and sizes (`512K`, `35M`, `1G`, or bytes).

use std::time::Duration;

/// Parses a duration: decimal digits followed by one unit `s`, `m`, `h` or `d`, or a bare `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let expected = "expected a duration such as \"30s\", \"5m\", \"4h\", \"4d\" or \"0\"";
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: {expected}"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("invalid duration `{text}`: {expected}"));
    }
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in `{text}`: {expected}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per_unit))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

/// Parses a size: decimal digits optionally followed by `K`, `M` or `G` (powers of 1024;
/// lower case accepted). Without a suffix the number counts bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let expected = "expected a size such as \"512K\", \"35M\", \"1G\" or a number of bytes";
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("invalid size `{text}`: {expected}"));
    }
    let multiplier: u64 = match suffix {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("invalid size suffix in `{text}`: {expected}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// Formats a duration in the largest unit that divides it, as the configuration writes it.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0".to_string();
    }
    for (unit, per) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(per) {
            return format!("{}{unit}", secs / per);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_each_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("4d"), Ok(Duration::from_secs(4 * 86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("007m"), Ok(Duration::from_secs(420)));
    }

    #[test]
    fn durations_refuse_what_is_not_in_the_grammar() {
        let no_unit =
            "`5` has no unit: expected a duration such as \"30s\", \"5m\", \"4h\", \"4d\" or \"0\"";
        assert_eq!(parse_duration("5").unwrap_err(), no_unit);
        for bad in [
            "", "m", "-5m", "1.5h", "5 m", " 5m", "5m ", "5ms", "5M", "1h30m", "5w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_duration("5ms").unwrap_err(),
            "invalid duration unit in `5ms`: expected a duration such as \"30s\", \"5m\", \"4h\", \"4d\" or \"0\""
        );
        assert_eq!(
            parse_duration("99999999999999999999d").unwrap_err(),
            "duration `99999999999999999999d` is too large"
        );
        assert_eq!(
            parse_duration("999999999999999999d").unwrap_err(),
            "duration `999999999999999999d` is too large"
        );
    }

    #[test]
    fn sizes_with_and_without_suffix() {
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("35M"), Ok(35 * 1024 * 1024));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 * 1024));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn sizes_refuse_what_is_not_in_the_grammar() {
        for bad in ["", "M", "1.5M", "35 M", "35MB", "35T", "-1", " 1K"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_size("35MB").unwrap_err(),
            "invalid size suffix in `35MB`: expected a size such as \"512K\", \"35M\", \"1G\" or a number of bytes"
        );
        assert_eq!(
            parse_size("99999999999G").unwrap_err(),
            "size `99999999999G` is too large"
        );
    }

    #[test]
    fn formatted_durations_parse_back() {
        for secs in [0, 1, 59, 60, 90, 3600, 5400, 86_400, 4 * 86_400, 86_401] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }
}
