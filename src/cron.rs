//! When schedules fire: cron expressions, `@every` intervals and one-off times, in IANA time
//! zones, as pure functions of Unix seconds (the scheduler's clock is injectable, so every rule
//! here is tested by moving time, never by waiting).
//!
//! Syntax: 5-field cron (minute granularity; Vixie rules, so day-of-month and day-of-week
//! match when either does), names (`MON`, `JAN`), `L` (last day of the month), `5#3` (third
//! Friday), `5#L`; the descriptors `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@hourly` and `@every <duration>`; and an upstream-compatible `CRON_TZ=<Zone> ` (or `TZ=`)
//! prefix, which beats the schedule's own zone, which beats the server's default.
//!
//! DST follows croner: a wall-clock time that a spring-forward gap skips runs at the first
//! valid instant after the gap; a time that a fall-back fold repeats runs once (its first
//! instance). `@every` counts from the Unix epoch (`@every 1h` fires on the hour, UTC), so its
//! occurrences are the same instants whenever the server starts: that is what lets the
//! scheduler tell one occurrence from another across restarts.

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The most occurrences counted when reporting missed runs (beyond it: "at least").
pub const COUNT_LIMIT: u64 = 100_000;

/// A parsed schedule: when it fires.
#[derive(Debug, Clone)]
pub struct Spec {
    kind: Kind,
    zone: TimeZone,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(Box<Cron>),
    /// Every `n` seconds, counted from the epoch.
    Every(i64),
    /// Once, at this instant.
    At(i64),
}

/// The time zone named `name` (IANA, from the embedded database); `""` is UTC.
///
/// # Errors
/// A message naming the unknown zone.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}"))
}

