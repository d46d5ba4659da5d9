//! Key caches: L1, in-process and shared by all cores, with TTLs and negative entries;
//! L2 in Redis ([`redis`]); and [`invalidation`], which keeps both honest.
//!
//! Positive entries hold the record; negative entries remember hashes the store does
//! not know, so a flood of random keys does not reach the store. The two are bounded
//! separately: a flood of unknown keys can fill the negative side but never evicts a
//! known key. L1 does not talk to the store itself; `auth::verify` fills it and
//! invalidation evicts from it.

pub mod invalidation;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::keys::{CachedKey, KeyHash};

/// L1 tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a known key is trusted without asking the store again.
    pub ttl: Duration,
    /// How long an unknown hash is remembered as unknown.
    pub negative_ttl: Duration,
    /// Known keys kept at most.
    pub capacity: usize,
    /// Unknown hashes kept at most.
    pub negative_capacity: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(30),
            capacity: 100_000,
            negative_capacity: 200_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: Arc<CachedKey>,
    expires_at_ms: i64,
}

/// What L1 knows about a hash.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A known key.
    Hit(Arc<CachedKey>),
    /// Known to be unknown.
    Negative,
    /// Not cached (or expired).
    Miss,
}

/// The in-process cache.
pub struct L1 {
    map: DashMap<KeyHash, Entry>,
    /// Unknown hashes and when they stop being remembered.
    negatives: DashMap<KeyHash, i64>,
    settings: Settings,
    clock: SharedClock,
}

impl L1 {
    /// An empty cache.
    pub fn new(settings: Settings, clock: SharedClock) -> Self {
        Self {
            // Grown as keys arrive: a table sized for `capacity` up front would spread a
            // few thousand hot keys over megabytes, a cache and TLB miss per lookup.
            map: DashMap::new(),
            negatives: DashMap::new(),
            settings,
            clock,
        }
    }

    /// Looks `hash` up.
    pub fn get(&self, hash: &KeyHash) -> Lookup {
        self.get_at(hash, self.clock.now_millis())
    }

    /// Looks `hash` up at `now` (unix ms) as read by the caller: the decision reads
    /// the clock once for every step.
    pub fn get_at(&self, hash: &KeyHash, now: i64) -> Lookup {
        if let Some(e) = self.map.get(hash)
            && e.expires_at_ms > now
        {
            return Lookup::Hit(Arc::clone(&e.key));
        }
        match self.negatives.get(hash) {
            Some(expires_at_ms) if *expires_at_ms > now => Lookup::Negative,
            _ => Lookup::Miss,
        }
    }

    /// Remembers what the store said about `hash` (`None` = unknown).
    pub fn insert(&self, hash: KeyHash, key: Option<Arc<CachedKey>>) {
        let now = self.clock.now_millis();
        let ttl = if key.is_some() {
            self.settings.ttl
        } else {
            self.settings.negative_ttl
        };
        let expires_at_ms = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        match key {
            Some(key) => {
                self.negatives.remove(&hash);
                if self.map.len() >= self.settings.capacity && !self.map.contains_key(&hash) {
                    self.make_room(now);
                }
                self.map.insert(hash, Entry { key, expires_at_ms });
            }
            None => {
                if self.negatives.len() >= self.settings.negative_capacity
                    && !self.negatives.contains_key(&hash)
                {
                    self.make_negative_room(now);
                }
                self.negatives.insert(hash, expires_at_ms);
            }
        }
    }

    /// Frees space for a known key: expired entries go first, then everything.
    fn make_room(&self, now: i64) {
        self.map.retain(|_, e| e.expires_at_ms > now);
        if self.map.len() >= self.settings.capacity {
            self.map.clear();
        }
    }

    /// Frees space for an unknown hash: expired entries go first, then every other
    /// one (a flood bigger than the capacity keeps half of what it taught L1).
    fn make_negative_room(&self, now: i64) {
        self.negatives.retain(|_, expires_at_ms| *expires_at_ms > now);
        if self.negatives.len() >= self.settings.negative_capacity {
            let mut n = 0_usize;
            self.negatives.retain(|_, _| {
                n += 1;
                n.is_multiple_of(2)
            });
        }
    }

    /// Forgets the key whose hash is `hash` (a changed key's record names it).
    ///
    /// Negative entries stay: a new key's hash cannot have been cached as unknown
    /// unless someone presented the key before it existed.
    pub fn evict(&self, hash: &KeyHash) {
        self.map.remove(hash);
    }

    /// Forgets the key with `id` when its hash is not at hand (the store could not
    /// say it): a scan of every entry, which keeps L1 free of an id → hash map
    /// (about 60 bytes per cached key).
    pub fn evict_id(&self, id: Uuid) {
        self.map.retain(|_, e| e.key.id != id);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.map.clear();
        self.negatives.clear();
    }

    /// Entries currently held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.map.len() + self.negatives.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.negatives.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::KeyRecord;

    fn record() -> Arc<CachedKey> {
        Arc::new(CachedKey::from(&KeyRecord {
            org_id: None,
            ..KeyRecord::example("acme")
        }))
    }

    #[test]
    fn unknown_keys_are_bounded_apart_and_never_push_a_known_key_out() {
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let l1 = L1::new(
            Settings {
                capacity: 2,
                negative_capacity: 8,
                ..Settings::default()
            },
            clock.clone(),
        );
        let known = [KeyHash::of("a"), KeyHash::of("b")];
        for hash in known {
            l1.insert(hash, Some(record()));
        }
        for i in 0..1_000 {
            l1.insert(KeyHash::of(&format!("unknown-{i}")), None);
            assert!(l1.negatives.len() <= 8);
        }
        for hash in &known {
            assert!(matches!(l1.get(hash), Lookup::Hit(_)));
        }
        // The latest unknown key is remembered; a full side keeps half, not nothing.
        assert!(matches!(l1.get(&KeyHash::of("unknown-999")), Lookup::Negative));
        assert!(l1.negatives.len() >= 4);
        // When full, expired entries go first (here: all of them).
        let mut i = 0;
        while l1.negatives.len() < 8 {
            l1.insert(KeyHash::of(&format!("more-{i}")), None);
            i += 1;
        }
        clock.advance(chrono::Duration::seconds(31));
        assert!(matches!(l1.get(&KeyHash::of("unknown-999")), Lookup::Miss));
        l1.insert(KeyHash::of("fresh"), None);
        assert_eq!(l1.negatives.len(), 1);
    }
}
