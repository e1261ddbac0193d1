//! Wall-clock time as seen by Forge, injectable so tests can move time instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Microseconds since the epoch, now, from the system clock: the time stamp of an output
/// line (ordering lines, not deciding anything, so it is not injectable).
#[must_use]
pub fn now_us() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// A source of the current time in whole seconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Seconds since 1970-01-01T00:00:00Z.
    fn now(&self) -> i64;

    /// Milliseconds since the epoch, for waking up on time (the scheduler); clocks that only
    /// know seconds say the start of the second.
    fn now_ms(&self) -> i64 {
        self.now().saturating_mul(1000)
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn now_ms(&self) -> i64 {
        now_us() / 1000
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock showing `now` (seconds since the epoch).
    #[must_use]
    pub fn new(now: i64) -> Self {
        Self(AtomicI64::new(now))
    }

    /// Moves the clock forward by `secs` seconds.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared clock handle; defaults to the system clock.
#[derive(Debug, Clone)]
pub struct ClockHandle(pub Arc<dyn Clock>);

impl Default for ClockHandle {
    fn default() -> Self {
        Self(Arc::new(SystemClock))
    }
}

impl ClockHandle {
    /// Seconds since the epoch.
    #[must_use]
    pub fn now(&self) -> i64 {
        self.0.now()
    }

    /// Milliseconds since the epoch.
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
}

/// Formats Unix seconds as RFC 3339 in UTC with whole seconds: `2025-05-21T02:35:12Z`.
#[must_use]
pub fn rfc3339(secs: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_whole_seconds_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_747_794_912), "2025-05-21T02:35:12Z");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(100);
        assert_eq!(c.now(), 100);
        c.advance(5);
        assert_eq!(c.now(), 105);
    }
}
