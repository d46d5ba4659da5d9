//! MCP routes against a real MCP server and a real MCP client, both from the
//! protocol's official Python SDK (`mcp` on PyPI; the test command installs it):
//! tool lists filtered per key for JSON and event-stream answers, refused calls
//! answered by keygate and absent from the server's own log, read-only keys, quota
//! per tool call, MCP paused while REST works, malformed and oversized bodies, the
//! GET event stream. Batches (which the Python SDK's server does not accept) go to
//! a small JSON-RPC server in this file that answers every entry.

#[macro_use]
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Options, TestApp};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate::keys::{McpPolicy, Restrictions};
use keygate::manage::NewKey;
use serde_json::{Value, json};

/// The Python with the `mcp` SDK: `KEYGATE_MCP_PYTHON` (the test command sets it),
/// else the test command's venv. `None` outside CI when neither exists.
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("KEYGATE_MCP_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(Path::new(&home).join(".cache/keygate-mcp/bin/python"))
        })
        .filter(|p| p.exists());
    if path.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the MCP SDK is required in CI (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: the MCP Python SDK is not installed; scripts/test.sh installs it");
    }
    path
}

fn sdk(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mcp_sdk")
        .join(file)
}

/// The SDK's FastMCP server, answering with JSON or event streams.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(python: &Path, mode: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("upstream.log");
        std::fs::write(&log, "").expect("log");
        let port = common::services::free_port();
        let child = Command::new(python)
            .arg(sdk("server.py"))
            .arg(port.to_string())
            .arg(&log)
            .arg(mode)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the MCP server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the MCP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// What the server logged: `tools/list` and `call <tool> <arg>` lines.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).expect("upstream log")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the SDK client through keygate: lists the tools and makes `calls`.
async fn client(python: &Path, url: &str, key: &str, calls: &[&str]) -> Value {
    let mut cmd = Command::new(python);
    cmd.arg(sdk("client.py")).arg(url).arg(key).args(calls);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run the MCP client");
    assert!(
        out.status.success(),
        "MCP client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

fn mcp_config(server_port: u16, rpc: SocketAddr) -> String {
    format!(
        r#"
[mcp]
max_body_bytes = 4096
read_only_tools = ["report"]
tool_labels = ["search_docs"]
tool_costs = {{ report = 3 }}

[[route]]
name = "mcp"
path = "/mcp"
mcp = true
scopes = ["execute"]
upstream = "http://127.0.0.1:{server_port}"

[[route]]
name = "rpc"
path = "/rpc"
mcp = true
scopes = ["execute"]
upstream = "http://{rpc}"
"#
    )
}

async fn mcp_key(app: &TestApp, policy: McpPolicy, quota: Option<u64>) -> String {
    app.key(NewKey {
        name: "agent".into(),
        org_id: Some("acme".into()),
        scopes: vec!["read".into(), "execute".into()],
        quota_limit: quota,
        restrictions: Restrictions {
            mcp: policy,
            ..Restrictions::default()
        },
        ..NewKey::default()
    })
    .await
    .0
}

fn tools(list: &[&str]) -> McpPolicy {
    McpPolicy {
        tools: list.iter().map(|t| (*t).to_owned()).collect(),
        ..McpPolicy::default()
    }
}

/// A JSON-RPC server that accepts batches: every request is answered with its
/// method and tool; `tools/list` with two tools. Answers as JSON or as an event
/// stream (one event per answer). Keeps every body it received.
struct Rpc {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Rpc {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&bodies);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let mode = req
                                .headers()
                                .get("x-answer")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("json")
                                .to_owned();
                            let body = req.into_body().collect().await.expect("body").to_bytes();
                            let value: Value = serde_json::from_slice(&body).expect("JSON from keygate");
                            seen.lock().expect("lock").push(value.clone());
                            Ok::<_, Infallible>(rpc_answer(&value, &mode))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, bodies }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("lock").clone()
    }
}

