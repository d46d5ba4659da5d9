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

both_stores!(the_quota_renews_with_the_calendar_month_and_retry_after_says_when);
async fn the_quota_renews_with_the_calendar_month_and_retry_after_says_when(backend: Backend) {
    let start: DateTime<Utc> = "2026-03-31T23:59:00Z".parse().expect("time");
    let clock = ManualClock::new(start);
    let Some(app) = TestApp::with(Options {
        backend,
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await
    else {
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
