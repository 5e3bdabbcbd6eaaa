//! The wall clock: now, and Unix seconds to and from text (the calendar is chrono's).

use chrono::{DateTime, Utc};

/// `epoch` (Unix seconds) in UTC, in a `strftime` format (`%Y-%m-%d %H:%M:%S`); the number
/// itself for a time chrono cannot represent.
pub fn format_utc(epoch: i64, fmt: &str) -> String {
    DateTime::<Utc>::from_timestamp(epoch, 0).map_or_else(|| epoch.to_string(), |t| t.format(fmt).to_string())
}

/// Unix seconds of an RFC 3339 time as GitHub writes them: `2019-05-15T15:20:33Z`,
/// `2018-06-19T19:03:12-07:00`, with optional fractions of a second.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp())
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let f = "%Y-%m-%d %H:%M:%S";
        assert_eq!(format_utc(0, f), "1970-01-01 00:00:00");
        assert_eq!(format_utc(20_418 * 86_400, f), "2025-11-26 00:00:00");
        assert_eq!(format_utc(86_400 + 3661, f), "1970-01-02 01:01:01");
        assert_eq!(format_utc(-1, f), "1969-12-31 23:59:59");
        assert_eq!(format_utc(i64::MAX, f), i64::MAX.to_string());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2019-05-15T15:20:33Z"), Some(1_557_933_633));
        assert_eq!(parse_rfc3339("2018-06-19T19:03:12-07:00"), Some(1_529_460_192));
        assert_eq!(parse_rfc3339("2019-05-15T15:20:33.123+00:00"), Some(1_557_933_633));
        for bad in
            ["", "2019-05-15", "2019-13-15T15:20:33Z", "2019-05-15T15:20:33", "2019-05-15T15:20:33Zjunk", "２０１９"]
        {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
