//! Per-key rate limits: a short-window limit beside the period quota.
//!
//! A [`Rate`] of `count` per window is a token bucket holding `count` that refills
//! continuously, kept in GCRA form: one timestamp per key, the *theoretical arrival
//! time* (`tat`) at which the bucket will be full again. No fixed window, so no edge
//! where twice the rate gets through.
//!
//! Embedded mode keeps `tat` in an atomic per key. Redis mode keeps one `tat` per key
//! in Redis, on Redis's clock, and replicas lease tokens from it with a server-side
//! script (`LEASE`): at most the tokens that accrue in [`LEASE_TTL_MICROS`] per
//! call, spendable for that long. Every token admitted anywhere was granted by the
//! shared bucket at most [`LEASE_TTL_MICROS`] before it is spent, so over any span of
//! time all replicas together admit at most `count` + the rate × (span +
//! [`LEASE_TTL_MICROS`]): whatever the number of replicas, the overshoot is bounded
//! by one lease period's worth of the rate (rounded up to one request). A busy key
//! costs one Redis call per lease; a refused key is refused in-process until the
//! bucket has a token again. While Redis is unreachable each replica limits on its
//! own (up to R × the rate with R replicas) rather than refuse or admit everything.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use dashmap::DashMap;
use redis::Script;
use uuid::Uuid;

use crate::cache::redis::{Error, Redis};
use crate::keys::Rate;

/// How long leased tokens stay spendable, and how much of the rate one lease asks for.
pub const LEASE_TTL_MICROS: i64 = 100_000;

/// Most tokens one lease asks for.
const MAX_LEASE: u64 = 64;

/// One step of the bucket: what taking up to `want` tokens at `now` gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Tokens granted (0: refused).
    pub granted: u64,
    /// The bucket's `tat` after the step.
    pub tat: i64,
    /// Tokens left after the step.
    pub remaining: u64,
    /// When refused: microseconds until a token is available.
    pub wait: i64,
}

/// Takes up to `want` (≥ 1) tokens from the bucket of `rate` whose theoretical
/// arrival time is `tat`, at `now` (all in microseconds). Pure.
pub fn take(rate: Rate, tat: i64, now: i64, want: u64) -> Take {
    let interval = rate.interval_micros();
    let tolerance = i64::from(rate.count - 1) * interval;
    let base = tat.max(now);
    let used = base - now;
    if used > tolerance {
        return Take {
            granted: 0,
            tat,
            remaining: 0,
            wait: used - tolerance,
        };
    }
    let available = u64::try_from((tolerance - used) / interval).unwrap_or_default() + 1;
    let granted = want.clamp(1, available);
    Take {
        granted,
        tat: base + i64::try_from(granted).unwrap_or(i64::MAX) * interval,
        remaining: available - granted,
        wait: 0,
    }
}

/// An admitted request: where the key's bucket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The bucket's size (the rate's count).
    pub limit: u64,
    /// Requests that could follow at once (approximate in Redis mode: the shared
    /// bucket as last seen plus this replica's unused lease).
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset: i64,
}

/// A refused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The bucket's size (the rate's count).
    pub limit: u64,
    /// Microseconds until a request would be admitted.
    pub retry_after: i64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// The bucket's `tat` (embedded mode, or while Redis is unreachable).
    tat: AtomicI64,
    /// Tokens leased from Redis and not spent yet.
    lease: AtomicU64,
    /// Until when the lease may be spent.
    lease_until: AtomicI64,
    /// Until when the shared bucket is known to be empty.
    refused_until: AtomicI64,
    /// Tokens left in the shared bucket after the last lease.
    shared_remaining: AtomicU64,
    /// One lease request in flight per key.
    leasing: tokio::sync::Mutex<()>,
}

/// The rate limiter of this process.
#[derive(Default)]
pub struct Limiter {
    buckets: DashMap<Uuid, Arc<Bucket>>,
    redis: Option<Arc<Redis>>,
}

impl Limiter {
    /// A limiter, in-process or over `redis`.
    pub fn new(redis: Option<Arc<Redis>>) -> Self {
        Self {
            buckets: DashMap::new(),
            redis,
        }
    }

