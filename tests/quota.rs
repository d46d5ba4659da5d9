//! Quota: exact under concurrency, persisted across restarts, renewed per period.

#[macro_use]
mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{Backend, Options, TestApp, code};
use keygate::clock::ManualClock;
use keygate::manage::NewKey;

fn limited(limit: u64) -> NewKey {
    NewKey {
        name: "limited".into(),
        org_id: Some("acme".into()),
        scopes: vec!["read".into()],
        quota_limit: Some(limit),
        ..NewKey::default()
    }
}

both_stores!(a_quota_of_n_admits_exactly_n_under_64_concurrent_clients);
async fn a_quota_of_n_admits_exactly_n_under_64_concurrent_clients(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let app = Arc::new(app);
    let (key, _) = app.key(limited(150)).await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let app = Arc::clone(&app);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            // Each client has its own connection pool, so 64 connections are in play.
            let client = reqwest::Client::new();
            let (mut ok, mut limited) = (0, 0);
            for _ in 0..5 {
                let resp = client
                    .get(app.url("/v1/orgs/acme/items/1"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .expect("request");
                match resp.status().as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.expect("client task");
        ok += o;
        limited += l;
    }
    assert_eq!(ok, 150, "admitted");
    assert_eq!(limited, 64 * 5 - 150, "refused");
    assert_eq!(app.echo.hits(), 150, "upstream saw exactly the admitted requests");
    Arc::try_unwrap(app).ok().expect("sole owner").stop().await;
}

both_stores!(a_restart_mid_period_keeps_the_count);
async fn a_restart_mid_period_keeps_the_count(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, record) = app.key(limited(10)).await;
    for _ in 0..4 {
        assert_eq!(app.get("/v1/orgs/acme/items/1", &key).await.status(), 200);
    }
    let app = app.restart().await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(app.get("/v1/orgs/acme/items/1", &key).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    // The batch writer also recorded when the key was last used.
    let app = app.restart().await;
    let stored = app.app().keys().get(record.id).await.expect("record");
    assert!(stored.last_used_at.is_some());
    app.stop().await;
}

/// keygate on `backend` with its clock stopped at `start` (RFC 3339).
async fn app_at(backend: Backend, start: &str) -> Option<(TestApp, ManualClock)> {
    let start: DateTime<Utc> = start.parse().expect("time");
    let clock = ManualClock::new(start);
    let app = TestApp::with(Options {
        backend,
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await?;
    Some((app, clock))
}

both_stores!(the_quota_renews_with_the_calendar_month_and_retry_after_says_when);
async fn the_quota_renews_with_the_calendar_month_and_retry_after_says_when(backend: Backend) {
    let Some((app, clock)) = app_at(backend, "2026-03-31T23:59:00Z").await else {
        return;
    };
    let (key, _) = app.key(limited(2)).await;
    assert_eq!(app.get("/v1/orgs/acme/items/1", &key).await.status(), 200);
    assert_eq!(app.get("/v1/orgs/acme/items/1", &key).await.status(), 200);
    let refused = app.get("/v1/orgs/acme/items/1", &key).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "60");
    assert_eq!(refused.headers()["ratelimit-reset"], "60");
    assert_eq!(refused.headers()["ratelimit-limit"], "2");
    assert_eq!(code(refused).await, "quota_exceeded");
    clock.advance(Duration::seconds(60));
    let renewed = app.get("/v1/orgs/acme/items/1", &key).await;
    assert_eq!(renewed.status(), 200);
    assert_eq!(renewed.headers()["ratelimit-remaining"], "1");
    app.stop().await;
}

both_stores!(a_key_still_cached_when_its_period_ends_starts_the_next_one_afresh);
/// A cached key keeps its period's counter; the next period must not charge it.
async fn a_key_still_cached_when_its_period_ends_starts_the_next_one_afresh(backend: Backend) {
    let Some((app, clock)) = app_at(backend, "2026-03-31T23:59:50Z").await else {
        return;
    };
    let (key, _) = app.key(limited(2)).await;
    assert_eq!(app.get("/v1/orgs/acme/items/1", &key).await.status(), 200);
    assert_eq!(app.get("/v1/orgs/acme/items/1", &key).await.status(), 200);
    assert_eq!(app.get("/v1/orgs/acme/items/1", &key).await.status(), 429);
    // 15 s on: April, and the key is still in L1 (its TTL is 30 s).
    clock.advance(Duration::seconds(15));
    let renewed = app.get("/v1/orgs/acme/items/1", &key).await;
    assert_eq!(renewed.status(), 200);
    assert_eq!(renewed.headers()["ratelimit-remaining"], "1");
    let again = app.get("/v1/orgs/acme/items/1", &key).await;
    assert_eq!(again.headers()["ratelimit-remaining"], "0");
    app.stop().await;
}

both_stores!(refused_requests_do_not_count);
async fn refused_requests_do_not_count(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, _) = app.key(limited(3)).await;
    for _ in 0..5 {
        // Write needs a scope the key lacks: 403, not charged.
        let resp = app
            .client
            .post(app.url("/v1/orgs/acme/items/1"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 403);
    }
    let resp = app.get("/v1/orgs/acme/items/1", &key).await;
    assert_eq!(resp.headers()["ratelimit-remaining"], "2");
    app.stop().await;
}

both_stores!(one_flush_writes_many_keys_and_never_moves_a_count_or_last_use_back);
async fn one_flush_writes_many_keys_and_never_moves_a_count_or_last_use_back(backend: Backend) {
    use keygate::store::{Store, UsageRow};
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(app.key(limited(1_000)).await.1.id);
    }
    let store = Store::open(&app.store_url()).await.expect("store");
    let (period, other_period) = (1_700_000_000, 1_702_592_000);
    let later: DateTime<Utc> = "2026-05-02T10:00:00Z".parse().expect("time");
    let earlier = later - Duration::hours(1);
    let rows = |used: fn(usize) -> u64, start: i64| -> Vec<UsageRow> {
        ids.iter()
            .enumerate()
            .map(|(i, &key_id)| UsageRow {
                key_id,
                period_start: start,
                used: used(i),
            })
            .collect()
    };
    let uses = |at: DateTime<Utc>| ids.iter().map(|&id| (id, at)).collect::<Vec<_>>();
    let mut first = rows(|i| 10 + i as u64, period);
    first.extend(rows(|_| 3, other_period));
    store.flush(&first, &uses(later)).await.expect("first flush");
    // A stale report (a lower count, an older use) changes nothing.
    store
        .flush(&rows(|_| 1, period), &uses(earlier))
        .await
        .expect("stale flush");
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            store.usage(id, period).await.expect("usage"),
            10 + i as u64,
            "key {i}"
        );
        assert_eq!(store.usage(id, other_period).await.expect("usage"), 3, "key {i}");
        let record = store.get(id).await.expect("get").expect("record");
        assert_eq!(record.last_used_at, Some(later), "key {i}");
    }
    // A higher count and a newer use move both forward.
    store
        .flush(&rows(|_| 5_000, period), &uses(later + Duration::minutes(1)))
        .await
        .expect("newer flush");
    assert_eq!(store.usage(ids[0], period).await.expect("usage"), 5_000);
    let record = store.get(ids[299]).await.expect("get").expect("record");
    assert_eq!(record.last_used_at, Some(later + Duration::minutes(1)));
    store.close().await;
    app.stop().await;
}