fn rpc_answer(value: &Value, mode: &str) -> hyper::Response<Full<Bytes>> {
    let items: Vec<Value> = match value {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    };
    let answers: Vec<Value> = items
        .iter()
        .filter(|m| m.get("id").is_some() && m.get("method").is_some())
        .map(|m| {
            let result = if m["method"] == "tools/list" {
                json!({"tools": [
                    {"name": "search_docs", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}},
                    {"name": "delete_document", "inputSchema": {"type": "object"}},
                ]})
            } else {
                json!({"method": m["method"], "tool": m["params"]["name"]})
            };
            json!({"jsonrpc": "2.0", "id": m["id"], "result": result})
        })
        .collect();
    let builder = hyper::Response::builder();
    if answers.is_empty() {
        return builder
            .status(202)
            .body(Full::new(Bytes::new()))
            .expect("response");
    }
    if mode == "sse-array" {
        let text = format!("event: message\ndata: {}\n\n", Value::Array(answers));
        return builder
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from(text)))
            .expect("response");
    }
    if mode == "gzip" {
        return builder
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from_static(b"\x1f\x8b not really gzip")))
            .expect("response");
    }
    if mode == "sse" {
        let mut text = String::from(": keep-alive\n\n");
        for a in &answers {
            text.push_str(&format!("event: message\ndata: {a}\n\n"));
        }
        return builder
            .header("content-type", "text/event-stream")
            .body(Full::new(Bytes::from(text)))
            .expect("response");
    }
    let body = if value.is_array() {
        Value::Array(answers)
    } else {
        answers[0].clone()
    };
    builder
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// Every answer in an event stream's `data:` lines.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("JSON event"))
        .collect()
}

