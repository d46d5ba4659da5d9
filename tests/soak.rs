//! Soak: the real `keygate serve` under moderate load for ten minutes while keys
//! churn — one created and one revoked through the admin API every second. Every
//! request with a live key must be forwarded, every request made after its key's
//! revocation was acknowledged must get `key_revoked`, and resident memory at the
//! end is reported beside the start's. Ignored by default (it takes ten minutes):
//!
//!   cargo test --release --test soak -- --ignored --nocapture
//!   KEYGATE_SOAK_SECS=60 cargo test --test soak -- --ignored --nocapture   # shorter
//!   KEYGATE_SOAK_CHURN=0 ...                                               # no key churn

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Echo;
use serde_json::Value;

const ITEMS: &str = "/v1/orgs/acme/items/1";
const CLIENTS: usize = 16;
/// Pause between one client's requests: ~1,600 requests/s in all at most.
const PACE: Duration = Duration::from_millis(10);

/// Resident set size of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("process status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The keys in use: live ones (requests should pass), and the revoked ones with the
/// moment their revocation was acknowledged (`None` while it is being asked for).
#[derive(Default)]
struct Keys {
    live: Vec<(String, String)>,
    revoked: std::collections::HashMap<String, Option<Instant>>,
}

#[derive(Default)]
struct Tally {
    forwarded: AtomicU64,
    /// A key revoked while its request was in flight: either answer is right.
    raced: AtomicU64,
    refused_after_revoke: AtomicU64,
    unexpected: AtomicU64,
}

struct Admin {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Admin {
    async fn create(&self, name: &str) -> (String, String) {
        let resp = self
            .client
            .post(format!("{}/v1/keys", self.base))
            .bearer_auth(&self.key)
            .json(&serde_json::json!({"name": name, "org": "acme", "scopes": ["read"]}))
            .send()
            .await
            .expect("create");
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.expect("JSON");
        (
            body["id"].as_str().expect("id").to_owned(),
            body["key"].as_str().expect("key").to_owned(),
        )
    }

    async fn revoke(&self, id: &str) {
        let resp = self
            .client
            .delete(format!("{}/v1/keys/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("revoke");
        assert!(resp.status().is_success(), "revoke answered {}", resp.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "ten minutes; run on demand"]
async fn ten_minutes_of_load_with_key_churn() {
    let secs: u64 = std::env::var("KEYGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    // KEYGATE_SOAK_CHURN=0: the same load without key churn (to tell what memory
    // growth comes from).
    let churn = std::env::var("KEYGATE_SOAK_CHURN").as_deref() != Ok("0");
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (proxy_port, admin_port) = (common::services::free_port(), common::services::free_port());
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\nupstream = \"http://{}\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
             [store]\nurl = \"sqlite://{}/keygate.db\"\n\
             [quota]\nlimit = 100000000\n\
             [[route]]\nname = \"read-items\"\npath = \"/v1/orgs/{{org}}/items/**\"\n\
             scopes = [\"read\"]\norg_param = \"org\"\n",
            echo.addr,
            dir.path().display()
        ),
    )
    .expect("write config");
    let admin_key = common::create_key_with_cli(&config, &["--name", "soak-admin", "--scopes", "admin"]);
    let logs = Arc::new(Mutex::new(String::new()));
    let (child, addr) = common::serve_process(&config, "warn,keygate=info", Arc::clone(&logs));
    let pid = child.id();
    // Below keygate's `idle_timeout` (30 s), as any client pool in front should be.
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let admin = Admin {
        client: client.clone(),
        base: format!("http://127.0.0.1:{admin_port}"),
        key: admin_key,
    };
    let url = format!("http://127.0.0.1:{proxy_port}{ITEMS}");
    assert!(addr.ends_with(&format!(":{proxy_port}")) || addr.ends_with(&format!(":{admin_port}")));

    let keys = Arc::new(Mutex::new(Keys::default()));
    for i in 0..20 {
        let pair = admin.create(&format!("soak-{i}")).await;
        keys.lock().expect("keys").live.push(pair);
    }
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, url, keys, tally) = (client.clone(), url.clone(), Arc::clone(&keys), Arc::clone(&tally));
        clients.push(tokio::spawn(async move {
            let mut n = c;
            while Instant::now() < deadline {
                let key = {
                    let keys = keys.lock().expect("keys");
                    n = n.wrapping_mul(31).wrapping_add(7);
                    keys.live[n % keys.live.len()].1.clone()
                };
                let sent = Instant::now();
                let resp = client.get(&url).bearer_auth(&key).send().await;
                let revoked_at = keys.lock().expect("keys").revoked.get(&key).copied();
                let outcome = match resp {
                    Ok(r) if r.status() == 200 => match revoked_at {
                        Some(Some(at)) if at < sent => {
                            eprintln!("a key revoked before the request was sent was admitted");
                            &tally.unexpected
                        }
                        _ => &tally.forwarded,
                    },
                    Ok(r) if r.status() == 401 && revoked_at.is_some() => &tally.raced,
                    Ok(r) => {
                        let status = r.status();
                        eprintln!("unexpected {status} {} for a live key", common::code(r).await);
                        &tally.unexpected
                    }
                    Err(e) => {
                        eprintln!("request failed: {e:?}");
                        &tally.unexpected
                    }
                };
                outcome.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(PACE).await;
            }
        }));
    }

    // Warm up, then take the starting RSS.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_start = rss_kib(pid);
    let mut samples = vec![rss_start];
    let (mut churned, mut seconds) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < deadline {
        tick.tick().await;
        seconds += 1;
        if seconds % 60 == 0 {
            samples.push(rss_kib(pid));
        }
        if !churn {
            continue;
        }
        let new = admin.create(&format!("soak-churn-{churned}")).await;
        let old = {
            let mut keys = keys.lock().expect("keys");
            keys.live.push(new);
            let old = keys.live.remove(0);
            keys.revoked.insert(old.1.clone(), None);
            old
        };
        admin.revoke(&old.0).await;
        keys.lock()
            .expect("keys")
            .revoked
            .insert(old.1.clone(), Some(Instant::now()));
        // Immediate effect: the next request with it is refused.
        let resp = client
            .get(&url)
            .bearer_auth(&old.1)
            .send()
            .await
            .expect("request");
        if resp.status() == 401 && common::code(resp).await == "key_revoked" {
            tally.refused_after_revoke.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.unexpected.fetch_add(1, Ordering::Relaxed);
        }
        churned += 1;
    }
    for c in clients {
        c.await.expect("client");
    }
    let rss_end = rss_kib(pid);
    samples.push(rss_end);
    common::terminate(child);

    let t = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak: {secs}s, {} keys created and {churned} revoked; {} requests forwarded, {} refused right \
         after their key's revocation, {} raced a revocation; {} unexpected; RSS {} KiB at start, {} KiB \
         at end (per minute: {samples:?})",
        20 + churned,
        t(&tally.forwarded),
        t(&tally.refused_after_revoke),
        t(&tally.raced),
        t(&tally.unexpected),
        rss_start,
        rss_end,
    );
    assert_eq!(t(&tally.unexpected), 0, "unexpected answers");
    assert_eq!(
        t(&tally.refused_after_revoke),
        churned,
        "every revocation took effect at once"
    );
    assert!(
        rss_end < rss_start + 32 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}
