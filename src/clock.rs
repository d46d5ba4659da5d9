//! Wall-clock time, behind a trait so tests can move time by hand.
//!
//! Everything that reads the time (key expiry, quota periods, cache TTLs) asks a
//! [`Clock`]; nothing else calls `SystemTime::now`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};

/// A source of the current UTC time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// The current time in milliseconds since the Unix epoch (cheap; used for TTLs).
    fn now_millis(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// As `Utc::now`, with the day's date made once a day per thread: `Utc::now`
    /// turns the day number into a calendar date on every call, and every request
    /// reads the time.
    #[allow(clippy::disallowed_methods, reason = "this is the clock the rest reads")]
    fn now(&self) -> DateTime<Utc> {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(since_epoch)
            .unwrap_or_else(Utc::now)
    }

    /// Without making a date (a calendar computation, then its reverse).
    #[allow(clippy::disallowed_methods, reason = "this is the clock the rest reads")]
    fn now_millis(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The time `since` the Unix epoch, the date taken from this thread's memory of the
/// last day it made; `None` past what a `DateTime` holds.
fn since_epoch(since: std::time::Duration) -> Option<DateTime<Utc>> {
    use std::cell::Cell;
    thread_local! {
        static DAY: Cell<(i64, NaiveDate)> = const { Cell::new((i64::MIN, NaiveDate::MIN)) };
    }
    const DAY_SECONDS: i64 = 86_400;
    let seconds = i64::try_from(since.as_secs()).ok()?;
    let (day, of_day) = (seconds.div_euclid(DAY_SECONDS), seconds.rem_euclid(DAY_SECONDS));
    let (known, mut date) = DAY.get();
    if known != day {
        date = DateTime::from_timestamp(day.checked_mul(DAY_SECONDS)?, 0)?.date_naive();
        DAY.set((day, date));
    }
    let time =
        NaiveTime::from_num_seconds_from_midnight_opt(u32::try_from(of_day).ok()?, since.subsec_nanos())?;
    Some(date.and_time(time).and_utc())
}

/// A clock that stands still until a test moves it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            millis: Arc::new(AtomicI64::new(start.timestamp_millis())),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        self.millis.fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        self.millis.store(to.timestamp_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.millis.load(Ordering::SeqCst))
            .single()
            .unwrap_or_default()
    }

    fn now_millis(&self) -> i64 {
        self.millis.load(Ordering::SeqCst)
    }
}

/// The clock handle passed around the crate.
pub type SharedClock = Arc<dyn Clock>;

/// `at` in unix nanoseconds, for times kept as one integer; outside 1677-2262 (what
/// an `i64` holds) the nearest end, which orders the same against any time in that span.
pub fn unix_nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt()
        .unwrap_or(if at.timestamp() < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_remembered_day_gives_the_dates_a_fresh_one_does() {
        // Either side of midnights, one day twice in a row (its date remembered),
        // back to an earlier day (made again), a leap day, the last second of 2099.
        let seconds = [
            0,
            86_399,
            86_400,
            1_700_000_000,
            1_700_000_001,
            1_699_999_000,
            1_700_006_399,
            1_700_006_400,
            951_782_400,
            4_102_444_799,
        ];
        for s in seconds {
            for nanos in [0, 1, 999_999_999] {
                let secs = u64::try_from(s).expect("positive");
                assert_eq!(
                    since_epoch(Duration::new(secs, nanos)),
                    DateTime::from_timestamp(s, nanos),
                    "{s}.{nanos}"
                );
            }
        }
    }

    #[test]
    fn past_what_a_date_holds_there_is_none_and_the_clock_reads_the_time() {
        assert_eq!(since_epoch(Duration::MAX), None);
        assert_eq!(since_epoch(Duration::from_secs(1 << 50)), None);
        let (ours, theirs) = (SystemClock.now(), Utc::now());
        assert!(
            (theirs - ours).num_milliseconds().abs() < 1_000,
            "{ours} vs {theirs}"
        );
    }
}
