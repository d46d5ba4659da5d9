//! Many replicas: two keygate instances sharing one Redis and one PostgreSQL behave
//! as one system (one quota budget, instant revocation), and survive Redis or
//! PostgreSQL going away.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, TimeZone, Utc};
use common::services::{PgDatabase, RedisServer, Relay};
use common::{Backend, Options, TestApp, code};
use keygate::keys::{ApiKey, Format};
use keygate::manage::NewKey;

const ITEMS: &str = "/v1/orgs/acme/items/1";

fn acme(quota: u64) -> NewKey {
    NewKey {
        name: "replicated".into(),
        org_id: Some("acme".into()),
        scopes: vec!["read".into()],
        quota_limit: Some(quota),
        ..NewKey::default()
    }
}

/// A on PostgreSQL + a private Redis; B is a replica of it.
async fn pair(policy: &'static str) -> Option<(RedisServer, TestApp, TestApp)> {
    let redis = RedisServer::start().await?;
    let a = TestApp::with(Options {
        backend: Backend::Postgres,
        redis: Some(redis.url()),
        on_redis_error: policy,
        ..Options::default()
    })
    .await?;
    let b = a.replica().await;
    Some((redis, a, b))
}

fn month_start() -> i64 {
    let now = Utc::now();
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .expect("month start")
        .timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_quota_exactly() {
    let Some((_redis, a, b)) = pair("local").await else {
        return;
    };
    let (key, _) = a.key(acme(1000)).await;
    let urls = [a.url(ITEMS), b.url(ITEMS)];
    let mut tasks = Vec::new();
    for i in 0..128 {
        let url = urls[i % 2].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut limited) = (0u32, 0u32);
            for _ in 0..10 {
                let resp = client.get(&url).bearer_auth(&key).send().await.expect("request");
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
        let (o, l) = t.await.expect("client");
        ok += o;
        limited += l;
    }
    eprintln!("2 replicas x 64 clients, quota 1000: {ok} admitted, {limited} refused");
    assert_eq!(ok, 1000);
    assert_eq!(limited, 1280 - 1000);
    assert_eq!(a.echo.hits() + b.echo.hits(), 1000);
    assert!(a.echo.hits() > 0 && b.echo.hits() > 0, "both replicas served");
    b.stop().await;
    a.stop().await;
}

/// Quota script calls (EVALSHA/EVAL) Redis has served so far.
async fn quota_calls(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split(['=', ',']).nth(1)?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_quota_needs_few_redis_calls_and_unused_leases_go_back() {
    let Some((redis, a, b)) = pair("local").await else {
        return;
    };
    let (key, record) = a.key(acme(1_000_000)).await;
    let before = quota_calls(&redis).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (client, url, key) = (
            a.client.clone(),
            [a.url(ITEMS), b.url(ITEMS)][i % 2].clone(),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let resp = client.get(&url).bearer_auth(&key).send().await.expect("request");
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let calls = quota_calls(&redis).await - before;
    eprintln!(
        "2 replicas x 16 clients, 3200 requests: {calls} Redis quota calls, {:.4} per request",
        calls as f64 / 3200.0
    );
    assert!(
        calls * 20 < 3200,
        "{calls} calls for 3200 requests: not below 0.05 per request"
    );
    // Leases unused for a second go back: the shared count settles at what was used.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let counter = format!("keygate:quota:{}:{}", record.id, month_start());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used: Option<u64> = redis::AsyncCommands::get(&mut conn, &counter).await.expect("GET");
        if used == Some(3200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shared count {used:?}, want 3200 once leases are back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.stop().await;
    a.stop().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Revokes 200 keys through replica A and measures how long until replica B refuses each.
async fn propagation(a: &TestApp, b: &TestApp, label: &str) -> Duration {
    let mut keys = Vec::new();
    for _ in 0..200 {
        let (key, record) = a.key(acme(1_000_000)).await;
        assert_eq!(b.get(ITEMS, &key).await.status(), 200, "B caches the key first");
        keys.push((key, record.id));
    }
    let mut delays = Vec::new();
    for (key, id) in &keys {
        a.app().keys().revoke(*id, &"tests".into()).await.expect("revoke");
        let revoked = Instant::now();
        loop {
            let resp = b.get(ITEMS, key).await;
            if resp.status() == 401 {
                assert_eq!(code(resp).await, "key_revoked");
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(2),
                "{label}: revoke not seen by B within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(revoked.elapsed());
    }
    delays.sort();
    let (p50, p99) = (percentile(&delays, 0.5), percentile(&delays, 0.99));
    eprintln!(
        "revocation propagation ({label}, {} revokes through A, polled on B): p50 {p50:?}, p99 {p99:?}, max {:?}",
        delays.len(),
        delays[delays.len() - 1]
    );
    p99
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_the_other_replica_within_500ms_via_redis() {
    let Some((_redis, a, b)) = pair("local").await else {
        return;
    };
    let p99 = propagation(&a, &b, "redis pub/sub").await;
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_the_other_replica_within_500ms_via_postgres_notify() {
    let Some(a) = TestApp::on(Backend::Postgres).await else {
        return;
    };
    let b = a.replica().await;
    let p99 = propagation(&a, &b, "postgres NOTIFY, no redis").await;
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_under_load_fails_no_request_and_recovers_within_a_second() {
    let Some((mut redis, a, b)) = pair("local").await else {
        return;
    };
    let (key, record) = a.key(acme(1_000_000)).await;
    let (small, _) = a.key(acme(5)).await;
    assert_eq!(a.get(ITEMS, &key).await.status(), 200);
    assert_eq!(b.get(ITEMS, &key).await.status(), 200);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..16 {
        let url = if i % 2 == 0 { a.url(ITEMS) } else { b.url(ITEMS) };
        let (key, stop) = (key.clone(), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let status = client
                    .get(&url)
                    .bearer_auth(&key)
                    .send()
                    .await
                    .expect("request")
                    .status();
                if status == 200 {
                    ok += 1
                } else {
                    failed.push(status.as_u16())
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Quota is still honoured during the outage (policy local): 5 and no more.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(a.get(ITEMS, &small).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    redis.restart().await;
    let restarted = Instant::now();
    // Recovery: the shared counter is back in Redis (recreated from the store's count
    // and the units charged during the outage) within a second.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let counter = format!("keygate:quota:{}:{}", record.id, month_start());
    loop {
        let value: Option<u64> = redis::AsyncCommands::get(&mut conn, &counter).await.expect("GET");
        if value.is_some_and(|v| v > 0) {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(1),
            "quota not back in Redis within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovered = restarted.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in load {
        let (o, f) = t.await.expect("load task");
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "redis killed under load: {ok} requests served, {} failed, recovered in {recovered:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests for a cached valid key: {failed:?}"
    );
    assert!(ok > 100);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_error_policy_is_honoured() {
    for (policy, expected) in [("deny", 503), ("allow", 200)] {
        let Some((mut redis, a, b)) = pair(policy).await else {
            return;
        };
        let (key, _) = a.key(acme(1)).await;
        assert_eq!(a.get(ITEMS, &key).await.status(), 200);
        redis.kill();
        for _ in 0..3 {
            let resp = a.get(ITEMS, &key).await;
            assert_eq!(resp.status(), expected, "{policy}");
            if expected == 503 {
                assert_eq!(code(resp).await, "quota_unavailable");
            }
        }
        b.stop().await;
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_loses_no_usage_history() {
    let Some((mut redis, a, b)) = pair("local").await else {
        return;
    };
    let (key, record) = a.key(acme(10)).await;
    for i in 0..7 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    }
    // Written back to the store in batches.
    let store = a.app().keys().store().clone();
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.usage(record.id, month_start()).await.expect("usage") < 7 {
        assert!(Instant::now() < deadline, "usage not written back to the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Redis comes back empty: the count continues from the store.
    redis.kill();
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let app = if i % 2 == 0 { &a } else { &b };
        statuses.push(app.get(ITEMS, &key).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_keeps_cached_keys_working() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let relay = Relay::start(PgDatabase::server_addr()).await;
    let options = Options {
        backend: Backend::Postgres,
        store_url: Some(db.url_via(relay.addr)),
        redis: Some(redis.url()),
        ..Options::default()
    };
    let a = TestApp::with(options).await.expect("services checked above");
    let b = a.replica().await;
    let (cached, _) = a.key(acme(1000)).await;
    let (uncached, _) = a.key(acme(1000)).await;
    let format = Format::new("kg", "live").expect("format");
    let unknown = ApiKey::generate(&format, "live").expect("random");
    assert_eq!(
        a.get(ITEMS, &cached).await.status(),
        200,
        "A caches it (L1 and L2)"
    );

    relay.cut();
    let resp = a.get(ITEMS, &cached).await;
    let status = resp.status();
    assert_eq!(
        status,
        200,
        "cached in L1: {}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(
        b.get(ITEMS, &cached).await.status(),
        200,
        "B never saw it: served from L2"
    );
    for key in [uncached.as_str(), unknown.expose()] {
        let resp = a.get(ITEMS, key).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            code(resp).await,
            "auth_unavailable",
            "never a 401 while the store is down"
        );
    }

    relay.restore();
    let restored = Instant::now();
    loop {
        if a.get(ITEMS, &uncached).await.status() == 200 {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(3),
            "no recovery after the store returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "postgres back: uncached key served again after {:?}",
        restored.elapsed()
    );
    assert_eq!(
        code(a.get(ITEMS, unknown.expose()).await).await,
        "unknown_api_key"
    );
    b.stop().await;
    a.stop().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_one_quota_exactly() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let echo = common::Echo::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("keygate.toml");
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nworkers = 1\n\n\
         [store]\nurl = \"{}\"\n\n[redis]\nurl = \"{}\"\n\n\
         [[route]]\nname = \"items\"\npath = \"/v1/orgs/{{org}}/items/**\"\nscopes = [\"read\"]\norg_param = \"org\"\n",
        echo.addr,
        db.url(),
        redis.url()
    );
    std::fs::write(&config, text).expect("config");
    let key = common::create_key_with_cli(&config, &["--name", "shared", "--org", "acme", "--quota", "1000"]);
    let logs = Arc::new(std::sync::Mutex::new(String::new()));
    let (first, addr_a) = common::serve_process(&config, "info", Arc::clone(&logs));
    let (second, addr_b) = common::serve_process(&config, "info", Arc::clone(&logs));
    let mut tasks = Vec::new();
    for i in 0..128 {
        let url = format!("http://{}{ITEMS}", if i % 2 == 0 { &addr_a } else { &addr_b });
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            for _ in 0..10 {
                statuses.push(
                    client
                        .get(&url)
                        .bearer_auth(&key)
                        .send()
                        .await
                        .expect("request")
                        .status()
                        .as_u16(),
                );
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.expect("client"));
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!(
        "2 keygate processes x 64 clients, one Redis + one PostgreSQL, quota 1000: {ok} admitted, {limited} refused"
    );
    assert_eq!((ok, limited), (1000, 280));
    assert_eq!(echo.hits(), 1000);
    common::terminate(first);
    common::terminate(second);
}
