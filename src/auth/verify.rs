//! Verify: a well-formed key → its record, through L1, then L2 (Redis, when
//! configured and up), then the admin store; and the record's status (revoked,
//! paused, expired, environment) at this moment.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;

use super::rejection::{Denial, Failure, Rejection};
use crate::cache::redis::Redis;
use crate::cache::{L1, Lookup};
use crate::keys::format::Parsed;
use crate::keys::{CachedKey, KeyHash, KeyRecord, Status};
use crate::store::{self, Store};
use crate::telemetry::Metrics;

/// Looks keys up: L1 first, then L2, then the store (on the control runtime).
pub struct Verifier {
    metrics: Arc<Metrics>,
    l1: Arc<L1>,
    l2: Option<Arc<Redis>>,
    store: Store,
    control: tokio::runtime::Handle,
    /// One gate per hash being loaded.
    loading: DashMap<KeyHash, Arc<tokio::sync::Mutex<()>>>,
}

impl Verifier {
    /// A verifier over `l1`, the optional `l2` and `store`.
    pub fn new(
        l1: Arc<L1>,
        l2: Option<Arc<Redis>>,
        store: Store,
        control: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            metrics,
            l1,
            l2,
            store,
            control,
            loading: DashMap::new(),
        }
    }

    /// The record of `key`, if it is usable at `now`.
    ///
    /// # Errors
    /// `unknown_api_key`, `key_revoked`, `key_paused`, `key_expired`,
    /// `wrong_environment`, or [`Denial::Unavailable`] when the store cannot be asked.
    pub async fn verify(&self, key: &Parsed<'_>, now: DateTime<Utc>) -> Result<Arc<CachedKey>, Denial> {
        let record = self.find(key, now).await?;
        check_status(&record, key.environment(), now)?;
        Ok(record)
    }

    /// The record of `key`, whatever its status, as L1 knows it at `now`.
    ///
    /// # Errors
    /// `unknown_api_key`, or [`Denial::Unavailable`] when the store cannot be asked.
    pub async fn find(&self, key: &Parsed<'_>, now: DateTime<Utc>) -> Result<Arc<CachedKey>, Denial> {
        let hash = KeyHash::of(key.expose());
        let record = match self.l1.get_at(&hash, now.timestamp_millis()) {
            Lookup::Hit(record) => {
                self.metrics.cache("l1", "hit");
                record
            }
            Lookup::Negative => {
                self.metrics.cache("l1", "negative");
                return Err(Rejection::UnknownApiKey.into());
            }
            Lookup::Miss => {
                self.metrics.cache("l1", "miss");
                self.load_once(hash).await?
            }
        };
        Ok(record)
    }

    /// Loads `hash` with at most one lookup in flight per hash: concurrent requests
    /// with the same key (a flood repeating one unknown key, a burst from a new
    /// client) wait for the first and read what it put in L1.
    async fn load_once(&self, hash: KeyHash) -> Result<Arc<CachedKey>, Denial> {
        let gate = Arc::clone(self.loading.entry(hash).or_default().value());
        let turn = gate.lock().await;
        let result = match self.l1.get(&hash) {
            Lookup::Hit(record) => {
                self.metrics.cache("l1", "coalesced");
                Ok(record)
            }
            Lookup::Negative => {
                self.metrics.cache("l1", "coalesced");
                Err(Rejection::UnknownApiKey.into())
            }
            Lookup::Miss => self.load(hash).await,
        };
        drop(turn);
        // The last one through removes the gate (the map holds one reference, we another).
        self.loading.remove_if(&hash, |_, g| Arc::strong_count(g) <= 2);
        result
    }

    async fn load(&self, hash: KeyHash) -> Result<Arc<CachedKey>, Denial> {
        if let Some(l2) = &self.l2 {
            // A failing L2 is skipped: the store stays the truth.
            match l2.get_key(&hash).await {
                Ok(Lookup::Hit(record)) => {
                    self.metrics.cache("l2", "hit");
                    self.l1.insert(hash, Some(Arc::clone(&record)));
                    return Ok(record);
                }
                Ok(Lookup::Negative) => {
                    self.metrics.cache("l2", "negative");
                    self.l1.insert(hash, None);
                    return Err(Rejection::UnknownApiKey.into());
                }
                Ok(Lookup::Miss) => self.metrics.cache("l2", "miss"),
                Err(crate::cache::redis::Error::Down) => self.metrics.cache("l2", "skipped"),
                Err(_) => {
                    self.metrics.cache("l2", "error");
                    self.metrics.dependency_error("redis");
                }
            }
        }
        let store = self.store.clone();
        let found = store::run_on(&self.control, async move { store.find_by_hash(&hash).await })
            .await
            .map_err(|e| {
                self.metrics.cache("store", "error");
                self.metrics.dependency_error("store");
                Denial::Unavailable(Failure::Store(e))
            })?
            .map(KeyRecord::for_cache);
        self.metrics
            .cache("store", if found.is_some() { "hit" } else { "miss" });
        if let Some(l2) = &self.l2
            && let Err(e) = l2.put_key(&hash, found.as_ref()).await
        {
            tracing::debug!(error = %e, "cannot fill L2");
        }
        let found = found.map(|record| Arc::new(CachedKey::from(&record)));
        self.l1.insert(hash, found.clone());
        found.ok_or(Denial::Rejected(Rejection::UnknownApiKey))
    }
}

/// Refuses a record that is not usable at `now` or was issued for another environment.
///
/// # Errors
/// The rejection naming the key's state.
pub fn check_status(record: &CachedKey, environment: &str, now: DateTime<Utc>) -> Result<(), Rejection> {
    match record.status(now) {
        Status::Active => {}
        Status::Revoked => return Err(Rejection::KeyRevoked),
        Status::Paused => return Err(Rejection::KeyPaused),
        Status::Expired => return Err(Rejection::KeyExpired),
    }
    if *record.environment != *environment {
        return Err(Rejection::WrongEnvironment {
            found: record.environment.to_string(),
            expected: environment.to_owned(),
        });
    }
    Ok(())
}
