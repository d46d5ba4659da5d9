//! The signed identity: with `[identity] signing_key` set, every forwarded request and
//! every forward-auth 200 carries `X-Keygate-Signature`, which the documented
//! verifier (`docs/examples/verify_signature.py`, run here by python3) accepts for
//! the request as the upstream received it and refuses for any change to it.

#[macro_use]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Options, TestApp};
use serde_json::{Value, json};

const SECRET: &str = "test-signing-secret-0123456789abcdef";

async fn signing_app() -> TestApp {
    TestApp::with(Options {
        extra: format!("[identity]\nsigning_key = \"{SECRET}\"\n"),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service")
}

/// What the upstream saw: method, path with query, and headers (lowercase names).
struct Seen {
    method: String,
    target: String,
    headers: serde_json::Map<String, Value>,
}

async fn seen(resp: reqwest::Response) -> Seen {
    assert_eq!(resp.status(), 200, "expected the request to reach the upstream");
    let body: Value = resp.json().await.expect("echo JSON");
    let path = body["path"].as_str().expect("path");
    let target = match body["query"].as_str() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut headers = serde_json::Map::new();
    for pair in body["headers"].as_array().expect("headers") {
        let name = pair[0].as_str().expect("name").to_owned();
        assert!(!headers.contains_key(&name), "{name} reached the upstream twice");
        headers.insert(name, pair[1].clone());
    }
    Seen {
        method: body["method"].as_str().expect("method").to_owned(),
        target,
        headers,
    }
}

/// Runs the documented Python verifier; true when it accepts.
fn python_verifies(
    secret: &str,
    method: &str,
    target: &str,
    headers: &serde_json::Map<String, Value>,
) -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/verify_signature.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 runs (the test command installs it)");
    let input = json!({"secret": secret, "method": method, "target": target, "headers": headers});
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let status = child.wait().expect("wait");
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("the verifier failed to run: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_verifier_accepts_what_the_upstream_saw_and_nothing_else() {
    common::capture_logs();
    let app = signing_app().await;
    let (key, record) = app.acme_key(&["read", "write"]).await;
    let resp = app
        .client
        .post(app.url("/v1/orgs/acme/items/1?x=1&y=%20"))
        .bearer_auth(&key)
        .header("x-request-id", "sig-test-1")
        // A client's own signature is stripped like any identity header.
        .header("X-Keygate-Signature", "t=1,v1=00")
        .send()
        .await
        .expect("request");
    let s = seen(resp).await;
    assert_eq!(s.headers["x-keygate-key-id"], record.id.to_string());
    let signature = s.headers["x-keygate-signature"].as_str().expect("signed");
    assert!(
        signature.starts_with("t=") && signature.contains(",v1="),
        "{signature}"
    );
    assert!(python_verifies(SECRET, &s.method, &s.target, &s.headers));

    // Every covered part, changed on the way, fails verification.
    let mut tampered: Vec<(&str, String, String, serde_json::Map<String, Value>)> = vec![
        (
            "another secret",
            "another-secret-0123456789abcdef-xx".into(),
            s.target.clone(),
            s.headers.clone(),
        ),
        ("method", SECRET.into(), s.target.clone(), s.headers.clone()),
        (
            "path",
            SECRET.into(),
            "/v1/orgs/beta/items/1?x=1&y=%20".into(),
            s.headers.clone(),
        ),
        (
            "query",
            SECRET.into(),
            "/v1/orgs/acme/items/1?x=2&y=%20".into(),
            s.headers.clone(),
        ),
    ];
    for (name, value) in [
        ("x-keygate-org-id", "beta"),
        ("x-keygate-scopes", "read,write,admin"),
        ("x-keygate-key-id", "00000000-0000-0000-0000-000000000000"),
        ("x-keygate-auth-method", "none"),
        ("x-request-id", "sig-test-2"),
        ("x-keygate-signature", "t=1,v1=00"),
    ] {
        let mut headers = s.headers.clone();
        headers.insert(name.into(), value.into());
        tampered.push((name, SECRET.into(), s.target.clone(), headers));
    }
    for (what, secret, target, headers) in tampered {
        let method = if what == "method" {
            "DELETE"
        } else {
            s.method.as_str()
        };
        assert!(
            !python_verifies(&secret, method, &target, &headers),
            "a changed {what} still verified"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_and_forward_auth_answers_are_signed_too() {
    let app = signing_app().await;
    let s = seen(app.client.get(app.url("/healthz")).send().await.expect("request")).await;
    assert_eq!(s.headers["x-keygate-auth-method"], "none");
    assert!(python_verifies(SECRET, "GET", "/healthz", &s.headers));

    // Forward-auth: the signature covers the asked-about request; the asking proxy
    // copies the headers upstream.
    let (key, _) = app.acme_key(&["read"]).await;
    let resp = app
        .client
        .get(app.url("/_keygate/auth"))
        .bearer_auth(&key)
        .header("x-original-method", "GET")
        .header("x-original-uri", "/v1/orgs/acme/items/7?full=1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let headers: serde_json::Map<String, Value> = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), Value::from(v.to_str().expect("ascii"))))
        .collect();
    assert!(headers.contains_key("x-keygate-signature"));
    assert!(python_verifies(
        SECRET,
        "GET",
        "/v1/orgs/acme/items/7?full=1",
        &headers
    ));
    assert!(!python_verifies(
        SECRET,
        "GET",
        "/v1/orgs/acme/items/8?full=1",
        &headers
    ));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_signing_key_nothing_is_signed_and_a_client_signature_is_dropped() {
    let app = TestApp::start().await;
    let (key, _) = app.acme_key(&["read"]).await;
    let resp = app
        .client
        .get(app.url("/v1/orgs/acme/items/1"))
        .bearer_auth(&key)
        .header("X-Keygate-Signature", "t=1,v1=00")
        .send()
        .await
        .expect("request");
    let s = seen(resp).await;
    assert!(!s.headers.contains_key("x-keygate-signature"), "{:?}", s.headers);
    app.stop().await;
}
