//! Quotas: a per-key budget per period.
//!
//! Embedded mode counts in-process with one atomic per key and period. Redis mode
//! leases blocks of budget from a shared counter per key and period with a
//! server-side script and admits from the block in-process: never more than the limit
//! across replicas, about one Redis call per [`redis::MAX_BLOCK`] requests. Leases
//! unused for a second go back to Redis, and all of them at shutdown; a replica that
//! crashes loses its unused leases (at most `MAX_BLOCK` units per key it was
//! serving). It falls back by `[quota] on_redis_error` while Redis is unreachable. Either way counts are written to the admin store in batches (and at
//! shutdown) so a restart or a lost Redis loses no count; the same batch writes each
//! key's last-used time.
//!
//! It does not decide anything else about a request; `auth::decide` calls
//! [`Counters::charge`] only for requests that passed every other check.

pub mod period;
pub mod rate;
pub mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use dashmap::DashMap;
use uuid::Uuid;

pub use period::{Period, Window};

use crate::cache::redis::Redis;
use crate::keys::{CachedKey, KeyRecord};
use crate::store::{self, Store, UsageRow};

/// Whole seconds from `now` until `at`, rounded up (0 when `at` has passed).
pub fn seconds_until(at: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    seconds_until_millis(at, now.timestamp_millis())
}

/// [`seconds_until`] with `now` as unix milliseconds, as [`crate::clock::Clock::now_millis`]
/// reads it without making a date: the one rule both paths answer by.
pub fn seconds_until_millis(at: DateTime<Utc>, now_ms: i64) -> u64 {
    u64::try_from(at.timestamp_millis().saturating_sub(now_ms))
        .unwrap_or_default()
        .div_ceil(1000)
}

/// What quota does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Count in-process against the last known count; push the counts to Redis when it returns.
    Local,
    /// Admit without checking (still counted and pushed later).
    Allow,
    /// Refuse with 503 `quota_unavailable`.
    Deny,
}

/// Quota defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Units per period for keys without their own limit.
    pub limit: u64,
    /// How budgets renew.
    pub period: Period,
    /// Policy while Redis is unreachable.
    pub on_redis_error: OnRedisError,
}

/// A key's standing after a successful charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The period's limit.
    pub limit: u64,
    /// Units left in the period.
    pub remaining: u64,
    /// When the period ends.
    pub reset_at: DateTime<Utc>,
}

/// A key's quota standing, read without charging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Units used in the period.
    pub used: u64,
    /// The period's limit.
    pub limit: u64,
    /// The period.
    pub window: Window,
}

/// Why a charge was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The budget is spent.
    #[error("quota of {limit} exhausted until {reset_at}")]
    Exceeded {
        /// The period's limit.
        limit: u64,
        /// When the period ends.
        reset_at: DateTime<Utc>,
    },
    /// Redis is unreachable and the policy is `deny`.
    #[error("quota counters are unavailable")]
    Unavailable(#[source] crate::cache::redis::Error),
}

#[derive(Debug)]
struct Counter {
    /// Units used in the period as best known here: exact in embedded mode; in Redis
    /// mode the shared count last seen plus what was charged here since.
    used: AtomicU64,
    /// Units charged here while Redis was unreachable, not yet pushed to it.
    pending: AtomicU64,
    /// Units leased from Redis and not used yet (Redis mode).
    lease: AtomicU64,
    /// When the lease was last drawn from.
    lease_drawn_ms: AtomicI64,
    persisted: AtomicU64,
    last_used_ms: AtomicI64,
    last_used_persisted_ms: AtomicI64,
    /// `LOADED` once the stored count is in `used`; else when a failed load may be
    /// retried (unix ms).
    load_state: AtomicI64,
    /// The period, as unix nanoseconds (see `window()`).
    window_start_ns: i64,
    window_end_ns: i64,
}