/// Parses a cron expression (with an optional `CRON_TZ=` prefix) in `default_zone`.
///
/// # Errors
/// What is wrong with it, for a `Cron: <detail>` message.
pub fn parse(expr: &str, default_zone: &TimeZone) -> Result<Spec, String> {
    let expr = expr.trim();
    let (zone, rest) = match expr
        .strip_prefix("CRON_TZ=")
        .or_else(|| expr.strip_prefix("TZ="))
    {
        Some(tail) => {
            let (name, rest) = tail
                .split_once(char::is_whitespace)
                .ok_or_else(|| "a time zone prefix needs an expression after it".to_owned())?;
            (zone(name)?, rest.trim())
        }
        None => (default_zone.clone(), expr),
    };
    if rest.is_empty() {
        return Err("empty expression".into());
    }
    if let Some(every) = rest.strip_prefix("@every") {
        let secs = crate::backup::parse_duration(every.trim())
            .map_err(|_| format!("{:?} is not a duration like 30s, 5m or 1h30m", every.trim()))?
            .as_secs();
        let secs = i64::try_from(secs).map_err(|_| "the interval is too long".to_owned())?;
        return Ok(Spec {
            kind: Kind::Every(secs),
            zone,
        });
    }
    if rest.split_whitespace().count() != 5 && !rest.starts_with('@') {
        return Err(format!(
            "expected exactly 5 fields (minute hour day-of-month month day-of-week), got {}",
            rest.split_whitespace().count()
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(rest)
        .map_err(|e| e.to_string())?;
    let spec = Spec {
        kind: Kind::Cron(Box::new(cron)),
        zone,
    };
    // A valid pattern that never matches (`0 0 30 2 *`) would make a timer that never fires.
    if spec.next_after(Timestamp::now().as_second()).is_none() {
        return Err("the expression never matches a date".into());
    }
    Ok(spec)
}

/// A one-off schedule at `at` (Unix seconds).
#[must_use]
pub fn once(at: i64) -> Spec {
    Spec {
        kind: Kind::At(at),
        zone: TimeZone::UTC,
    }
}

/// Parses an RFC 3339 time (`2026-12-01T20:00:00Z`, `...+01:00`) into Unix seconds.
///
/// # Errors
/// A message when it is not such a time.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    Timestamp::from_str(text.trim())
        .map(Timestamp::as_second)
        .map_err(|_| format!("{text:?} is not an RFC 3339 time like 2026-12-01T20:00:00Z"))
}

impl Spec {
    /// The first occurrence strictly after `t` (Unix seconds); `None` when there is none.
    #[must_use]
    pub fn next_after(&self, t: i64) -> Option<i64> {
        match &self.kind {
            Kind::At(at) => (*at > t).then_some(*at),
            Kind::Every(n) => t.div_euclid(*n).checked_add(1)?.checked_mul(*n),
            Kind::Cron(cron) => {
                let from = Timestamp::from_second(t).ok()?.to_zoned(self.zone.clone());
                let next = cron.find_next_occurrence(&from, false).ok()?;
                Some(next.timestamp().as_second())
            }
        }
    }

    /// The occurrences in `(after, until]`: the latest and how many (at most
    /// [`COUNT_LIMIT`]).
    #[must_use]
    pub fn between(&self, after: i64, until: i64) -> Option<(i64, u64)> {
        if until <= after {
            return None;
        }
        if let Kind::Every(n) = &self.kind {
            let first = self.next_after(after)?;
            if first > until {
                return None;
            }
            let latest = until.div_euclid(*n) * n;
            let count = u64::try_from((latest - first) / n + 1).unwrap_or(u64::MAX);
            return Some((latest, count.min(COUNT_LIMIT)));
        }
        let (mut t, mut latest, mut count) = (after, None, 0);
        while let Some(next) = self.next_after(t).filter(|&n| n <= until) {
            latest = Some(next);
            count += 1;
            t = next;
            if count >= COUNT_LIMIT {
                // Jump to the end; the latest is then the last one before `until`.
                return Some((self.latest_before(until)?, count));
            }
        }
        latest.map(|l| (l, count))
    }

    fn latest_before(&self, until: i64) -> Option<i64> {
        match &self.kind {
            Kind::Cron(cron) => {
                let from = Timestamp::from_second(until)
                    .ok()?
                    .to_zoned(self.zone.clone());
                let prev = cron.find_previous_occurrence(&from, true).ok()?;
                Some(prev.timestamp().as_second())
            }
            Kind::Every(n) => Some(until.div_euclid(*n) * n),
            Kind::At(at) => (*at <= until).then_some(*at),
        }
    }

    /// The next `n` occurrences after `t`, as RFC 3339 times with the schedule's UTC offset.
    #[must_use]
    pub fn upcoming(&self, t: i64, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            let Some(next) = self.next_after(at) else {
                break;
            };
            out.push(self.format(next));
            at = next;
        }
        out
    }

    /// `t` as RFC 3339 in the schedule's zone: `2026-03-29T03:00:00+02:00`.
    #[must_use]
    pub fn format(&self, t: i64) -> String {
        Timestamp::from_second(t).map_or_else(
            |_| t.to_string(),
            |ts| {
                ts.to_zoned(self.zone.clone())
                    .strftime("%Y-%m-%dT%H:%M:%S%:z")
                    .to_string()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        parse_instant(text).expect("test time")
    }

    fn spec(expr: &str, zone_name: &str) -> Spec {
        parse(expr, &zone(zone_name).expect("zone")).expect("valid expression")
    }

    /// Every occurrence in `[from, to)`, as zoned RFC 3339.
    fn runs(s: &Spec, from: &str, to: &str) -> Vec<String> {
        let (mut t, end, mut out) = (at(from) - 1, at(to), Vec::new());
        while let Some(next) = s.next_after(t).filter(|&n| n < end) {
            out.push(s.format(next));
            t = next;
        }
        out
    }

    #[test]
    fn daily_0230_runs_once_on_spring_forward_days_in_two_zones() {
        let berlin = spec("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            runs(&berlin, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
        );
        let new_york = spec("30 2 * * *", "America/New_York");
        assert_eq!(
            runs(&new_york, "2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z"),
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
        );
    }

    #[test]
    fn daily_0230_runs_once_on_fall_back_days_in_two_zones() {
        let berlin = spec("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            runs(&berlin, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // New York falls back from 02:00 to 01:00: a 01:30 run is the repeated one.
        let new_york = spec("30 1 * * *", "America/New_York");
        assert_eq!(
            runs(&new_york, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
    }

    #[test]
    fn hourly_runs_keep_real_hours_across_dst() {
        let berlin = spec("0 * * * *", "Europe/Berlin");
        // The fall-back day has 25 hours, each run once.
        let fall = runs(&berlin, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z");
        assert_eq!(fall.len(), 25, "{fall:?}");
        let spring = runs(&berlin, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z");
        assert_eq!(spring.len(), 23, "{spring:?}");
    }

    #[test]
    fn month_ends_last_day_and_leap_days() {
        let last = spec("0 12 L * *", "UTC");
        assert_eq!(
            runs(&last, "2028-01-15T00:00:00Z", "2028-05-01T00:00:00Z"),
            [
                "2028-01-31T12:00:00+00:00",
                "2028-02-29T12:00:00+00:00",
                "2028-03-31T12:00:00+00:00",
                "2028-04-30T12:00:00+00:00"
            ]
        );
        let thirty_first = spec("0 0 31 * *", "UTC");
        assert_eq!(
            runs(
                &thirty_first,
                "2026-01-01T00:00:00Z",
                "2026-06-01T00:00:00Z"
            ),
            [
                "2026-01-31T00:00:00+00:00",
                "2026-03-31T00:00:00+00:00",
                "2026-05-31T00:00:00+00:00"
            ]
        );
        let leap = spec("0 6 29 2 *", "Asia/Tokyo");
        assert_eq!(
            runs(&leap, "2026-01-01T00:00:00Z", "2033-01-01T00:00:00Z"),
            ["2028-02-29T06:00:00+09:00", "2032-02-29T06:00:00+09:00"]
        );
    }

    #[test]
    fn nth_weekday_and_names() {
        let third_friday = spec("0 9 * * 5#3", "Europe/Berlin");
        assert_eq!(
            runs(
                &third_friday,
                "2026-01-01T00:00:00Z",
                "2026-04-01T00:00:00Z"
            ),
            [
                "2026-01-16T09:00:00+01:00",
                "2026-02-20T09:00:00+01:00",
                "2026-03-20T09:00:00+01:00"
            ]
        );
        let last_monday = spec("0 9 * JAN-FEB MON#L", "UTC");
        assert_eq!(
            runs(&last_monday, "2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z"),
            ["2026-01-26T09:00:00+00:00", "2026-02-23T09:00:00+00:00"]
        );
    }

    #[test]
    fn descriptors_every_and_zone_prefix() {
        let t = at("2026-06-15T10:20:30Z");
        assert_eq!(
            spec("@hourly", "UTC").next_after(t),
            Some(at("2026-06-15T11:00:00Z"))
        );
        assert_eq!(
            spec("@daily", "UTC").next_after(t),
            Some(at("2026-06-16T00:00:00Z"))
        );
        assert_eq!(
            spec("@every 1s", "UTC").next_after(t),
            Some(t + 1),
            "every second"
        );
        assert_eq!(
            spec("@every 1h30m", "UTC").next_after(t),
            Some(at("2026-06-15T10:30:00Z"))
        );
        // The prefix beats the default zone.
        let tokyo = spec("CRON_TZ=Asia/Tokyo 0 9 * * *", "Europe/Berlin");
        assert_eq!(tokyo.next_after(t), Some(at("2026-06-16T00:00:00Z")));
        assert_eq!(
            spec("TZ=UTC 0 9 * * *", "Asia/Tokyo").next_after(t),
            Some(at("2026-06-16T09:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        let utc = TimeZone::UTC;
        for (expr, part) in [
            ("", "empty"),
            ("* * * *", "5 fields"),
            ("0 * * * * *", "5 fields"),
            ("61 * * * *", ""),
            ("0 0 30 2 *", "never matches"),
            ("@every 0s", "duration"),
            ("@every soon", "duration"),
            ("CRON_TZ=Mars/Olympus 0 * * * *", "unknown time zone"),
            ("CRON_TZ=UTC", "expression after it"),
            ("@fortnightly", ""),
        ] {
            let err = parse(expr, &utc).expect_err(expr);
            assert!(err.contains(part), "{expr}: {err}");
        }
    }

    #[test]
    fn counts_missed_runs_between_two_times() {
        let s = spec("*/15 * * * *", "UTC");
        let (from, to) = (at("2026-06-15T10:00:00Z"), at("2026-06-15T12:00:00Z"));
        assert_eq!(s.between(from, to), Some((to, 8)));
        assert_eq!(s.between(to, to), None);
        let every = spec("@every 10s", "UTC");
        assert_eq!(every.between(100, 155), Some((150, 5)));
        assert_eq!(every.between(100, 109), None);
        let big = spec("* * * * *", "UTC");
        let (latest, count) = big.between(0, 400 * 86_400).expect("runs");
        assert_eq!((latest, count), (400 * 86_400, COUNT_LIMIT));
        assert_eq!(once(50).between(0, 100), Some((50, 1)));
        assert_eq!(once(50).between(50, 100), None);
    }

    /// A clock that jumps back lands on the same occurrences again, and one that jumps ahead
    /// sees the skipped ones as a count: the scheduler's cursor makes both safe.
    #[test]
    fn clock_jumps_give_the_same_occurrences() {
        let s = spec("0 * * * *", "Europe/Berlin");
        let t = at("2026-06-15T10:20:00Z");
        let ahead = s.next_after(t).expect("next");
        let back = s.next_after(t - 7200).expect("next");
        assert_eq!(ahead - back, 2 * 3600);
        assert_eq!(s.between(t, t + 5 * 3600), Some((ahead + 4 * 3600, 5)));
        assert!(zone("Europe/Berlin").is_ok() && zone("").is_ok());
        assert_eq!(
            upcoming_of("@every 1m"),
            ["2026-06-15T10:21:00+00:00", "2026-06-15T10:22:00+00:00"]
        );
    }

    fn upcoming_of(expr: &str) -> Vec<String> {
        spec(expr, "UTC").upcoming(at("2026-06-15T10:20:30Z"), 2)
    }
}
