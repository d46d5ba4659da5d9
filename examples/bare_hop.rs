//! The "bare hyper hop" reference for `benches/load.sh`: a reverse proxy with no auth
//! work, in the textbook shape (DESIGN §8): one multi-thread tokio runtime with 2
//! workers and hyper-util's legacy pooled `Client`. It forwards every request to
//! `UPSTREAM` keeping path and query, removes `Authorization`, and answers 502 when
//! the upstream exchange fails.
//!
//! `ADDR=127.0.0.1:6188 UPSTREAM=127.0.0.1:3000 cargo run --release --example bare_hop`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = Either<Incoming, Full<Bytes>>;

struct Hop {
    client: Client<HttpConnector, Incoming>,
    upstream: String,
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:6188".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("ADDR: {e}")))?;
    let upstream = std::env::var("UPSTREAM").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(addr, format!("http://{upstream}")))
}

async fn serve(addr: SocketAddr, upstream: String) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let hop = Arc::new(Hop { client, upstream });
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "bare_hop listening on {} -> {}",
        listener.local_addr()?,
        hop.upstream
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let hop = Arc::clone(&hop);
        let service = service_fn(move |req| {
            let hop = Arc::clone(&hop);
            async move { Ok::<_, Infallible>(forward(&hop, req).await) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn forward(hop: &Hop, mut req: Request<Incoming>) -> Response<Body> {
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let uri: Uri = match format!("{}{pq}", hop.upstream).parse() {
        Ok(uri) => uri,
        Err(_) => return bad_gateway(),
    };
    *req.uri_mut() = uri;
    req.headers_mut().remove(AUTHORIZATION);
    match hop.client.request(req).await {
        Ok(resp) => resp.map(Either::Left),
        Err(_) => bad_gateway(),
    }
}

fn bad_gateway() -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(b"bad gateway\n"))));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