/// Where a cached key keeps the counter of its current period, so that a charge
/// reaches it without a lookup in the map of counters (a hash, a shard lock and a
/// cache miss per request) or working out the period again. It holds a cache of the
/// map's entry, never the only copy: a counter stays in the map while its period
/// runs, and a counter whose period is over is looked up afresh.
#[derive(Default)]
pub struct Slot(arc_swap::ArcSwapOption<Counter>);

impl Slot {
    /// The counter held, when its period holds `now_ns`.
    fn current(&self, now_ns: i64) -> Option<Arc<Counter>> {
        self.0
            .load_full()
            .filter(|c| c.window_start_ns <= now_ns && now_ns < c.window_end_ns)
    }
}

impl Clone for Slot {
    fn clone(&self) -> Self {
        Self(arc_swap::ArcSwapOption::new(self.0.load_full()))
    }
}

/// A cache, not part of what a key is.
impl PartialEq for Slot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// `Counter::load_state` once the stored count was added: later than any retry time.
const LOADED: i64 = i64::MAX;

impl Counter {
    fn new(window: Window) -> Self {
        let ns = crate::clock::unix_nanos;
        Self {
            used: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            lease: AtomicU64::new(0),
            lease_drawn_ms: AtomicI64::new(0),
            persisted: AtomicU64::new(0),
            last_used_ms: AtomicI64::new(0),
            last_used_persisted_ms: AtomicI64::new(0),
            load_state: AtomicI64::new(0),
            window_start_ns: ns(window.start),
            window_end_ns: ns(window.end),
        }
    }

    /// The counter's period. Held as two integers, which keeps a counter at 80 bytes
    /// (96 with its reference counts, one allocator size class below 112): one per
    /// cached key. Exact for periods within 1677-2262.
    fn window(&self) -> Window {
        Window {
            start: DateTime::from_timestamp_nanos(self.window_start_ns),
            end: DateTime::from_timestamp_nanos(self.window_end_ns),
        }
    }

    fn loaded(&self) -> bool {
        self.load_state.load(Ordering::Acquire) == LOADED
    }
}

/// Locks taken per counter while loading its stored count or leasing from Redis
/// (one in flight per counter), striped over the key id: a counter holds no lock of
/// its own, which keeps it small (one per cached key and period). No code path holds
/// two at once.
const STRIPES: usize = 256;

/// Keys written per flush statement at most.
const FLUSH_CHUNK: usize = 1000;

/// The counters of this process.
pub struct Counters {
    settings: Settings,
    // `settings.limit` as a reload left it; the rest of `settings` needs a restart.
    default_limit: AtomicU64,
    map: DashMap<(Uuid, i64), Arc<Counter>>,
    stripes: Box<[tokio::sync::Mutex<()>]>,
    store: Store,
    redis: Option<Arc<Redis>>,
    control: tokio::runtime::Handle,
}

