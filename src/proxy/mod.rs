//! The data plane: listeners, the per-request handler, forwarding and refusals.
//!
//! Shape (DESIGN §8): one current-thread tokio runtime per worker thread, each with
//! its own `SO_REUSEPORT` listener and its own upstream connection pool, `TCP_NODELAY`
//! on both sides; no work-stealing and no lock on the request path. Decisions come
//! from `auth`; this module only speaks HTTP.

mod access;
pub mod client;
pub mod ext_authz;
pub mod forward;
pub mod h1;
pub mod headers;
mod idle;
mod mcp;
pub mod respond;
mod sched;
pub mod signature;
pub mod wire;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::auth::failures::Failures;
use crate::auth::{self, Decider, Denial, RequestHead};
use crate::clock::SharedClock;
use crate::telemetry::Metrics;
use headers::Identity;

/// Data-plane settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Whether workers are pinned to CPUs.
    pub cpu_affinity: CpuAffinity,
    /// How the kernel schedules the workers.
    pub sched_policy: SchedPolicy,
    /// Upstreams; index 0 is the default.
    pub upstreams: Vec<Upstream>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-head timeout.
    pub response_timeout: Duration,
    /// Idle upstream connections per worker and upstream.
    pub pool_size: usize,
    /// Drain time after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Time a client has to send a request head, from the connection's start or the
    /// end of its previous response (hyper's header read timeout covers both).
    pub idle_timeout: Duration,
    /// Identity header names.
    pub identity: Identity,
    /// Extra key header, stripped before forwarding.
    pub key_header: Option<HeaderName>,
    /// Write one access line per request.
    pub access_log: bool,
    /// Serve plain HTTP/1.1 requests on the fast path (`h1`); read per connection.
    pub fast_path: bool,
    /// Sign the identity sent upstream (`[identity] signing_key`).
    pub signer: Option<signature::Signer>,
    /// Failed authentications per client IP per minute before 429; 0 = unlimited.
    pub max_failed_auth_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed (`[clients] trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// MCP routes (`[mcp]`).
    pub mcp: crate::mcp::Settings,
}

impl Settings {
    /// With `[identity] signing_key` set, adds the signature over `method`, `uri`'s
    /// path and query, and the identity and request id already in `headers`; `now`
    /// is asked only then.
    pub(crate) fn sign(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &mut HeaderMap,
        now: impl FnOnce() -> DateTime<Utc>,
    ) {
        if let Some(signer) = &self.signer {
            let target = uri.path_and_query().map_or("/", |p| p.as_str());
            let value = signer.sign(&self.identity, method, target, headers, now().timestamp());
            headers.insert(self.identity.signature().clone(), value);
        }
    }
}

/// What a config reload replaces, as one value. A request reads the snapshot once,
/// at its start, and finishes under it even if a reload lands meanwhile.
#[derive(Debug)]
pub struct Live {
    /// Routes, key extraction, statuses.
    pub auth: auth::Settings,
    /// Upstreams, timeouts, headers (`listen` and `workers` only count at start).
    pub proxy: Settings,
}

/// The snapshot the proxy reads and a reload swaps.
pub type Snapshot = Arc<ArcSwap<Live>>;

/// A plain-HTTP upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    authority: Arc<str>,
    host: HeaderValue,
}

impl Upstream {
    /// Parses `http://host[:port][/]`.
    ///
    /// # Errors
    /// A message saying what is wrong (scheme, path, port).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "`{url}`: TLS upstreams are not supported; run keygate next to the API and use http://"
                ));
            }
            _ => return Err(format!("`{url}` must start with http://")),
        }
        if uri.path() != "/" || uri.query().is_some() {
            return Err(format!(
                "`{url}` must not have a path; routes forward the request path unchanged"
            ));
        }
        let authority = uri.authority().ok_or_else(|| format!("`{url}` has no host"))?;
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|_| format!("`{url}` has an invalid host"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{}:{port}", authority.host()).into(),
            host,
        })
    }

    /// `host:port` to connect to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    fn shared_authority(&self) -> Arc<str> {
        Arc::clone(&self.authority)
    }
}

type Body = Either<forward::PooledBody, Either<Full<Bytes>, mcp::Filtered>>;

/// A response keygate wrote itself, as the data plane's body type.
fn own(resp: Response<Full<Bytes>>) -> Response<Body> {
    resp.map(|b| Either::Right(Either::Left(b)))
}

