//! Failed authentication attempts per client IP, for the admin listener (on by
//! default) and the data plane (`[proxy] max_failed_auth_per_minute`, off by
//! default). A fixed one-minute window per address: past the limit, the address is
//! refused before any key lookup until the minute ends.

use std::net::IpAddr;

use dashmap::DashMap;

/// Addresses tracked at most; past this, addresses whose minute is over are dropped.
const TRACKED: usize = 100_000;

/// Failures per client IP in the current minute.
#[derive(Debug, Default)]
pub struct Failures {
    per_ip: DashMap<IpAddr, (i64, u32)>,
}

impl Failures {
    fn minute(now_ms: i64) -> i64 {
        now_ms.div_euclid(60_000)
    }

    /// Whole seconds until `ip` may try again, when it has had `limit` failures this
    /// minute (`limit` 0 = unlimited).
    pub fn blocked(&self, ip: IpAddr, limit: u32, now_ms: i64) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        let (minute, count) = *self.per_ip.get(&ip)?;
        (minute == Self::minute(now_ms) && count >= limit)
            .then(|| u64::try_from(60 - now_ms.div_euclid(1000).rem_euclid(60)).unwrap_or(60))
    }

    /// Counts one failure for `ip`.
    pub fn record(&self, ip: IpAddr, now_ms: i64) {
        let minute = Self::minute(now_ms);
        let mut entry = self.per_ip.entry(ip).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        drop(entry);
        if self.per_ip.len() > TRACKED {
            self.per_ip.retain(|_, (m, _)| *m == minute);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_at_the_limit_until_its_minute_ends() {
        let failures = Failures::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let t0 = 120_000 + 15_000; // 15 s into a minute
        for _ in 0..3 {
            assert_eq!(failures.blocked(a, 3, t0), None);
            failures.record(a, t0);
        }
        assert_eq!(failures.blocked(a, 3, t0), Some(45));
        assert_eq!(failures.blocked(a, 4, t0), None, "a higher limit after a reload");
        assert_eq!(failures.blocked(a, 0, t0), None, "0 = unlimited");
        assert_eq!(failures.blocked(b, 3, t0), None, "per address");
        assert_eq!(
            failures.blocked(a, 3, 180_000),
            None,
            "the next minute starts afresh"
        );
        failures.record(a, 180_000);
        assert_eq!(failures.blocked(a, 1, 180_000), Some(60));
    }
}
