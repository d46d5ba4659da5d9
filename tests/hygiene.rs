//! Key hygiene: a leaked key reported with `keygate keys report-leak` is paused (or
//! revoked, per `[hygiene] on_leak`) with its source in the audit log; a false
//! positive changes nothing.

#[macro_use]
mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use keygate::store::Store;
use serde_json::Value;

fn config(dir: &std::path::Path, on_leak: &str) -> std::path::PathBuf {
    let path = dir.join(format!("keygate-{on_leak}.toml"));
    std::fs::write(
        &path,
        format!(
            "[store]\nurl = \"sqlite://{}/k.db\"\n[hygiene]\non_leak = \"{on_leak}\"\n",
            dir.display()
        ),
    )
    .expect("config");
    path
}

/// `keygate keys report-leak --json` with `stdin`; exit code and JSON.
fn report(config: &std::path::Path, stdin: &str, source: &str) -> (i32, Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "keys",
            "report-leak",
            "--json",
            "--actor",
            "scanner",
            "--source",
            source,
            "--config",
        ])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("report-leak");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write key");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_key_is_quarantined_with_its_source_and_a_false_positive_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pause = config(dir.path(), "pause");
    let revoke = config(dir.path(), "revoke");
    let key = common::create_key_with_cli(&pause, &["--name", "leaky", "--scopes", "read"]);
    let other = common::create_key_with_cli(&pause, &["--name", "bystander", "--scopes", "read"]);
    let store = Store::open(&format!("sqlite://{}/k.db", dir.path().display()))
        .await
        .expect("store");
    let status = |id: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["keys", "show", id, "--json", "--config"])
            .arg(&pause)
            .output()
            .expect("show");
        let v: Value = serde_json::from_slice(&out.stdout).expect("show JSON");
        v["status"].as_str().unwrap_or_default().to_owned()
    };

    // A near miss: the key with its last character changed fails the checksum.
    let mut typo = key.clone();
    let last = typo.pop().expect("char");
    typo.push(if last == 'A' { 'B' } else { 'A' });
    let (code, json, output) = report(&pause, &format!("{typo}\n"), "https://example.com/typo");
    assert_eq!(code, 1, "{output}");
    assert_eq!(json["outcome"], "not_a_key");
    assert_eq!(json["label"], "false_positive");
    let audit_before = store.audit(None, 1, 100).await.expect("audit").total;

    let (code, json, output) = report(
        &pause,
        &format!("{key}\n"),
        "https://github.com/acme/app/blob/main/.env",
    );
    println!("report-leak --json: {json}");
    assert_eq!(code, 0, "{output}");
    assert_eq!(json["outcome"], "paused");
    assert_eq!(json["label"], "true_positive");
    let id = json["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(status(&id), "paused");
    assert!(!output.contains(&key), "the key is never printed");
    let audit = store.audit(None, 1, 100).await.expect("audit");
    assert_eq!(
        audit.total,
        audit_before + 1,
        "one audit entry, none for the false positive"
    );
    let entry = &audit.items[0];
    assert_eq!(entry.action, "pause");
    assert_eq!(entry.actor, "scanner");
    assert_eq!(entry.detail["reason"], "leak");
    assert_eq!(
        entry.detail["source"],
        "https://github.com/acme/app/blob/main/.env"
    );
    println!("audit: {}", serde_json::to_string(entry).expect("entry"));

    // With on_leak = "revoke" the same report revokes; the bystander is untouched.
    let (code, json, _) = report(&revoke, &key, "https://pastebin.example/x");
    assert_eq!((code, json["outcome"].as_str()), (0, Some("revoked")));
    assert_eq!(status(&id), "revoked");
    let (code, json, _) = report(&revoke, &key, "again");
    assert_eq!((code, json["outcome"].as_str()), (0, Some("already_revoked")));
    let (_, bystander, _) = report(&pause, "kg_live_notakeyatall", "x");
    assert_eq!(bystander["outcome"], "not_a_key");
    let listed = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "list", "--json", "--search", "bystander", "--config"])
        .arg(&pause)
        .output()
        .expect("list");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("list JSON");
    assert_eq!(listed["items"][0]["status"], "active");
    assert!(!other.is_empty());
    store.close().await;
}