struct Shared {
    decider: Arc<Decider>,
    live: Snapshot,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    failures: Failures,
    /// Read-only hints learnt from MCP servers' tool lists.
    mcp: Arc<crate::mcp::Catalog>,
}

/// A running data plane.
pub struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and
    /// waits for every worker to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// `[proxy] cpu_affinity`: whether each worker runs on a CPU of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CpuAffinity {
    /// Pinned when the process may run on exactly as many CPUs as there are workers.
    #[default]
    Auto,
    /// Placed by the kernel.
    Off,
}

impl CpuAffinity {
    /// The CPU of each of `workers` workers, given the CPUs the process may run on:
    /// one each when they are exactly as many (with `workers = 0` wherever no CPU
    /// quota applies, or in a cpuset sized for keygate). A pinned worker keeps its
    /// caches and does not meet another on one CPU while a second idles (measured
    /// in docs/performance.md). With more CPUs than workers, or fewer, the CPUs
    /// are shared with other work, which the kernel places better than a fixed
    /// choice would. Threads a pinned worker starts (tokio's blocking pool, for
    /// hostname lookups) inherit its CPU.
    fn plan<T>(self, workers: usize, allowed: Option<Vec<T>>) -> Option<Vec<T>> {
        match self {
            Self::Auto => allowed.filter(|cpus| cpus.len() == workers),
            Self::Off => None,
        }
    }
}

/// `[proxy] sched_policy`: how the kernel schedules the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchedPolicy {
    /// `SCHED_BATCH` while it pays, ordinary scheduling while it does not: a guard
    /// on the control runtime reads each worker's waits for its CPU once a second
    /// and takes a worker off `SCHED_BATCH` while they show CPU-bound work next to
    /// it (a mean over 500 µs per run, `src/proxy/sched/mod.rs`), trying again
    /// after a hold of 30 s that doubles, up to 15 min, while the neighbour stays.
    Auto,
    /// Ordinary threads (`SCHED_OTHER`).
    #[default]
    Normal,
    /// `SCHED_BATCH`: a woken worker waits for the thread on its CPU to block or use
    /// up its slice instead of preempting it. Where keygate shares its CPUs with its
    /// client and upstream, both of which block within microseconds, the worker then
    /// finds more events ready per wake-up and the CPUs switch less often (measured
    /// in docs/performance.md); next to CPU-bound work a request can wait up to a
    /// scheduler slice (milliseconds) per wake-up.
    Batch,
}

impl SchedPolicy {
    /// The policy's name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Normal => "normal",
            Self::Batch => "batch",
        }
    }

    /// Applies the policy to the calling thread, a worker that is starting;
    /// `Normal` leaves it as it is. Returns the thread's id for the `auto` guard:
    /// `None` (and an ordinary thread) when the guard could not watch it, as where
    /// the kernel keeps no scheduler counts.
    fn apply(self) -> Option<u32> {
        let id = match self {
            Self::Normal => return None,
            Self::Batch => None,
            Self::Auto => {
                let id = sched::watchable_thread_id();
                if id.is_none() {
                    tracing::warn!(
                        "cannot read a proxy worker's scheduler counts (/proc/thread-self/schedstat); with sched_policy = \"auto\" it runs as an ordinary thread"
                    );
                    return None;
                }
                id
            }
        };
        if let Err(e) = sched::set(0, sched::Policy::Batch) {
            tracing::warn!(error = %e, "cannot run a proxy worker under SCHED_BATCH; it runs as an ordinary thread");
            return None;
        }
        id
    }
}

