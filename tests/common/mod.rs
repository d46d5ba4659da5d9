//! Test harness: keygate in-process on 127.0.0.1:0 with the embedded defaults
//! (SQLite in a temp dir, local quota), in front of real loopback upstreams:
//! an echo server that returns every header it received as JSON, and a "hang"
//! server that never answers and reports when keygate closes the connection.

#![allow(dead_code)]

pub mod services;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use keygate::app::{self, App};
use keygate::clock::{ManualClock, SharedClock, SystemClock};
use keygate::keys::KeyRecord;
use keygate::manage::NewKey;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;

/// The echo upstream.
pub struct Echo {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Echo {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if req.uri().path() == "/v1/slow" {
                                tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                            }
                            Ok::<_, Infallible>(echo(req))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            hits,
            connections,
        }
    }

    /// Connections keygate opened to the upstream so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests that reached the upstream so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn echo(req: Request<Incoming>) -> Response<Either<Incoming, Full<Bytes>>> {
    if req.uri().path() == "/v1/echo-body" {
        return Response::new(Either::Left(req.into_body()));
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    resp
}

/// An upstream that reads the request and never answers; it counts connections
/// that the proxy closed.
pub struct Hang {
    pub addr: SocketAddr,
    closed: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Hang {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hang");
        let addr = listener.local_addr().expect("addr");
        let closed = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (c, a) = (Arc::clone(&closed), Arc::clone(&accepted));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        Self {
            addr,
            closed,
            accepted,
        }
    }

    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The routes every test app has; `{ECHO}` and `{HANG}` are filled in.
pub const ROUTES: &str = r#"
[[route]]
name = "read-items"
methods = ["GET", "HEAD"]
path = "/v1/orgs/{org}/items/**"
scopes = ["read"]
org_param = "org"

[[route]]
name = "write-items"
methods = ["POST", "PUT", "PATCH", "DELETE"]
path = "/v1/orgs/{org}/items/**"
scopes = ["write"]
org_param = "org"

[[route]]
name = "report"
methods = ["POST"]
path = "/v1/orgs/{org}/reports"
scopes = ["read", "execute"]
org_param = "org"
cost = 10

[[route]]
name = "echo-body"
methods = ["POST"]
path = "/v1/echo-body"
scopes = ["read"]

[[route]]
name = "admin-things"
path = "/v1/admin/**"
scopes = ["admin"]

[[route]]
name = "hang"
path = "/v1/hang"
scopes = ["read"]
upstream = "http://{HANG}"

[[route]]
name = "down"
path = "/v1/down"
scopes = ["read"]
upstream = "http://127.0.0.1:9"

[[route]]
name = "slow"
path = "/v1/slow"
scopes = ["read"]

[[route]]
name = "health"
path = "/healthz"
public = true
"#;

/// Which admin store a test app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// An SQLite file in the test's temp dir.
    #[default]
    Sqlite,
    /// A throwaway database on the machine's PostgreSQL.
    Postgres,
}

/// Runs a behaviour test on both stores: `both_stores!(name);` before
/// `async fn name(backend: Backend)` makes the tests `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    };
}

/// Options for a test app.
#[derive(Clone)]
pub struct Options {
    /// Extra TOML placed before the routes (tables like `[keys]`).
    pub extra: String,
    /// Extra keys in the `[proxy]` table.
    pub proxy_extra: String,
    /// `deny` or `authenticate`.
    pub unmatched: &'static str,
    pub clock: Option<ManualClock>,
    pub backend: Backend,
    /// Store URL override (e.g. through a relay); default: the backend's own.
    pub store_url: Option<String>,
    /// Redis URL, for shared-state mode.
    pub redis: Option<String>,
    /// `[quota] on_redis_error`.
    pub on_redis_error: &'static str,
    /// Run the admin listener (on 127.0.0.1:0).
    pub admin: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            extra: String::new(),
            proxy_extra: String::new(),
            unmatched: "deny",
            clock: None,
            backend: Backend::Sqlite,
            store_url: None,
            redis: None,
            on_redis_error: "local",
            admin: true,
        }
    }
}

/// With `KEYGATE_TEST_LOG_DIR` set (the test command sets it), this test binary's
/// keygate logs go there at TRACE, as JSON, for the test command's scan for key
/// material over the whole run's logs.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(file) = log_file("in-process") else {
            return;
        };
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("keygate=trace"))
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    });
}

