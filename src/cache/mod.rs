//! Key caches: L1, in-process and shared by all cores, with TTLs and negative entries;
//! L2 in Redis ([`redis`]); and [`invalidation`], which keeps both honest.
//!
//! Positive entries hold the record; negative entries remember hashes the store does
//! not know, so a flood of random keys does not reach the store. L1 does not talk to
//! the store itself; `auth::verify` fills it and invalidation evicts from it.

pub mod invalidation;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::keys::{KeyHash, KeyRecord};

/// L1 tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a known key is trusted without asking the store again.
    pub ttl: Duration,
    /// How long an unknown hash is remembered as unknown.
    pub negative_ttl: Duration,
    /// Entries kept at most (positive and negative).
    pub capacity: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(30),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: Option<Arc<KeyRecord>>,
    expires_at_ms: i64,
}

/// What L1 knows about a hash.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A known key.
    Hit(Arc<KeyRecord>),
    /// Known to be unknown.
    Negative,
    /// Not cached (or expired).
    Miss,
}

/// The in-process cache.
pub struct L1 {
    map: DashMap<KeyHash, Entry>,
    ids: DashMap<Uuid, KeyHash>,
    settings: Settings,
    clock: SharedClock,
}

impl L1 {
    /// An empty cache.
    pub fn new(settings: Settings, clock: SharedClock) -> Self {
        Self {
            map: DashMap::with_capacity(settings.capacity.min(1 << 16)),
            ids: DashMap::new(),
            settings,
            clock,
        }
    }

    /// Looks `hash` up.
    pub fn get(&self, hash: &KeyHash) -> Lookup {
        let now = self.clock.now_millis();
        match self.map.get(hash) {
            Some(e) if e.expires_at_ms > now => match &e.key {
                Some(k) => Lookup::Hit(Arc::clone(k)),
                None => Lookup::Negative,
            },
            _ => Lookup::Miss,
        }
    }

    /// Remembers what the store said about `hash` (`None` = unknown).
    pub fn insert(&self, hash: KeyHash, key: Option<Arc<KeyRecord>>) {
        let ttl = if key.is_some() {
            self.settings.ttl
        } else {
            self.settings.negative_ttl
        };
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        if self.map.len() >= self.settings.capacity && !self.map.contains_key(&hash) {
            self.make_room();
        }
        let expires_at_ms = self.clock.now_millis().saturating_add(ttl_ms);
        if let Some(k) = &key {
            self.ids.insert(k.id, hash);
        }
        self.map.insert(hash, Entry { key, expires_at_ms });
    }

    /// Frees space: expired entries go first, then negative ones, then everything.
    fn make_room(&self) {
        let now = self.clock.now_millis();
        self.map.retain(|_, e| e.expires_at_ms > now);
        if self.map.len() >= self.settings.capacity {
            self.map.retain(|_, e| e.key.is_some());
        }
        if self.map.len() >= self.settings.capacity {
            self.map.clear();
        }
        self.ids.retain(|_, hash| self.map.contains_key(hash));
    }

    /// Forgets the key with `id`.
    ///
    /// Negative entries stay: a new key's hash cannot have been cached as unknown
    /// unless someone presented the key before it existed.
    pub fn evict(&self, id: Uuid) {
        if let Some((_, hash)) = self.ids.remove(&id) {
            self.map.remove(&hash);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.map.clear();
        self.ids.clear();
    }

    /// Entries currently held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