/// Binds the listeners and starts the worker threads, with the listen address and
/// worker count of the snapshot in force now.
///
/// # Errors
/// When the address cannot be bound or a thread cannot start.
pub fn start(
    live: Snapshot,
    decider: Arc<Decider>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
) -> std::io::Result<Running> {
    let (listen, workers, cpu_affinity, sched_policy) = {
        let settings = &live.load().proxy;
        (
            settings.listen,
            settings.workers,
            settings.cpu_affinity,
            settings.sched_policy,
        )
    };
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let cpus = cpu_affinity.plan(workers, core_affinity::get_core_ids());
    let first = bind(listen)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind(addr)?);
    }
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        decider,
        live,
        clock,
        metrics,
        failures: Failures::default(),
        mcp: Arc::default(),
    });
    let mut threads = Vec::with_capacity(workers);
    // `auto`: each worker under SCHED_BATCH sends its thread id to the guard.
    let ids = (sched_policy == SchedPolicy::Auto).then(|| {
        let (ids, workers) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(sched::guard(workers, stopped.clone()));
        ids
    });
    for (i, listener) in listeners.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let stopped = stopped.clone();
        let ids = ids.clone();
        let cpu = cpus.as_ref().and_then(|cpus| cpus.get(i).copied());
        let thread = std::thread::Builder::new()
            .name(format!("keygate-proxy-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu
                    && !core_affinity::set_for_current(cpu)
                {
                    tracing::warn!(
                        cpu = cpu.id,
                        "cannot pin a proxy worker to its CPU; the kernel places it"
                    );
                }
                if let (Some(ids), Some(id)) = (ids, sched_policy.apply()) {
                    let _ = ids.send((i, id));
                }
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a proxy worker runtime");
                        return;
                    }
                };
                // Access lines collect per worker and go to the log writer in batches.
                crate::telemetry::logs::batch_this_thread();
                runtime.block_on(async {
                    tokio::spawn(flush_logs());
                    worker(listener, shared, stopped).await;
                });
                crate::telemetry::logs::flush_thread();
            })?;
        threads.push(thread);
    }
    tracing::info!(
        %addr,
        workers,
        pinned = cpus.is_some(),
        batch = sched_policy != SchedPolicy::Normal,
        sched_policy = sched_policy.name(),
        "proxy listening"
    );
    Ok(Running { addr, stop, threads })
}

/// Hands the worker's collected log lines to the writer
/// [`FLUSH_EVERY`](crate::telemetry::logs::FLUSH_EVERY) after the first line of
/// each batch. Without lines it waits without a timer: a tick every 100 ms woke an
/// idle worker ten times a second (with the access log off too).
async fn flush_logs() {
    use crate::telemetry::logs;
    let first_line = logs::first_line();
    loop {
        first_line.notified().await;
        tokio::time::sleep(logs::FLUSH_EVERY).await;
        logs::flush_thread();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn worker(listener: std::net::TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the proxy listener");
            return;
        }
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .max_buf_size(16 * 1024)
        .max_headers(100);
    let graceful = GracefulShutdown::new();
    // The fast path's idle connections close when this turns true.
    let (stop_idle, idle_stopped) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (idle, fast_path) = {
                    let settings = &shared.live.load().proxy;
                    (settings.idle_timeout, settings.fast_path)
                };
                http.header_read_timeout(idle);
                if fast_path {
                    let hand = h1::Handover {
                        http: http.clone(),
                        watcher: graceful.watcher(),
                        stopped: idle_stopped.clone(),
                        idle,
                    };
                    tokio::spawn(h1::serve(stream, peer, Arc::clone(&shared), hand));
                } else {
                    let shared = Arc::clone(&shared);
                    let conn = serve_hyper(stream, peer, shared, http.clone(), graceful.watcher());
                    tokio::spawn(conn);
                }
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    let _ = stop_idle.send(true);
    let grace = shared.live.load().proxy.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; closing remaining connections"
        );
    }
}

/// The failed-authentication count a request's client is under
/// (`max_failed_auth_per_minute`).
struct Attempt {
    /// The client's address; clients whose address is unknown share one count.
    counted: std::net::IpAddr,
    limit: u32,
    now_ms: i64,
}

impl Attempt {
    fn new(shared: &Shared, settings: &Settings, client: Option<std::net::IpAddr>) -> Self {
        let limit = settings.max_failed_auth_per_minute;
        Self {
            counted: client.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
            limit,
            now_ms: if limit > 0 { shared.clock.now_millis() } else { 0 },
        }
    }

    /// `Retry-After` seconds when the client failed too often this minute.
    fn blocked(&self, shared: &Shared) -> Option<u64> {
        shared.failures.blocked(self.counted, self.limit, self.now_ms)
    }

    /// Counts `denial` when it is a failed authentication.
    fn record(&self, shared: &Shared, denial: &Denial) {
        if self.limit > 0
            && let Denial::Rejected(r) = denial
            && r.is_failed_authentication()
        {
            shared.failures.record(self.counted, self.now_ms);
        }
    }
}

/// The answer to a refused decision, with `line` filled in (route, key, code,
/// status) for the metrics and the access log.
fn refused<'l>(
    line: &mut access::Line<'l>,
    refusal: &'l auth::Refusal<'_>,
    uri: &http::Uri,
    policy: &auth::StatusPolicy,
) -> Response<Full<Bytes>> {
    let resp = respond::denial(&refusal.denial, line.request_id, policy);
    line.route = refusal.route.map_or("none", |r| r.name.as_str());
    line.query_key = refusal.route.and_then(|r| access::query_key(r, uri));
    line.code = respond::code(&refusal.denial);
    line.status = resp.status().as_u16();
    line.key = refusal.key.as_deref();
    resp
}