impl Counters {
    /// Counters over `store` (and `redis`, when configured); stored counts are read on
    /// `control`, the runtime that owns database connections.
    pub fn new(
        settings: Settings,
        store: Store,
        redis: Option<Arc<Redis>>,
        control: tokio::runtime::Handle,
    ) -> Self {
        Self {
            settings,
            default_limit: AtomicU64::new(settings.limit),
            map: DashMap::new(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            store,
            redis,
            control,
        }
    }

    /// The lock for loading or leasing `id`'s counters.
    fn stripe(&self, id: Uuid) -> &tokio::sync::Mutex<()> {
        let low = id.as_u128() as usize;
        &self.stripes[low % STRIPES]
    }

    /// The defaults in force.
    pub fn settings(&self) -> Settings {
        Settings {
            limit: self.default_limit(),
            ..self.settings
        }
    }

    /// Replaces the limit of keys without their own (a config reload); budgets already
    /// spent stay spent.
    pub fn set_default_limit(&self, limit: u64) {
        self.default_limit.store(limit, Ordering::Relaxed);
    }

    fn default_limit(&self) -> u64 {
        self.default_limit.load(Ordering::Relaxed)
    }

    /// Charges `cost` units to `key` at `now`, atomically: of any number of concurrent
    /// charges, exactly those that fit the limit succeed (in Redis mode, across every
    /// replica).
    ///
    /// # Errors
    /// [`Error::Exceeded`] when the charge does not fit; [`Error::Unavailable`] when
    /// Redis is unreachable and the policy is `deny`.
    pub async fn charge(&self, key: &CachedKey, cost: u64, now: DateTime<Utc>) -> Result<Usage, Error> {
        let limit = key.quota_limit().unwrap_or_else(|| self.default_limit());
        let counter = match key.quota.current(crate::clock::unix_nanos(now)) {
            Some(counter) => counter,
            None => {
                let counter = self.counter(key.id, self.settings.period.window(key.created_at(), now));
                key.quota.0.store(Some(Arc::clone(&counter)));
                counter
            }
        };
        // The period's end alone: each end made into a date is a calendar computation.
        let reset_at = DateTime::from_timestamp_nanos(counter.window_end_ns);
        if !counter.loaded() {
            self.load(key.id, &counter, now).await;
        }
        counter
            .last_used_ms
            .fetch_max(now.timestamp_millis(), Ordering::Relaxed);
        let usage = |used: u64| Usage {
            limit,
            remaining: limit.saturating_sub(used),
            reset_at,
        };
        let exceeded = Error::Exceeded { limit, reset_at };
        let Some(redis) = &self.redis else {
            return charge_local(&counter, cost, limit).map(usage).ok_or(exceeded);
        };
        let failure = loop {
            if take(&counter.lease, cost) {
                counter
                    .lease_drawn_ms
                    .store(now.timestamp_millis(), Ordering::Relaxed);
                return Ok(usage(counter.used_here()));
            }
            let _turn = self.stripe(key.id).lock().await;
            if counter.lease.load(Ordering::Acquire) >= cost {
                continue; // another request just leased
            }
            match redis::lease(redis, key.id, counter.window(), cost, limit, seed(&counter)).await {
                Ok(leased) => {
                    counter.used.fetch_max(leased.used, Ordering::AcqRel);
                    if leased.granted == 0 {
                        return Err(exceeded);
                    }
                    counter.lease.fetch_add(leased.granted, Ordering::AcqRel);
                }
                Err(e) => break e,
            }
        };
        match self.settings.on_redis_error {
            OnRedisError::Deny => Err(Error::Unavailable(failure)),
            OnRedisError::Local => {
                let used = charge_local(&counter, cost, limit).ok_or(exceeded)?;
                counter.pending.fetch_add(cost, Ordering::AcqRel);
                Ok(usage(used))
            }
            OnRedisError::Allow => {
                let used = counter.used.fetch_add(cost, Ordering::AcqRel) + cost;
                counter.pending.fetch_add(cost, Ordering::AcqRel);
                Ok(usage(used))
            }
        }
    }

    /// A key's standing at `now` without charging: the shared count in Redis mode,
    /// this process's count if it has one, else the stored count.
    ///
    /// # Errors
    /// When the count has to come from the store and the store fails.
    pub async fn standing(&self, key: &KeyRecord, now: DateTime<Utc>) -> Result<Standing, store::Error> {
        let window = self.settings.period.window(key.created_at, now);
        let limit = key.quota_limit.unwrap_or_else(|| self.default_limit());
        if let Some(redis) = &self.redis
            && let Ok(Some(used)) = redis::peek(redis, key.id, window).await
        {
            return Ok(Standing { used, limit, window });
        }
        let local = self
            .map
            .get(&(key.id, window.start.timestamp()))
            .filter(|c| c.loaded())
            .map(|c| c.used_here());
        let used = match local {
            Some(used) => used,
            None => self.store.usage(key.id, window.start.timestamp()).await?,
        };
        Ok(Standing { used, limit, window })
    }

    fn counter(&self, id: Uuid, window: Window) -> Arc<Counter> {
        let key = (id, window.start.timestamp());
        if let Some(c) = self.map.get(&key) {
            return Arc::clone(&c);
        }
        let entry = self
            .map
            .entry(key)
            .or_insert_with(|| Arc::new(Counter::new(window)));
        Arc::clone(&entry)
    }

    /// Adds the stored count for the period, once. Concurrent first charges wait for
    /// it (so they stay exact); if the store is unreachable they go on without it and
    /// a later charge retries (at most once a second), adding it then.
    async fn load(&self, id: Uuid, counter: &Counter, now: DateTime<Utc>) {
        let _guard = self.stripe(id).lock().await;
        // LOADED, or a failed load's retry time not reached yet.
        if counter.load_state.load(Ordering::Acquire) > now.timestamp_millis() {
            return;
        }
        let store = self.store.clone();
        let start = counter.window().start.timestamp();
        match store::run_on(&self.control, async move { store.usage(id, start).await }).await {
            Ok(stored) => {
                counter.used.fetch_add(stored, Ordering::AcqRel);
                counter.persisted.fetch_max(stored, Ordering::AcqRel);
                counter.load_state.store(LOADED, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(error = %e, key_id = %id, "cannot read the stored quota count; counting without it for now");
                // Only this stripe's holder sets the state, so this never hides LOADED.
                counter
                    .load_state
                    .store(now.timestamp_millis() + 1000, Ordering::Release);
            }
        }
    }

    /// Gives leases back to Redis: those not drawn from since `idle_since_ms`, or all
    /// of them (`None`, at shutdown).
    pub async fn release_leases(&self, idle_since_ms: Option<i64>) {
        let Some(redis) = &self.redis else { return };
        let idle: Vec<_> = self
            .map
            .iter()
            .filter(|e| {
                let c = e.value();
                c.lease.load(Ordering::Acquire) > 0
                    && idle_since_ms.is_none_or(|t| c.lease_drawn_ms.load(Ordering::Relaxed) < t)
            })
            .map(|e| (e.key().0, Arc::clone(e.value())))
            .collect();
        for (id, c) in idle {
            let _turn = self.stripe(id).lock().await;
            let units = c.lease.swap(0, Ordering::AcqRel);
            if units == 0 {
                continue;
            }
            match redis::release(redis, id, c.window(), units).await {
                // What this process knows of the shared count is still an upper bound.
                Ok(_) => {}
                Err(e) => {
                    // Kept: it goes back on a later try, or is used here.
                    c.lease.fetch_add(units, Ordering::AcqRel);
                    tracing::debug!(error = %e, "cannot give a quota lease back yet");
                    return;
                }
            }
        }
    }

    /// Pushes counts charged while Redis was unreachable, writes changed counts and
    /// last-used times to the store, then forgets counters of periods that ended
    /// before `now`.
    ///
    /// # Errors
    /// When the store write fails; what that statement carried is not marked written
    /// then, so the next flush retries it.
    pub async fn flush(&self, now: DateTime<Utc>) -> Result<(), store::Error> {
        self.release_leases(Some(now.timestamp_millis() - 1000)).await;
        self.reconcile().await;
        let dirty: Vec<_> = self
            .map
            .iter()
            .filter(|e| {
                let c = e.value();
                c.used_here() != c.persisted.load(Ordering::Acquire)
                    || c.last_used_ms.load(Ordering::Relaxed)
                        > c.last_used_persisted_ms.load(Ordering::Relaxed)
            })
            .map(|e| (*e.key(), Arc::clone(e.value())))
            .collect();
        // In statements of at most FLUSH_CHUNK keys: what a statement needs (its rows,
        // their JSON or arrays, the database's parse of them) stays small however many
        // keys were used since the last flush, and so does what the allocator keeps.
        let mut usage = Vec::new();
        let mut last_used = Vec::new();
        for chunk in dirty.chunks(FLUSH_CHUNK) {
            usage.clear();
            last_used.clear();
            let mut marks = Vec::with_capacity(chunk.len());
            for ((id, start), c) in chunk {
                let used = c.used_here();
                let seen = c.last_used_ms.load(Ordering::Relaxed);
                if used != c.persisted.load(Ordering::Acquire) {
                    usage.push(UsageRow {
                        key_id: *id,
                        period_start: *start,
                        used,
                    });
                }
                if seen > c.last_used_persisted_ms.load(Ordering::Relaxed)
                    && let Some(at) = Utc.timestamp_millis_opt(seen).single()
                {
                    last_used.push((*id, at));
                }
                marks.push((c, used, seen));
            }
            self.store.flush(&usage, &last_used).await?;
            for (c, used, seen) in marks {
                c.persisted.fetch_max(used, Ordering::AcqRel);
                c.last_used_persisted_ms.fetch_max(seen, Ordering::Relaxed);
            }
        }
        let now_ms = now.timestamp_millis();
        self.map.retain(|_, c| {
            c.window_end_ns / 1_000_000 > now_ms
                || c.pending.load(Ordering::Acquire) > 0
                || c.lease.load(Ordering::Acquire) > 0
                || c.used_here() != c.persisted.load(Ordering::Acquire)
        });
        Ok(())
    }

    /// Adds the units charged here while Redis was unreachable to the shared counters.
    async fn reconcile(&self) {
        let Some(redis) = &self.redis else { return };
        if !redis.is_up() {
            return;
        }
        let pending: Vec<_> = self
            .map
            .iter()
            .filter(|e| e.value().pending.load(Ordering::Acquire) > 0)
            .map(|e| (e.key().0, Arc::clone(e.value())))
            .collect();
        for (id, c) in pending {
            let units = c.pending.load(Ordering::Acquire);
            let seed = seed(&c);
            match redis::charge(redis, id, c.window(), units, u64::MAX, seed).await {
                Ok(charged) => {
                    c.pending.fetch_sub(units, Ordering::AcqRel);
                    c.used.fetch_max(charged.used, Ordering::AcqRel);
                }
                Err(_) => return,
            }
        }
    }
}

impl Counter {
    /// Units used in the period as known here: the shared count last seen (which
    /// counts every replica's unused leases) less this process's own unused lease.
    fn used_here(&self) -> u64 {
        self.used
            .load(Ordering::Acquire)
            .saturating_sub(self.lease.load(Ordering::Acquire))
    }
}

/// Takes `cost` units from `lease` if it holds them.
fn take(lease: &AtomicU64, cost: u64) -> bool {
    lease
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(cost))
        .is_ok()
}

/// The count a missing Redis counter starts from: what the store knows, minus what
/// this process charged during an outage and will push on its own.
fn seed(counter: &Counter) -> u64 {
    counter
        .persisted
        .load(Ordering::Acquire)
        .saturating_sub(counter.pending.load(Ordering::Acquire))
}

/// Charges `cost` against `limit` on the local counter; returns the units used after it.
fn charge_local(counter: &Counter, cost: u64, limit: u64) -> Option<u64> {
    counter
        .used
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(cost).filter(|&after| after <= limit)
        })
        .ok()
        .map(|before| before + cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_until_rounds_up_and_stops_at_zero() {
        let now = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap_or_default();
        for (ms, seconds) in [
            (-5_000, 0),
            (-1, 0),
            (0, 0),
            (1, 1),
            (999, 1),
            (1_000, 1),
            (1_001, 2),
            (86_400_000, 86_400),
        ] {
            let at = now + chrono::Duration::milliseconds(ms);
            assert_eq!(
                seconds_until_millis(at, now.timestamp_millis()),
                seconds,
                "{ms} ms"
            );
            assert_eq!(seconds_until(at, now), seconds, "{ms} ms");
        }
    }

    #[test]
    fn a_counter_keeps_its_period_exactly_in_80_bytes() {
        assert_eq!(
            std::mem::size_of::<Counter>(),
            80,
            "one allocator size class with its Arc"
        );
        let start = Utc
            .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
            .single()
            .expect("a date")
            + chrono::Duration::nanoseconds(123_456_789);
        let window = Window {
            start,
            end: start + chrono::Duration::days(30),
        };
        let c = Counter::new(window);
        assert_eq!(c.window(), window);
        assert!(!c.loaded());
        c.load_state.store(LOADED, Ordering::Release);
        assert!(c.loaded());
    }
}