    /// Admits one request of key `id` under `rate` at `now` (unix microseconds).
    ///
    /// # Errors
    /// [`Limited`] when the key's bucket is empty.
    pub async fn admit(&self, id: Uuid, rate: Rate, now: i64) -> Result<Admitted, Limited> {
        let bucket = self.bucket(id);
        let limit = u64::from(rate.count);
        let Some(redis) = &self.redis else {
            return admit_local(&bucket, rate, now);
        };
        loop {
            let refused_until = bucket.refused_until.load(Ordering::Acquire);
            if refused_until > now {
                return Err(Limited {
                    limit,
                    retry_after: refused_until - now,
                });
            }
            if bucket.lease_until.load(Ordering::Acquire) > now && take_one(&bucket.lease) {
                let remaining =
                    bucket.shared_remaining.load(Ordering::Relaxed) + bucket.lease.load(Ordering::Relaxed);
                let remaining = remaining.min(limit);
                return Ok(Admitted {
                    limit,
                    remaining,
                    reset: rate.interval_micros() * remaining_i64(limit - remaining),
                });
            }
            let _turn = bucket.leasing.lock().await;
            if bucket.refused_until.load(Ordering::Acquire) > now
                || bucket.lease_until.load(Ordering::Acquire) > now
                    && bucket.lease.load(Ordering::Acquire) > 0
            {
                continue; // another request just leased, or learnt the bucket is empty
            }
            match lease(redis, id, rate, lease_size(rate)).await {
                Ok(step) if step.granted == 0 => {
                    bucket.refused_until.store(now + step.wait, Ordering::Release);
                }
                Ok(step) => {
                    // This request spends one of the tokens now.
                    bucket.shared_remaining.store(step.remaining, Ordering::Relaxed);
                    bucket.lease.store(step.granted - 1, Ordering::Release);
                    bucket
                        .lease_until
                        .store(now + LEASE_TTL_MICROS, Ordering::Release);
                    let remaining = step.remaining + step.granted - 1;
                    return Ok(Admitted {
                        limit,
                        remaining: remaining.min(limit),
                        reset: step.tat,
                    });
                }
                Err(e) => {
                    if !matches!(e, Error::Down) {
                        tracing::debug!(error = %e, "rate limit lease failed; limiting in-process");
                    }
                    return admit_local(&bucket, rate, now);
                }
            }
        }
    }

    fn bucket(&self, id: Uuid) -> Arc<Bucket> {
        if let Some(b) = self.buckets.get(&id) {
            return Arc::clone(&b);
        }
        Arc::clone(&self.buckets.entry(id).or_default())
    }

    /// Forgets buckets that are full again at `now` (unix microseconds) and hold no
    /// lease: they would admit the same as a fresh one.
    pub fn sweep(&self, now: i64) {
        self.buckets.retain(|_, b| {
            b.tat.load(Ordering::Relaxed) > now
                || b.refused_until.load(Ordering::Relaxed) > now
                || b.lease_until.load(Ordering::Relaxed) > now
                || Arc::strong_count(b) > 1
        });
    }

    /// Keys with a bucket in memory.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key has a bucket in memory.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

fn remaining_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Takes one token from `tokens` if there is one.
fn take_one(tokens: &AtomicU64) -> bool {
    tokens
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

/// The in-process bucket: one compare-and-swap on `tat`.
fn admit_local(bucket: &Bucket, rate: Rate, now: i64) -> Result<Admitted, Limited> {
    let limit = u64::from(rate.count);
    let mut tat = bucket.tat.load(Ordering::Acquire);
    loop {
        let step = take(rate, tat, now, 1);
        if step.granted == 0 {
            return Err(Limited {
                limit,
                retry_after: step.wait,
            });
        }
        match bucket
            .tat
            .compare_exchange_weak(tat, step.tat, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                return Ok(Admitted {
                    limit,
                    remaining: step.remaining,
                    reset: step.tat - now,
                });
            }
            Err(current) => tat = current,
        }
    }
}

/// Tokens one lease asks for: what accrues in [`LEASE_TTL_MICROS`], at least 1.
fn lease_size(rate: Rate) -> u64 {
    let accrued = LEASE_TTL_MICROS / rate.interval_micros();
    u64::try_from(accrued).unwrap_or_default().clamp(1, MAX_LEASE)
}

/// The bucket step of [`take`] on Redis's clock, atomically. `ARGV`: interval,
/// tolerance, want (all µs / tokens). Returns `{granted, tat, remaining, wait}`;
/// the key expires when the bucket is full again.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = math.max(tat, now)
local used = base - now
if used > tolerance then
  return {0, tat, 0, used - tolerance}
end
local available = math.floor((tolerance - used) / interval) + 1
local granted = math.max(1, math.min(want, available))
tat = base + granted * interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1)
return {granted, tat - now, available - granted, 0}
",
    )
});