/// A fresh log file in `KEYGATE_TEST_LOG_DIR`, when set.
pub fn log_file(what: &str) -> Option<std::fs::File> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::var_os("KEYGATE_TEST_LOG_DIR")?;
    let exe = std::env::current_exe().ok()?;
    let name = format!(
        "{}-{what}-{}-{}.log",
        exe.file_name()?.to_string_lossy(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    std::fs::File::create(std::path::Path::new(&dir).join(name)).ok()
}

/// keygate running in-process.
pub struct TestApp {
    app: Option<App>,
    pub addr: SocketAddr,
    pub echo: Echo,
    pub hang: Hang,
    pub dir: TempDir,
    pub client: reqwest::Client,
    pub pg: Option<Arc<services::PgDatabase>>,
    options: Options,
}

impl TestApp {
    /// On SQLite, default options.
    pub async fn start() -> Self {
        Self::with(Options::default())
            .await
            .expect("SQLite needs no service")
    }

    /// On `backend`, default options; `None` when the backend's service is missing (outside CI).
    pub async fn on(backend: Backend) -> Option<Self> {
        Self::with(Options {
            backend,
            ..Options::default()
        })
        .await
    }

    /// `None` when a needed service is missing (outside CI; in CI that panics).
    pub async fn with(mut options: Options) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = match options.backend {
            Backend::Postgres if options.store_url.is_none() => {
                let db = services::PgDatabase::create().await?;
                options.store_url = Some(db.url());
                Some(Arc::new(db))
            }
            _ => None,
        };
        let echo = Echo::start().await;
        let hang = Hang::start().await;
        let mut app = Self::boot(options, dir, echo, hang).await;
        app.pg = pg;
        Some(app)
    }

    /// Another keygate (a replica) on the same store and Redis, with its own upstreams.
    pub async fn replica(&self) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = self.options.clone();
        options.store_url = Some(self.store_url());
        let mut app = Self::boot(options, dir, Echo::start().await, Hang::start().await).await;
        app.pg = self.pg.clone();
        app
    }

    async fn boot(options: Options, dir: TempDir, echo: Echo, hang: Hang) -> Self {
        capture_logs();
        let config = config_text(&options, &dir, &echo, &hang);
        let config = keygate::config::parse(&config, &std::collections::HashMap::new())
            .unwrap_or_else(|d| panic!("test config invalid: {d:?}"));
        let clock: SharedClock = match &options.clock {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(SystemClock),
        };
        let app = app::start(config, clock).await.expect("keygate starts");
        let addr = app.proxy_addr();
        let client = reqwest::Client::builder().build().expect("client");
        Self {
            app: Some(app),
            addr,
            echo,
            hang,
            dir,
            client,
            pg: None,
            options,
        }
    }

    /// Shuts down gracefully and starts again on the same store.
    pub async fn restart(mut self) -> Self {
        self.app
            .take()
            .expect("running")
            .shutdown()
            .await
            .expect("clean shutdown");
        let mut options = self.options.clone();
        options.store_url = Some(self.store_url());
        let pg = self.pg.take();
        let mut app = Self::boot(options, self.dir, self.echo, self.hang).await;
        app.pg = pg;
        app
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("clean shutdown");
        }
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.app().admin_addr().expect("admin listener")
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn store_url(&self) -> String {
        store_url(&self.options, &self.dir)
    }

    /// The config text this app started with.
    pub fn config_text(&self) -> String {
        config_text(&self.options, &self.dir, &self.echo, &self.hang)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text")
    }

    /// Creates a key through the same path as the CLI; returns the plaintext and record.
    pub async fn key(&self, new: NewKey) -> (String, KeyRecord) {
        let (key, record) = self
            .app()
            .keys()
            .create(new, &"tests".into())
            .await
            .expect("create key");
        (key.expose().to_owned(), record)
    }

    /// A platform admin key (scope `admin`, no org), for the admin API.
    pub async fn admin_key(&self) -> String {
        self.key(NewKey {
            name: "admin".into(),
            scopes: vec!["admin".into()],
            ..NewKey::default()
        })
        .await
        .0
    }

    /// A key of org `acme` with `scopes`.
    pub async fn acme_key(&self, scopes: &[&str]) -> (String, KeyRecord) {
        self.key(NewKey {
            name: "test key".into(),
            org_id: Some("acme".into()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..NewKey::default()
        })
        .await
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }
}

