//! Quota periods: which window a moment falls in. Pure date math.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};

/// How a key's budget renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Calendar months, UTC.
    Month,
    /// Consecutive windows of N days, the first starting when the key was created.
    Days(u32),
}

/// A half-open window `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First instant of the window.
    pub start: DateTime<Utc>,
    /// First instant after the window.
    pub end: DateTime<Utc>,
}

impl Period {
    /// Parses `month` or `<N>d` (1 ≤ N ≤ 3660).
    pub fn parse(s: &str) -> Option<Self> {
        if s == "month" {
            return Some(Self::Month);
        }
        let days: u32 = s.strip_suffix('d')?.parse().ok()?;
        (1..=3660).contains(&days).then_some(Self::Days(days))
    }

    /// The window containing `now`, for a key created at `anchor`.
    pub fn window(self, anchor: DateTime<Utc>, now: DateTime<Utc>) -> Window {
        match self {
            Self::Month => {
                let start = month_start(now.year(), now.month());
                let (y, m) = if now.month() == 12 {
                    (now.year() + 1, 1)
                } else {
                    (now.year(), now.month() + 1)
                };
                Window {
                    start,
                    end: month_start(y, m),
                }
            }
            Self::Days(days) => {
                let len = Duration::days(i64::from(days));
                let elapsed = (now - anchor).max(Duration::zero());
                let k = elapsed.num_seconds() / len.num_seconds();
                let start = anchor + len * i32::try_from(k).unwrap_or(i32::MAX);
                Window {
                    start,
                    end: start + len,
                }
            }
        }
    }
}

fn month_start(year: i32, month: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn month_windows_are_calendar_months() {
        let w = Period::Month.window(t("2020-01-01T00:00:00Z"), t("2026-12-31T23:59:59Z"));
        assert_eq!(w.start, t("2026-12-01T00:00:00Z"));
        assert_eq!(w.end, t("2027-01-01T00:00:00Z"));
        let w = Period::Month.window(t("2020-01-01T00:00:00Z"), t("2026-02-01T00:00:00Z"));
        assert_eq!(
            (w.start, w.end),
            (t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn day_windows_are_anchored_at_creation() {
        let anchor = t("2026-01-10T12:00:00Z");
        let w = Period::Days(30).window(anchor, t("2026-02-09T12:00:00Z"));
        assert_eq!(w.start, t("2026-02-09T12:00:00Z"));
        assert_eq!(w.end, t("2026-03-11T12:00:00Z"));
        let w = Period::Days(30).window(anchor, t("2026-02-09T11:59:59Z"));
        assert_eq!(w.start, anchor);
        // A clock behind the key's creation still yields the first window.
        assert_eq!(
            Period::Days(30).window(anchor, t("2026-01-01T00:00:00Z")).start,
            anchor
        );
    }

    #[test]
    fn parse_accepts_month_and_days() {
        assert_eq!(Period::parse("month"), Some(Period::Month));
        assert_eq!(Period::parse("30d"), Some(Period::Days(30)));
        for bad in ["0d", "d", "30", "monthly", "-1d", "99999d"] {
            assert_eq!(Period::parse(bad), None, "{bad}");
        }
    }
}