/// Leases up to `want` tokens of key `id`'s shared bucket. The returned `tat` is
/// relative: microseconds from Redis's now until the bucket is full.
async fn lease(redis: &Redis, id: Uuid, rate: Rate, want: u64) -> Result<Take, Error> {
    let key = redis.key("rate", &id.to_string());
    // The script's `tat` is relative: microseconds from now until the bucket is full.
    let interval = rate.interval_micros();
    let tolerance = i64::from(rate.count - 1) * interval;
    let (granted, tat, remaining, wait): (u64, i64, u64, i64) = redis
        .call(|mut c| async move {
            LEASE
                .key(key)
                .arg(interval)
                .arg(tolerance)
                .arg(want)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok(Take {
        granted,
        tat: if granted == 0 { 0 } else { tat },
        remaining,
        wait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn rate(s: &str) -> Rate {
        Rate::parse(s).expect("a valid rate")
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_one_per_interval() {
        let r = rate("5/s");
        let mut tat = 0;
        let now = 1_000 * S;
        for left in (0..5).rev() {
            let step = take(r, tat, now, 1);
            assert_eq!((step.granted, step.remaining), (1, left));
            tat = step.tat;
        }
        let refused = take(r, tat, now, 1);
        assert_eq!(refused.granted, 0);
        assert_eq!(refused.wait, S / 5, "the next token comes one interval later");
        assert_eq!(take(r, tat, now + S / 5 - 1, 1).granted, 0);
        assert_eq!(take(r, tat, now + S / 5, 1).granted, 1);
        // A whole window later the bucket is full again: five at once.
        let full = take(r, tat, now + S, 5);
        assert_eq!((full.granted, full.remaining), (5, 0));
    }

    #[test]
    fn no_window_edge_admits_twice_the_rate() {
        // Over any span of one window, at most count + (span × rate) are admitted.
        let r = rate("10/s");
        let mut tat = 0;
        let mut admitted = Vec::new();
        let start = 50 * S;
        for step_ms in 0..3_000 {
            let now = start + step_ms * 1_000;
            let step = take(r, tat, now, 1);
            if step.granted == 1 {
                tat = step.tat;
                admitted.push(now);
            }
        }
        for (i, &t) in admitted.iter().enumerate() {
            let within = admitted[i..].iter().take_while(|&&u| u < t + S).count();
            assert!(within <= 10 + 10, "{within} admitted within one second of {t}");
        }
        assert_eq!(admitted.len(), 10 + 29, "the burst, then 10 a second for 2.9 s");
    }

    #[test]
    fn a_lease_takes_what_is_available_and_no_more() {
        let r = rate("100/s");
        let step = take(r, 0, S, 64);
        assert_eq!((step.granted, step.remaining), (64, 36));
        let next = take(r, step.tat, S, 64);
        assert_eq!((next.granted, next.remaining), (36, 0));
        assert_eq!(take(r, next.tat, S, 64).granted, 0);
        assert_eq!(lease_size(r), 10);
        assert_eq!(lease_size(rate("1/h")), 1);
        assert_eq!(lease_size(rate("999999/s")), MAX_LEASE);
    }

    #[tokio::test]
    async fn the_embedded_limiter_refuses_with_retry_after_and_recovers() {
        let limiter = Limiter::new(None);
        let id = Uuid::new_v4();
        let r = rate("3/m");
        let now = 7_000 * S;
        for left in [2, 1, 0] {
            let ok = limiter.admit(id, r, now).await.expect("admitted");
            assert_eq!((ok.limit, ok.remaining), (3, left));
        }
        let limited = limiter.admit(id, r, now).await.expect_err("limited");
        assert_eq!(limited.retry_after, 20 * S);
        assert!(limiter.admit(id, r, now + 20 * S).await.is_ok());
        assert!(limiter.admit(id, r, now + 20 * S).await.is_err());
        // Other keys have their own bucket.
        assert!(limiter.admit(Uuid::new_v4(), r, now).await.is_ok());
        // Full buckets are forgotten; busy ones are kept.
        limiter.sweep(now + 20 * S);
        assert_eq!(limiter.len(), 1);
        limiter.sweep(now + 200 * S);
        assert!(limiter.is_empty());
    }
}