/// The SDK client through keygate, in front of the SDK server answering `mode`.
async fn sdk_scenarios(mode: &str) {
    let Some(python) = python() else {
        return;
    };
    let server = Server::start(&python, mode);
    let rpc = Rpc::start().await;
    let app = TestApp::with(Options {
        extra: mcp_config(server.port, rpc.addr),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service");
    let url = app.url("/mcp");
    let searcher = mcp_key(&app, tools(&["search_*", "get_document"]), None).await;
    let writer = mcp_key(&app, tools(&["report", "delete_document"]), None).await;
    let read_only = mcp_key(
        &app,
        McpPolicy {
            read_only: true,
            ..McpPolicy::default()
        },
        None,
    )
    .await;

    // Two keys, two tool lists; an allowed call end to end; a refused one never arrives.
    let a = client(
        &python,
        &url,
        &searcher,
        &["search_docs=rust", "delete_document=7"],
    )
    .await;
    println!("[{mode}] key with tools search_*,get_document: {a}");
    assert_eq!(a["tools"], json!(["get_document", "search_docs"]));
    assert_eq!(a["calls"]["search_docs"]["text"], "3 documents match rust");
    let refused = &a["calls"]["delete_document"]["error"];
    assert_eq!(refused["code"], -32001);
    assert_eq!(refused["data"]["code"], "tool_not_allowed");
    assert_eq!(refused["data"]["tool"], "delete_document");
    assert!(
        refused["data"]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let b = client(&python, &url, &writer, &["report=q3"]).await;
    println!("[{mode}] key with tools report,delete_document: {b}");
    assert_eq!(b["tools"], json!(["delete_document", "report"]));
    assert_eq!(b["calls"]["report"]["text"], "report on q3");
    let log = server.log();
    println!("[{mode}] the MCP server's own log:\n{log}");
    assert!(log.contains("call search_docs rust"));
    assert!(log.contains("call report q3"));
    assert!(
        !log.contains("delete_document"),
        "the refused call never reached the server"
    );

    // Read-only: the upstream's readOnlyHint plus [mcp] read_only_tools.
    let c = client(
        &python,
        &url,
        &read_only,
        &["get_document=1", "delete_document=2"],
    )
    .await;
    assert_eq!(c["tools"], json!(["get_document", "report", "search_docs"]));
    assert_eq!(c["calls"]["get_document"]["text"], "document 1");
    assert_eq!(
        c["calls"]["delete_document"]["error"]["data"]["code"],
        "tool_not_allowed"
    );
    assert!(!server.log().contains("delete_document"));

    // Quota: tool calls are charged (report costs 3 by [mcp] tool_costs), the rest is free.
    let budget = mcp_key(&app, McpPolicy::default(), Some(4)).await;
    let d = client(&python, &url, &budget, &["search_docs=a", "report=b"]).await;
    assert_eq!(d["calls"]["search_docs"]["text"], "3 documents match a");
    assert_eq!(d["calls"]["report"]["text"], "report on b", "1 + 3 = 4 units");
    let d = client(&python, &url, &budget, &["search_docs=c"]).await;
    assert_eq!(d["tools"].as_array().map(Vec::len), Some(4), "listing is free");
    assert_eq!(
        d["calls"]["search_docs"]["error"]["data"]["code"],
        "quota_exceeded"
    );
    assert!(!server.log().contains("search_docs c"));

    // MCP paused: initialize works, everything else is refused; REST still works.
    let paused = mcp_key(
        &app,
        McpPolicy {
            disabled: true,
            ..McpPolicy::default()
        },
        None,
    )
    .await;
    let e = client(&python, &url, &paused, &["search_docs=z"]).await;
    assert_eq!(e["tools"]["error"]["data"]["code"], "mcp_disabled");
    assert_eq!(e["calls"]["search_docs"]["error"]["data"]["code"], "mcp_disabled");
    assert_eq!(app.get("/v1/orgs/acme/items/1", &paused).await.status(), 200);

    // Malformed and oversized bodies: a JSON-RPC error or 413, nothing forwarded.
    let lines = server.log().lines().count();
    let post = |key: &str, body: String| {
        app.client
            .post(&url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
    };
    let resp = post(&searcher, "{\"jsonrpc\":\"2.0\",".into())
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON-RPC error");
    assert_eq!(body["error"]["code"], -32700);
    assert_eq!(body["id"], Value::Null);
    let resp = post(&searcher, r#"{"jsonrpc":"2.0","id":1}"#.into())
        .await
        .expect("post");
    let body: Value = resp.json().await.expect("JSON-RPC error");
    assert_eq!(body["error"]["code"], -32600);
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "search_docs", "arguments": {"query": "x".repeat(5000)}}});
    let resp = post(&searcher, big.to_string()).await.expect("post");
    assert_eq!(resp.status(), 413);
    assert_eq!(common::code(resp).await, "body_too_large");
    assert_eq!(server.log().lines().count(), lines, "nothing reached the server");

    // The GET event stream passes through for an authorized key, not for a paused one.
    let session = initialize(&app, &url, &searcher).await;
    let stream = app
        .client
        .get(&url)
        .bearer_auth(&searcher)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"))
    );
    drop(stream);
    let resp = app
        .client
        .get(&url)
        .bearer_auth(&paused)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET stream");
    assert_eq!(resp.status(), 403);
    assert_eq!(common::code(resp).await, "mcp_disabled");

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"keygate_mcp_messages_total{method="tools/call",outcome="tool_not_allowed",route="mcp",tool="other"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"method="tools/call",outcome="forwarded",route="mcp",tool="search_docs""#));
    app.stop().await;
}

/// An initialized session's id, by hand (for the GET stream).
async fn initialize(app: &TestApp, url: &str, key: &str) -> String {
    let resp = app
        .client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "keygate-test", "version": "1"}}})
            .to_string(),
        )
        .send()
        .await
        .expect("initialize");
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_owned();
    let _ = resp.bytes().await;
    let note = app
        .client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .send()
        .await
        .expect("initialized");
    assert_eq!(note.status(), 202);
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_through_keygate_with_json_answers() {
    sdk_scenarios("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_client_through_keygate_with_event_stream_answers() {
    sdk_scenarios("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_forwards_the_allowed_entries_and_answers_the_refused_ones() {
    let rpc = Rpc::start().await;
    let app = TestApp::with(Options {
        extra: mcp_config(common::services::free_port(), rpc.addr),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service");
    let key = mcp_key(&app, tools(&["search_*"]), None).await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_document", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
    ]);
    for answer in ["json", "sse"] {
        let resp = app
            .client
            .post(app.url("/rpc"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("x-answer", answer)
            .body(batch.to_string())
            .send()
            .await
            .expect("batch");
        assert_eq!(resp.status(), 200, "{answer}");
        let text = resp.text().await.expect("body");
        let mut answers = if answer == "sse" {
            events(&text)
        } else {
            serde_json::from_str::<Vec<Value>>(&text).expect("a JSON array")
        };
        answers.sort_by_key(|a| a["id"].as_i64());
        println!("[{answer}] batch answers: {}", Value::Array(answers.clone()));
        assert_eq!(answers.len(), 3, "{answer}: {text}");
        assert_eq!(answers[0]["result"]["tool"], "search_docs");
        assert_eq!(answers[1]["error"]["data"]["code"], "tool_not_allowed");
        assert_eq!(answers[1]["id"], 2);
        assert_eq!(
            answers[2]["result"]["tools"],
            json!([{"name": "search_docs", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}}])
        );
    }
    // The upstream saw the batch without the refused entry, both times.
    for body in rpc.bodies() {
        let ids: Vec<_> = body
            .as_array()
            .expect("a batch")
            .iter()
            .map(|m| m["id"].clone())
            .collect();
        assert_eq!(ids, [json!(1), json!(3), Value::Null]);
    }
    // A batch of refused entries only is answered without the upstream.
    let before = rpc.bodies().len();
    let resp = app
        .client
        .post(app.url("/rpc"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(
            json!([{"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": {"name": "rm"}}])
                .to_string(),
        )
        .send()
        .await
        .expect("batch");
    let answers: Value = resp.json().await.expect("JSON");
    assert_eq!(answers[0]["id"], "x");
    assert_eq!(answers[0]["error"]["data"]["code"], "tool_not_allowed");
    assert_eq!(rpc.bodies().len(), before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_the_cli_set_the_mcp_policy() {
    let app = TestApp::start().await;
    let admin = app.admin_key().await;
    let send = |method: reqwest::Method, path: &str, body: Value| {
        app.client
            .request(method, app.admin_url(path))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let created: Value = send(
        reqwest::Method::POST,
        "/v1/keys",
        json!({"name": "agent", "scopes": ["execute"], "mcp": {"tools": ["search_*"], "read_only": true}}),
    )
    .await
    .expect("create")
    .json()
    .await
    .expect("JSON");
    assert_eq!(
        created["mcp"],
        json!({"disabled": false, "tools": ["search_*"], "read_only": true})
    );
    let path = format!("/v1/keys/{}", created["id"].as_str().expect("id"));
    let patched: Value = send(reqwest::Method::PATCH, &path, json!({"mcp": {"disabled": true}}))
        .await
        .expect("patch")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        patched["mcp"],
        json!({"disabled": true, "tools": [], "read_only": false}),
        "the mcp object is replaced whole"
    );
    for bad in [
        json!({"mcp": {"tools": ["two words"]}}),
        json!({"mcp": {"paused": true}}),
        json!({"mcp": []}),
    ] {
        let resp = send(reqwest::Method::PATCH, &path, bad.clone())
            .await
            .expect("patch");
        assert_eq!(resp.status(), 400, "{bad}");
    }
    app.stop().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!("[store]\nurl = \"sqlite://{}/k.db\"\n", dir.path().display()),
    )
    .expect("config");
    let keygate = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("keygate runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let created: Value = serde_json::from_str(&keygate(&[
        "keys",
        "create",
        "--name",
        "agent",
        "--mcp-tools",
        "search_*,get_document",
        "--mcp-read-only",
        "--json",
    ]))
    .expect("JSON");
    assert_eq!(
        created["mcp"],
        json!({"disabled": false, "tools": ["search_*", "get_document"], "read_only": true})
    );
    let id = created["id"].as_str().expect("id");
    let updated: Value = serde_json::from_str(&keygate(&[
        "keys",
        "update",
        id,
        "--mcp-disabled",
        "true",
        "--json",
    ]))
    .expect("JSON");
    assert_eq!(
        updated["mcp"],
        json!({"disabled": true, "tools": ["search_*", "get_document"], "read_only": true}),
        "the other MCP fields stay"
    );
    let shown = keygate(&["keys", "show", id]);
    assert!(
        shown.contains("mcp:          paused, tools search_*,get_document, read-only"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mcp_requests_are_refused_or_judged_and_never_crash_keygate() {
    let rpc = Rpc::start().await;
    let app = TestApp::with(Options {
        extra: mcp_config(common::services::free_port(), rpc.addr),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service");
    let key = mcp_key(&app, tools(&["search_*"]), None).await;
    let open = mcp_key(&app, McpPolicy::default(), None).await;
    let post = |body: Value, answer: &'static str| {
        app.client
            .post(app.url("/rpc"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("x-answer", answer)
            .body(body.to_string())
            .send()
    };
    // A tool name of multi-byte characters, long enough to be cut in the access log.
    let long = "€".repeat(120);
    let resp = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": long}}),
        "json",
    )
    .await
    .expect("keygate answers");
    let body: Value = resp.json().await.expect("JSON-RPC");
    assert_eq!(body["error"]["data"]["code"], "tool_not_allowed");
    // A call without an id is judged too, and dropped when refused.
    let before = rpc.bodies().len();
    let resp = post(
        json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete_document"}}),
        "json",
    )
    .await
    .expect("answer");
    assert_eq!(resp.status(), 202);
    assert_eq!(
        rpc.bodies().len(),
        before,
        "the id-less refused call never reached the server"
    );
    // Ids that would compare differently once echoed, and duplicate ids, are invalid.
    for bad in [
        json!({"jsonrpc": "2.0", "id": 1.0, "method": "tools/list"}),
        json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]),
    ] {
        let resp = post(bad.clone(), "json").await.expect("answer");
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.expect("JSON-RPC");
        assert_eq!(body["error"]["code"], -32600, "{bad}");
    }
    // A tools/list answer inside an event holding an array of answers is filtered.
    let list = json!([{"jsonrpc": "2.0", "id": 5, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 6, "method": "ping"}]);
    let text = post(list.clone(), "sse-array")
        .await
        .expect("answer")
        .text()
        .await
        .expect("body");
    let answers = events(&text);
    let tools = &answers[0][0]["result"]["tools"];
    assert_eq!(tools.as_array().map(Vec::len), Some(1), "{text}");
    assert_eq!(tools[0]["name"], "search_docs");
    // An encoded answer keygate cannot read is not passed on unfiltered.
    let resp = post(list, "gzip").await.expect("answer");
    assert_eq!(resp.status(), 502);
    // Only POST carries messages.
    let put = app
        .client
        .put(app.url("/rpc"))
        .bearer_auth(&key)
        .body("{}")
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 405);
    let get = app
        .client
        .get(app.url("/rpc"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_document"}})
                .to_string(),
        )
        .send()
        .await
        .expect("GET with a body");
    assert_eq!(get.status(), 400);
    // Forward-auth cannot see the tool called: a key with a tool policy is refused
    // there, an open key is let through and charged per request.
    let ask = |key: &str| {
        app.client
            .get(app.url("/_keygate/auth"))
            .header("x-original-method", "POST")
            .header("x-original-uri", "/rpc")
            .bearer_auth(key)
            .send()
    };
    let resp = ask(&key).await.expect("forward-auth");
    assert_eq!(resp.status(), 403);
    assert_eq!(common::code(resp).await, "mcp_needs_proxy");
    let first = ask(&open).await.expect("forward-auth");
    assert_eq!(first.status(), 200);
    let second = ask(&open).await.expect("forward-auth");
    let remaining = |r: &reqwest::Response| {
        r.headers()["ratelimit-remaining"]
            .to_str()
            .expect("ascii")
            .parse::<u64>()
            .expect("a number")
    };
    assert_eq!(remaining(&first) - remaining(&second), 1, "charged per request");
    // And keygate is still serving.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("health")
            .status(),
        200
    );
    app.stop().await;
}
