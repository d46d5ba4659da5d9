//! The data plane end to end: refusals, identity headers, org binding, routes,
//! streaming, upstream failures.

#[macro_use]
mod common;

use chrono::{Duration, Utc};
use common::{Backend, Options, TestApp, code, received};
use keygate::keys::{ApiKey, Format, Restrictions};
use keygate::manage::NewKey;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn acme(scopes: &[&str]) -> NewKey {
    NewKey {
        name: "k".into(),
        org_id: Some("acme".into()),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..NewKey::default()
    }
}

struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path,
        headers,
        status,
        code,
    }
}

fn bearer(key: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {key}"))]
}

both_stores!(every_refusal_has_its_status_code_and_json_and_reaches_no_upstream);
async fn every_refusal_has_its_status_code_and_json_and_reaches_no_upstream(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (read, _) = app.acme_key(&["read"]).await;
    let (revoked, r) = app.acme_key(&["read"]).await;
    app.app()
        .keys()
        .revoke(r.id, &"tests".into())
        .await
        .expect("revoke");
    let (paused, p) = app.acme_key(&["read"]).await;
    app.app()
        .keys()
        .pause(p.id, &"tests".into())
        .await
        .expect("pause");
    let (expired, _) = app
        .key(NewKey {
            expires_at: Some(Utc::now() - Duration::seconds(1)),
            ..acme(&["read"])
        })
        .await;
    let (test_env, _) = app
        .key(NewKey {
            environment: Some("test".into()),
            ..acme(&["read"])
        })
        .await;
    let (beta, _) = app
        .key(NewKey {
            org_id: Some("beta".into()),
            ..acme(&["read"])
        })
        .await;
    let (read_only, _) = app
        .key(NewKey {
            restrictions: Restrictions {
                read_only: true,
                ..Restrictions::default()
            },
            ..acme(&["read", "write"])
        })
        .await;
    let (one_route, _) = app
        .key(NewKey {
            restrictions: Restrictions {
                routes: vec!["read-items".into()],
                ..Restrictions::default()
            },
            ..acme(&["read", "execute"])
        })
        .await;
    let (no_quota, _) = app
        .key(NewKey {
            quota_limit: Some(0),
            ..acme(&["read"])
        })
        .await;
    let format = Format::new("kg", "live").expect("format");
    let unknown = ApiKey::generate(&format, "live").expect("random");
    // The last character changed, so the checksum no longer matches.
    let typo = format!(
        "{}{}",
        &read[..read.len() - 1],
        if read.ends_with('x') { 'y' } else { 'x' }
    );
    let jwt = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl".to_owned();
    let items = "/v1/orgs/acme/items/1";

    let cases = vec![
        case(
            "no credential",
            Method::GET,
            items,
            vec![],
            401,
            "missing_api_key",
        ),
        case(
            "basic auth",
            Method::GET,
            items,
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            401,
            "missing_api_key",
        ),
        case(
            "empty bearer",
            Method::GET,
            items,
            vec![("authorization", "Bearer ".into())],
            401,
            "missing_api_key",
        ),
        case(
            "checksum typo",
            Method::GET,
            items,
            bearer(&typo),
            401,
            "malformed_api_key",
        ),
        case(
            "truncated",
            Method::GET,
            items,
            bearer(&read[..20]),
            401,
            "malformed_api_key",
        ),
        case(
            "foreign token",
            Method::GET,
            items,
            bearer("sk_live_51HabcdefGHIJ"),
            401,
            "malformed_api_key",
        ),
        case("jwt", Method::GET, items, bearer(&jwt), 401, "not_an_api_key"),
        case(
            "test key on live",
            Method::GET,
            items,
            bearer(&test_env),
            401,
            "wrong_environment",
        ),
        case(
            "unknown key",
            Method::GET,
            items,
            bearer(unknown.expose()),
            401,
            "unknown_api_key",
        ),
        case(
            "revoked",
            Method::GET,
            items,
            bearer(&revoked),
            401,
            "key_revoked",
        ),
        case("paused", Method::GET, items, bearer(&paused), 401, "key_paused"),
        case(
            "expired",
            Method::GET,
            items,
            bearer(&expired),
            401,
            "key_expired",
        ),
        case(
            "read key writes",
            Method::POST,
            items,
            bearer(&read),
            403,
            "insufficient_scope",
        ),
        case(
            "read key on report",
            Method::POST,
            "/v1/orgs/acme/reports",
            bearer(&read),
            403,
            "insufficient_scope",
        ),
        case(
            "other org's path",
            Method::GET,
            items,
            bearer(&beta),
            403,
            "org_mismatch",
        ),
        case(
            "read-only key writes",
            Method::DELETE,
            items,
            bearer(&read_only),
            403,
            "key_restricted",
        ),
        case(
            "route allowlist",
            Method::POST,
            "/v1/orgs/acme/reports",
            bearer(&one_route),
            403,
            "key_restricted",
        ),
        case(
            "unmatched path",
            Method::GET,
            "/v2/nothing",
            bearer(&read),
            404,
            "route_not_found",
        ),
        case(
            "quota spent",
            Method::GET,
            items,
            bearer(&no_quota),
            429,
            "quota_exceeded",
        ),
        case(
            "two credentials",
            Method::GET,
            items,
            vec![
                ("authorization", format!("Bearer {read}")),
                ("x-api-key", read.clone()),
            ],
            400,
            "ambiguous_credentials",
        ),
        case(
            "upstream down",
            Method::GET,
            "/v1/down",
            bearer(&read),
            502,
            "upstream_unavailable",
        ),
        case(
            "upstream silent",
            Method::GET,
            "/v1/hang",
            bearer(&read),
            504,
            "upstream_timeout",
        ),
    ];
    let all_keys = [
        &read, &revoked, &paused, &expired, &test_env, &beta, &read_only, &one_route, &no_quota,
    ];
    for c in cases {
        let before = app.echo.hits();
        let mut req = app.client.request(c.method.clone(), app.url(c.path));
        for (k, v) in &c.headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), c.status, "{}", c.what);
        assert_eq!(resp.headers()["content-type"], "application/json", "{}", c.what);
        let request_id = resp.headers()["x-request-id"].to_str().expect("id").to_owned();
        if c.status == 401 {
            assert!(
                resp.headers()["www-authenticate"]
                    .to_str()
                    .expect("ascii")
                    .starts_with("Bearer"),
                "{}",
                c.what
            );
        }
        if c.status == 429 {
            assert!(resp.headers().contains_key("retry-after"), "{}", c.what);
            assert_eq!(resp.headers()["ratelimit-remaining"], "0", "{}", c.what);
        }
        let text = resp.text().await.expect("body");
        for key in all_keys {
            assert!(
                !text.contains(key.as_str()),
                "{}: the key leaked into the error body",
                c.what
            );
        }
        let body: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(body["error"]["code"], c.code, "{}", c.what);
        assert_eq!(body["error"]["request_id"], request_id.as_str(), "{}", c.what);
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            c.what
        );
        assert_eq!(app.echo.hits(), before, "{}: reached the upstream", c.what);
    }
    app.stop().await;
}