both_stores!(keys_unused_for_pause_after_idle_are_paused_by_system);
async fn keys_unused_for_pause_after_idle_are_paused_by_system(backend: common::Backend) {
    use chrono::{DateTime, Duration, Utc};
    use keygate::clock::ManualClock;
    use keygate::store::ListQuery;
    let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("time");
    let clock = ManualClock::new(t0);
    let Some(app) = common::TestApp::with(common::Options {
        backend,
        clock: Some(clock.clone()),
        extra: "[hygiene]\npause_after_idle = \"90d\"\n".into(),
        ..common::Options::default()
    })
    .await
    else {
        return;
    };
    let (_, never_used) = app.acme_key(&["read"]).await;
    let (used, used_record) = app.acme_key(&["read"]).await;
    let (_, revoked) = app.acme_key(&["read"]).await;
    let keys = app.app().keys();
    keys.revoke(revoked.id, &"tests".into()).await.expect("revoke");
    clock.advance(Duration::days(10));
    assert_eq!(app.get("/v1/orgs/acme/items/1", &used).await.status(), 200);
    // Last use reaches the store with the next flush (every 100 ms here).
    for _ in 0..50 {
        let stored = keys.get(used_record.id).await.expect("get");
        if stored.last_used_at.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let idle_90d = std::time::Duration::from_secs(90 * 86_400);

    // Day 95: only the never-used key has been idle 90 days (created on day 0).
    clock.set(t0 + Duration::days(95));
    let candidates = keys
        .list(&ListQuery {
            status: Some(keygate::keys::Status::Active),
            idle_since: Some(t0 + Duration::days(5)),
            page: 1,
            limit: 50,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    let ids: Vec<_> = candidates.items.iter().map(|k| k.id).collect();
    assert_eq!(ids, [never_used.id], "`keys list --idle 90d` candidates");
    let paused = keys.pause_idle(idle_90d).await.expect("sweep");
    assert_eq!(paused.iter().map(|k| k.id).collect::<Vec<_>>(), [never_used.id]);
    assert_eq!(
        keys.pause_idle(idle_90d).await.expect("second sweep").len(),
        0,
        "a second sweep finds nothing"
    );
    let store = keygate::store::Store::open(&app.store_url())
        .await
        .expect("store");
    let audit = store.audit(None, 1, 10).await.expect("audit");
    let entry = &audit.items[0];
    assert_eq!((entry.action.as_str(), entry.actor.as_str()), ("pause", "system"));
    assert_eq!(entry.auth_method, "system");
    assert_eq!(entry.key_id, Some(never_used.id));
    assert_eq!(entry.detail["reason"], "idle");
    store.close().await;
    assert_eq!(
        keys.get(used_record.id)
            .await
            .expect("get")
            .status(t0 + Duration::days(95)),
        keygate::keys::Status::Active
    );

    // Day 101: the used key's last use (day 10) is 91 days old. The sweep that runs
    // at start pauses it and counts it.
    clock.set(t0 + Duration::days(101));
    let app = app.restart().await;
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = app.metrics().await;
        if metrics.contains("keygate_keys_quarantined_total{reason=\"idle\"} 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains("keygate_keys_quarantined_total{reason=\"idle\"} 1"),
        "{metrics}"
    );
    let stored = app.app().keys().get(used_record.id).await.expect("get");
    assert!(stored.paused, "the used key is paused on day 101");
    assert_eq!(app.get("/v1/orgs/acme/items/1", &used).await.status(), 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_github_report_pauses_the_key_and_an_unsigned_or_badly_signed_one_changes_nothing() {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::{Signature, SigningKey};
    use p256::pkcs8::EncodePublicKey as _;

    let github = SigningKey::from_slice(&[7u8; 32]).expect("signing key");
    let impostor = SigningKey::from_slice(&[9u8; 32]).expect("signing key");
    let pem = github
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .expect("pem");
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys_file = keys_dir.path().join("github-keys.json");
    std::fs::write(
        &keys_file,
        serde_json::json!({"public_keys": [
            {"key_identifier": "old-key", "key": impostor.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).expect("pem"), "is_current": false},
            {"key_identifier": "current-key", "key": pem, "is_current": true},
        ]})
        .to_string(),
    )
    .expect("keys file");
    let app = common::TestApp::with(common::Options {
        extra: format!("[hygiene]\ngithub_public_keys = \"{}\"\n", keys_file.display()),
        ..common::Options::default()
    })
    .await
    .expect("app");
    let (key, record) = app.acme_key(&["read"]).await;
    let fake = format!("kg_live_{}", "A".repeat(38));
    let body = serde_json::json!([
        {"token": key, "type": "keygate_api_key", "url": "https://github.com/acme/app/blob/main/.env", "source": "content"},
        {"token": fake, "type": "keygate_api_key", "url": "https://github.com/acme/app/blob/main/README.md", "source": "content"},
    ])
    .to_string();
    let sign = |k: &SigningKey, bytes: &str| {
        let sig: Signature = k.sign(bytes.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    };
    let client = reqwest::Client::new();
    let url = app.admin_url("/v1/secret-scanning/github");
    let post = |id: &'static str, signature: Option<String>, body: String| {
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .header("github-public-key-identifier", id)
            .body(body);
        if let Some(s) = signature {
            req = req.header("github-public-key-signature", s);
        }
        req.send()
    };
    assert_eq!(status_of(&app, record.id).await, keygate::keys::Status::Active);

    let refusals = [
        (
            "unsigned",
            post("current-key", None, body.clone()).await.expect("post"),
        ),
        (
            "signed by another key under the current key's name",
            post("current-key", Some(sign(&impostor, &body)), body.clone())
                .await
                .expect("post"),
        ),
        (
            "a signature over another body",
            post("current-key", Some(sign(&github, "[]")), body.clone())
                .await
                .expect("post"),
        ),
        (
            "an unknown key identifier",
            post("no-such-key", Some(sign(&github, &body)), body.clone())
                .await
                .expect("post"),
        ),
        (
            "garbage in the signature header",
            post("current-key", Some("not base64!".into()), body.clone())
                .await
                .expect("post"),
        ),
    ];
    for (what, resp) in refusals {
        assert_eq!(resp.status(), 401, "{what}");
        let err: Value = resp.json().await.expect("error JSON");
        assert_eq!(err["error"]["code"], "invalid_signature", "{what}");
        println!("{what}: 401 invalid_signature");
    }
    assert_eq!(
        status_of(&app, record.id).await,
        keygate::keys::Status::Active,
        "refused reports change nothing"
    );

    let resp = post("current-key", Some(sign(&github, &body)), body.clone())
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let labels: Value = resp.json().await.expect("labels");
    let masked = body.replace(&key, &format!("{}…(redacted)", &key[..16]));
    println!("POST /v1/secret-scanning/github\n{masked}\n-> 200 {labels}");
    let hash = |t: &str| keygate::keys::KeyHash::of(t).to_hex();
    assert_eq!(
        labels,
        serde_json::json!([
            {"token_hash": hash(&key), "token_type": "keygate_api_key", "label": "true_positive"},
            {"token_hash": hash(&fake), "token_type": "keygate_api_key", "label": "false_positive"},
        ])
    );
    assert!(
        !labels.to_string().contains(&key),
        "the answer never echoes a token"
    );
    assert_eq!(status_of(&app, record.id).await, keygate::keys::Status::Paused);
    println!("key status: active before, paused after");
    assert_eq!(app.get("/v1/orgs/acme/items/1", &key).await.status(), 401);
    let store = keygate::store::Store::open(&app.store_url())
        .await
        .expect("store");
    let entry = store.audit(None, 1, 1).await.expect("audit").items.remove(0);
    assert_eq!(entry.actor, "github-secret-scanning");
    assert_eq!(entry.auth_method, "secret_scanning");
    assert_eq!(
        entry.detail["source"],
        "https://github.com/acme/app/blob/main/.env"
    );
    store.close().await;
    assert!(
        app.metrics()
            .await
            .contains("keygate_keys_quarantined_total{reason=\"leak\"} 1")
    );
    app.stop().await;
}

async fn status_of(app: &common::TestApp, id: uuid::Uuid) -> keygate::keys::Status {
    app.app()
        .keys()
        .get(id)
        .await
        .expect("get")
        .status(chrono::Utc::now())
}
