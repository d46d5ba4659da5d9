//! The part of a key record the key caches hold and the decision reads.
//!
//! A cache holds up to `[cache] capacity` keys (100,000 by default), so each byte per
//! key counts: a [`CachedKey`] keeps only what the decision, the identity headers and
//! the access log read, and shares what repeats across keys (org, environment,
//! owner, the scope set, an unrestricted key's restrictions) through a small
//! interner instead of holding a copy per key. The admin API and the CLI read the
//! full [`KeyRecord`] from the store.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::record::{KeyRecord, Restrictions, Status};
use crate::clock::unix_nanos;

/// A key as the caches hold it: 144 bytes, so that with its reference counts it
/// fits mimalloc's 160-byte size class (times as unix nanoseconds, the quota limit
/// and the pause behind one flags byte, the scope set behind a thin pointer;
/// `examples/l1_footprint.rs` measures it).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedKey {
    /// Stable id.
    pub id: Uuid,
    /// Human label.
    pub name: Box<str>,
    /// The organisation the key is bound to, if any.
    pub org_id: Option<Arc<str>>,
    /// The owner as forwarded upstream: `user:<id>` or `org:<id>`.
    pub owner: Arc<str>,
    /// Environment the key was issued for.
    pub environment: Arc<str>,
    /// Granted scopes.
    pub scopes: Arc<Scopes>,
    /// Further limits.
    pub restrictions: Arc<Restrictions>,
    /// The key's own quota limit, when `OWN_QUOTA` is set.
    quota_limit: u64,
    /// When it was created (anniversary quota periods start there), unix ns.
    created_at_ns: i64,
    /// When it stops working, unix ns (`NEVER`: it does not).
    expires_at_ns: i64,
    /// When it was revoked, unix ns (`NEVER`: it was not).
    revoked_at_ns: i64,
    flags: u8,
    /// The quota counter of the key's current period, once a charge looked it up.
    pub quota: crate::quota::Slot,
}

/// A key's scope set: a slice behind one thin pointer (keys share the sets).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Scopes(Box<[Arc<str>]>);

impl std::ops::Deref for Scopes {
    type Target = [Arc<str>];

    fn deref(&self) -> &[Arc<str>] {
        &self.0
    }
}

const PAUSED: u8 = 1;
const OWN_QUOTA: u8 = 2;
const NEVER: i64 = i64::MAX;

impl CachedKey {
    /// The key's status at `now`, by the rule of [`KeyRecord::status`].
    pub fn status(&self, now: DateTime<Utc>) -> Status {
        let set = |ns: i64| (ns != NEVER).then_some(ns);
        Status::at(
            set(self.revoked_at_ns),
            self.flags & PAUSED != 0,
            set(self.expires_at_ns),
            unix_nanos(now),
        )
    }

    /// The quota limit overriding the configured default, if the key has one.
    pub fn quota_limit(&self) -> Option<u64> {
        (self.flags & OWN_QUOTA != 0).then_some(self.quota_limit)
    }

    /// When the key was created.
    pub fn created_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.created_at_ns)
    }

    /// Whether the key holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}

impl From<&KeyRecord> for CachedKey {
    fn from(record: &KeyRecord) -> Self {
        static OPEN: LazyLock<Arc<Restrictions>> = LazyLock::new(Arc::default);
        let restrictions = if *record.restrictions == Restrictions::default() {
            Arc::clone(&OPEN)
        } else {
            Arc::clone(&record.restrictions)
        };
        Self {
            id: record.id,
            name: record.name.as_str().into(),
            org_id: record.org_id.as_deref().map(intern_str),
            owner: intern_str(&record.owner.to_tag()),
            environment: intern_str(&record.environment),
            scopes: intern_scopes(&record.scopes),
            restrictions,
            quota_limit: record.quota_limit.unwrap_or_default(),
            created_at_ns: unix_nanos(record.created_at),
            expires_at_ns: record.expires_at.map_or(NEVER, unix_nanos),
            revoked_at_ns: record.revoked_at.map_or(NEVER, unix_nanos),
            flags: (u8::from(record.paused) * PAUSED) | (u8::from(record.quota_limit.is_some()) * OWN_QUOTA),
            quota: crate::quota::Slot::default(),
        }
    }
}

/// A set of shared values: `get` hands out the one instance equal to its argument.
/// Values only the interner still holds are dropped when the set has doubled since
/// the last sweep, so keys that left the caches do not pin their strings forever.
struct Interner<T: ?Sized> {
    values: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    fn new() -> Self {
        Self {
            values: HashSet::new(),
            sweep_at: 1024,
        }
    }

