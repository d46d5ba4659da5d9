//! Forward-auth: `/_keygate/auth` answers for nginx `auth_request`, Traefik
//! ForwardAuth and Envoy ext_authz with the same decision as the reverse proxy —
//! 200 with identity headers, or the usual refusal — forwards nothing, and charges
//! quota once per asked request. The end-to-end test runs the shipped
//! `deploy/nginx/auth_request.conf` in a real nginx in front of the echo upstream.

#[macro_use]
mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Backend, TestApp, code, received};
use keygate::manage::NewKey;

const ITEMS: &str = "/v1/orgs/acme/items/1";

fn header<'r>(resp: &'r reqwest::Response, name: &str) -> &'r str {
    resp.headers()
        .get(name)
        .map_or("", |v| v.to_str().expect("ascii"))
}

both_stores!(every_style_gets_the_decision_with_identity_and_nothing_is_forwarded);
async fn every_style_gets_the_decision_with_identity_and_nothing_is_forwarded(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, record) = app.acme_key(&["read"]).await;
    let auth = app.url("/_keygate/auth");
    let styles = [
        // nginx
        app.client
            .get(&auth)
            .header("x-original-method", "GET")
            .header("x-original-uri", ITEMS),
        // Traefik
        app.client
            .get(&auth)
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", ITEMS),
        // Envoy: the original path after the prefix, the original method
        app.client.get(app.url(&format!("/_keygate/auth{ITEMS}"))),
    ];
    for (i, request) in styles.into_iter().enumerate() {
        let resp = request
            .bearer_auth(&key)
            .header("x-keygate-org-id", "forged")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "style {i}");
        assert_eq!(header(&resp, "x-keygate-key-id"), record.id.to_string());
        assert_eq!(header(&resp, "x-keygate-org-id"), "acme");
        assert_eq!(header(&resp, "x-keygate-scopes"), "read");
        assert_eq!(header(&resp, "x-keygate-auth-method"), "api_key");
        assert_eq!(
            header(&resp, "ratelimit-remaining"),
            (999 - i).to_string(),
            "charged once"
        );
        assert!(!header(&resp, "x-request-id").is_empty());
        assert_eq!(resp.bytes().await.expect("body").len(), 0);
    }
    // Refusals: the same status and JSON as the reverse proxy.
    let ask = |method: &'static str, uri: &'static str| {
        app.client
            .get(&auth)
            .header("x-original-method", method)
            .header("x-original-uri", uri)
    };
    let cases = [
        (ask("GET", ITEMS), 401, "missing_api_key"),
        (
            ask("GET", ITEMS).bearer_auth("kg_live_short"),
            401,
            "malformed_api_key",
        ),
        (ask("POST", ITEMS).bearer_auth(&key), 403, "insufficient_scope"),
        (
            ask("GET", "/v1/orgs/beta/items/1").bearer_auth(&key),
            403,
            "org_mismatch",
        ),
        (
            ask("GET", "/v1/nowhere").bearer_auth(&key),
            404,
            "route_not_found",
        ),
        (
            ask("GET", "/v1/orgs/acme/items/%2e%2e/x").bearer_auth(&key),
            400,
            "invalid_path",
        ),
        (
            app.client
                .get(&auth)
                .bearer_auth(&key)
                .header("x-original-uri", ITEMS),
            400,
            "invalid_request",
        ),
    ];
    for (request, status, expected) in cases {
        let resp = request.send().await.expect("request");
        assert_eq!(resp.status(), status, "{expected}");
        if status == 401 {
            assert!(header(&resp, "www-authenticate").starts_with("Bearer"));
        }
        assert_eq!(code(resp).await, expected);
    }
    assert_eq!(app.echo.hits(), 0, "forward-auth forwards nothing");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"keygate_requests_total{code="authorized",route="read-items"} 3"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_route_is_allowed_without_identity() {
    let app = TestApp::start().await;
    let resp = app
        .client
        .get(app.url("/_keygate/auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/healthz")
        .header("x-keygate-key-id", "forged")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-keygate-auth-method"), "none");
    assert_eq!(
        header(&resp, "x-keygate-key-id"),
        "",
        "nothing of the client's comes back"
    );
    app.stop().await;
}

/// nginx from Debian's package, running `deploy/nginx/auth_request.conf`.
struct Nginx {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(keygate: &str, api: &str) -> Option<Self> {
        let Some(bin) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "nginx is required in CI (scripts/test.sh installs Debian's nginx)"
            );
            eprintln!("SKIPPED: nginx is not installed (apt-get install nginx); scripts/test.sh installs it");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = common::services::free_port();
        let addr = format!("127.0.0.1:{port}");
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/nginx/auth_request.conf"
        ))
        .expect("the shipped example");
        for default in ["127.0.0.1:8080", "127.0.0.1:3000", "127.0.0.1:8000"] {
            assert!(example.contains(default), "the example still names {default}");
        }
        let site = example
            .replace("127.0.0.1:8080", keygate)
            .replace("127.0.0.1:3000", api)
            .replace("listen 127.0.0.1:8000", &format!("listen {addr}"));
        let d = dir.path().display();
        std::fs::write(dir.path().join("site.conf"), site).expect("write");
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 include {d}/site.conf;\n}}\n"
            ),
        )
        .expect("write");
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .spawn()
            .expect("start nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_passes_identity_and_returns_each_refusal() {
    let app = TestApp::start().await;
    let Some(nginx) = Nginx::start(&app.addr.to_string(), &app.echo.addr.to_string()) else {
        return;
    };
    let url = |path: &str| format!("http://{}{path}", nginx.addr);
    let (key, record) = app.acme_key(&["read"]).await;

    // Allowed: the API gets the identity, not the key, and not the client's forgery.
    let resp = app
        .client
        .get(url(ITEMS))
        .bearer_auth(&key)
        .header("x-keygate-org-id", "forged")
        .header("x-keygate-scopes", "admin")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let got = received(resp).await;
    let value = |name: &str| got.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(value("x-keygate-key-id"), Some(record.id.to_string().as_str()));
    assert_eq!(value("x-keygate-org-id"), Some("acme"));
    assert_eq!(value("x-keygate-scopes"), Some("read"));
    assert_eq!(value("x-keygate-auth-method"), Some("api_key"));
    assert_eq!(value("authorization"), None, "the key never reaches the API");
    assert!(value("x-request-id").is_some_and(|v| !v.is_empty()));
    assert_eq!(app.echo.hits(), 1);

    // Each refusal comes back through nginx with keygate's status and JSON.
    let (limited, _) = app
        .key(NewKey {
            name: "limited".into(),
            org_id: Some("acme".into()),
            scopes: vec!["read".into()],
            quota_limit: Some(3),
            ..NewKey::default()
        })
        .await;
    let (revoked, revoked_record) = app.acme_key(&["read"]).await;
    app.app()
        .keys()
        .revoke(revoked_record.id, &"tests".into())
        .await
        .expect("revoke");
    for _ in 0..3 {
        let resp = app
            .client
            .get(url(ITEMS))
            .bearer_auth(&limited)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "within quota");
    }
    let send = |method: reqwest::Method, path: &str, key: Option<&str>| {
        let request = app.client.request(method, url(path));
        match key {
            Some(k) => request.bearer_auth(k),
            None => request,
        }
        .send()
    };
    let get = reqwest::Method::GET;
    let cases = [
        (send(get.clone(), ITEMS, None).await, 401, "missing_api_key"),
        (
            send(get.clone(), ITEMS, Some("kg_live_short")).await,
            401,
            "malformed_api_key",
        ),
        (send(get.clone(), ITEMS, Some(&revoked)).await, 401, "key_revoked"),
        (
            send(reqwest::Method::POST, ITEMS, Some(&key)).await,
            403,
            "insufficient_scope",
        ),
        (
            send(get.clone(), "/v1/orgs/beta/items/1", Some(&key)).await,
            403,
            "org_mismatch",
        ),
        (
            send(get.clone(), "/v1/nowhere", Some(&key)).await,
            404,
            "route_not_found",
        ),
        (
            send(get.clone(), ITEMS, Some(&limited)).await,
            429,
            "quota_exceeded",
        ),
    ];
    for (resp, status, expected) in cases {
        let resp = resp.expect("request");
        assert_eq!(resp.status(), status, "{expected}");
        assert!(
            header(&resp, "content-type").starts_with("application/json"),
            "{expected}"
        );
        match status {
            401 => assert!(
                header(&resp, "www-authenticate").starts_with("Bearer"),
                "{expected}"
            ),
            429 => assert!(!header(&resp, "retry-after").is_empty()),
            _ => {}
        }
        let body: serde_json::Value = resp.json().await.expect("JSON body");
        assert_eq!(body["error"]["code"], expected);
        assert!(body["error"]["request_id"].is_string());
    }
    assert_eq!(app.echo.hits(), 4, "only the allowed requests reached the API");
    // Counted once per request: exactly the limit passed, and keygate saw the
    // fourth as over it (a double count would have refused the second).
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"keygate_requests_total{code="quota_exceeded",route="read-items"}"#));
    drop(nginx);
    app.stop().await;
}
