//! The binary as users run it: `serve`, `keys ...`, `check-config`, with every
//! process's logs captured at trace level and searched for key material.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::services::PgDatabase;
use common::{Backend, Echo};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

struct Cli {
    config: PathBuf,
    logs: Arc<Mutex<String>>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "trace")
            .output()
            .expect("run keygate");
        self.logs
            .lock()
            .expect("logs")
            .push_str(&String::from_utf8_lossy(&out.stderr));
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("exactly one JSON document on stdout")
    }
}

fn write_config(dir: &Path, upstream: &str) -> PathBuf {
    write_config_on(dir, upstream, &format!("sqlite://{}/keygate.db", dir.display()))
}

fn write_config_on(dir: &Path, upstream: &str, store: &str) -> PathBuf {
    let path = dir.join("keygate.toml");
    let text = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
upstream = "http://{upstream}"
workers = 1

[store]
url = "{store}"
poll_interval = "50ms"

[[route]]
name = "read-items"
methods = ["GET"]
path = "/v1/orgs/{{org}}/items/**"
scopes = ["read"]
org_param = "org"
"#
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn serve(config: &Path, logs: Arc<Mutex<String>>) -> (Child, String) {
    common::serve_process(config, "trace", logs)
}

/// Access lines are written into the log batch without the subscriber (when it
/// writes no colours, as into a pipe): the binary writes them in the chosen format
/// and `RUST_LOG` still turns them off.
#[tokio::test]
async fn access_lines_come_in_the_chosen_format_and_follow_rust_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = Echo::start().await;
    let cli = Cli {
        config: write_config(dir.path(), &echo.addr.to_string()),
        logs: Arc::new(Mutex::new(String::new())),
    };
    let created = cli.json(&[
        "keys", "create", "--name", "a", "--org", "acme", "--scopes", "read", "--json",
    ]);
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    let client = reqwest::Client::new();
    for (format, rust_log, logged) in [
        ("json", "info", true),
        ("human", "info", true),
        ("json", "info,keygate::access=off", false),
        ("human", "info,keygate::access=off", false),
    ] {
        let logs = Arc::new(Mutex::new(String::new()));
        let (server, addr) = common::serve_process_in(format, &cli.config, &[], rust_log, Arc::clone(&logs));
        let url = format!("http://{addr}/v1/orgs/acme/items/1");
        let ok = client.get(&url).bearer_auth(&key).send().await.expect("request");
        let refused = client.get(&url).send().await.expect("request");
        assert_eq!((ok.status().as_u16(), refused.status().as_u16()), (200, 401));
        // A worker's lines reach stderr about 100 ms after their request; wait
        // for both, or long enough that lines written by mistake would show.
        let count = || {
            let logs = logs.lock().expect("logs");
            logs.lines().filter(|l| l.contains("keygate::access")).count()
        };
        let deadline = Instant::now() + Duration::from_secs(if logged { 5 } else { 1 });
        while (!logged || count() < 2) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        common::terminate(server);
        let all = logs.lock().expect("logs").clone();
        let access: Vec<&str> = all.lines().filter(|l| l.contains("keygate::access")).collect();
        if !logged {
            assert!(access.is_empty(), "{format}, {rust_log}: {all}");
            assert!(all.contains("proxy listening"), "other lines stay: {all}");
            continue;
        }
        assert_eq!(access.len(), 2, "{format}: {all}");
        for (line, status) in access.iter().zip([200, 401]) {
            if format == "json" {
                let v: Value = serde_json::from_str(line).expect("a JSON line");
                assert_eq!(v["level"], "INFO", "{line}");
                assert_eq!(v["fields"]["status"], status, "{line}");
                assert_eq!(v["fields"]["path"], "/v1/orgs/acme/items/1", "{line}");
            } else {
                assert!(
                    line.contains("  INFO keygate::access: request method=GET "),
                    "{line}"
                );
                assert!(line.contains(&format!(" status={status} ")), "{line}");
                assert!(line.contains(" path=\"/v1/orgs/acme/items/1\" "), "{line}");
            }
        }
        assert!(
            access[0].contains(&id),
            "the granted line names the key id: {}",
            access[0]
        );
        assert!(!all.contains(&key[8..]), "no key material: {all}");
    }
}

