//! Hot reload: the file's reloadable settings are swapped at once under load, without
//! failing a request; requests in flight finish under the config they started with;
//! an invalid file keeps the running config; SIGHUP and a changed file both reload a
//! `keygate serve` process.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Echo, TestApp, code, received};

const ITEMS: &str = "/v1/orgs/acme/items/1";

/// A public route that exists only in the "B" config.
const PROBE: &str = "\n[[route]]\nname = \"probe\"\npath = \"/v1/probe\"\npublic = true\n";

fn host_of(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.clone())
        .expect("host header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_continuous_load_fail_no_request() {
    let app = Arc::new(TestApp::start().await);
    let second = Echo::start().await;
    let (key, _) = app.acme_key(&["read"]).await;
    // Room for the whole load in the default quota (a reloadable setting).
    let a = app.config_text().replace("limit = 1000", "limit = 1000000");
    // B sends everything to the second upstream and adds a route.
    let b = format!("{a}{PROBE}").replace(&app.echo.addr.to_string(), &second.addr.to_string());
    let file = app.dir.path().join("keygate.toml");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..6 {
        let (app, key, stop, sent) = (
            Arc::clone(&app),
            key.clone(),
            Arc::clone(&stop),
            Arc::clone(&sent),
        );
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match app.client.get(app.url(ITEMS)).bearer_auth(&key).send().await {
                    Ok(resp) if resp.status() == 200 => {}
                    Ok(resp) => failures.push(format!("status {}", resp.status())),
                    Err(e) => failures.push(format!("error {e}")),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    for round in 0..20 {
        let (text, upstream, probe) = if round % 2 == 0 {
            (&b, second.addr, 200)
        } else {
            (&a, app.echo.addr, 404)
        };
        std::fs::write(&file, text).expect("write config");
        let fixed = app.app().reload(&file, &HashMap::new()).expect("valid config");
        assert!(fixed.is_empty(), "nothing fixed changed: {fixed:?}");
        // The swap is complete when reload returns: the next request sees it.
        let resp = app.get(ITEMS, &key).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            host_of(&received(resp).await),
            upstream.to_string(),
            "round {round}"
        );
        let resp = app.client.get(app.url("/v1/probe")).send().await.expect("probe");
        assert_eq!(resp.status(), probe, "round {round}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.expect("load task"));
    }
    let total = sent.load(Ordering::Relaxed);
    eprintln!(
        "20 reloads, {total} requests under load, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(total >= 200, "the load was real: {total} requests");
    assert!(second.hits() > 0 && app.echo.hits() > 0, "both upstreams served");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keygate_config_reloads_total{result=\"ok\"} 20"),
        "{metrics}"
    );
    assert!(metrics.contains("keygate_config_last_reload_successful 1"));
    Arc::into_inner(app).expect("load tasks ended").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_under_the_config_it_started_with() {
    let app = TestApp::start().await;
    let second = Echo::start().await;
    let (key, _) = app.acme_key(&["read"]).await;
    let file = app.dir.path().join("keygate.toml");
    // The slow request (400 ms upstream) starts under A…
    let slow = {
        let request = app.client.get(app.url("/v1/slow")).bearer_auth(&key).send();
        tokio::spawn(request)
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …B removes its route and moves the upstream while it is in flight.
    let slow_route = "[[route]]\nname = \"slow\"\npath = \"/v1/slow\"\nscopes = [\"read\"]\n";
    let a = app.config_text();
    assert!(a.contains(slow_route));
    let b = a
        .replace(slow_route, "")
        .replace(&app.echo.addr.to_string(), &second.addr.to_string());
    std::fs::write(&file, b).expect("write");
    app.app().reload(&file, &HashMap::new()).expect("valid");
    let resp = slow.await.expect("task").expect("response");
    assert_eq!(resp.status(), 200, "finished under A");
    assert_eq!(host_of(&received(resp).await), app.echo.addr.to_string());
    // A new request is judged under B.
    let resp = app.get("/v1/slow", &key).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(code(resp).await, "route_not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_config_and_says_where_it_is_wrong() {
    let app = TestApp::start().await;
    let (key, _) = app.acme_key(&["read"]).await;
    let file = app.dir.path().join("keygate.toml");
    let broken = format!(
        "{}\n[[route]]\nname = \"bad\"\npath = \"/v1/bad\"\ncost = \"ten\"\n",
        app.config_text()
    );
    std::fs::write(&file, &broken).expect("write");
    let err = app
        .app()
        .reload(&file, &HashMap::new())
        .expect_err("invalid config refused");
    let message = err.to_string();
    let line = broken.lines().count(); // `cost` is the last line
    assert!(message.contains(&format!("keygate.toml:{line}:")), "{message}");
    assert_eq!(app.get(ITEMS, &key).await.status(), 200, "old config in force");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keygate_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("keygate_config_last_reload_successful 0"));

    // Fixed settings are named and kept: the proxy still answers on its address.
    let moved = app.config_text().replace(
        "listen = \"127.0.0.1:0\"\nupstream",
        "listen = \"127.0.0.1:1\"\nupstream",
    );
    std::fs::write(&file, moved).expect("write");
    let fixed = app.app().reload(&file, &HashMap::new()).expect("valid");
    assert_eq!(fixed, ["proxy.listen"]);
    assert_eq!(app.get(ITEMS, &key).await.status(), 200);
    let metrics = app.metrics().await;
    assert!(metrics.contains("keygate_config_last_reload_successful 1"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_limit_is_reloaded_for_keys_without_their_own() {
    let app = TestApp::start().await;
    let (key, _) = app.acme_key(&["read"]).await;
    let resp = app.get(ITEMS, &key).await;
    assert_eq!(resp.headers()["ratelimit-limit"], "1000");
    let file = app.dir.path().join("keygate.toml");
    std::fs::write(&file, app.config_text().replace("limit = 1000", "limit = 2")).expect("write");
    app.app().reload(&file, &HashMap::new()).expect("valid");
    let resp = app.get(ITEMS, &key).await;
    assert_eq!(resp.headers()["ratelimit-limit"], "2");
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    let resp = app.get(ITEMS, &key).await;
    assert_eq!(resp.status(), 429);
    app.stop().await;
}

async fn probe(client: &reqwest::Client, addr: &str) -> u16 {
    client
        .get(format!("http://{addr}/v1/probe"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn wait_for<F: Future<Output = bool>>(what: &str, mut ready: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_on_sighup_and_on_a_changed_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = Echo::start().await;
    let client = reqwest::Client::new();
    let file = dir.path().join("keygate.toml");
    let base = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nworkers = 1\n\
         [store]\nurl = \"sqlite://{}/keygate.db\"\n",
        echo.addr,
        dir.path().display()
    );
    std::fs::write(&file, &base).expect("write");
    let logs = Arc::new(std::sync::Mutex::new(String::new()));
    let (child, addr) = common::serve_process_with(
        &file,
        &["--config-poll-interval", "100ms"],
        "info",
        Arc::clone(&logs),
    );
    assert_eq!(probe(&client, &addr).await, 404);
    // A changed file is picked up by polling.
    std::fs::write(&file, format!("{base}{PROBE}")).expect("write");
    wait_for("the polled reload", || async {
        probe(&client, &addr).await == 200
    })
    .await;
    // An invalid file is refused with its line:col, once, and the route stays.
    std::fs::write(&file, format!("{base}{PROBE}[quota]\nlimit = -1\n")).expect("write");
    let refusals = || {
        logs.lock()
            .expect("logs")
            .matches("config reload refused")
            .count()
    };
    wait_for("the refusal in the log", || async { refusals() > 0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probe(&client, &addr).await, 200);
    assert_eq!(refusals(), 1, "a bad file is reported once, not on every poll");
    assert!(logs.lock().expect("logs").contains("keygate.toml:"));
    common::terminate(child);

    // With polling off, only SIGHUP reloads.
    std::fs::write(&file, &base).expect("write");
    let (child, addr) = common::serve_process_with(
        &file,
        &["--config-poll-interval", "0s"],
        "info",
        Arc::clone(&logs),
    );
    std::fs::write(&file, format!("{base}{PROBE}")).expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probe(&client, &addr).await, 404, "no polling");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    wait_for("the SIGHUP reload", || async {
        probe(&client, &addr).await == 200
    })
    .await;
    common::terminate(child);
}
