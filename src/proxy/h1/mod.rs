//! The HTTP/1.1 fast path: the common request served without building a request
//! or response object on either side of the hop.
//!
//! A client connection starts here. Each request head is read with `httparse` (the
//! parser hyper uses) and sorted: an HTTP/1.1 request with at most a small
//! `Content-Length` body, an origin-form target, one valid `Host`, no transfer coding,
//! upgrade or `Expect`, on a route that is not an MCP route, is decided here, and the
//! upstream gets the client's head bytes with keygate's edits (credentials, hop-by-hop
//! and client-sent identity fields out; identity, forwarding fields and request id
//! in). The answer's head is passed back with the `RateLimit-*` fields and the request
//! id added and its body relayed as it comes, its framing followed (`Content-Length`,
//! chunked, until close). The decision, the refusals, the metrics and the access line
//! are the ones the hyper path has.
//!
//! Anything else hands the connection, with the bytes already read, to hyper for the
//! rest of its life: HTTP/1.0, chunked or large request bodies, `Expect`, upgrades
//! (h2c), forward-auth calls, MCP routes, and heads hyper refuses (it answers them).

pub mod body;
pub mod message;
mod upstream;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::{Attempt, Live, Shared, access, client, forward, headers, refused, respond};
use crate::auth::{self, RequestHead};
use body::{Chunked, Framing, Malformed};
use message::{Field, Scan};

/// Largest request head read here; a longer one goes to hyper, which answers 431.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response head accepted from an upstream.
const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// Read size for heads (a connection's buffers start at this and stay there for
/// ordinary messages: an idle kept-alive connection holds about 10 KiB).
const READ_HEAD: usize = 4 * 1024;
/// Read size for an answer's body beyond what came with its head.
const READ_BODY: usize = 16 * 1024;

/// What a connection needs to go on under hyper.
pub(super) struct Handover {
    /// The worker's connection settings.
    pub http: hyper::server::conn::http1::Builder,
    /// Keeps the worker's graceful shutdown waiting for this connection.
    pub watcher: Watcher,
    /// Becomes true when the worker stops: an idle connection closes.
    pub stopped: watch::Receiver<bool>,
    /// Time to a request head.
    pub idle: Duration,
}

/// Serves one client connection.
pub(super) async fn serve(mut client: TcpStream, peer: SocketAddr, shared: Arc<Shared>, hand: Handover) {
    let mut buf = BytesMut::with_capacity(READ_HEAD);
    let mut fields = Vec::with_capacity(16);
    let mut scratch = Scratch::new(hand.idle);
    let mut valid_host = Vec::new();
    // The config in force, revalidated per request by one read of the shared pointer
    // (taking a reference per request writes a count both workers share). After a
    // reload an idle connection keeps the snapshot it last used until its next
    // request or its end.
    let mut config = arc_swap::Cache::new(Arc::clone(&shared.live));
    // The worker's stop, which closes the connection while it waits for a request.
    // One wait for the connection's life: a `changed()` per request would join and
    // leave the channel's list of waiters, a lock each way, every time.
    let mut stop_rx = hand.stopped.clone();
    let mut stop = std::pin::pin!(async move {
        let _ = stop_rx.changed().await;
    });
    loop {
        // A whole head, and the body it announces, within `idle` of the previous
        // answer (a slow sender cannot stretch it byte by byte).
        let idle = scratch.idle.as_mut();
        idle.reset(tokio::time::Instant::now() + hand.idle);
        let mut head = None;
        let req = loop {
            if head.is_none() && !buf.is_empty() {
                match message::scan_request(&buf, &mut fields, &mut valid_host) {
                    // hyper answers an oversized head (431).
                    Scan::Request(r) if r.len > MAX_HEAD => {
                        return handover(client, buf, peer, shared, hand).await;
                    }
                    // Parsed once; the body may take more reads.
                    Scan::Request(r) => head = Some(r),
                    Scan::Unusual => return handover(client, buf, peer, shared, hand).await,
                    Scan::Partial if buf.len() >= MAX_HEAD => {
                        return handover(client, buf, peer, shared, hand).await;
                    }
                    Scan::Partial => {}
                }
            }
            if let Some(r) = head.take_if(|r| buf.len() >= r.len + r.body) {
                break r;
            }
            buf.reserve(READ_HEAD);
            tokio::select! {
                biased;
                read = client.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = scratch.idle.as_mut() => return,
                () = &mut stop, if buf.is_empty() => return,
            }
        };
        let live = config.load();
        if live.auth.routes.has_mcp()
            && live
                .auth
                .routes
                .match_request(&req.method, req.uri.path())
                .is_ok_and(|m| m.route.mcp)
        {
            return handover(client, buf, peer, shared, hand).await;
        }
        let frame = buf.split_to(req.len + req.body).freeze();
        let exchange = Exchange {
            shared: &shared,
            live,
            peer,
            frame: &frame,
            req: &req,
            fields: &fields,
            stopped: &hand.stopped,
        };
        let keep = exchange.run(&mut client, &mut scratch).await;
        scratch.trim();
        if buf.capacity() > 2 * READ_HEAD {
            // Room a large request needed: only what was pipelined after it stays.
            let mut rest = BytesMut::with_capacity(READ_HEAD.max(buf.len()));
            rest.extend_from_slice(&buf);
            buf = rest;
        }
        if !keep || req.close || *hand.stopped.borrow() {
            return;
        }
    }
}

