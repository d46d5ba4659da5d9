//! Real services for the shared-state suites: a private `redis-server` per test (so a
//! test may kill it), a throwaway PostgreSQL database per test on the machine's
//! server, and a TCP relay that a test can cut to make a service unreachable.
//!
//! With `CI=true` a missing service fails the test; elsewhere the test is skipped
//! with a message saying how to get the service (`scripts/test.sh` does it for you).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The PostgreSQL server tests use (trust auth on loopback).
pub fn postgres_admin_url() -> String {
    std::env::var("KEYGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn missing(what: &str, how: &str) -> Option<()> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required when CI=true: {how}");
    }
    eprintln!("\n*** SKIPPED: {what} is not available. {how} (scripts/test.sh sets it up.) ***\n");
    None
}

/// A `redis-server` of our own, on a free loopback port.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one, or `None` (skip) when `redis-server` is not installed outside CI.
    pub async fn start() -> Option<Self> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            missing("redis-server", "install it with `apt-get install redis-server`")?;
        }
        let port = free_port();
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): connections break at once, data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway database on the machine's PostgreSQL, dropped at the end.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    /// Creates one, or `None` (skip) when PostgreSQL is unreachable outside CI.
    pub async fn create() -> Option<Self> {
        use sqlx::Connection as _;
        let admin = postgres_admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                missing(
                    "PostgreSQL",
                    &format!("cannot connect to {admin} ({e}); start it or set KEYGATE_TEST_POSTGRES"),
                )?;
                unreachable!("missing() returns None outside CI and panics in CI");
            }
        };
        let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        Some(Self { name })
    }

    /// The database's URL through `addr` (the server itself, or a relay).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let admin = postgres_admin_url();
        let user = admin
            .trim_start_matches("postgres://")
            .split('@')
            .next()
            .unwrap_or("postgres")
            .to_owned();
        format!("postgres://{user}@{addr}/{}", self.name)
    }

    /// The server's own address.
    pub fn server_addr() -> SocketAddr {
        let admin = postgres_admin_url();
        let hostport = admin
            .split('@')
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("127.0.0.1:5432");
        hostport
            .parse()
            .expect("KEYGATE_TEST_POSTGRES must name host:port as an IP address")
    }

    pub fn url(&self) -> String {
        self.url_via(Self::server_addr())
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Best effort; psql may be absent, and a leftover test database is harmless.
        let _ = Command::new("psql")
            .arg(postgres_admin_url())
            .args([
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A TCP relay in front of a service; `cut` drops every connection and refuses new
/// ones until `restore`.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (o, c) = (Arc::clone(&open), Arc::clone(&cut));
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = c.notified() => {}
                    }
                });
            }
        });
        Self { addr, open, cut }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
