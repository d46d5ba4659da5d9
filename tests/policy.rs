//! Abuse limits: per-key rate limits (a token bucket beside the quota, in-process or
//! shared through Redis within a stated overshoot) and per-key IP allowlists (the
//! client address from the socket, or from `X-Forwarded-For` only behind a trusted
//! proxy), on the reverse proxy, forward-auth, the admin API and the CLI.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::services::RedisServer;
use common::{Backend, Options, TestApp, code};
use keygate::clock::ManualClock;
use keygate::keys::record::parse_network;
use keygate::keys::{Rate, Restrictions};
use keygate::manage::NewKey;
use serde_json::{Value, json};

const ITEMS: &str = "/v1/orgs/acme/items/1";

fn acme(restrictions: Restrictions) -> NewKey {
    NewKey {
        name: "policy".into(),
        org_id: Some("acme".into()),
        scopes: vec!["read".into()],
        restrictions,
        ..NewKey::default()
    }
}

fn rate(s: &str) -> Option<Rate> {
    Some(Rate::parse(s).expect("a valid rate"))
}

fn allowed(nets: &[&str]) -> Vec<ipnet::IpNet> {
    nets.iter()
        .map(|n| parse_network(n).expect("a network"))
        .collect()
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map_or_else(String::new, |v| v.to_str().expect("ascii").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_admits_the_burst_then_refuses_with_rate_limited_and_recovers() {
    let clock = ManualClock::new("2026-05-01T00:00:10Z".parse().expect("time"));
    let app = TestApp::with(Options {
        clock: Some(clock.clone()),
        extra: "[rate_limit]\nper_key = \"2/s\"\n".into(),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service");
    let (own, _) = app
        .key(acme(Restrictions {
            rate_limit: rate("3/m"),
            ..Restrictions::default()
        }))
        .await;
    let (default, _) = app.key(acme(Restrictions::default())).await;

    // The key's own 3/m: a burst of three, the headers describing the tighter limit.
    for remaining in ["2", "1", "0"] {
        let resp = app.get(ITEMS, &own).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "ratelimit-limit"), "3");
        assert_eq!(header(&resp, "ratelimit-remaining"), remaining);
    }
    let hits = app.echo.hits();
    let refused = app.get(ITEMS, &own).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "20", "one token every 20 s");
    assert_eq!(header(&refused, "ratelimit-limit"), "3");
    assert_eq!(header(&refused, "ratelimit-remaining"), "0");
    assert_eq!(header(&refused, "ratelimit-reset"), "20");
    let body: Value = refused.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        app.echo.hits(),
        hits,
        "a refused request never reaches the upstream"
    );

    clock.advance(chrono::Duration::seconds(19));
    assert_eq!(code(app.get(ITEMS, &own).await).await, "rate_limited");
    clock.advance(chrono::Duration::seconds(1));
    let resp = app.get(ITEMS, &own).await;
    assert_eq!(resp.status(), 200, "a token is back after 20 s");
    assert_eq!(code(app.get(ITEMS, &own).await).await, "rate_limited");

    // The configured default, 2/s, for the key without its own.
    for _ in 0..2 {
        assert_eq!(app.get(ITEMS, &default).await.status(), 200);
    }
    let refused = app.get(ITEMS, &default).await;
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(code(refused).await, "rate_limited");
    clock.advance(chrono::Duration::milliseconds(500));
    assert_eq!(app.get(ITEMS, &default).await.status(), 200);
    assert_eq!(code(app.get(ITEMS, &default).await).await, "rate_limited");

    // Refusals cost no quota: 3 + 1 + 2 + 1 requests were admitted, 7 units used.
    clock.advance(chrono::Duration::seconds(60));
    let resp = app.get(ITEMS, &own).await;
    assert_eq!(
        header(&resp, "ratelimit-limit"),
        "3",
        "the rate limit is still the tighter"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("code=\"rate_limited\""),
        "refusals are counted by code"
    );
    app.stop().await;
}