/// Hands the connection to hyper, `read` first.
async fn handover(client: TcpStream, read: BytesMut, peer: SocketAddr, shared: Arc<Shared>, hand: Handover) {
    let io = Rewound {
        read: read.freeze(),
        inner: client,
    };
    super::serve_hyper(io, peer, shared, hand.http, hand.watcher).await;
}

/// A connection whose first bytes were already read.
struct Rewound {
    read: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a connection's requests reuse instead of allocating each time.
struct Scratch {
    /// The deadline for the next request, and the one for an upstream's answer.
    /// Each lives as long as the connection and is pushed later request by request:
    /// a timer moved later is one atomic store, while a new timer is an insert into
    /// and a removal from the runtime's timer wheel per request.
    idle: Pin<Box<Sleep>>,
    answer: Pin<Box<Sleep>>,
    /// Bytes about to be written, to the upstream or the client.
    out: Vec<u8>,
    /// The request fields the decision reads.
    read: HeaderMap,
    /// The answer's bytes as read from the upstream.
    answer_bytes: BytesMut,
    /// The answer head's fields.
    answer_fields: Vec<Field>,
}

impl Scratch {
    fn new(idle: Duration) -> Self {
        Self {
            idle: Box::pin(tokio::time::sleep(idle)),
            answer: Box::pin(tokio::time::sleep(idle)),
            out: Vec::new(),
            read: HeaderMap::new(),
            answer_bytes: BytesMut::new(),
            answer_fields: Vec::new(),
        }
    }

    /// Lets go of what the exchange held: the request's field values (slices of the
    /// read buffer: while one lives, the buffer cannot take the next request in
    /// place and is allocated anew) and room a large message needed, so that idle
    /// connections stay small.
    fn trim(&mut self) {
        self.read.clear();
        if self.out.capacity() > 2 * READ_HEAD {
            self.out = Vec::new();
        }
        if self.answer_bytes.capacity() > READ_HEAD {
            self.answer_bytes = BytesMut::new();
        }
    }
}

/// One request on the fast path.
struct Exchange<'a> {
    shared: &'a Shared,
    live: &'a Live,
    peer: SocketAddr,
    /// The head and body bytes.
    frame: &'a Bytes,
    req: &'a message::Request,
    fields: &'a [Field],
    /// The worker is stopping: answers say `Connection: close`.
    stopped: &'a watch::Receiver<bool>,
}

