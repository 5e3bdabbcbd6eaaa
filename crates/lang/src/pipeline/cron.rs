//! `on.schedule` times: a five-field cron expression (minute hour day-of-month month
//! day-of-week, as crontab and GitHub) in an IANA time zone. Parsing and the calendar are
//! croner's and chrono-tz's; this module only fixes the dialect and speaks Unix seconds, so
//! callers need no date type. Pure: the caller says what "now" is.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};

/// The zone of a schedule that names none.
pub const DEFAULT_ZONE: &str = "UTC";

/// A checked cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Cron {
    cron: croner::Cron,
    zone: Tz,
}

/// Checks a cron expression alone; `Err` says what is wrong, for a diagnostic.
pub fn check_expr(expr: &str) -> Result<croner::Cron, String> {
    let fields = expr.split_whitespace().count();
    // croner would take six or seven fields (seconds, years): crontab and GitHub take five.
    if !expr.trim_start().starts_with('@') && fields != 5 {
        return Err(format!(
            "a cron expression has five fields (minute hour day-of-month month day-of-week), found {fields}"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// Checks an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn check_zone(zone: &str) -> Result<Tz, String> {
    Tz::from_str(zone).map_err(|_| format!("unknown time zone `{zone}`"))
}

impl Cron {
    pub fn new(expr: &str, zone: &str) -> Result<Cron, String> {
        Ok(Cron { cron: check_expr(expr)?, zone: check_zone(zone)? })
    }

    /// The first time strictly after `after` (Unix seconds) the expression names, in its
    /// zone. A local time that a DST change skips runs once, at the end of the gap (02:30 on
    /// the spring change in Berlin runs at 03:00 CEST); one it repeats runs once. `None` when there is none (a 30th of February).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start = DateTime::<Utc>::from_timestamp(after, 0)?.with_timezone(&self.zone);
        self.cron.find_next_occurrence(&start, false).ok().map(|t| t.timestamp())
    }

    /// `t` in this schedule's zone, for people: `2026-03-30 03:00 CEST`.
    pub fn local(&self, t: i64) -> String {
        match DateTime::<Utc>::from_timestamp(t, 0) {
            Some(u) => u.with_timezone(&self.zone).format("%Y-%m-%d %H:%M %Z").to_string(),
            None => t.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn five_fields_only_and_bad_fields_are_refused() {
        assert!(check_expr("0 3 * * 1-5").is_ok());
        assert!(check_expr("*/15 * * * *").is_ok());
        assert!(check_expr("@daily").is_ok());
        assert!(check_expr("0 0 3 * * *").unwrap_err().contains("five fields"));
        assert!(check_expr("0 3 * *").unwrap_err().contains("found 4"));
        assert!(check_expr("61 3 * * *").is_err());
        assert!(check_expr("0 3 * * funday").is_err());
        assert!(check_zone("Europe/Berlin").is_ok());
        assert!(check_zone("Mars/Olympus").is_err());
    }

    #[test]
    fn berlin_at_three_follows_daylight_saving_time() {
        let c = Cron::new("0 3 * * *", "Europe/Berlin").unwrap();
        // Spring forward on 2026-03-29 (02:00 CET -> 03:00 CEST): 03:00 is 02:00 UTC before
        // the change and 01:00 UTC after it.
        let mut t = utc("2026-03-27T12:00:00Z");
        let mut got = Vec::new();
        for _ in 0..3 {
            t = c.next_after(t).unwrap();
            got.push(t);
        }
        assert_eq!(got, [utc("2026-03-28T02:00:00Z"), utc("2026-03-29T01:00:00Z"), utc("2026-03-30T01:00:00Z")]);
        assert_eq!(c.local(got[1]), "2026-03-29 03:00 CEST");
        // Fall back on 2026-10-25 (03:00 CEST -> 02:00 CET): 03:00 happens once, at 02:00 UTC.
        let a = c.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
        let b = c.next_after(a).unwrap();
        assert_eq!((a, b), (utc("2026-10-25T02:00:00Z"), utc("2026-10-26T02:00:00Z")));
        assert_eq!(c.local(a), "2026-10-25 03:00 CET");
    }

    #[test]
    fn a_time_the_spring_change_skips_runs_once_that_day() {
        let c = Cron::new("30 2 * * *", "Europe/Berlin").unwrap();
        let a = c.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        let b = c.next_after(a).unwrap();
        // 02:30 does not exist on 2026-03-29; the run that day is right after the gap.
        assert_eq!((a, c.local(a).as_str()), (utc("2026-03-29T01:00:00Z"), "2026-03-29 03:00 CEST"));
        assert_eq!(b, utc("2026-03-30T00:30:00Z"));
    }

    #[test]
    fn weekdays_in_utc() {
        let c = Cron::new("0 3 * * 1-5", DEFAULT_ZONE).unwrap();
        // 2026-12-05 is a Saturday: the next is Monday.
        assert_eq!(c.next_after(utc("2026-12-05T06:00:00Z")), Some(utc("2026-12-07T03:00:00Z")));
        assert_eq!(c.next_after(utc("2026-12-07T02:59:59Z")), Some(utc("2026-12-07T03:00:00Z")));
        assert_eq!(c.next_after(utc("2026-12-07T03:00:00Z")), Some(utc("2026-12-08T03:00:00Z")));
    }
}