both_stores!(the_binary_serves_manages_keys_and_never_logs_a_key);
async fn the_binary_serves_manages_keys_and_never_logs_a_key(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match PgDatabase::create().await {
            Some(db) => Some(db),
            None => return,
        },
    };
    let store = pg.as_ref().map_or_else(
        || format!("sqlite://{}/keygate.db", dir.path().display()),
        PgDatabase::url,
    );
    let echo = Echo::start().await;
    let logs = Arc::new(Mutex::new(String::new()));
    let cli = Cli {
        config: write_config_on(dir.path(), &echo.addr.to_string(), &store),
        logs: Arc::clone(&logs),
    };

    let created = cli.json(&[
        "keys",
        "create",
        "--name",
        "ci-deploy",
        "--org",
        "acme",
        "--scopes",
        "read,execute",
        "--quota",
        "5000",
        "--actor",
        "alice",
        "--json",
    ]);
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("kg_live_"));
    assert_eq!(created["created_by"], "alice");
    assert_eq!(created["prefix"], &key[..16]);
    let other = cli.json(&["keys", "create", "--name", "other", "--org", "beta", "--json"]);
    let other_key = other["key"].as_str().expect("key").to_owned();
    let test_key = cli.json(&[
        "keys", "create", "--name", "t", "--org", "acme", "--env", "test", "--json",
    ])["key"]
        .as_str()
        .expect("key")
        .to_owned();

    let (mut server, addr) = serve(&cli.config, Arc::clone(&logs));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/orgs/acme/items/1");
    let typo = typo_of(&key);
    let mut statuses = Vec::new();
    for k in [&key, &other_key, &test_key, &typo] {
        let resp = client.get(&url).bearer_auth(k).send().await.expect("request");
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 403, 401, 401]);

    // list and show never print the key, in either format.
    let list = cli.run(&["keys", "list", "--org", "acme"]);
    let list_text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.status.success());
    for expected in ["ID", "PREFIX", "CREATED BY", "LAST USED", "alice", &key[..16]] {
        assert!(
            list_text.contains(expected),
            "`{expected}` missing from:\n{list_text}"
        );
    }
    let listed = cli.json(&["keys", "list", "--search", "ci-deploy", "--json"]);
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let shown = cli.run(&["keys", "show", &id]);
    for out in [
        list_text,
        listed.to_string(),
        String::from_utf8_lossy(&shown.stdout).into_owned(),
    ] {
        assert!(!out.contains(&key), "a listing printed the key");
    }

    let revoked = cli.json(&["keys", "revoke", &id, "--json"]);
    assert_eq!(revoked["status"], "revoked");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let status = client
            .get(&url)
            .bearer_auth(&key)
            .send()
            .await
            .expect("request")
            .status();
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "CLI revoke not honoured by serve within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // SIGTERM: drain, flush, exit 0.
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = server.wait().expect("wait");
    assert!(exit.success(), "serve exited with {exit:?}");
    let shown = cli.json(&["keys", "show", &id, "--json"]);
    assert!(
        shown["last_used_at"].is_string(),
        "last use was flushed at shutdown"
    );

    let logs = logs.lock().expect("logs").clone();
    assert!(logs.contains("proxy listening"), "logs were captured");
    assert!(
        logs.lines().count() > 50,
        "trace logs were captured ({} lines)",
        logs.lines().count()
    );
    for k in [&key, &other_key, &test_key, &typo] {
        assert!(!logs.contains(k.as_str()), "a key appeared in the logs");
        // Nor its secret part on its own.
        assert!(
            !logs.contains(&k[16..]),
            "a key's secret part appeared in the logs"
        );
    }
}

