//! The HTTP/1.1 fast path, byte for byte: pipelined requests, refusals on a kept-alive
//! connection (a `HEAD` refusal has no body), request bodies framed once, every
//! upstream framing passed through (`Content-Length`, chunked with trailers, until
//! close, interim 1xx), hop-by-hop fields dropped, broken answers refused, pooled
//! connections the upstream closed replaced, and what the fast path leaves to hyper
//! (HTTP/1.0, chunked and large request bodies, `Expect`) still served.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{Options, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream written by hand: each request's path picks the bytes it answers with.
/// It records every request it receives (head and body) and counts connections.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<String>>>,
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// What the scripted upstream answers on `path`, and whether it closes afterwards.
fn script(path: &str) -> (&'static [u8], bool) {
    match path {
        "/raw/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/raw/until-close" => (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nstreamed until close",
            true,
        ),
        "/raw/early-hints" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/raw/hop" => (
            b"HTTP/1.1 200 OK\r\nConnection: x-internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\nX-Request-Id: upstream\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/raw/smuggle" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
        ),
        "/raw/garbage" => (b"NOT HTTP AT ALL\r\n\r\n", true),
        "/raw/drop" => (b"", true),
        "/raw/conn-cl" => (
            b"HTTP/1.1 200 OK\r\nConnection: content-length, x-gone\r\nX-Gone: 1\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/raw/then-close" => (OK, true),
        _ => (OK, false),
    }
}