/// Serves a client connection with hyper (the fast path hands over what it does not
/// serve itself), under the worker's graceful shutdown.
async fn serve_hyper<I>(
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, peer, req).await) }
    });
    if let Err(e) = watcher
        .watch(http.serve_connection(TokioIo::new(io), service))
        .await
    {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

async fn handle(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let metrics = &shared.metrics;
    let _in_flight = metrics.in_flight();
    let started = Instant::now();
    let live = shared.live.load_full();
    let settings = &live.proxy;
    let request_id = headers::request_id(req.headers());
    // Refused before any decision: counted, logged, no route.
    let refuse = |resp: Response<Full<Bytes>>, code: &'static str| {
        metrics.request("none", code);
        if settings.access_log {
            let mut line =
                access::Line::new(req.method().clone(), Cow::Owned(req.uri().clone()), &request_id);
            line.code = code;
            line.status = resp.status().as_u16();
            line.write();
        }
        own(resp)
    };
    if let Err(p) = wire::check(req.version(), req.headers()) {
        return refuse(respond::error(p.status, p.code, p.message, &request_id), p.code);
    }
    let asked = match ext_authz::asked(req.method(), req.uri(), req.headers()) {
        Ok(asked) => asked,
        Err(message) => {
            let resp = respond::error(
                http::StatusCode::BAD_REQUEST,
                "invalid_request",
                &message,
                &request_id,
            );
            return refuse(resp, "invalid_request");
        }
    };
    // A forward-auth call is judged as the request it asks about.
    let (method, uri) = match &asked {
        Some(a) => (&a.method, &a.uri),
        None => (req.method(), req.uri()),
    };
    let client = client::resolve(peer.ip(), req.headers(), &settings.trusted_proxies);
    let attempt = Attempt::new(shared, settings, client);
    if let Some(retry_after) = attempt.blocked(shared) {
        let resp = respond::too_many_failures(retry_after, &request_id);
        return refuse(resp, "too_many_failed_attempts");
    }
    let head = RequestHead {
        method,
        path: uri.path(),
        query: uri.query(),
        headers: req.headers(),
        client,
    };
    let decided = shared.decider.decide(&live.auth, head).await;
    // Three monotonic clock reads per forwarded request: start, decided, answered.
    let decided_at = Instant::now();
    let decision = decided_at.duration_since(started);
    metrics.decision(decision.as_secs_f64());
    let mut line = access::Line {
        // Cheap: a standard method is a tag, a URI shares its bytes.
        method: method.clone(),
        uri: Cow::Owned(uri.clone()),
        route: "none",
        status: 0,
        code: "",
        key: None,
        request_id: &request_id,
        decision,
        upstream: None,
        total: decision,
        auth: None,
        query_key: None,
        mcp_method: None,
        mcp_tool: None,
    };
    let grant = match decided {
        Ok(grant) => grant,
        Err(refusal) => {
            attempt.record(shared, &refusal.denial);
            let resp = refused(&mut line, &refusal, uri, &live.auth.status);
            metrics.request(line.route, line.code);
            if settings.access_log {
                line.write();
            }
            return own(resp);
        }
    };
    let route = grant.route;
    line.route = &route.name;
    line.key = grant.key.as_deref();
    line.auth = Some(grant.auth);
    line.query_key = access::query_key(route, uri);
    if let Some(asked) = &asked {
        if let Some(key) = &grant.key
            && route.mcp
            && let Some((resp, code)) = mcp::forward_auth(shared, &live, route, key, &request_id).await
        {
            line.code = code;
            line.status = resp.status().as_u16();
            metrics.request(line.route, line.code);
            if settings.access_log {
                line.write();
            }
            return own(resp);
        }
        let resp = ext_authz::allow(&grant, settings, asked, &request_id, shared.clock.now());
        line.code = "authorized";
        line.status = resp.status().as_u16();
        metrics.request(line.route, line.code);
        if settings.access_log {
            line.write();
        }
        return own(resp);
    }
    let Some(upstream) = settings.upstreams.get(route.upstream) else {
        line.code = "upstream_unavailable";
        let resp = respond::no_upstream(&request_id);
        line.status = resp.status().as_u16();
        metrics.request(line.route, line.code);
        if settings.access_log {
            line.write();
        }
        return own(resp);
    };
    let (mut parts, body) = req.into_parts();
    let mut usage = grant.usage;
    let mut mcp_answer = None;
    let body = match &grant.key {
        Some(key) if route.mcp => {
            let mut summary = mcp::Summary::default();
            let step = mcp::prepare(
                shared,
                &live,
                route,
                key,
                &parts.method,
                &parts.headers,
                body,
                &request_id,
                &mut summary,
            )
            .await;
            line.mcp_method = summary.method;
            line.mcp_tool = summary.tool;
            match step {
                mcp::Step::Pass(body) => Either::Left(body),
                mcp::Step::Stream(body, answer) => {
                    // Answers keygate must read come unencoded.
                    parts.headers.remove(http::header::ACCEPT_ENCODING);
                    mcp_answer = Some(answer);
                    Either::Left(body)
                }
                mcp::Step::Forward(bytes, answer) => {
                    usage = answer.usage.or(usage);
                    mcp_answer = Some(answer);
                    parts.headers.remove(http::header::ACCEPT_ENCODING);
                    parts.headers.remove(http::header::TRANSFER_ENCODING);
                    parts
                        .headers
                        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    Either::Right(Full::new(bytes))
                }
                mcp::Step::Respond(mut resp, code) => {
                    line.code = code;
                    headers::prepare_response(
                        resp.headers_mut(),
                        usage.as_ref(),
                        &request_id,
                        shared.clock.now(),
                    );
                    line.status = resp.status().as_u16();
                    metrics.request(line.route, line.code);
                    if settings.access_log {
                        line.total = started.elapsed();
                        line.write();
                    }
                    return own(resp);
                }
            }
        }
        _ => Either::Left(body),
    };
    let authority = parts.uri.authority().cloned();
    parts.uri = forward::origin_form(&parts.uri, route.key_query_param.as_deref());
    parts.version = Version::HTTP_11;
    headers::prepare_request(
        &mut parts.headers,
        &settings.identity,
        settings.key_header.as_ref(),
        &headers::Forwarded {
            key: grant.key.as_deref(),
            peer,
            request_id: &request_id,
            host: &upstream.host,
            authority: authority.as_ref(),
            keep_credentials: grant.auth == auth::AuthMethod::Passed,
        },
    );
    settings.sign(&parts.method, &parts.uri, &mut parts.headers, || {
        shared.clock.now()
    });
    let limits = forward::Limits {
        connect: settings.connect_timeout,
        response: settings.response_timeout,
        pool_size: settings.pool_size,
    };
    let forwarded = forward::send(upstream, limits, Request::from_parts(parts, body)).await;
    let answered_at = Instant::now();
    // Includes the header rewriting above, well under a microsecond.
    let upstream_time = answered_at.duration_since(decided_at);
    metrics.upstream(upstream_time.as_secs_f64());
    line.upstream = Some(upstream_time);
    let resp = match forwarded {
        Ok(mut resp) => {
            line.code = "forwarded";
            headers::prepare_response(
                resp.headers_mut(),
                usage.as_ref(),
                &request_id,
                shared.clock.now(),
            );
            match mcp_answer {
                Some(answer) => mcp::answer(resp, answer).await,
                None => resp.map(Either::Left),
            }
        }
        Err(e) => {
            line.code = respond::upstream_code(&e);
            let mut resp = respond::upstream(&e, &request_id);
            if let Some(usage) = &usage {
                // The request was charged; the client still learns where it stands.
                let reset = crate::quota::seconds_until(usage.reset_at, shared.clock.now());
                headers::insert_rate_limit(resp.headers_mut(), usage.limit, usage.remaining, reset);
            }
            own(resp)
        }
    };
    metrics.request(line.route, line.code);
    if settings.access_log {
        line.status = resp.status().as_u16();
        line.total = answered_at.duration_since(started);
        line.write();
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::CpuAffinity;

    #[test]
    fn auto_pins_the_workers_only_to_as_many_cpus_as_there_are_workers() {
        assert_eq!(CpuAffinity::Auto.plan(2, Some(vec![4, 6])), Some(vec![4, 6]));
        assert_eq!(
            CpuAffinity::Auto.plan(2, Some(vec![0, 1, 2, 3])),
            None,
            "more CPUs: shared"
        );
        assert_eq!(
            CpuAffinity::Auto.plan(4, Some(vec![0, 1])),
            None,
            "fewer CPUs than workers"
        );
        assert_eq!(
            CpuAffinity::Auto.plan::<usize>(2, None),
            None,
            "the CPUs cannot be read"
        );
        assert_eq!(CpuAffinity::Off.plan(2, Some(vec![0, 1])), None);
    }
}
