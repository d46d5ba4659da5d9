//! In front of an API with its own login: `other_credentials = "pass"` forwards
//! requests without a keygate-shaped key untouched; a keygate-shaped key is always
//! verified; keys in a query parameter are stripped and never logged.
//!
//! `cargo test --test coexist -- --nocapture` prints the table of cases.

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};

use common::{Options, TestApp};
use keygate::keys::format::{Format, RANDOM_LEN};
use keygate::manage::NewKey;
use serde_json::Value;

const ROUTES: &str = r#"
[[route]]
name = "dashboard"
path = "/v1/dash/**"
scopes = ["read"]
other_credentials = "pass"

[[route]]
name = "strict"
path = "/v1/strict/**"
scopes = ["read"]

[[route]]
name = "links"
path = "/v1/links/**"
scopes = ["read"]
key_query_param = "api_key"
"#;

const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2lnbmF0dXJl";

/// What the upstream saw, or the refusal.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Forwarded: `X-Keygate-Auth-Method`, the `Authorization` it received, the
    /// query it received.
    Upstream {
        auth_method: String,
        authorization: Option<String>,
        query: Option<String>,
    },
    /// Refused by keygate: status and code.
    Refused(u16, String),
}

async fn send(app: &TestApp, target: &str, headers: &[(&str, &str)]) -> Seen {
    let client = reqwest::Client::new();
    let mut req = client.get(app.url(target));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("JSON body");
    if status != 200 {
        return Seen::Refused(status, body["error"]["code"].as_str().unwrap_or("?").to_owned());
    }
    let header = |name: &str| -> Vec<String> {
        body["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .filter(|h| h[0].as_str() == Some(name))
            .map(|h| h[1].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let methods = header("x-keygate-auth-method");
    assert_eq!(methods.len(), 1, "exactly one auth method header: {methods:?}");
    assert!(
        header("x-keygate-key-id").len() <= 1,
        "a client-sent key id never reaches the upstream"
    );
    Seen::Upstream {
        auth_method: methods[0].clone(),
        authorization: header("authorization").into_iter().next(),
        query: body["query"].as_str().map(str::to_owned),
    }
}

/// Route kind (for the printout), target, what is sent, headers, expectation.
type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>, Seen);

fn forwarded(auth_method: &str, authorization: Option<&str>) -> Seen {
    Seen::Upstream {
        auth_method: auth_method.into(),
        authorization: authorization.map(str::to_owned),
        query: None,
    }
}

fn refused(status: u16, code: &str) -> Seen {
    Seen::Refused(status, code.into())
}

async fn app() -> TestApp {
    TestApp::with(Options {
        extra: ROUTES.into(),
        ..Options::default()
    })
    .await
    .expect("sqlite app")
}

async fn key(app: &TestApp, name: &str) -> (String, keygate::keys::KeyRecord) {
    app.key(NewKey {
        name: name.into(),
        scopes: vec!["read".into()],
        quota_limit: Some(7),
        ..NewKey::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_credentials_pass_forwards_foreign_credentials_and_verifies_every_keygate_key() {
    let app = app().await;
    let (good, _) = key(&app, "good").await;
    let (revoked, revoked_record) = key(&app, "revoked").await;
    let (paused, paused_record) = key(&app, "paused").await;
    let keys = app.app().keys();
    keys.revoke(revoked_record.id, &"tests".into())
        .await
        .expect("revoke");
    keys.pause(paused_record.id, &"tests".into())
        .await
        .expect("pause");
    let format = Format::new("kg", "live").expect("format");
    let unknown = format.assemble("live", &"U".repeat(RANDOM_LEN));
    let other_env = format.assemble("test", &"T".repeat(RANDOM_LEN));
    let mut typo = good.clone();
    let last = typo.pop().expect("char");
    typo.push(if last == 'A' { 'B' } else { 'A' });
    let bearer = |k: &str| format!("Bearer {k}");
    let (jwt, good_b, typo_b) = (bearer(JWT), bearer(&good), bearer(&typo));
    let (revoked_b, paused_b, unknown_b, env_b) = (
        bearer(&revoked),
        bearer(&paused),
        bearer(&unknown),
        bearer(&other_env),
    );
    let good_query = format!("/v1/links/1?api_key={good}&page=2");
    let only_query = format!("/v1/links/1?api_key={good}");
    let encoded_name = format!("/v1/links/1?api%5Fkey={good}");
    let twice = format!("/v1/links/1?api_key={good}&api_key={good}");
    let revoked_query = format!("/v1/links/1?api_key={revoked}");

    let cases: Vec<Case<'_>> = vec![
        (
            "pass",
            "/v1/dash/1",
            "JWT bearer",
            vec![("authorization", &jwt)],
            forwarded("none", Some(&jwt)),
        ),
        (
            "reject",
            "/v1/strict/1",
            "JWT bearer",
            vec![("authorization", &jwt)],
            refused(401, "not_an_api_key"),
        ),
        (
            "pass",
            "/v1/dash/1",
            "session cookie only",
            vec![("cookie", "session=s3cr3t")],
            forwarded("none", None),
        ),
        (
            "reject",
            "/v1/strict/1",
            "session cookie only",
            vec![("cookie", "session=s3cr3t")],
            refused(401, "missing_api_key"),
        ),
        ("pass", "/v1/dash/1", "nothing", vec![], forwarded("none", None)),
        (
            "pass",
            "/v1/dash/1",
            "opaque bearer token",
            vec![("authorization", "Bearer opaque-123")],
            forwarded("none", Some("Bearer opaque-123")),
        ),
        (
            "pass",
            "/v1/dash/1",
            "Basic credentials",
            vec![("authorization", "Basic dXNlcjpwdw==")],
            forwarded("none", Some("Basic dXNlcjpwdw==")),
        ),
        (
            "pass",
            "/v1/dash/1",
            "foreign X-API-Key",
            vec![("x-api-key", "their-own-key")],
            forwarded("none", None),
        ),
        (
            "pass",
            "/v1/dash/1",
            "valid keygate key",
            vec![("authorization", &good_b)],
            forwarded("api_key", None),
        ),
        (
            "reject",
            "/v1/strict/1",
            "valid keygate key",
            vec![("authorization", &good_b)],
            forwarded("api_key", None),
        ),
        (
            "pass",
            "/v1/dash/1",
            "revoked keygate key",
            vec![("authorization", &revoked_b)],
            refused(401, "key_revoked"),
        ),
        (
            "pass",
            "/v1/dash/1",
            "paused keygate key",
            vec![("authorization", &paused_b)],
            refused(401, "key_paused"),
        ),
        (
            "pass",
            "/v1/dash/1",
            "unknown keygate key",
            vec![("authorization", &unknown_b)],
            refused(401, "unknown_api_key"),
        ),
        (
            "pass",
            "/v1/dash/1",
            "bad-checksum keygate key",
            vec![("authorization", &typo_b)],
            refused(401, "malformed_api_key"),
        ),
        (
            "pass",
            "/v1/dash/1",
            "keygate key of env test",
            vec![("authorization", &env_b)],
            refused(401, "wrong_environment"),
        ),
        (
            "pass",
            "/v1/dash/1",
            "revoked key in X-API-Key",
            vec![("x-api-key", &revoked)],
            refused(401, "key_revoked"),
        ),
        (
            "pass",
            "/v1/dash/1",
            "JWT + keygate key",
            vec![("authorization", &jwt), ("x-api-key", &good)],
            refused(400, "ambiguous_credentials"),
        ),
        (
            "pass",
            "/v1/dash/1",
            "JWT + spoofed Auth-Method api_key, Key-Id",
            vec![
                ("authorization", &jwt),
                ("x-keygate-auth-method", "api_key"),
                ("x-keygate-key-id", "forged"),
            ],
            forwarded("none", Some(&jwt)),
        ),
        (
            "reject",
            "/v1/strict/1",
            "key + spoofed Auth-Method none",
            vec![("authorization", &good_b), ("x_keygate_auth_method", "none")],
            forwarded("api_key", None),
        ),
        (
            "query",
            &good_query,
            "key in ?api_key=",
            vec![],
            Seen::Upstream {
                auth_method: "api_key".into(),
                authorization: None,
                query: Some("page=2".into()),
            },
        ),
        (
            "query",
            &only_query,
            "key alone in ?api_key=",
            vec![],
            forwarded("api_key", None),
        ),
        (
            "query",
            &encoded_name,
            "key in ?api%5Fkey=",
            vec![],
            forwarded("api_key", None),
        ),
        (
            "query",
            &good_query,
            "key in header and query",
            vec![("authorization", &good_b)],
            refused(400, "ambiguous_credentials"),
        ),
        (
            "query",
            &twice,
            "key twice in the query",
            vec![],
            refused(400, "ambiguous_credentials"),
        ),
        (
            "query",
            "/v1/links/1?api_key=hello",
            "not a key in ?api_key=",
            vec![],
            refused(401, "malformed_api_key"),
        ),
        (
            "query",
            &revoked_query,
            "revoked key in ?api_key=",
            vec![],
            refused(401, "key_revoked"),
        ),
        (
            "query",
            "/v1/links/1?page=2",
            "nothing (reject route)",
            vec![],
            refused(401, "missing_api_key"),
        ),
    ];

    let hits_before = app.echo.hits();
    let mut failures = Vec::new();
    let mut forwarded_count = 0;
    println!(
        "{:<7} {:<44} {:<36} upstream saw / refusal",
        "route", "credentials sent", "expected"
    );
    for (route, target, what, headers, expected) in &cases {
        let seen = send(&app, target, headers).await;
        if matches!(seen, Seen::Upstream { .. }) {
            forwarded_count += 1;
        }
        let shown = match &seen {
            Seen::Upstream {
                auth_method,
                authorization,
                query,
            } => format!(
                "200 auth-method={auth_method} authorization={} query={}",
                authorization
                    .as_deref()
                    .map_or("stripped/none", |a| if a.contains("kg_") { "KEY!" } else { a }),
                query.as_deref().unwrap_or("-")
            ),
            Seen::Refused(status, code) => format!("{status} {code}"),
        };
        let verdict = if seen == *expected { "ok" } else { "MISMATCH" };
        println!(
            "{route:<7} {what:<44} {:<36} {shown}  {verdict}",
            match expected {
                Seen::Upstream { auth_method, .. } => format!("200, auth-method {auth_method}"),
                Seen::Refused(status, code) => format!("{status} {code}"),
            }
        );
        if seen != *expected {
            failures.push(format!("{route} {what}: expected {expected:?}, saw {seen:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        app.echo.hits() - hits_before,
        forwarded_count,
        "refused requests never reach the upstream"
    );
    // The API's own X-API-Key passes untouched on a pass route; a keygate key there is
    // taken out before forwarding.
    let client = reqwest::Client::new();
    let theirs = client
        .get(app.url("/v1/dash/1"))
        .header("x-api-key", "their-own-key")
        .send()
        .await
        .expect("request");
    let theirs = common::received(theirs).await;
    assert!(
        theirs.contains(&("x-api-key".into(), "their-own-key".into())),
        "{theirs:?}"
    );
    let ours = client
        .get(app.url("/v1/dash/1"))
        .header("x-api-key", &good)
        .send()
        .await
        .expect("request");
    let ours = common::received(ours).await;
    assert!(ours.iter().all(|(name, _)| name != "x-api-key"), "{ours:?}");
    // The good key (quota 7) paid for its seven forwarded requests (six in the table,
    // one above) and for nothing passed through: the eighth is over its quota.
    let over = app.get("/v1/dash/1", &good).await;
    assert_eq!(
        over.status(),
        429,
        "the good key's quota is used up by exactly its requests"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_key_is_stripped_and_never_logged_and_explain_names_the_auth_method() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = common::Echo::start().await;
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\n[store]\nurl = \"sqlite://{}/k.db\"\n{ROUTES}",
            echo.addr,
            dir.path().display()
        ),
    )
    .expect("config");
    let key = common::create_key_with_cli(&config, &["--name", "link", "--scopes", "read"]);
    let logs = Arc::new(Mutex::new(String::new()));
    let (child, addr) = common::serve_process(&config, "info", Arc::clone(&logs));
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("http://{addr}/v1/links/7?api_key={key}&page=2"))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.expect("echo");
    assert_eq!(
        body["query"], "page=2",
        "the key parameter is removed before forwarding"
    );
    let refused = client
        .get(format!("http://{addr}/v1/links/7?api_key={key}"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 400);
    assert!(
        !refused.text().await.expect("body").contains(&key),
        "no key in the error body"
    );
    // The access lines are written before the responses; give the writer a moment.
    let mut access = Vec::new();
    for _ in 0..50 {
        access = logs
            .lock()
            .expect("logs")
            .lines()
            .filter(|l| l.contains("keygate::access"))
            .map(str::to_owned)
            .collect();
        if access.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    common::terminate(child);
    let all = logs.lock().expect("logs").clone();
    for line in &access {
        println!("{line}");
    }
    assert_eq!(access.len(), 2, "two access lines: {all}");
    for line in &access {
        let v: Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["fields"]["query"], "api_key=[redacted]", "{line}");
        assert_eq!(v["fields"]["path"], "/v1/links/7", "{line}");
    }
    let first: Value = serde_json::from_str(&access[0]).expect("JSON line");
    assert_eq!(first["fields"]["auth"], "api_key");
    assert!(!all.contains(&key), "the key appears in no log line");
    assert!(!all.contains(&key[8..20]), "no part of the key's secret either");

    // explain says how the request would authenticate.
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "list", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("keys list");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("list JSON");
    let id = listed["items"][0]["id"].as_str().expect("id").to_owned();
    let explain = |path: &str, json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.args(["explain", "--config"])
            .arg(&config)
            .args(["--key-id", &id]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.args(["GET", path]).output().expect("explain");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain("/v1/dash/1", false);
    println!("{text}");
    assert!(text.contains("auth:      api_key"), "{text}");
    assert!(
        text.contains("passes the request to the API's own login"),
        "{text}"
    );
    let json: Value = serde_json::from_str(&explain("/v1/links/1", true)).expect("explain JSON");
    assert_eq!(json["auth_method"], "api_key");
    assert_eq!(json["route"]["key_query_param"], "api_key");
    assert_eq!(json["route"]["other_credentials"], "reject");
}