both_stores!(revoked_status_can_be_403);
async fn revoked_status_can_be_403(backend: Backend) {
    let Some(app) = TestApp::with(Options {
        backend,
        extra: "[keys]\nrevoked_status = 403\n".into(),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let (key, record) = app.acme_key(&["read"]).await;
    app.app()
        .keys()
        .revoke(record.id, &"tests".into())
        .await
        .expect("revoke");
    let resp = app.get("/v1/orgs/acme/items/1", &key).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(resp).await, "key_revoked");
    app.stop().await;
}

both_stores!(a_valid_key_is_forwarded_with_its_identity_and_without_the_credential);
async fn a_valid_key_is_forwarded_with_its_identity_and_without_the_credential(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, record) = app.acme_key(&["read", "write"]).await;
    let resp = app
        .client
        .get(app.url("/v1/orgs/acme/items/7?page=2"))
        .bearer_auth(&key)
        .header("x-request-id", "trace-123")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["ratelimit-limit"], "1000");
    assert_eq!(resp.headers()["ratelimit-remaining"], "999");
    assert!(
        resp.headers()["ratelimit-reset"]
            .to_str()
            .expect("ascii")
            .parse::<u64>()
            .expect("secs")
            > 0
    );
    assert_eq!(resp.headers()["x-request-id"], "trace-123");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["path"], "/v1/orgs/acme/items/7");
    assert_eq!(body["query"], "page=2");
    let headers: Vec<(String, String)> = serde_json::from_value(body["headers"].clone()).expect("pairs");
    let get = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("x-keygate-key-id"), [record.id.to_string()]);
    assert_eq!(get("x-keygate-key-name"), ["test key"]);
    assert_eq!(get("x-keygate-org-id"), ["acme"]);
    assert_eq!(get("x-keygate-environment"), ["live"]);
    assert_eq!(get("x-keygate-scopes"), ["read,write"]);
    assert_eq!(get("x-keygate-owner"), ["org:acme"]);
    assert_eq!(get("x-keygate-auth-method"), ["api_key"]);
    assert_eq!(get("x-request-id"), ["trace-123"]);
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-forwarded-host"), [app.addr.to_string()]);
    assert_eq!(get("host"), [app.echo.addr.to_string()]);
    assert!(get("authorization").is_empty());
    assert!(!body.to_string().contains(&key), "the key reached the upstream");
    app.stop().await;
}