impl Exchange<'_> {
    fn field(&self, name: &http::HeaderName) -> impl Iterator<Item = &Field> {
        self.fields
            .iter()
            .filter(move |f| message::name_is(f.name(self.frame), name))
    }

    fn value(&self, f: &Field) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(f.shared(self.frame)).ok()
    }

    /// The client asked to close, or the worker is stopping: the answer says so and
    /// the connection ends after it.
    fn closing(&self) -> bool {
        self.req.close || *self.stopped.borrow()
    }

    /// Decides, forwards or refuses, and answers the client; `false` when the
    /// connection must close.
    async fn run(&self, client: &mut TcpStream, scratch: &mut Scratch) -> bool {
        let out = &mut scratch.out;
        let shared = self.shared;
        let metrics = &shared.metrics;
        let _in_flight = metrics.in_flight();
        let started = Instant::now();
        let settings = &self.live.proxy;
        let req = self.req;
        let request_id = headers::request_id_or_new(
            self.field(&http::HeaderName::from_static("x-request-id"))
                .next()
                .and_then(|f| self.value(f)),
        );
        // What the decision reads: the credential fields and, behind trusted
        // proxies, `X-Forwarded-For` (empty here: `Scratch::trim` after each
        // exchange leaves it so).
        let read = &mut scratch.read;
        for f in self.fields {
            let name = f.name(self.frame);
            let known = if message::name_is(name, &header::AUTHORIZATION) {
                Some(header::AUTHORIZATION)
            } else if let Some(h) = settings.key_header.as_ref().filter(|h| message::name_is(name, h)) {
                Some(h.clone())
            } else if !settings.trusted_proxies.is_empty() && name.eq_ignore_ascii_case(b"x-forwarded-for") {
                Some(http::HeaderName::from_static("x-forwarded-for"))
            } else {
                None
            };
            if let (Some(known), Some(value)) = (known, self.value(f)) {
                read.append(known, value);
            }
        }
        let client_ip = client::resolve(self.peer.ip(), read, &settings.trusted_proxies);
        let attempt = Attempt::new(shared, settings, client_ip);
        let mut line = access::Line::new(req.method.clone(), Cow::Borrowed(&req.uri), &request_id);
        if let Some(retry_after) = attempt.blocked(shared) {
            line.code = "too_many_failed_attempts";
            let resp = respond::too_many_failures(retry_after, &request_id);
            return self.refuse(client, out, resp, &mut line).await;
        }
        let head = RequestHead {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            headers: read,
            client: client_ip,
        };
        let decided = shared.decider.decide(&self.live.auth, head).await;
        let decided_at = Instant::now();
        line.decision = decided_at.duration_since(started);
        line.total = line.decision;
        metrics.decision(line.decision.as_secs_f64());
        let grant = match decided {
            Ok(grant) => grant,
            Err(refusal) => {
                attempt.record(shared, &refusal.denial);
                let resp = refused(&mut line, &refusal, &req.uri, &self.live.auth.status);
                return self.refuse(client, out, resp, &mut line).await;
            }
        };
        let route = grant.route;
        line.route = &route.name;
        line.key = grant.key.as_deref();
        line.auth = Some(grant.auth);
        line.query_key = access::query_key(route, &req.uri);
        let Some(upstream) = settings.upstreams.get(route.upstream) else {
            line.code = "upstream_unavailable";
            let resp = respond::no_upstream(&request_id);
            return self.refuse(client, out, resp, &mut line).await;
        };
        // The request for the upstream.
        let target = match route.key_query_param.as_deref() {
            Some(name) => Cow::Owned(forward::origin_form(&req.uri, Some(name))),
            None => Cow::Borrowed(&req.uri),
        };
        out.clear();
        self.write_request(out, &target, &grant, upstream, &request_id);
        let limits = forward::Limits {
            connect: settings.connect_timeout,
            response: settings.response_timeout,
            pool_size: settings.pool_size,
        };
        let buf = &mut scratch.answer_bytes;
        let fields = &mut scratch.answer_fields;
        let timer = scratch.answer.as_mut();
        let deadline = tokio::time::Instant::from_std(decided_at) + limits.response;
        let sent = send(upstream, limits, &req.method, out, buf, fields, timer, deadline).await;
        let answered_at = Instant::now();
        let upstream_time = answered_at.duration_since(decided_at);
        metrics.upstream(upstream_time.as_secs_f64());
        line.upstream = Some(upstream_time);
        line.total = answered_at.duration_since(started);
        let usage = grant.usage.as_ref();
        let answer = match sent {
            Ok(answer) => answer,
            Err(e) => {
                line.code = respond::upstream_code(&e);
                let mut resp = respond::upstream(&e, &request_id);
                if let Some(usage) = usage {
                    let reset = crate::quota::seconds_until(usage.reset_at, shared.clock.now());
                    headers::insert_rate_limit(resp.headers_mut(), usage.limit, usage.remaining, reset);
                }
                return self.refuse(client, out, resp, &mut line).await;
            }
        };
        line.code = "forwarded";
        line.status = answer.head.status;
        metrics.request(line.route, line.code);
        if settings.access_log {
            line.write();
        }
        // The answer's head, then its body as it comes.
        out.clear();
        let head = &buf[..answer.head.len];
        let dated = message::write_answer_head(out, head, answer.head.status, fields, usage.is_some());
        // One read of the clock for `RateLimit-Reset` and `Date`, as milliseconds
        // (a date is made once a second, not per answer).
        let now_ms = shared.clock.now_millis();
        if let Some(usage) = usage {
            let reset = crate::quota::seconds_until_millis(usage.reset_at, now_ms);
            let mut digits = [0u8; 20];
            for (name, value) in headers::rate_limit_fields(usage.limit, usage.remaining, reset) {
                message::field(
                    out,
                    name.as_str().as_bytes(),
                    message::decimal(&mut digits, value),
                );
            }
        }
        message::field(out, b"x-request-id", request_id.as_bytes());
        if !dated {
            message::field(out, b"date", &date(now_ms));
        }
        let until_close = answer.head.framing == Framing::UntilClose;
        if self.closing() || until_close {
            message::field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        buf.advance(answer.head.len);
        relay(
            answer,
            buf,
            client,
            out,
            // Borrowed: a counted copy per request would have both workers write
            // the one count the upstream's name shares.
            &upstream.authority,
            limits.pool_size,
        )
        .await
            && !until_close
    }

    /// Answers with a response keygate made, counts it and logs it.
    async fn refuse(
        &self,
        client: &mut TcpStream,
        out: &mut Vec<u8>,
        resp: Response<Full<Bytes>>,
        line: &mut access::Line<'_>,
    ) -> bool {
        let close = self.closing();
        let settings = &self.live.proxy;
        line.status = resp.status().as_u16();
        self.shared.metrics.request(line.route, line.code);
        if settings.access_log {
            line.write();
        }
        let (parts, body) = resp.into_parts();
        // keygate's own bodies are whole already.
        let body = futures_util::FutureExt::now_or_never(body.collect())
            .and_then(Result::ok)
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        out.clear();
        let head_only = self.req.method == Method::HEAD;
        message::write_own(
            out,
            &Response::from_parts(parts, body),
            &date(self.shared.clock.now_millis()),
            close,
            head_only,
        );
        client.write_all(out).await.is_ok()
    }

    /// The request head for the upstream, then the body.
    fn write_request(
        &self,
        out: &mut Vec<u8>,
        target: &Uri,
        grant: &auth::Grant<'_>,
        upstream: &super::Upstream,
        request_id: &HeaderValue,
    ) {
        let settings = &self.live.proxy;
        let head = &self.frame[..self.req.len];
        out.extend_from_slice(self.req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let keep_credentials = grant.auth == auth::AuthMethod::Passed;
        let key_header = settings.key_header.as_ref();
        let identity = &settings.identity;
        let mut spoofed = 0usize;
        let mut prior = Vec::new();
        for f in self.fields {
            let name = f.name(head);
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                // As `HeaderValue::to_str` takes them: visible ASCII only.
                let value = f.value(head);
                if value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
                    && let Ok(v) = std::str::from_utf8(value)
                {
                    prior.push(v);
                }
                continue;
            }
            let kept = message::kept_on_request(name, |n| {
                let ours = identity.is_identity_name(n) || headers::is_underscored_credential(n, key_header);
                spoofed += usize::from(ours);
                let credential = !keep_credentials
                    && (message::name_is(n, &header::AUTHORIZATION)
                        || key_header.is_some_and(|h| message::name_is(n, h)));
                ours || credential
            });
            if kept {
                f.write(out, head);
            }
        }
        if spoofed > 0 {
            tracing::debug!(
                count = spoofed,
                "stripped client-sent identity and credential headers"
            );
        }
        let key = grant.key.as_deref();
        headers::write_identity(out, identity, key);
        message::field(out, b"x-forwarded-host", self.fields[self.req.host].value(head));
        message::field(out, b"host", upstream.host.as_bytes());
        message::field(out, b"x-forwarded-proto", b"http");
        if let Some(xff) = headers::forwarded_for(&prior, self.peer) {
            message::field(out, b"x-forwarded-for", xff.as_bytes());
        }
        message::field(out, b"x-request-id", request_id.as_bytes());
        if settings.signer.is_some() {
            // The signature covers the identity and request id as sent.
            let mut signed = HeaderMap::new();
            headers::insert_identity(&mut signed, identity, key);
            signed.insert(http::HeaderName::from_static("x-request-id"), request_id.clone());
            settings.sign(&self.req.method, target, &mut signed, || self.shared.clock.now());
            if let Some(signature) = signed.get(identity.signature()) {
                message::field(
                    out,
                    identity.signature().as_str().as_bytes(),
                    signature.as_bytes(),
                );
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.frame[self.req.len..]);
    }
}

/// An upstream's answer: its connection and its head (its bytes and fields are in
/// the connection's [`Scratch`]).
struct Answer {
    stream: TcpStream,
    head: message::Answer,
}

/// Sends `request` (head and body) and reads the answer's head. A pooled connection
/// the upstream closed before the request could be written is replaced by the next
/// one; one that closed with the request written and no answer byte read is
/// replaced once, by a new connection, when the method is idempotent (an upstream
/// that drops every connection a request reaches sees it twice at most).
///
/// The first attempt must answer by `deadline` (`timer` is set to it); each further
/// one gets the whole `limits.response` again.
#[allow(clippy::too_many_arguments)]
async fn send(
    upstream: &super::Upstream,
    limits: forward::Limits,
    method: &Method,
    request: &[u8],
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
    mut timer: Pin<&mut Sleep>,
    deadline: tokio::time::Instant,
) -> Result<Answer, forward::Error> {
    let head_only = method == Method::HEAD;
    let mut next = Some(deadline);
    let mut deadline = || {
        next.take()
            .unwrap_or_else(|| tokio::time::Instant::now() + limits.response)
    };
    while let Some(stream) = upstream::checkout(upstream.authority()) {
        timer.as_mut().reset(deadline());
        match exchange(stream, request, head_only, timer.as_mut(), buf, fields).await {
            Ok(answer) => return Ok(answer),
            Err(Failed::Unsent(_)) => {}
            Err(Failed::Unanswered(_)) if method.is_idempotent() => break,
            Err(Failed::Unanswered(e) | Failed::Other(e)) => return Err(e),
        }
    }
    let stream = forward::dial(upstream, limits.connect).await?;
    timer.as_mut().reset(deadline());
    exchange(stream, request, head_only, timer, buf, fields)
        .await
        .map_err(|(Failed::Unanswered(e) | Failed::Unsent(e) | Failed::Other(e))| e)
}

/// How an exchange failed.
enum Failed {
    /// The request could not be written.
    Unsent(forward::Error),
    /// The connection closed before any answer byte.
    Unanswered(forward::Error),
    /// Anything else: a timeout, a broken answer.
    Other(forward::Error),
}

/// Writes `request` and reads the answer's head, both before `timer` fires.
async fn exchange(
    mut stream: TcpStream,
    request: &[u8],
    head_only: bool,
    timer: Pin<&mut Sleep>,
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
) -> Result<Answer, Failed> {
    buf.clear();
    let answered = async {
        stream
            .write_all(request)
            .await
            .map_err(|e| Failed::Unsent(forward::Error::Io(e)))?;
        // Any byte read, an interim answer's too, means the request was taken.
        let mut heard = false;
        loop {
            if !buf.is_empty() {
                match message::scan_response(buf, head_only, fields) {
                    Ok(head) if head.interim => {
                        buf.advance(head.len);
                        continue;
                    }
                    Ok(head) => return Ok(head),
                    Err(message::Bad::Invalid) => {
                        return Err(Failed::Other(forward::Error::Protocol("is not valid HTTP/1.1")));
                    }
                    Err(message::Bad::Partial) if buf.len() >= MAX_ANSWER_HEAD => {
                        return Err(Failed::Other(forward::Error::Protocol("has too large a head")));
                    }
                    Err(message::Bad::Partial) => {}
                }
            }
            buf.reserve(READ_HEAD);
            match stream.read_buf(buf).await {
                Ok(0) if !heard => {
                    let closed = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Err(Failed::Unanswered(forward::Error::Io(closed)));
                }
                Ok(0) => return Err(Failed::Other(forward::Error::Protocol("ended inside its head"))),
                Ok(_) => heard = true,
                Err(e) if !heard => return Err(Failed::Unanswered(forward::Error::Io(e))),
                Err(e) => return Err(Failed::Other(forward::Error::Io(e))),
            }
        }
    };
    let head = tokio::select! {
        biased;
        head = answered => head?,
        () = timer => return Err(Failed::Other(forward::Error::Timeout("answer"))),
    };
    Ok(Answer { stream, head })
}

/// Writes `out` (the answer's head) and the body as it comes from the upstream;
/// `true` when the client connection can carry another request. The upstream
/// connection goes back to the pool when its answer ended cleanly.
async fn relay(
    mut answer: Answer,
    buf: &mut BytesMut,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    authority: &Arc<str>,
    pool: usize,
) -> bool {
    let mut reusable = answer.head.reusable;
    let mut left = match answer.head.framing {
        Framing::Empty => 0,
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    let mut chunked = (answer.head.framing == Framing::Chunked).then(Chunked::default);
    let until_close = answer.head.framing == Framing::UntilClose;
    let mut done = answer.head.framing == Framing::Empty;
    // Bytes after the head already read: as much as belongs to this answer.
    let mut pending = buf.split().freeze();
    loop {
        let take = match (&mut chunked, until_close) {
            (Some(scanner), _) => match scanner.scan(&pending) {
                Ok(Some(end)) => {
                    done = true;
                    end
                }
                Ok(None) => pending.len(),
                Err(Malformed) => {
                    // What was relayed cannot be completed: the client connection ends.
                    tracing::warn!("upstream sent a malformed chunked body");
                    let _ = client.write_all(out).await;
                    return false;
                }
            },
            (None, true) => pending.len(),
            (None, false) => {
                let take = usize::try_from(left.min(pending.len() as u64)).unwrap_or(pending.len());
                left -= take as u64;
                done |= left == 0;
                take
            }
        };
        if take < pending.len() {
            // More than the answer: the upstream's framing cannot be trusted.
            reusable = false;
        }
        out.extend_from_slice(&pending[..take]);
        if client.write_all(out).await.is_err() {
            return false;
        }
        out.clear();
        if done {
            break;
        }
        // The relayed bytes are gone: the buffer's room can be used again.
        drop(pending);
        buf.reserve(READ_BODY);
        match answer.stream.read_buf(buf).await {
            Ok(0) if until_close => break,
            Ok(0) | Err(_) => return false,
            Ok(_) => pending = buf.split().freeze(),
        }
    }
    if reusable && !until_close {
        upstream::checkin(authority, answer.stream, pool);
    }
    true
}

/// The `Date` value at `now_ms` (unix ms), formatted once a second per thread.
fn date(now_ms: i64) -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        // Until a first format succeeds (always, for years 1000 to 9999), the epoch.
        static DATE: Cell<(i64, [u8; 29])> = const { Cell::new((i64::MIN, *b"Thu, 01 Jan 1970 00:00:00 GMT")) };
    }
    let second = now_ms.div_euclid(1000);
    let (at, mut text) = DATE.get();
    if at != second
        && let Some(now) = chrono::DateTime::from_timestamp(second, 0)
    {
        // An IMF-fixdate is 29 bytes for every year from 1000 to 9999.
        let formatted = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        if let Ok(bytes) = <[u8; 29]>::try_from(formatted.as_bytes()) {
            text = bytes;
            DATE.set((second, text));
        }
    }
    text
}