/// Two replicas sharing Redis, 64 concurrent clients over both, one key of 50/s for
/// about two seconds: no more than the bucket, the rate over the elapsed time and
/// one lease period's worth of the rate (README: Rate limits) get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_stay_within_the_stated_overshoot() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let Some(a) = TestApp::with(Options {
        backend: Backend::Postgres,
        redis: Some(redis.url()),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let b = a.replica().await;
    let (key, _) = a
        .key(acme(Restrictions {
            rate_limit: rate("50/s"),
            ..Restrictions::default()
        }))
        .await;
    let calls_before = evalsha_calls(&redis.url()).await;
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let url = if i % 2 == 0 { a.url(ITEMS) } else { b.url(ITEMS) };
            let client = a.client.clone();
            let key = key.clone();
            let (admitted, refused) = (Arc::clone(&admitted), Arc::clone(&refused));
            tokio::spawn(async move {
                while started.elapsed() < run_for {
                    let resp = client.get(&url).bearer_auth(&key).send().await.expect("request");
                    match resp.status().as_u16() {
                        200 => admitted.fetch_add(1, Ordering::SeqCst),
                        429 => refused.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected status {other}"),
                    };
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::SeqCst);
    let refused = refused.load(Ordering::SeqCst);
    let calls = evalsha_calls(&redis.url()).await - calls_before;
    // The bound: 50 (the burst) + 50/s × (elapsed + 0.1 s lease period), + 1 for rounding.
    let bound = 50.0 + 50.0 * (elapsed + 0.1) + 1.0;
    let exact = 50.0 + 50.0 * elapsed;
    eprintln!(
        "rate 50/s, 2 replicas, 64 clients, {elapsed:.2} s: {admitted} admitted, {refused} refused; \
         a single exact bucket admits at most {exact:.0}, the stated bound is {bound:.0} \
         (overshoot {:+.0}); {calls} Redis script calls for {} requests ({:.3} per request)",
        admitted as f64 - exact,
        admitted + refused,
        calls as f64 / (admitted + refused) as f64,
    );
    assert!(
        (admitted as f64) <= bound,
        "{admitted} admitted in {elapsed:.2} s is over the stated bound {bound:.0}"
    );
    assert!(
        admitted as f64 >= 50.0 + 50.0 * elapsed * 0.5,
        "{admitted} admitted in {elapsed:.2} s: the replicas refuse far more than the rate asks"
    );
    assert!(refused > admitted, "the clients asked for far more than 50/s");
    assert_eq!(a.echo.hits() + b.echo.hits(), admitted);
    b.stop().await;
    a.stop().await;
}

/// Script calls so far (`INFO commandstats`: every EVALSHA / EVAL).
async fn evalsha_calls(url: &str) -> u64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_allowlist_believes_x_forwarded_for_only_from_a_trusted_proxy() {
    let direct = TestApp::start().await;
    let behind = TestApp::with(Options {
        extra: "[clients]\ntrusted_proxies = [\"127.0.0.1/32\"]\n".into(),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service");
    for app in [&direct, &behind] {
        let (loopback, _) = app
            .key(acme(Restrictions {
                allowed_ips: allowed(&["127.0.0.1"]),
                ..Restrictions::default()
            }))
            .await;
        let (office, _) = app
            .key(acme(Restrictions {
                allowed_ips: allowed(&["10.0.0.0/8", "2001:db8::/32"]),
                ..Restrictions::default()
            }))
            .await;
        let trusted = std::ptr::eq(app, &behind);
        // (key, X-Forwarded-For, expected) — 127.0.0.1 is the socket peer throughout.
        let rows: [(&str, &str, Option<&str>, u16); 7] = [
            ("loopback", &loopback, None, 200),
            ("office", &office, None, 403),
            // A spoofed header from an untrusted peer is ignored; behind the trusted
            // proxy the header names the client.
            (
                "office",
                &office,
                Some("10.1.2.3"),
                if trusted { 200 } else { 403 },
            ),
            (
                "loopback",
                &loopback,
                Some("10.1.2.3"),
                if trusted { 403 } else { 200 },
            ),
            // What the client wrote left of the proxy's entry is never believed.
            ("office", &office, Some("10.1.2.3, 192.0.2.9"), 403),
            (
                "office",
                &office,
                Some("[2001:db8::7]:4711"),
                if trusted { 200 } else { 403 },
            ),
            ("office", &office, Some("not-an-address"), 403),
        ];
        for (name, key, xff, expected) in rows {
            let hits = app.echo.hits();
            let mut req = app.client.get(app.url(ITEMS)).bearer_auth(key);
            if let Some(xff) = xff {
                req = req.header("x-forwarded-for", xff);
            }
            let resp = req.send().await.expect("request");
            let what = format!("trusted={trusted} key={name} xff={xff:?}");
            assert_eq!(resp.status(), expected, "{what}");
            if expected == 403 {
                let body: Value = resp.json().await.expect("JSON error");
                assert_eq!(body["error"]["code"], "ip_not_allowed", "{what}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("this API key may not be used from ")),
                    "{what}: {body}"
                );
                assert_eq!(app.echo.hits(), hits, "{what}: never forwarded");
            }
        }
        // Forward-auth: the calling proxy is the peer; its X-Forwarded-For names the
        // client under the same rule.
        let resp = app
            .client
            .get(app.url("/_keygate/auth"))
            .header("x-original-method", "GET")
            .header("x-original-uri", ITEMS)
            .header("x-forwarded-for", "10.9.8.7")
            .bearer_auth(&office)
            .send()
            .await
            .expect("forward-auth");
        assert_eq!(
            resp.status(),
            if trusted { 200 } else { 403 },
            "forward-auth trusted={trusted}"
        );
    }
    direct.stop().await;
    behind.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_sets_changes_and_shows_rate_limits_and_allowlists() {
    let app = TestApp::start().await;
    let admin = app.admin_key().await;
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = app
            .client
            .request(method, app.admin_url(path))
            .bearer_auth(&admin);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let created = call(
        reqwest::Method::POST,
        "/v1/keys",
        Some(json!({
            "name": "partner", "org": "acme", "scopes": ["read"],
            "restrictions": {"read_only": true},
            "allowed_ips": ["10.1.2.3/8", "2001:db8::1"], "rate_limit": "10/s"
        })),
    )
    .await
    .expect("create");
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("JSON");
    assert_eq!(created["allowed_ips"], json!(["10.0.0.0/8", "2001:db8::1/128"]));
    assert_eq!(created["rate_limit"], "10/s");
    let id = created["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/keys/{id}");

    // Changing the route restrictions leaves the allowlist and the rate alone.
    let resp = call(
        reqwest::Method::PATCH,
        &path,
        Some(json!({"restrictions": {"read_only": false}})),
    )
    .await
    .expect("patch");
    let view: Value = resp.json().await.expect("JSON");
    assert_eq!(view["restrictions"]["read_only"], false);
    assert_eq!(view["allowed_ips"], json!(["10.0.0.0/8", "2001:db8::1/128"]));
    assert_eq!(view["rate_limit"], "10/s");
    let resp = call(
        reqwest::Method::PATCH,
        &path,
        Some(json!({"allowed_ips": [], "rate_limit": null})),
    )
    .await
    .expect("patch");
    let view: Value = resp.json().await.expect("JSON");
    assert_eq!(view["allowed_ips"], json!([]));
    assert_eq!(view["rate_limit"], Value::Null);
    let key = created["key"].as_str().expect("key");
    assert_eq!(app.get(ITEMS, key).await.status(), 200, "open again");

    for (body, message) in [
        (json!({"rate_limit": "10/d"}), "rate_limit: `10/d` is not a rate"),
        (json!({"rate_limit": "0/s"}), "rate_limit: `0/s` is not a rate"),
        (
            json!({"allowed_ips": ["10.0.0.0/33"]}),
            "allowed_ips: `10.0.0.0/33` is not",
        ),
        (
            json!({"allowed_ips": ["example.com"]}),
            "allowed_ips: `example.com` is not",
        ),
    ] {
        let resp = call(reqwest::Method::PATCH, &path, Some(body.clone()))
            .await
            .expect("patch");
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.expect("JSON");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message)),
            "{body}: {err}"
        );
    }
    let view: Value = call(reqwest::Method::GET, &path, None)
        .await
        .expect("get")
        .json()
        .await
        .expect("JSON");
    assert_eq!(view["allowed_ips"], json!([]), "a refused change changes nothing");
    app.stop().await;
}

#[test]
fn the_cli_sets_and_clears_rate_limits_and_allowlists() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!("[store]\nurl = \"sqlite://{}/k.db\"\n", dir.path().display()),
    )
    .expect("config");
    let keygate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("keygate runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, out, err) = keygate(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--rate-limit",
        "600/m",
        "--allowed-ips",
        "192.0.2.0/24,2001:db8::/32",
        "--json",
    ]);
    assert_eq!(status, Some(0), "{err}");
    let created: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(created["rate_limit"], "600/m");
    assert_eq!(created["allowed_ips"], json!(["192.0.2.0/24", "2001:db8::/32"]));
    let id = created["id"].as_str().expect("id");

    let (status, out, _) = keygate(&["keys", "show", id]);
    assert_eq!(status, Some(0));
    assert!(out.contains("allowed IPs:  192.0.2.0/24,2001:db8::/32"), "{out}");
    assert!(out.contains("rate limit:   600/m"), "{out}");

    let (status, out, err) = keygate(&[
        "keys",
        "update",
        id,
        "--rate-limit",
        "default",
        "--allowed-ips",
        "",
        "--json",
    ]);
    assert_eq!(status, Some(0), "{err}");
    let updated: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(updated["rate_limit"], Value::Null);
    assert_eq!(updated["allowed_ips"], json!([]));

    let (status, _, err) = keygate(&["keys", "update", id, "--rate-limit", "fast"]);
    assert_eq!(status, Some(1));
    assert!(err.contains("--rate-limit `fast` is not a rate"), "{err}");
    let (status, _, err) = keygate(&["keys", "create", "--name", "x", "--allowed-ips", "10.0.0.300"]);
    assert_eq!(status, Some(1));
    assert!(err.contains("--allowed-ips `10.0.0.300` is not"), "{err}");
}