both_stores!(the_key_header_works_and_is_stripped);
async fn the_key_header_works_and_is_stripped(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, _) = app.acme_key(&["read"]).await;
    let resp = app
        .client
        .get(app.url("/v1/orgs/acme/items/1"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("request");
    let headers = received(resp).await;
    assert!(headers.iter().all(|(k, v)| k != "x-api-key" && !v.contains(&key)));
    app.stop().await;
}

both_stores!(spoofed_identity_headers_never_reach_the_upstream);
async fn spoofed_identity_headers_never_reach_the_upstream(backend: Backend) {
    let Some(app) = TestApp::with(Options {
        backend,
        unmatched: "authenticate",
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let (key, record) = app.acme_key(&["read"]).await;
    let spoofs: &[(&str, &str)] = &[
        ("X-Keygate-Key-Id", "spoof-1"),
        ("x-keygate-key-id", "spoof-2"),
        ("X-KEYGATE-KEY-ID", "spoof-3"),
        ("X_Keygate_Key_Id", "spoof-4"),
        ("x_keygate_key_id", "spoof-5"),
        ("X-Keygate_Key-Id", "spoof-6"),
        ("X_KEYGATE-KEY_ID", "spoof-7"),
        ("X-Keygate-Org-Id", "spoof-8"),
        ("x-keygate-org_id", "spoof-9"),
        ("X-Keygate-Scopes", "spoof-10"),
        ("X_KEYGATE_SCOPES", "spoof-11"),
        ("X-Keygate-Environment", "spoof-12"),
        ("X-Keygate-Key-Name", "spoof-13"),
        ("X-Keygate-Owner", "spoof-14"),
        ("X-Keygate-Auth-Method", "spoof-15"),
        ("X-Keygate-Admin", "spoof-16"),
        ("X-Keygate-", "spoof-17"),
        ("x-keygate-future-field", "spoof-18"),
        ("X-Keygate-Key-Id", "  spoof-19  "),
        ("X-Keygate-Key-Id", "spoof-20"),
        ("X-Keygate-Scopes", "spoof-21,admin"),
        ("x_keygate_auth_method", "spoof-22"),
    ];
    let paths = [
        "/v1/orgs/acme/items/1",
        "/healthz",
        "/v2/unmatched-but-authenticated",
    ];
    for path in paths {
        for (name, value) in spoofs {
            // Each alone, and together with a Connection header naming it.
            for connection in [None, Some(*name)] {
                let mut req = app
                    .client
                    .get(app.url(path))
                    .bearer_auth(&key)
                    .header(*name, *value);
                if let Some(c) = connection {
                    req = req.header("connection", c);
                }
                let headers = received(req.send().await.expect("request")).await;
                for (k, v) in &headers {
                    assert!(
                        !v.contains("spoof-"),
                        "{path}: {name} reached the upstream as {k}: {v}"
                    );
                }
                if path != "/healthz" {
                    let ids: Vec<_> = headers.iter().filter(|(k, _)| k == "x-keygate-key-id").collect();
                    assert_eq!(ids.len(), 1, "{path} {name}");
                    assert_eq!(ids[0].1, record.id.to_string());
                }
            }
        }
        // All at once, duplicates included.
        let mut req = app.client.get(app.url(path)).bearer_auth(&key);
        for (name, value) in spoofs {
            req = req.header(*name, *value);
        }
        let headers = received(req.send().await.expect("request")).await;
        assert!(
            headers.iter().all(|(_, v)| !v.contains("spoof-")),
            "{path}: {headers:?}"
        );
    }
    app.stop().await;
}

both_stores!(public_routes_need_no_key_and_mark_the_request_unauthenticated);
async fn public_routes_need_no_key_and_mark_the_request_unauthenticated(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let headers = received(app.client.get(app.url("/healthz")).send().await.expect("request")).await;
    assert!(headers.contains(&("x-keygate-auth-method".into(), "none".into())));
    assert!(!headers.iter().any(|(k, _)| k == "x-keygate-key-id"));
    app.stop().await;
}

both_stores!(unmatched_paths_can_require_just_a_valid_key);
async fn unmatched_paths_can_require_just_a_valid_key(backend: Backend) {
    let Some(app) = TestApp::with(Options {
        backend,
        unmatched: "authenticate",
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let (key, _) = app.acme_key(&[]).await;
    let resp = app.get("/anything/else", &key).await;
    assert_eq!(
        received(resp)
            .await
            .iter()
            .filter(|(k, _)| k == "x-keygate-key-id")
            .count(),
        1
    );
    let resp = app
        .client
        .get(app.url("/anything/else"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    assert_eq!(code(resp).await, "missing_api_key");
    app.stop().await;
}

both_stores!(org_binding_follows_the_path_not_the_key);
async fn org_binding_follows_the_path_not_the_key(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (acme_key, _) = app.acme_key(&["read"]).await;
    let (platform_key, _) = app
        .key(NewKey {
            org_id: None,
            ..acme(&["read"])
        })
        .await;
    assert_eq!(app.get("/v1/orgs/acme/items/1", &acme_key).await.status(), 200);
    for path in [
        "/v1/orgs/beta/items/1",
        "/v1/orgs/ACME/items/1",
        "/v1/orgs/acme2/items",
    ] {
        let resp = app.get(path, &acme_key).await;
        assert_eq!(resp.status(), 403, "{path}");
        assert_eq!(code(resp).await, "org_mismatch");
    }
    // Percent-encoded org names are compared decoded.
    assert_eq!(app.get("/v1/orgs/%61cme/items/1", &acme_key).await.status(), 200);
    // A key without an org is not a wildcard.
    assert_eq!(
        code(app.get("/v1/orgs/acme/items/1", &platform_key).await).await,
        "org_mismatch"
    );
    app.stop().await;
}

both_stores!(a_route_cost_is_charged_per_request);
async fn a_route_cost_is_charged_per_request(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, _) = app
        .key(NewKey {
            quota_limit: Some(25),
            ..acme(&["read", "execute"])
        })
        .await;
    let post = || {
        app.client
            .post(app.url("/v1/orgs/acme/reports"))
            .bearer_auth(&key)
            .send()
    };
    let first = post().await.expect("request");
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-remaining"], "15");
    assert_eq!(
        post().await.expect("request").headers()["ratelimit-remaining"],
        "5"
    );
    let third = post().await.expect("request");
    assert_eq!(third.status(), 429, "10 more units do not fit in the 5 left");
    // A cheaper request still fits.
    let resp = app.get("/v1/orgs/acme/items/1", &key).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-remaining"], "4");
    app.stop().await;
}

both_stores!(fifty_megabytes_stream_through_both_ways);
async fn fifty_megabytes_stream_through_both_ways(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, _) = app.acme_key(&["read"]).await;
    let body: Vec<u8> = (0..50 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let resp = app
        .client
        .post(app.url("/v1/echo-body"))
        .bearer_auth(&key)
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let back = resp.bytes().await.expect("body");
    assert_eq!(back.len(), body.len());
    assert!(back == body, "the body came back changed");
    app.stop().await;
}

both_stores!(a_client_that_disconnects_cancels_the_upstream_request);
async fn a_client_that_disconnects_cancels_the_upstream_request(backend: Backend) {
    let Some(app) = TestApp::with(Options {
        backend,
        extra: String::new(),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let (key, _) = app.acme_key(&["read"]).await;
    let url = app.url("/v1/hang");
    let request = app.client.get(url).bearer_auth(&key).send();
    // Give up long before keygate's 1 s response timeout.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(300), request).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(800);
    while app.hang.closed() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(app.hang.accepted(), 1);
    assert_eq!(
        app.hang.closed(),
        1,
        "keygate kept the upstream request open after the client left"
    );
    app.stop().await;
}

both_stores!(upstream_connections_are_reused);
async fn upstream_connections_are_reused(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, _) = app.acme_key(&["read"]).await;
    for i in 0..50 {
        let resp = if i % 2 == 0 {
            app.get("/v1/orgs/acme/items/1", &key).await
        } else {
            // A HEAD response has no body at all; its connection must come back too.
            app.client
                .head(app.url("/v1/orgs/acme/items/1"))
                .bearer_auth(&key)
                .send()
                .await
                .expect("request")
        };
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("body");
    }
    assert_eq!(app.echo.hits(), 50);
    // Two workers, one client connection at a time: at most one upstream connection each.
    assert!(
        app.echo.connections() <= 2,
        "{} upstream connections for 50 requests",
        app.echo.connections()
    );
    app.stop().await;
}

both_stores!(ambiguous_paths_are_refused_before_any_lookup);
async fn ambiguous_paths_are_refused_before_any_lookup(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, _) = app.acme_key(&["read"]).await;
    // Sent raw: an HTTP client library would normalise these before sending.
    for path in [
        "/v1/orgs/beta/../acme/items/1",
        "/v1/orgs/acme/items/./1",
        "/v1/orgs/acme%2Fx/items/1",
        "/v1/orgs/acme/items/%2e%2e/x",
        "/v1/orgs/acme//items/1",
        "/v1/orgs/acme/items/a%5Cb",
        "/v1/orgs/acme/items/%25",
        "/v1/orgs/acme\\items/1",
    ] {
        let (status, body) = common::raw_get(app.addr, path, &key).await;
        assert_eq!(status, 400, "{path}");
        assert!(body.contains("\"invalid_path\""), "{path}: {body}");
    }
    assert_eq!(app.echo.hits(), 0);
    app.stop().await;
}

both_stores!(oversized_request_heads_get_431);
async fn oversized_request_heads_get_431(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, _) = app.acme_key(&["read"]).await;
    let head = |extra: String| {
        format!(
            "GET /v1/orgs/acme/items/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    let big = head(format!("X-Big: {}\r\n", "a".repeat(17 * 1024)));
    assert_eq!(common::raw(app.addr, big.as_bytes()).await.0, 431);
    let many = head((0..101).map(|i| format!("X-H{i}: 1\r\n")).collect());
    assert_eq!(common::raw(app.addr, many.as_bytes()).await.0, 431);
    let fine = head((0..80).map(|i| format!("X-H{i}: 1\r\n")).collect());
    assert_eq!(common::raw(app.addr, fine.as_bytes()).await.0, 200);
    assert_eq!(app.echo.hits(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight_and_keeps_their_counts() {
    let app = TestApp::start().await;
    let (key, record) = app.acme_key(&["read"]).await;
    let mut in_flight = Vec::new();
    for _ in 0..10 {
        let (client, url, key) = (reqwest::Client::new(), app.url("/v1/slow"), key.clone());
        in_flight.push(tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // Let them reach the upstream, then shut down while they wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while app.echo.hits() < 10 {
        assert!(std::time::Instant::now() < deadline, "requests did not arrive");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let addr = app.addr;
    // Shut down gracefully (and start again on the same store, to read it).
    let app = app.restart().await;
    for t in in_flight {
        assert_eq!(
            t.await.expect("task").expect("response"),
            200,
            "an in-flight request was cut"
        );
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    // The drained requests were counted and flushed at shutdown.
    let store = app.app().keys().store().clone();
    let now = chrono::Utc::now();
    let start = chrono::TimeZone::with_ymd_and_hms(
        &chrono::Utc,
        chrono::Datelike::year(&now),
        chrono::Datelike::month(&now),
        1,
        0,
        0,
        0,
    )
    .single()
    .expect("month start");
    assert_eq!(
        store.usage(record.id, start.timestamp()).await.expect("usage"),
        10
    );
}

/// `[proxy] idle_timeout` closes a kept-alive client connection that sends no next
/// request; load balancers in front should use a shorter idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_connection_is_closed_after_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::with(Options {
        proxy_extra: "idle_timeout = \"300ms\"\n".into(),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service");
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0; 64 * 1024];
    let n = stream.read(&mut buf).await.expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Kept alive, then closed by keygate once idle for 300 ms (well before 5 s).
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    app.stop().await;
}
