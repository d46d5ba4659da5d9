//! Forwarding over a per-core pool of upstream HTTP/1.1 connections.
//!
//! Each data-plane thread keeps its own stack of ready `SendRequest`s per upstream
//! authority (no lock, no shared pool); a connection goes back on the stack when its
//! response body has been read to the end, and is dropped (closed) otherwise, e.g.
//! when the client went away. Bodies stream both ways; nothing is buffered whole.
//! Pools are keyed by `host:port`, not by position in the config, so a reload that
//! reorders or replaces upstreams never sends a request down a stale connection.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Upstream;
use super::idle::Idle;

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream refused or dropped the connection.
    #[error("cannot connect to the upstream {0}")]
    Connect(#[source] std::io::Error),
    /// Connect or response head took too long.
    #[error("the upstream did not {0} in time")]
    Timeout(&'static str),
    /// The HTTP exchange failed.
    #[error("the upstream exchange failed")]
    Http(#[source] hyper::Error),
    /// The connection broke during the exchange (fast path).
    #[error("the upstream connection broke")]
    Io(#[source] std::io::Error),
    /// The answer was not HTTP/1.1 keygate can pass on (fast path).
    #[error("the upstream's answer {0}")]
    Protocol(&'static str),
}

/// A forwarded request's body: the client's, streamed, or one keygate rewrote (an
/// MCP message with refused entries taken out).
pub type RequestBody = http_body_util::Either<Incoming, http_body_util::Full<Bytes>>;

type Sender = SendRequest<RequestBody>;

thread_local! {
    static POOL: RefCell<Idle<Sender>> = const { RefCell::new(Idle::new()) };
}

fn checkout(authority: &str) -> Option<Sender> {
    POOL.with_borrow_mut(|pool| pool.take(authority, |sender| !sender.is_closed()))
}

fn checkin(authority: &Arc<str>, sender: Sender, max: usize) {
    if !sender.is_closed() {
        POOL.with_borrow_mut(|pool| pool.keep(authority, sender, max));
    }
}

/// How to reach one upstream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connect timeout.
    pub connect: Duration,
    /// Timeout to the response head.
    pub response: Duration,
    /// Idle connections kept per thread.
    pub pool_size: usize,
}

/// Sends `req` (already rewritten) to `upstream`.
///
/// # Errors
/// [`Error`] when no response head arrived.
pub async fn send(
    upstream: &Upstream,
    limits: Limits,
    mut req: Request<RequestBody>,
) -> Result<Response<PooledBody>, Error> {
    // A pooled connection may have been closed by the upstream meanwhile; a request
    // it never sent comes back and goes to the next one.
    while let Some(mut sender) = checkout(upstream.authority()) {
        if sender.ready().await.is_err() {
            continue;
        }
        match exchange(&mut sender, req, limits.response).await {
            Ok(resp) => {
                return Ok(PooledBody::wrap(
                    resp,
                    sender,
                    upstream.shared_authority(),
                    limits.pool_size,
                ));
            }
            Err(Retry::Again(back)) => req = *back,
            Err(Retry::No(e)) => return Err(e),
        }
    }
    let mut sender = connect(upstream, limits.connect).await?;
    match exchange(&mut sender, req, limits.response).await {
        Ok(resp) => Ok(PooledBody::wrap(
            resp,
            sender,
            upstream.shared_authority(),
            limits.pool_size,
        )),
        Err(Retry::Again(_)) => Err(Error::Connect(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        ))),
        Err(Retry::No(e)) => Err(e),
    }
}

enum Retry {
    Again(Box<Request<RequestBody>>),
    No(Error),
}

async fn exchange(
    sender: &mut Sender,
    req: Request<RequestBody>,
    timeout: Duration,
) -> Result<Response<Incoming>, Retry> {
    match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
        Err(_) => Err(Retry::No(Error::Timeout("answer"))),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(mut e)) => match e.take_message() {
            Some(req) => Err(Retry::Again(Box::new(req))),
            None => Err(Retry::No(Error::Http(e.into_error()))),
        },
    }
}

async fn connect(upstream: &Upstream, timeout: Duration) -> Result<Sender, Error> {
    let stream = dial(upstream, timeout).await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// A new TCP connection to `upstream`, `TCP_NODELAY` on.
///
/// # Errors
/// [`Error::Timeout`] or [`Error::Connect`].
pub async fn dial(upstream: &Upstream, timeout: Duration) -> Result<TcpStream, Error> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(upstream.authority()))
        .await
        .map_err(|_| Error::Timeout("accept the connection"))?
        .map_err(Error::Connect)?;
    stream.set_nodelay(true).map_err(Error::Connect)?;
    Ok(stream)
}

/// The origin-form URI the upstream receives: exactly the authorised path and query,
/// without the route's key query parameter (`key_param`), if it has one.
pub fn origin_form(uri: &Uri, key_param: Option<&str>) -> Uri {
    let Some(pq) = uri.path_and_query() else {
        return Uri::from_static("/");
    };
    if let (Some(name), Some(query)) = (key_param, pq.query()) {
        let target = match crate::auth::credential::strip_query_param(query, name) {
            Some(rest) => format!("{}?{rest}", pq.path()),
            None => pq.path().to_owned(),
        };
        // Built from parts of a valid URI, so it parses; "/" is the safe fallback.
        return Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"));
    }
    Uri::from(pq.clone())
}

/// An upstream response body that returns its connection to the pool at its end.
pub struct PooledBody {
    inner: Incoming,
    sender: Option<(Sender, Arc<str>, usize)>,
}

impl PooledBody {
    fn wrap(resp: Response<Incoming>, sender: Sender, authority: Arc<str>, max: usize) -> Response<Self> {
        resp.map(|inner| {
            let mut body = Self {
                inner,
                sender: Some((sender, authority, max)),
            };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    fn release(&mut self) {
        if let Some((sender, authority, max)) = self.sender.take() {
            checkin(&authority, sender, max);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away) closes its connection:
        // the upstream may still be sending.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => self.sender = None,
            // hyper's server drops a body as soon as it reports its end, without polling
            // it again, so the connection goes back right after the last frame.
            Poll::Ready(_) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(None) => self.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
