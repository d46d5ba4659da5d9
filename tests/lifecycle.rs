//! Key lifecycle as the proxy sees it: revoke, pause, resume, update, rotate and
//! expiry take effect on the next request in-process, and within one change-feed
//! interval when the CLI changes the store from another process.

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Backend, Options, TestApp, code};
use keygate::clock::ManualClock;
use keygate::manage::NewKey;
use keygate::store::Patch;

const ITEMS: &str = "/v1/orgs/acme/items/1";

both_stores!(revocation_takes_effect_on_the_next_request);
async fn revocation_takes_effect_on_the_next_request(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, record) = app.acme_key(&["read"]).await;
    assert_eq!(app.get(ITEMS, &key).await.status(), 200, "cached now");
    app.app()
        .keys()
        .revoke(record.id, &"tests".into())
        .await
        .expect("revoke");
    let resp = app.get(ITEMS, &key).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(code(resp).await, "key_revoked");
    // Revoking again changes nothing and keeps the first time.
    let again = app
        .app()
        .keys()
        .revoke(record.id, &"tests".into())
        .await
        .expect("revoke again");
    let first = app.app().keys().get(record.id).await.expect("get");
    assert_eq!(again.revoked_at, first.revoked_at);
    app.stop().await;
}

both_stores!(pause_resume_and_scope_changes_take_effect_on_the_next_request);
async fn pause_resume_and_scope_changes_take_effect_on_the_next_request(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, record) = app.acme_key(&["read"]).await;
    let keys = app.app().keys();
    assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    keys.pause(record.id, &"tests".into()).await.expect("pause");
    assert_eq!(code(app.get(ITEMS, &key).await).await, "key_paused");
    keys.resume(record.id, &"tests".into()).await.expect("resume");
    assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    let patch = Patch {
        scopes: Some(vec!["write".into()]),
        ..Patch::default()
    };
    keys.update(record.id, &patch, &"tests".into())
        .await
        .expect("update");
    assert_eq!(code(app.get(ITEMS, &key).await).await, "insufficient_scope");
    app.stop().await;
}

both_stores!(a_key_expires_at_its_time_even_while_cached);
async fn a_key_expires_at_its_time_even_while_cached(backend: Backend) {
    let clock = ManualClock::new("2026-05-01T00:00:00Z".parse().expect("time"));
    let Some(app) = TestApp::with(Options {
        backend,
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let expires_at = "2026-05-01T01:00:00Z".parse().ok();
    let (key, _) = app
        .key(NewKey {
            expires_at,
            ..NewKey {
                name: "short".into(),
                org_id: Some("acme".into()),
                scopes: vec!["read".into()],
                ..NewKey::default()
            }
        })
        .await;
    assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    clock.advance(chrono::Duration::minutes(60));
    assert_eq!(code(app.get(ITEMS, &key).await).await, "key_expired");
    app.stop().await;
}

both_stores!(rotation_issues_a_working_key_and_retires_the_old_one);
async fn rotation_issues_a_working_key_and_retires_the_old_one(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (old, record) = app.acme_key(&["read"]).await;
    let keys = app.app().keys();
    let (new, new_record) = keys
        .rotate(record.id, chrono::Duration::zero(), &"tests".into())
        .await
        .expect("rotate");
    assert_ne!(new_record.id, record.id);
    assert_eq!(new_record.scopes, record.scopes);
    assert_eq!(app.get(ITEMS, new.expose()).await.status(), 200);
    assert_eq!(code(app.get(ITEMS, &old).await).await, "key_revoked");

    // With an overlap, both work until the old one's time is up.
    let (older, rec) = app.acme_key(&["read"]).await;
    let (newer, _) = keys
        .rotate(rec.id, chrono::Duration::hours(1), &"tests".into())
        .await
        .expect("rotate");
    assert_eq!(app.get(ITEMS, &older).await.status(), 200);
    assert_eq!(app.get(ITEMS, newer.expose()).await.status(), 200);
    app.stop().await;
}

fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let config = app.dir.path().join("cli.toml");
    std::fs::write(&config, format!("[store]\nurl = \"{}\"\n", app.store_url())).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run keygate")
}

both_stores!(a_cli_revoke_from_another_process_is_honoured_within_a_second);
async fn a_cli_revoke_from_another_process_is_honoured_within_a_second(backend: Backend) {
    let Some(app) = TestApp::on(backend).await else {
        return;
    };
    let (key, record) = app.acme_key(&["read"]).await;
    assert_eq!(app.get(ITEMS, &key).await.status(), 200, "cached now");
    for (command, expected) in [("pause", "key_paused"), ("resume", ""), ("revoke", "key_revoked")] {
        let out = cli(&app, &[command, &record.id.to_string(), "--actor", "ops"]);
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        honoured_within_a_second(&app, &key, command, expected).await;
    }
    app.stop().await;
}

/// Waits until a request with `key` gets `expected` (an error code; empty: a 200),
/// failing after a second.
async fn honoured_within_a_second(app: &TestApp, key: &str, command: &str, expected: &str) {
    let changed = Instant::now();
    loop {
        let resp = app.get(ITEMS, key).await;
        let done = if expected.is_empty() {
            resp.status() == 200
        } else {
            resp.status() != 200 && code(resp).await == expected
        };
        if done {
            return;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "{command} not honoured within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An idle proxy leaves SQLite's change feed unread while the write-ahead log is as
/// it was; another process's commit writes the log, so the next poll reads the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_revoke_after_a_quiet_spell_is_honoured_within_a_second() {
    let app = TestApp::on(Backend::Sqlite).await.expect("an SQLite app");
    let (key, record) = app.acme_key(&["read"]).await;
    assert_eq!(app.get(ITEMS, &key).await.status(), 200, "cached now");
    // The last use is written within `flush_interval` (100 ms); then nothing is
    // written for longer than the feed's margin (1 s), so polls stop reading it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = cli(&app, &["revoke", &record.id.to_string(), "--actor", "ops"]);
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    honoured_within_a_second(&app, &key, "revoke", "key_revoked").await;
    app.stop().await;
}