/// The config file text of a test app.
pub fn config_text(options: &Options, dir: &TempDir, echo: &Echo, hang: &Hang) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
upstream = "http://{echo}"
unmatched = "{unmatched}"
workers = 2
connect_timeout = "1s"
response_timeout = "1s"
shutdown_grace = "5s"
key_header = "X-API-Key"
{proxy_extra}
[store]
url = "{store}"
poll_interval = "50ms"
flush_interval = "100ms"
{redis}
{admin}

[quota]
limit = 1000
period = "month"
on_redis_error = "{on_redis_error}"

{extra}
{routes}"#,
        echo = echo.addr,
        unmatched = options.unmatched,
        store = store_url(options, dir),
        redis = options
            .redis
            .as_ref()
            .map(|url| format!("[redis]\nurl = \"{url}\"\n"))
            .unwrap_or_default(),
        extra = options.extra,
        proxy_extra = options.proxy_extra,
        on_redis_error = options.on_redis_error,
        admin = if options.admin {
            "[admin]\nlisten = \"127.0.0.1:0\"\n"
        } else {
            ""
        },
        routes = ROUTES.replace("{HANG}", &hang.addr.to_string()),
    )
}

fn store_url(options: &Options, dir: &TempDir) -> String {
    options
        .store_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/keygate.db", dir.path().display()))
}

/// The error code of a refusal body.
pub async fn code(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.expect("JSON error body");
    body["error"]["code"].as_str().expect("error.code").to_owned()
}

/// The headers the echo upstream received, as (name, value) pairs.
pub async fn received(resp: reqwest::Response) -> Vec<(String, String)> {
    assert_eq!(resp.status(), 200, "expected the request to reach the upstream");
    let body: Value = resp.json().await.expect("echo JSON");
    body["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().expect("name").to_owned(),
                pair[1].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

/// Sends a GET with an exact request-target over a raw connection; returns status and body.
pub async fn raw_get(addr: SocketAddr, target: &str, key: &str) -> (u16, String) {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    raw(addr, request.as_bytes()).await
}

/// Sends raw bytes and reads until the server closes; returns status and body.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Starts `keygate serve --config FILE` as a child process logging JSON at `rust_log`
/// into `logs`; returns it and the address it listens on.
pub fn serve_process(
    config: &std::path::Path,
    rust_log: &str,
    logs: Arc<std::sync::Mutex<String>>,
) -> (std::process::Child, String) {
    serve_process_with(config, &[], rust_log, logs)
}

/// `keygate serve` with extra flags.
pub fn serve_process_with(
    config: &std::path::Path,
    flags: &[&str],
    rust_log: &str,
    logs: Arc<std::sync::Mutex<String>>,
) -> (std::process::Child, String) {
    serve_process_in("json", config, flags, rust_log, logs)
}

/// `keygate --log-format FORMAT serve` with extra flags; the address is read from
/// the first line that carries one, in either format.
pub fn serve_process_in(
    format: &str,
    config: &std::path::Path,
    flags: &[&str],
    rust_log: &str,
    logs: Arc<std::sync::Mutex<String>>,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--log-format", format, "serve"])
        .args(flags)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", rust_log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start keygate serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut copy = log_file("serve");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(file) = &mut copy {
                use std::io::Write as _;
                let _ = writeln!(file, "{line}");
            }
            // Kept before the address is announced: a caller that saw the address
            // finds the line that carried it in `logs`.
            {
                let mut logs = logs.lock().expect("logs");
                logs.push_str(&line);
                logs.push('\n');
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(addr) = v["fields"]["addr"].as_str()
            {
                let _ = tx.send(addr.to_owned());
            } else if let Some((_, rest)) = line.split_once(" addr=") {
                let addr = rest.split(' ').next().unwrap_or_default();
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("serve logs its address");
    (child, addr)
}

/// `keygate keys create ARGS --json --config CONFIG` as a process; returns the key.
pub fn create_key_with_cli(config: &std::path::Path, args: &[&str]) -> String {
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "create"])
        .args(args)
        .args(["--json", "--config"])
        .arg(config)
        .output()
        .expect("keys create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    serde_json::from_slice::<Value>(&created.stdout).expect("JSON")["key"]
        .as_str()
        .expect("key")
        .to_owned()
}

/// Sends SIGTERM and checks the process exits 0.
pub fn terminate(mut child: std::process::Child) {
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "serve exited with {exit:?}");
}
