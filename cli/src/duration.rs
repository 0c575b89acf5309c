//! Durations as Gateway API writes them (GEP-2257: `1h30m`, `120s`, `500ms`), also accepted in
//! llmgw's own config.

use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. 300s, 5m or 1h".into());
    }
    let mut total_ms: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?}: expected a number, e.g. 300s, 5m or 1h30m"));
        }
        let n: u128 = rest[..digits].parse().map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return Err(format!("{text:?}: each number needs a unit: h, m, s or ms"));
        };
        rest = &rest[len..];
        total_ms = total_ms.saturating_add(n.saturating_mul(unit_ms));
    }
    let ms = u64::try_from(total_ms).map_err(|_| format!("{text:?}: too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Envoy's protobuf JSON form: `300s`, `0.250s`.
pub fn to_envoy(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_api_durations() {
        assert_eq!(parse("120s").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse("1h30m10s500ms").unwrap(), Duration::from_millis(5_410_500));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse(" 250ms ").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in ["", "10", "s", "1.5s", "5 m", "-1s", "3d"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn envoy_form() {
        assert_eq!(to_envoy(Duration::from_secs(300)), "300s");
        assert_eq!(to_envoy(Duration::from_millis(1250)), "1.250s");
    }
}