impl Scripted {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (Arc::clone(&connections), Arc::clone(&received));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(Self::serve(stream, Arc::clone(&log)));
            }
        });
        Self {
            addr,
            connections,
            received,
        }
    }

    async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<String>>>) {
        let mut buf = Vec::new();
        loop {
            let Some(end) = find(&buf, b"\r\n\r\n") else {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let request: Vec<u8> = buf.drain(..end + 4 + length).collect();
            log.lock()
                .expect("log")
                .push(String::from_utf8_lossy(&request).into_owned());
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let (answer, close) = script(&path);
            if stream.write_all(answer).await.is_err() || close {
                return;
            }
        }
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().expect("log").clone()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn app_with(scripted: &Scripted) -> TestApp {
    TestApp::with(Options {
        extra: format!(
            "[[route]]\nname = \"raw\"\npath = \"/raw/**\"\npublic = true\nupstream = \"http://{}\"\n",
            scripted.addr
        ),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service")
}

/// One response read off a kept-alive connection: status, head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Reads one response (`head_only` for a `HEAD` request) from `buf` and `stream`.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed mid-answer: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        more(stream, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut answer = Answer {
        status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        head,
        body: Vec::new(),
    };
    if head_only {
        return answer;
    }
    if let Some(length) = answer.header("content-length") {
        let length: usize = length.parse().expect("length");
        while buf.len() < length {
            more(stream, buf).await;
        }
        answer.body = buf.drain(..length).collect();
    } else if answer.header("transfer-encoding").is_some() {
        // The whole chunked body, framing included, up to the blank line after `0`.
        loop {
            if let Some(zero) = find(buf, b"\r\n0\r\n") {
                let rest = &buf[zero + 5..];
                let tail = if rest.starts_with(b"\r\n") {
                    Some(2)
                } else {
                    find(rest, b"\r\n\r\n").map(|t| t + 4)
                };
                if let Some(tail) = tail {
                    answer.body = buf.drain(..zero + 5 + tail).collect();
                    break;
                }
            }
            more(stream, buf).await;
        }
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_refusals_share_one_connection() {
    let scripted = Scripted::start().await;
    let app = app_with(&scripted).await;
    let (key, _) = app.acme_key(&["read"]).await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let requests = format!(
        "GET /v1/orgs/acme/items/1 HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\n\r\n\
         GET /v1/orgs/acme/items/1 HTTP/1.1\r\nHost: api\r\n\r\n\
         HEAD /v1/orgs/acme/items/1 HTTP/1.1\r\nHost: api\r\n\r\n\
         GET /raw/chunked HTTP/1.1\r\nHost: api\r\n\r\n\
         HEAD /v1/orgs/acme/items/1 HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\n\r\n\
         GET /raw/ok HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let keyed = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(keyed.status, 200, "{}", keyed.head);
    let seen: serde_json::Value = serde_json::from_slice(&keyed.body).expect("echo json");
    assert_eq!(seen["path"], "/v1/orgs/acme/items/1");
    let unkeyed = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(unkeyed.status, 401);
    let refusal: serde_json::Value = serde_json::from_slice(&unkeyed.body).expect("json error");
    assert_eq!(refusal["error"]["code"], "missing_api_key");
    assert!(unkeyed.header("date").is_some() && unkeyed.header("x-request-id").is_some());
    // A refused HEAD: the length of the body it would have had, and no body.
    let head = read_answer(&mut stream, &mut buf, true).await;
    assert_eq!(head.status, 401);
    assert_ne!(head.header("content-length").as_deref(), Some("0"));
    let chunked = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(chunked.status, 200);
    assert_eq!(
        chunked.body,
        b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
        "the chunked body passes as it came"
    );
    let keyed_head = read_answer(&mut stream, &mut buf, true).await;
    assert_eq!(keyed_head.status, 200);
    assert!(keyed_head.header("ratelimit-remaining").is_some());
    let last = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((last.status, last.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("closed");
    assert!(buf.is_empty() && rest.is_empty(), "nothing after the last answer");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_head_carries_keygates_edits_and_one_length() {
    let scripted = Scripted::start().await;
    let app = app_with(&scripted).await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let request = "POST /raw/ok?a=1 HTTP/1.1\r\nHost: api.example\r\nContent-Length: 5\r\n\
                   Authorization: Bearer kg_live_whatever\r\nX-Keygate-Key-Id: forged\r\nX_Keygate_Org_Id: forged\r\n\
                   X-Forwarded-For: 203.0.113.9\r\nX-Request-Id: trace-1\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
                   X-Custom: Mixed Case\r\n\r\nhello";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.header("x-request-id").as_deref(), Some("trace-1"));
    let received = scripted.received();
    let forwarded = received.last().expect("one request");
    let lines: Vec<&str> = forwarded.lines().collect();
    assert_eq!(lines[0], "POST /raw/ok?a=1 HTTP/1.1");
    let count = |name: &str| {
        lines
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .count()
    };
    let value = |name: &str| {
        lines.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    assert_eq!(count("content-length"), 1, "{forwarded}");
    assert!(forwarded.ends_with("\r\n\r\nhello"), "{forwarded}");
    for gone in ["authorization", "keep-alive", "te", "x_keygate_org_id"] {
        assert_eq!(count(gone), 0, "{gone} in {forwarded}");
    }
    assert_eq!(value("x-keygate-auth-method").as_deref(), Some("none"));
    assert_eq!(count("x-keygate-key-id"), 0, "a public route sends no key id");
    assert_eq!(value("host").as_deref(), Some(scripted.addr.to_string().as_str()));
    assert_eq!(value("x-forwarded-host").as_deref(), Some("api.example"));
    assert_eq!(
        value("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(value("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(value("x-request-id").as_deref(), Some("trace-1"));
    assert_eq!(value("x-custom").as_deref(), Some("Mixed Case"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framings_pass_through_and_broken_answers_are_refused() {
    let scripted = Scripted::start().await;
    let app = app_with(&scripted).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: api\r\n\r\n");

    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let mut buf = Vec::new();
    stream
        .write_all(get("/raw/early-hints").as_bytes())
        .await
        .expect("write");
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"ok"[..]),
        "1xx is not passed on"
    );
    stream.write_all(get("/raw/hop").as_bytes()).await.expect("write");
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(answer.header("x-kept").as_deref(), Some("yes"));
    for gone in ["x-internal", "keep-alive", "connection"] {
        assert_eq!(answer.header(gone), None, "{gone} in {}", answer.head);
    }
    assert_ne!(answer.header("x-request-id").as_deref(), Some("upstream"));
    // An answer without a length ends when the upstream closes: so does the client's
    // connection, told so.
    stream
        .write_all(get("/raw/until-close").as_bytes())
        .await
        .expect("write");
    let mut rest = buf;
    stream.read_to_end(&mut rest).await.expect("read to close");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nstreamed until close"), "{text}");

    for bad in ["/raw/smuggle", "/raw/garbage"] {
        let (status, body) = common::raw(
            app.addr,
            format!("GET {bad} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 502, "{bad}: {body}");
        assert!(body.contains("upstream_unavailable"), "{bad}: {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    let scripted = Scripted::start().await;
    let app = app_with(&scripted).await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let mut buf = Vec::new();
    // The upstream answers without `Connection: close` and closes right after, the way
    // an upstream's idle timeout does: keygate pools the connection, then finds it
    // closed (before sending, or with the request unanswered) and uses a new one.
    for i in 0..20 {
        stream
            .write_all(b"GET /raw/then-close HTTP/1.1\r\nHost: api\r\n\r\n")
            .await
            .expect("write");
        let answer = read_answer(&mut stream, &mut buf, false).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.head);
    }
    assert_eq!(
        scripted.received().len(),
        20,
        "each request reached the upstream once"
    );
    assert_eq!(scripted.connections.load(Ordering::SeqCst), 20);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_fast_path_leaves_to_hyper_is_still_served() {
    let app = TestApp::start().await;
    let (key, _) = app.acme_key(&["read"]).await;
    let auth = format!("Authorization: Bearer {key}\r\n");
    // HTTP/1.0.
    let (status, body) = common::raw(
        app.addr,
        format!("GET /v1/orgs/acme/items/1 HTTP/1.0\r\nHost: api\r\n{auth}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A chunked request body, then `Expect: 100-continue`, then a body larger than
    // the fast path reads, on one connection.
    let big = "x".repeat(100 * 1024);
    let request = format!(
        "POST /v1/echo-body HTTP/1.1\r\nHost: api\r\n{auth}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
         POST /v1/echo-body HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: 3\r\nExpect: 100-continue\r\n\r\nabc\
         POST /v1/echo-body HTTP/1.1\r\nHost: api\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("hello"), "the chunked body came back");
    assert!(text.contains("abc"), "the expecting body came back");
    assert!(text.contains(&big), "the large body came back whole");
    assert_eq!(
        text.matches("HTTP/1.1 200 OK").count(),
        3,
        "{}",
        &text[..text.len().min(600)]
    );
    app.stop().await;
}

/// `idle_timeout` bounds the whole head: a client dribbling a byte at a time cannot
/// hold its connection open past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_byte_by_byte_still_meets_idle_timeout() {
    let app = TestApp::with(Options {
        proxy_extra: "idle_timeout = \"400ms\"\n".into(),
        ..Options::default()
    })
    .await
    .expect("SQLite needs no service");
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let started = std::time::Instant::now();
    let mut closed_after = None;
    for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().cycle().take(40) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(std::time::Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => panic!("an unfinished head got an answer"),
            Err(_) => {}
        }
    }
    let closed_after = closed_after.expect("keygate closed the connection");
    assert!(
        closed_after < std::time::Duration::from_millis(2000),
        "closed after {closed_after:?}, with a byte every 100 ms"
    );
    app.stop().await;
}

/// The fast path passes header names as the client spelled them; hyper writes them
/// in lower case. `fast_path = false` sends every request through hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_false_sends_everything_through_hyper() {
    for (fast_path, expected) in [(true, "X-Custom: Kept"), (false, "x-custom: Kept")] {
        let scripted = Scripted::start().await;
        let app = TestApp::with(Options {
            proxy_extra: format!("fast_path = {fast_path}\n"),
            extra: format!(
                "[[route]]\nname = \"raw\"\npath = \"/raw/**\"\npublic = true\nupstream = \"http://{}\"\n",
                scripted.addr
            ),
            ..Options::default()
        })
        .await
        .expect("SQLite needs no service");
        let (status, _) = common::raw(
            app.addr,
            b"GET /raw/ok HTTP/1.1\r\nHost: api\r\nX-Custom: Kept\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
        let received = scripted.received();
        let forwarded = received.last().expect("forwarded");
        assert!(
            forwarded.contains(&format!("\r\n{expected}\r\n")),
            "fast_path = {fast_path}: {forwarded}"
        );
        app.stop().await;
    }
}

/// Review findings, each pinned: an oversized head that arrives in pieces still goes
/// to hyper (431); `Connection` cannot take the framing field off an answer; a
/// request that makes the upstream drop the connection is sent twice at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_framing_and_retries_stay_bounded() {
    let scripted = Scripted::start().await;
    let app = app_with(&scripted).await;

    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let filler = format!("X-Filler: {}\r\n", "a".repeat(10 * 1024));
    stream
        .write_all(format!("GET /raw/ok HTTP/1.1\r\nHost: api\r\n{filler}").as_bytes())
        .await
        .expect("first part");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stream
        .write_all(format!("{filler}Connection: close\r\n\r\n").as_bytes())
        .await
        .expect("second part");
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );

    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let mut buf = Vec::new();
    stream
        .write_all(b"GET /raw/conn-cl HTTP/1.1\r\nHost: api\r\n\r\nGET /raw/ok HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .expect("write");
    let first = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(
        first.header("content-length").as_deref(),
        Some("2"),
        "{}",
        first.head
    );
    assert_eq!(first.header("x-gone"), None, "{}", first.head);
    assert_eq!(first.body, b"ok");
    let second = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((second.status, second.body.as_slice()), (200, &b"ok"[..]));

    // A pooled connection first, then a request the upstream drops unanswered.
    stream
        .write_all(b"GET /raw/drop HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .expect("write");
    let dropped = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(dropped.status, 502, "{}", dropped.head);
    let drops = scripted
        .received()
        .iter()
        .filter(|r| r.starts_with("GET /raw/drop "))
        .count();
    assert_eq!(
        drops, 2,
        "sent on the pooled connection, then once more on a new one"
    );
    app.stop().await;
}

/// A kept-alive connection waiting for its next request closes as soon as the proxy
/// stops: shutdown does not sit out `shutdown_grace` (5 s here) for idle clients,
/// and each one waits for the stop however many requests it served before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_kept_alive_connections_close_when_the_proxy_stops() {
    let scripted = Scripted::start().await;
    let app = app_with(&scripted).await;
    let mut idle = Vec::new();
    for requests in [1, 3] {
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        let mut buf = Vec::new();
        for _ in 0..requests {
            stream
                .write_all(b"GET /raw/ok HTTP/1.1\r\nHost: api\r\n\r\n")
                .await
                .expect("write");
            let answer = read_answer(&mut stream, &mut buf, false).await;
            assert_eq!(answer.status, 200, "{}", answer.head);
        }
        idle.push(stream);
    }
    let started = std::time::Instant::now();
    app.stop().await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "stopping took {took:?}: idle connections held it towards shutdown_grace"
    );
    for mut stream in idle {
        let mut rest = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut rest))
            .await
            .expect("the idle connection ended");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
