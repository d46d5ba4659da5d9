//! Quotas: a per-key budget per period, counted in-process with one atomic per key
//! and period, and written to the admin store in batches (and at shutdown) so a
//! restart loses no count. The same batch writes each key's last-used time.
//!
//! It does not decide anything else about a request; `auth::decide` calls
//! [`Counters::charge`] only for requests that passed every other check.

pub mod period;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use dashmap::DashMap;
use tokio::sync::OnceCell;
use uuid::Uuid;

pub use period::{Period, Window};

use crate::keys::KeyRecord;
use crate::store::{self, Store, UsageRow};

/// Whole seconds from `now` until `at`, rounded up (0 when `at` has passed).
pub fn seconds_until(at: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((at - now).num_milliseconds())
        .unwrap_or_default()
        .div_ceil(1000)
}

/// Quota defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Units per period for keys without their own limit.
    pub limit: u64,
    /// How budgets renew.
    pub period: Period,
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
    /// The stored count could not be read.
    #[error("could not load the stored quota count")]
    Store(#[source] store::Error),
}

#[derive(Debug)]
struct Counter {
    used: AtomicU64,
    persisted: AtomicU64,
    last_used_ms: AtomicI64,
    last_used_persisted_ms: AtomicI64,
    end_ms: i64,
    loaded: OnceCell<()>,
}

/// The in-process counters.
pub struct Counters {
    settings: Settings,
    map: DashMap<(Uuid, i64), Arc<Counter>>,
    store: Store,
    control: tokio::runtime::Handle,
}

impl Counters {
    /// Counters over `store`; stored counts are read on `control` (the runtime that
    /// owns database connections).
    pub fn new(settings: Settings, store: Store, control: tokio::runtime::Handle) -> Self {
        Self {
            settings,
            map: DashMap::new(),
            store,
            control,
        }
    }

    /// The configured defaults.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Charges `cost` units to `key` at `now`, atomically: of any number of concurrent
    /// charges, exactly those that fit the limit succeed.
    ///
    /// # Errors
    /// [`Error::Exceeded`] when the charge does not fit; [`Error::Store`] when the
    /// period's stored count could not be loaded.
    pub async fn charge(&self, key: &KeyRecord, cost: u64, now: DateTime<Utc>) -> Result<Usage, Error> {
        let window = self.settings.period.window(key.created_at, now);
        let limit = key.quota_limit.unwrap_or(self.settings.limit);
        let counter = self.counter(key.id, window);
        if !counter.loaded.initialized() {
            self.load(key.id, window, &counter).await?;
        }
        counter
            .last_used_ms
            .fetch_max(now.timestamp_millis(), Ordering::Relaxed);
        let charged = counter
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(cost).filter(|&after| after <= limit)
            });
        match charged {
            Ok(before) => Ok(Usage {
                limit,
                remaining: limit - (before + cost),
                reset_at: window.end,
            }),
            Err(_) => Err(Error::Exceeded {
                limit,
                reset_at: window.end,
            }),
        }
    }

    fn counter(&self, id: Uuid, window: Window) -> Arc<Counter> {
        let key = (id, window.start.timestamp());
        if let Some(c) = self.map.get(&key) {
            return Arc::clone(&c);
        }
        let entry = self.map.entry(key).or_insert_with(|| {
            Arc::new(Counter {
                used: AtomicU64::new(0),
                persisted: AtomicU64::new(0),
                last_used_ms: AtomicI64::new(0),
                last_used_persisted_ms: AtomicI64::new(0),
                end_ms: window.end.timestamp_millis(),
                loaded: OnceCell::new(),
            })
        });
        Arc::clone(&entry)
    }

    async fn load(&self, id: Uuid, window: Window, counter: &Counter) -> Result<(), Error> {
        counter
            .loaded
            .get_or_try_init(|| async {
                let store = self.store.clone();
                let start = window.start.timestamp();
                let stored = store::run_on(&self.control, async move { store.usage(id, start).await })
                    .await
                    .map_err(Error::Store)?;
                counter.used.fetch_add(stored, Ordering::AcqRel);
                counter.persisted.fetch_max(stored, Ordering::AcqRel);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Writes changed counts and last-used times to the store, then forgets counters
    /// of periods that ended before `now`.
    ///
    /// # Errors
    /// When the store write fails; nothing is marked written then, so the next flush retries.
    pub async fn flush(&self, now: DateTime<Utc>) -> Result<(), store::Error> {
        let mut usage = Vec::new();
        let mut last_used = Vec::new();
        let mut marks = Vec::new();
        for entry in &self.map {
            let ((id, start), c) = entry.pair();
            let used = c.used.load(Ordering::Acquire);
            let seen = c.last_used_ms.load(Ordering::Relaxed);
            let dirty_usage = used != c.persisted.load(Ordering::Acquire);
            let dirty_seen = seen > c.last_used_persisted_ms.load(Ordering::Relaxed);
            if dirty_usage {
                usage.push(UsageRow {
                    key_id: *id,
                    period_start: *start,
                    used,
                });
            }
            if dirty_seen && let Some(at) = Utc.timestamp_millis_opt(seen).single() {
                last_used.push((*id, at));
            }
            if dirty_usage || dirty_seen {
                marks.push((Arc::clone(c), used, seen));
            }
        }
        if !marks.is_empty() {
            self.store.flush(&usage, &last_used).await?;
            for (c, used, seen) in marks {
                c.persisted.fetch_max(used, Ordering::AcqRel);
                c.last_used_persisted_ms.fetch_max(seen, Ordering::Relaxed);
            }
        }
        let now_ms = now.timestamp_millis();
        self.map.retain(|_, c| {
            c.end_ms > now_ms || c.used.load(Ordering::Acquire) != c.persisted.load(Ordering::Acquire)
        });
        Ok(())
    }
}
