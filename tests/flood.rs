//! Floods: random well-formed keys reach the store once per distinct key (the
//! negative cache, and one lookup in flight per key), never push a known key out of
//! L1, and — when `[proxy] max_failed_auth_per_minute` is set — an address that keeps
//! failing is refused before any lookup. How valid keys fare during a flood is a
//! benchmark (`benches/flood.sh`), not a timed test.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Options, TestApp, code};
use keygate::clock::ManualClock;
use keygate::keys::Format;

const ITEMS: &str = "/v1/orgs/acme/items/1";

/// `n` random, well-formed (right prefix, environment and checksum) unknown keys.
fn random_keys(n: usize) -> Vec<String> {
    let format = Format::new("kg", "live").expect("format");
    (0..n)
        .map(|_| format.assemble("live", &uuid::Uuid::new_v4().simple().to_string()))
        .collect()
}

/// The value of one sample line (`name{labels}`) of a Prometheus scrape; 0 when absent.
fn sample(scrape: &str, series: &str) -> u64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

const STORE_LOOKUPS: &str = r#"keygate_cache_lookups_total{layer="store",result="miss"}"#;

/// Sends one GET per key over `concurrency` connections; every answer must be
/// `status`.
async fn send_all(app: &TestApp, keys: Arc<Vec<String>>, concurrency: usize, status: u16) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, keys, next) = (
            app.client.clone(),
            app.url(ITEMS),
            Arc::clone(&keys),
            Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(key) = keys.get(i) else { break };
                let resp = client.get(&url).bearer_auth(key).send().await.expect("request");
                assert_eq!(resp.status(), status, "request {i}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

/// Index scans on the keys table's hash index, as PostgreSQL counts them: the
/// store's own record of how often keygate asked it for a key by hash. (Each
/// backend reports its counts within a few seconds of going idle.)
async fn hash_index_scans(pg_url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(pg_url)
        .await
        .expect("connect to the test database");
    let n = sqlx::query_scalar(
        "SELECT COALESCE(SUM(idx_scan), 0)::bigint FROM pg_stat_user_indexes \
         WHERE indexrelname = 'keys_key_hash_key'",
    )
    .fetch_one(&pool)
    .await
    .expect("index statistics");
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_keys_reaches_the_store_once_per_distinct_key() {
    common::capture_logs();
    let Some(app) = TestApp::with(Options {
        backend: Backend::Postgres,
        // Long TTLs: the flood outlasts the defaults on a slow machine.
        extra: "[cache]\nttl = \"10m\"\nnegative_ttl = \"10m\"\n".into(),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let scans_before = hash_index_scans(&app.store_url()).await;
    let (key, _) = app.acme_key(&["read"]).await;
    assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    let before = sample(&app.metrics().await, STORE_LOOKUPS);

    // 100k distinct keys, then every tenth of them again, then 1,000 more keys each
    // sent by 16 clients at once (one lookup in flight per key).
    const DISTINCT: usize = 100_000;
    let started = Instant::now();
    let keys = random_keys(DISTINCT);
    let again: Vec<String> = keys.iter().step_by(10).cloned().collect();
    send_all(&app, Arc::new(keys), 64, 401).await;
    send_all(&app, Arc::new(again), 64, 401).await;
    let bursts: Vec<String> = random_keys(1_000).into_iter().flat_map(|k| vec![k; 16]).collect();
    send_all(&app, Arc::new(bursts), 64, 401).await;
    let requests = DISTINCT + DISTINCT / 10 + 16_000;

    // The known key was never pushed out, and still works without a lookup.
    assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    let scrape = app.metrics().await;
    let lookups = sample(&scrape, STORE_LOOKUPS) - before;
    assert_eq!(
        lookups,
        (DISTINCT + 1_000) as u64,
        "one store lookup per distinct unknown key"
    );
    assert_eq!(
        sample(
            &scrape,
            r#"keygate_cache_lookups_total{layer="store",result="hit"}"#
        ),
        1,
        "the valid key was looked up once, before the flood"
    );
    // PostgreSQL agrees: one hash lookup per distinct unknown key, plus the valid
    // key's. (Its statistics arrive asynchronously: wait for them.)
    let expected = i64::try_from(lookups + 1).expect("fits");
    let deadline = Instant::now() + Duration::from_secs(30);
    let scans = loop {
        let scans = hash_index_scans(&app.store_url()).await - scans_before;
        if scans >= expected || Instant::now() > deadline {
            break scans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(scans, expected, "index scans on keys.key_hash");
    println!(
        "flood: {requests} requests with {} distinct unknown keys in {:.1}s: {lookups} store lookups \
         (keygate's metric), {scans} hash-index scans (PostgreSQL's statistics)",
        DISTINCT + 1_000,
        started.elapsed().as_secs_f64()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_not_limited_on_the_data_plane_by_default() {
    let app = TestApp::start().await;
    for key in random_keys(30) {
        assert_eq!(code(app.get(ITEMS, &key).await).await, "unknown_api_key");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_failing_is_refused_before_any_lookup_when_configured() {
    let clock = ManualClock::new("2026-05-01T00:00:10Z".parse().expect("time"));
    let app = TestApp::with(Options {
        clock: Some(clock.clone()),
        proxy_extra: "max_failed_auth_per_minute = 5\n".into(),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service");
    let (key, _) = app.acme_key(&["read"]).await;
    // Requests without a key, and refusals of a valid key, are not failed attempts.
    for _ in 0..10 {
        let resp = app.client.get(app.url(ITEMS)).send().await.expect("request");
        assert_eq!(code(resp).await, "missing_api_key");
        assert_eq!(
            code(app.get("/v1/orgs/beta/items/1", &key).await).await,
            "org_mismatch"
        );
    }
    let bad = random_keys(6);
    let typo = format!("{}x", &key[..key.len() - 1]);
    for k in bad.iter().take(4).chain([&typo]) {
        assert_eq!(app.get(ITEMS, k).await.status(), 401);
    }
    let before = sample(&app.metrics().await, STORE_LOOKUPS);
    // The sixth failure this minute is refused before any lookup — a valid key from
    // the same address too, until the minute ends.
    for k in [&bad[5], &key] {
        let resp = app.get(ITEMS, k).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "50");
        assert_eq!(code(resp).await, "too_many_failed_attempts");
    }
    let scrape = app.metrics().await;
    assert_eq!(sample(&scrape, STORE_LOOKUPS), before, "no lookup while refused");
    assert_eq!(
        sample(
            &scrape,
            r#"keygate_requests_total{code="too_many_failed_attempts",route="none"}"#
        ),
        2
    );
    clock.advance(chrono::Duration::seconds(50));
    assert_eq!(app.get(ITEMS, &key).await.status(), 200, "a new minute");
    assert_eq!(app.echo.hits(), 1);
    app.stop().await;
}