    fn get(&mut self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        if let Some(shared) = self.values.get(value) {
            return Arc::clone(shared);
        }
        if self.values.len() >= self.sweep_at {
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.sweep_at = (self.values.len() * 2).max(1024);
        }
        let shared = make();
        self.values.insert(Arc::clone(&shared));
        shared
    }
}

static STRINGS: LazyLock<Mutex<Interner<str>>> = LazyLock::new(|| Mutex::new(Interner::new()));
static SCOPE_SETS: LazyLock<Mutex<Interner<Scopes>>> = LazyLock::new(|| Mutex::new(Interner::new()));

fn intern_str(s: &str) -> Arc<str> {
    // A poisoned interner still holds valid strings: keep using it.
    let mut strings = STRINGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    strings.get(s, || Arc::from(s))
}

fn intern_scopes(scopes: &[String]) -> Arc<Scopes> {
    let scopes = Scopes(scopes.iter().map(|s| intern_str(s)).collect());
    let mut sets = SCOPE_SETS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    sets.get(&scopes, || Arc::new(Scopes(scopes.0.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(org: &str, scopes: &[&str]) -> KeyRecord {
        KeyRecord {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            quota_limit: Some(5),
            metadata: serde_json::json!({"team": "a"}),
            ..KeyRecord::example(org)
        }
    }

    #[test]
    fn keys_share_what_repeats_and_keep_what_the_decision_reads() {
        let a = CachedKey::from(&record("acme-cached", &["read", "write"]));
        let b = CachedKey::from(&record("acme-cached", &["read", "write"]));
        let c = CachedKey::from(&record("beta-cached", &["read"]));
        assert!(Arc::ptr_eq(
            a.org_id.as_ref().expect("org"),
            b.org_id.as_ref().expect("org")
        ));
        assert!(Arc::ptr_eq(&a.scopes, &b.scopes));
        assert!(Arc::ptr_eq(&a.environment, &c.environment));
        assert!(
            Arc::ptr_eq(&a.restrictions, &c.restrictions),
            "unrestricted keys share one"
        );
        assert!(!Arc::ptr_eq(&a.scopes, &c.scopes));
        assert!(a.has_scope("write") && !c.has_scope("write"));
        assert_eq!(&*a.owner, "org:acme-cached");
        assert_eq!((a.quota_limit(), a.status(Utc::now())), (Some(5), Status::Active));
        assert_eq!(
            std::mem::size_of::<CachedKey>(),
            144,
            "one mimalloc size class with its Arc"
        );
    }

    #[test]
    fn the_status_follows_the_record_to_the_nanosecond() {
        let now = Utc::now();
        let ns = chrono::Duration::nanoseconds(1);
        let mut r = record("acme-cached", &["read"]);
        r.quota_limit = None;
        let key = |r: &KeyRecord| CachedKey::from(r);
        assert_eq!(key(&r).quota_limit(), None);
        r.quota_limit = Some(0);
        assert_eq!(key(&r).quota_limit(), Some(0));
        r.expires_at = Some(now + ns);
        assert_eq!(key(&r).status(now), Status::Active);
        assert_eq!(key(&r).status(now + ns), Status::Expired);
        r.paused = true;
        assert_eq!(key(&r).status(now + ns), Status::Paused, "pause wins over expiry");
        r.revoked_at = Some(now);
        assert_eq!(key(&r).status(now), Status::Revoked, "revocation wins over pause");
        assert_eq!(key(&r).status(now - ns), Status::Paused);
        for at in [now - ns, now, now + ns] {
            assert_eq!(key(&r).status(at), r.status(at), "the record's rule at {at}");
        }
        assert_eq!(
            key(&r).created_at(),
            r.created_at,
            "anniversary periods start there"
        );
        r.paused = false;
        r.revoked_at = None;
        r.expires_at = DateTime::from_timestamp(-20_000_000_000, 0);
        assert_eq!(key(&r).status(now), Status::Expired, "an expiry before 1677");
        r.expires_at = DateTime::from_timestamp(20_000_000_000, 0);
        assert_eq!(key(&r).status(now), Status::Active, "an expiry after 2262");
    }

    #[test]
    fn the_interner_drops_values_no_key_holds() {
        let mut interner: Interner<str> = Interner::new();
        let kept = interner.get("kept", || Arc::from("kept"));
        for i in 0..5000 {
            let s = format!("gone-{i}");
            drop(interner.get(&s, || Arc::from(s.as_str())));
        }
        assert!(interner.values.len() < 2100, "swept: {}", interner.values.len());
        assert!(Arc::ptr_eq(&kept, &interner.get("kept", || Arc::from("other"))));
    }
}
