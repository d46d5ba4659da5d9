//! The admin API over a real socket: bootstrap, every endpoint, org isolation,
//! authentication and its rate limit, errors, audit entries, ops endpoints.

#[macro_use]
mod common;

use common::{Backend, TestApp, code};
use keygate::manage::NewKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ITEMS: &str = "/v1/orgs/acme/items/1";

async fn admin_key(app: &TestApp, org: Option<&str>) -> String {
    let new = NewKey {
        name: format!("{}-admin", org.unwrap_or("platform")),
        org_id: org.map(str::to_owned),
        scopes: vec!["admin".into()],
        ..NewKey::default()
    };
    app.key(new).await.0
}

struct Admin<'a> {
    app: &'a TestApp,
    key: String,
}

impl Admin<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .app
            .client
            .request(method, self.app.admin_url(path))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

both_stores!(every_endpoint_works_and_every_mutation_is_audited);
async fn every_endpoint_works_and_every_mutation_is_audited(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let admin = Admin {
        app: &app,
        key: admin_key(&app, None).await,
    };

    let (status, created) = admin
        .post("/v1/keys", json!({"name": "ci-job", "org": "acme", "scopes": ["read", "write"], "quota": 100, "metadata": {"team": "data"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().expect("key once").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with(created["prefix"].as_str().expect("prefix")));
    assert!(created["created_at"].is_string());
    assert_eq!(created["created_by"], "platform-admin");
    assert_eq!(
        app.get(ITEMS, &key).await.status(),
        200,
        "the new key works on the proxy"
    );

    let (status, list) = admin.get("/v1/keys?search=ci-job&limit=10").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert!(!list.to_string().contains(&key), "a listing showed the key");
    let (_, shown) = admin.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(shown["status"], "active");
    assert!(shown.get("key").is_none());

    let (status, updated) = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"scopes": ["read"], "quota": null})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["scopes"], json!(["read"]));
    assert_eq!(updated["quota"], Value::Null);
    let write = app
        .client
        .post(app.url(ITEMS))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(
        code(write).await,
        "insufficient_scope",
        "the update applies on the next request"
    );

    let (_, paused) = admin.post(&format!("/v1/keys/{id}/pause"), json!({})).await;
    assert_eq!(paused["status"], "paused");
    assert_eq!(code(app.get(ITEMS, &key).await).await, "key_paused");
    let (_, resumed) = admin.post(&format!("/v1/keys/{id}/resume"), json!({})).await;
    assert_eq!(resumed["status"], "active");
    assert_eq!(app.get(ITEMS, &key).await.status(), 200);

    let (status, usage) = admin.get(&format!("/v1/keys/{id}/usage")).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["used"], 2, "two admitted requests so far");
    assert_eq!(usage["limit"], 1000);
    assert!(usage["reset_at"].is_string());

    // Rotation without overlap: the old key stops at once.
    let (status, rotated) = admin.post(&format!("/v1/keys/{id}/rotate"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let new_key = rotated["key"].as_str().expect("new key").to_owned();
    let new_id = rotated["id"].as_str().expect("new id").to_owned();
    assert_eq!(rotated["replaces"]["id"], id.as_str());
    assert_eq!(code(app.get(ITEMS, &key).await).await, "key_revoked");
    assert_eq!(app.get(ITEMS, &new_key).await.status(), 200);
    // With overlap: both work until the old one's time.
    let (_, overlapped) = admin
        .post(
            &format!("/v1/keys/{new_id}/rotate"),
            json!({"overlap_seconds": 3600}),
        )
        .await;
    let newest = overlapped["key"].as_str().expect("key").to_owned();
    assert_eq!(
        app.get(ITEMS, &new_key).await.status(),
        200,
        "old key works during the overlap"
    );
    assert_eq!(app.get(ITEMS, &newest).await.status(), 200);

    // Revoke: immediate, irreversible, repeatable.
    let newest_id = overlapped["id"].as_str().expect("id").to_owned();
    let (status, revoked) = admin
        .call(reqwest::Method::DELETE, &format!("/v1/keys/{newest_id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(code(app.get(ITEMS, &newest).await).await, "key_revoked");
    let (status, again) = admin
        .call(reqwest::Method::DELETE, &format!("/v1/keys/{newest_id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        again["revoked_at"], revoked["revoked_at"],
        "revoking again keeps the first time"
    );

    let (status, audit) = admin.get("/v1/audit?limit=100").await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["create", "update", "pause", "resume", "rotate", "revoke"] {
        assert!(
            actions.contains(&action),
            "no `{action}` in the audit log: {actions:?}"
        );
    }
    let entry = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["action"] == "pause")
        .expect("pause entry");
    assert_eq!(entry["target"], id.as_str());
    assert_eq!(entry["auth_method"], "admin_key");
    assert_eq!(entry["client_ip"], "127.0.0.1");
    assert_eq!(entry["actor"], "platform-admin");
    assert!(entry["actor_key_id"].is_string());
    eprintln!(
        "audit entries: {}",
        serde_json::to_string_pretty(&audit["items"]).unwrap_or_default()
    );
    app.stop().await;
}

both_stores!(an_org_admin_sees_and_manages_only_its_org);
async fn an_org_admin_sees_and_manages_only_its_org(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let acme = Admin {
        app: &app,
        key: admin_key(&app, Some("acme")).await,
    };
    let beta = Admin {
        app: &app,
        key: admin_key(&app, Some("beta")).await,
    };
    let (_, mine) = acme.post("/v1/keys", json!({"name": "acme-ci"})).await;
    assert_eq!(mine["org_id"], "acme", "defaults to the admin's org");
    let (_, theirs) = beta.post("/v1/keys", json!({"name": "beta-ci"})).await;
    let theirs_id = theirs["id"].as_str().expect("id");

    let (_, list) = acme.get("/v1/keys").await;
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|k| k["org_id"] == "acme"),
        "{list}"
    );
    let (status, body) = acme.get("/v1/keys?org=beta").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("org_mismatch"))
    );
    let (status, body) = acme
        .post("/v1/keys", json!({"name": "sneaky", "org": "beta"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("org_mismatch"))
    );
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/keys/{theirs_id}")),
        (reqwest::Method::PATCH, format!("/v1/keys/{theirs_id}")),
        (reqwest::Method::POST, format!("/v1/keys/{theirs_id}/pause")),
        (reqwest::Method::POST, format!("/v1/keys/{theirs_id}/resume")),
        (reqwest::Method::POST, format!("/v1/keys/{theirs_id}/rotate")),
        (reqwest::Method::GET, format!("/v1/keys/{theirs_id}/usage")),
        (reqwest::Method::DELETE, format!("/v1/keys/{theirs_id}")),
    ] {
        let (status, body) = acme.call(method.clone(), &path, Some(json!({}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (_, still) = beta.get(&format!("/v1/keys/{theirs_id}")).await;
    assert_eq!(still["status"], "active", "nothing happened to beta's key");
    let (_, audit) = acme.get("/v1/audit").await;
    assert!(
        audit["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|e| e["org_id"] == "acme"),
        "{audit}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_authentication_is_required_checked_and_rate_limited() {
    let app = TestApp::start().await;
    let (plain, _) = app.acme_key(&["read"]).await;
    let resp = app
        .client
        .get(app.admin_url("/v1/keys"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(code(resp).await, "missing_api_key");
    let resp = app
        .client
        .get(app.admin_url("/v1/keys"))
        .bearer_auth(&plain)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403);
    assert_eq!(code(resp).await, "insufficient_scope");
    // 10 failures a minute per IP (2 so far), then 429 even for a valid admin key.
    for _ in 0..8 {
        let resp = app
            .client
            .get(app.admin_url("/v1/keys"))
            .bearer_auth("kg_live_nope")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 401);
    }
    let admin = admin_key(&app, None).await;
    let resp = app
        .client
        .get(app.admin_url("/v1/keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(code(resp).await, "too_many_failed_attempts");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_get_clear_json_errors() {
    let app = TestApp::start().await;
    let admin = Admin {
        app: &app,
        key: admin_key(&app, None).await,
    };
    let bad = app
        .client
        .post(app.admin_url("/v1/keys"))
        .bearer_auth(&admin.key)
        .header("content-type", "application/json")
        .header("x-request-id", "trace-42")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.headers()["x-request-id"],
        "trace-42",
        "the caller's id is echoed"
    );
    let body: serde_json::Value = bad.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert_eq!(body["error"]["request_id"], "trace-42");
    for body in [
        json!({"name": "x", "colour": "red"}),
        json!({"name": ""}),
        json!({"name": "x", "scopes": ["Bad Scope"]}),
        json!({"name": "x", "metadata": [1]}),
    ] {
        let (status, resp) = admin.post("/v1/keys", body.clone()).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["error"]["code"], "invalid_request");
        assert!(resp["error"]["request_id"].is_string());
    }
    let (status, resp) = admin.get("/v1/keys/not-a-uuid").await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _) = admin.get("/v1/keys?status=sleeping").await;
    assert_eq!(status, 400);
    let (status, _) = admin.get("/v1/keys?limit=0").await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_and_the_console_answer_without_a_key() {
    let app = TestApp::start().await;
    for (path, kind) in [
        ("/healthz", "json"),
        ("/readyz", "json"),
        ("/openapi.json", "json"),
        ("/console", "text/html"),
    ] {
        let resp = app.client.get(app.admin_url(path)).send().await.expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().expect("ascii").to_owned();
        assert!(ct.contains(kind), "{path}: {ct}");
    }
    let doc: Value = app
        .client
        .get(app.admin_url("/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    for path in [
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/keys/{id}/rotate",
        "/v1/keys/{id}/usage",
        "/v1/audit",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let ready: Value = app
        .client
        .get(app.admin_url("/readyz"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["redis"], "not_configured");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_against_a_remote_admin_api() {
    let app = TestApp::start().await;
    let admin = admin_key(&app, Some("acme")).await;
    let base = app.admin_url("");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("keys")
            .args(args)
            .args(["--admin-url", &base, "--config", "/nonexistent/keygate.toml"])
            .env("KEYGATE_ADMIN_KEY", &admin)
            .output()
            .expect("run keygate")
    };
    let json = |args: &[&str]| -> Value {
        let out = cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON document")
    };
    let created = json(&["create", "--name", "remote", "--scopes", "read", "--json"]);
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["org_id"], "acme", "the org admin's org");
    assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    let listed = json(&["list", "--search", "remote", "--json"]);
    assert_eq!(listed["total"], 1);
    let human = cli(&["list"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("remote"));
    assert_eq!(json(&["show", &id, "--json"])["status"], "active");
    assert_eq!(
        json(&["update", &id, "--read-only", "true", "--json"])["restrictions"]["read_only"],
        true
    );
    assert_eq!(json(&["pause", &id, "--json"])["status"], "paused");
    assert_eq!(code(app.get(ITEMS, &key).await).await, "key_paused");
    assert_eq!(json(&["resume", &id, "--json"])["status"], "active");
    let rotated = json(&["rotate", &id, "--json"]);
    let new_key = rotated["key"].as_str().expect("new key").to_owned();
    assert_eq!(code(app.get(ITEMS, &key).await).await, "key_revoked");
    let new_id = rotated["id"].as_str().expect("id").to_owned();
    assert_eq!(json(&["revoke", &new_id, "--json"])["status"], "revoked");
    assert_eq!(code(app.get(ITEMS, &new_key).await).await, "key_revoked");
    // Errors come back as the API's code and message; no admin key is a clear error.
    let missing = cli(&["show", "00000000-0000-0000-0000-000000000000"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not_found"));
    let no_key = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "list", "--admin-url", &base])
        .env_remove("KEYGATE_ADMIN_KEY")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("KEYGATE_ADMIN_KEY"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_outcomes_by_route_and_code_without_key_material() {
    let app = TestApp::start().await;
    let (key, record) = app.acme_key(&["read"]).await;
    for _ in 0..3 {
        assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    }
    assert_eq!(app.get("/v1/orgs/beta/items/1", &key).await.status(), 403);
    assert_eq!(app.get("/nowhere", &key).await.status(), 404);
    assert_eq!(app.get(ITEMS, "kg_live_nope").await.status(), 401);
    assert_eq!(app.get("/v1/down", &key).await.status(), 502);
    let resp = app
        .client
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    let text = resp.text().await.expect("body");
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for line in [
        r#"keygate_requests_total{code="forwarded",route="read-items"} 3"#,
        r#"keygate_requests_total{code="org_mismatch",route="read-items"} 1"#,
        r#"keygate_requests_total{code="route_not_found",route="none"} 1"#,
        r#"keygate_requests_total{code="malformed_api_key",route="read-items"} 1"#,
        r#"keygate_requests_total{code="upstream_unavailable",route="down"} 1"#,
        r#"keygate_cache_lookups_total{layer="l1",result="miss"} 1"#,
        r#"keygate_cache_lookups_total{layer="store",result="hit"} 1"#,
        "keygate_requests_in_flight 0",
        "keygate_decision_duration_seconds_count 7",
    ] {
        assert!(text.contains(line), "missing `{line}`");
    }
    assert!(text.contains("keygate_upstream_duration_seconds_count 4"));
    assert!(text.contains("keygate_build_info{version="));
    assert!(
        !text.contains(&key[16..]) && !text.contains(&record.id.to_string()),
        "key material or key ids in metrics"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_must_be_objects_all_the_way_down() {
    let app = TestApp::start().await;
    let admin = Admin {
        app: &app,
        key: admin_key(&app, None).await,
    };
    let (_, created) = admin.post("/v1/keys", json!({"name": "shape"})).await;
    let id = created["id"].as_str().expect("id").to_owned();
    for (method, path, body) in [
        (reqwest::Method::POST, "/v1/keys".to_owned(), json!(["shape"])),
        (
            reqwest::Method::PATCH,
            format!("/v1/keys/{id}"),
            json!({"restrictions": []}),
        ),
        (reqwest::Method::PATCH, format!("/v1/keys/{id}"), json!([])),
        (reqwest::Method::POST, format!("/v1/keys/{id}/rotate"), json!([0])),
    ] {
        let (status, resp) = admin.call(method.clone(), &path, Some(body.clone())).await;
        assert_eq!(status, 400, "{method} {path} {body}: {resp}");
        assert_eq!(resp["error"]["code"], "invalid_request");
    }
    app.stop().await;
}