#[test]
fn check_config_lists_every_problem_and_fails() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(root.join("config/test/invalid.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has 11 problem(s)"), "{err}");
    assert!(
        err.contains("invalid.toml:5:1: unknown key `proxy.listne`"),
        "{err}"
    );
    let ok = Command::new(BIN)
        .arg("check-config")
        .arg(root.join("config/keygate.toml"))
        .output()
        .expect("run");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn bad_cli_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cli = Cli {
        config: write_config(dir.path(), "127.0.0.1:9"),
        logs: Arc::default(),
    };
    let out = cli.run(&["keys", "create", "--name", "x", "--scopes", "Bad Scope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scope `Bad Scope`"));
    let out = cli.run(&["keys", "show", "00000000-0000-0000-0000-000000000000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key with id"));
    let out = cli.run(&["keys", "revoke", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/keygate.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn explain_says_what_would_happen_and_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cli = Cli {
        config: write_config(dir.path(), "127.0.0.1:9"),
        logs: Arc::default(),
    };
    let created = cli.json(&[
        "keys", "create", "--name", "e", "--org", "acme", "--scopes", "read", "--json",
    ]);
    let id = created["id"].as_str().expect("id").to_owned();
    let key = created["key"].as_str().expect("key").to_owned();
    let explain = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write as _;
        let mut child = Command::new(BIN)
            .arg("explain")
            .args(args)
            .arg("--config")
            .arg(&cli.config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run explain");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("wait");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), report)
    };
    let (code, allowed) = explain(&["--key-id", &id, "GET", "/v1/orgs/acme/items/1", "--json"], None);
    assert_eq!(code, Some(0), "{allowed}");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["route"]["name"], "read-items");
    for (path, expected) in [
        ("/v1/orgs/beta/items/1", "org_mismatch"),
        ("/nothing", "route_not_found"),
        ("/v1/orgs/acme/../x", "invalid_path"),
    ] {
        let (code, report) = explain(&["--key-id", &id, "GET", path, "--json"], None);
        assert_eq!(code, Some(1), "{path}: {report}");
        assert_eq!(report["code"], expected, "{path}");
    }
    let (code, report) = explain(
        &["--key-stdin", "GET", "/v1/orgs/acme/items/1", "--json"],
        Some(&key),
    );
    assert_eq!((code, report["decision"].as_str()), (Some(0), Some("allow")));
    let typo = typo_of(&key);
    let (code, report) = explain(
        &["--key-stdin", "GET", "/v1/orgs/acme/items/1", "--json"],
        Some(&typo),
    );
    assert_eq!(
        (code, report["code"].as_str()),
        (Some(1), Some("malformed_api_key"))
    );
    assert!(
        !report.to_string().contains(&key[16..]),
        "explain printed key material"
    );
    cli.json(&["keys", "revoke", &id, "--json"]);
    let (code, report) = explain(&["--key-id", &id, "GET", "/v1/orgs/acme/items/1", "--json"], None);
    assert_eq!((code, report["code"].as_str()), (Some(1), Some("key_revoked")));
    let (code, _) = explain(&["GET"], None);
    assert_eq!(code, Some(2), "usage error");
}

/// The key with its last character changed (so its checksum no longer matches).
fn typo_of(key: &str) -> String {
    let last = if key.ends_with('0') { '1' } else { '0' };
    format!("{}{last}", &key[..key.len() - 1])
}

/// SIGTERM sent the moment `serve` says it is starting (before the store is open and
/// the workers run) ends in a clean stop, exit 0, either during start-up or by a
/// drain once it is up; not in death by the signal's default action. Orchestrators
/// send it at any moment.
#[test]
fn a_sigterm_during_start_up_still_ends_in_a_clean_stop() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n\
             [store]\nurl = \"sqlite://{}/keygate.db\"\n",
            dir.path().display()
        ),
    )
    .expect("write config");
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start keygate serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(10)).expect("a first line");
    assert!(first.contains("\"starting\""), "{first}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // Everything it says until it closes its stderr, within 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rest = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => rest.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("serve did not stop within 30 s of SIGTERM: {rest:?}");
            }
        }
    }
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "serve exited with {exit:?}; lines: {rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("\"stopped\"") || l.contains("\"stopped during start-up\"")),
        "it said it stopped: {rest:?}"
    );
}
