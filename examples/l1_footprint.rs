//! The memory model of cached keys, without the server: RSS per key of N records in
//! the real L1 (the `CachedKey` of a record as the store's loader leaves it: org,
//! owner, name, environment, one scope; the record itself is dropped), then of N
//! quota-counter-sized objects (80 bytes, like `quota::Counter`) in a map keyed like
//! the counters. A fast loop for trying a more compact record; `benches/footprint.sh`
//! measures the real server.
//!
//! `N=100000 cargo run --release --example l1_footprint`
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use keygate::cache::{L1, Settings};
use keygate::clock::{SharedClock, SystemClock};
use keygate::keys::record::Owner;
use keygate::keys::{CachedKey, KeyHash, KeyRecord};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let clock: SharedClock = Arc::new(SystemClock);
    let l1 = L1::new(
        Settings {
            capacity: 200_000,
            ..Settings::default()
        },
        clock,
    );
    let counters: dashmap::DashMap<(uuid::Uuid, i64), Arc<[u64; 10]>> = dashmap::DashMap::new();
    // The id list's pages are touched before measuring, so they count nowhere.
    let mut ids = vec![uuid::Uuid::nil(); n];
    ids.clear();
    let base = rss_kib();
    let built = rss_kib();
    for i in 0..n {
        let hash = KeyHash::of(&format!("key-{i}"));
        let r = KeyRecord {
            id: uuid::Uuid::new_v4(),
            org_id: Some("acme".into()),
            owner: Owner::Org("acme".into()),
            name: "fp".into(),
            display_prefix: String::new(),
            hash,
            environment: "live".into(),
            scopes: vec!["read".into()],
            restrictions: Arc::default(),
            quota_limit: None,
            metadata: serde_json::Value::Null,
            created_by: String::new(),
            created_at: chrono::Utc::now(),
            last_used_at: None,
            expires_at: None,
            paused: false,
            revoked_at: None,
        };
        ids.push(r.id);
        l1.insert(hash, Some(Arc::new(CachedKey::from(&r))));
    }
    let in_l1 = rss_kib();
    for id in ids {
        counters.insert((id, 0), Arc::new([0; 10]));
    }
    let with_counters = rss_kib();
    let per_key = |kib: u64| kib * 1024 / n as u64;
    println!(
        "{n} keys: L1 (records and maps) {} B/key, counters {} B/key, total {} B/key",
        per_key(in_l1 - built),
        per_key(with_counters - in_l1),
        per_key(with_counters - base),
    );
}
