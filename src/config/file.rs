//! The TOML schema, as written by users. Each field's doc is its reference text,
//! mirrored in `config/keygate.toml` and the README. Values that validation checks
//! keep their source span for line:col diagnostics.

use serde::Deserialize;
use toml::Spanned;

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct File {
    /// The data plane.
    pub proxy: Proxy,
    /// The admin listener: REST API, console, OpenAPI, health. Absent = off.
    pub admin: Option<Admin>,
    /// The admin store.
    pub store: StoreTable,
    /// Shared-state mode: L2 cache, shared quota counters, instant invalidation.
    pub redis: Option<RedisTable>,
    /// Key format and key policy.
    pub keys: Keys,
    /// Default quota.
    pub quota: Quota,
    /// The in-process key cache.
    pub cache: Cache,
    /// Identity headers sent upstream.
    pub identity: Identity,
    /// Per-key short-window rate limit.
    pub rate_limit: RateLimit,
    /// Where client addresses come from.
    pub clients: Clients,
    /// MCP routes.
    pub mcp: Mcp,
    /// Key hygiene: idle keys, leaked keys.
    pub hygiene: Hygiene,
    /// Routes, tried in file order.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
}

/// `[proxy]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Proxy {
    /// Address the proxy listens on. Default `127.0.0.1:8080`.
    pub listen: Spanned<String>,
    /// Default upstream base URL (`http://host:port`). Default `http://127.0.0.1:3000`.
    pub upstream: Spanned<String>,
    /// Unmatched paths: `deny` (404 `route_not_found`, default) or `authenticate`
    /// (any valid key, no scopes, cost 1).
    pub unmatched: Spanned<String>,
    /// Requests without a keygate-shaped key (no credential, a session cookie, a JWT,
    /// another token): `reject` (default) or `pass` to the API's own login untouched.
    /// The default for routes; a route may set its own.
    pub other_credentials: Spanned<String>,
    /// An extra header that may carry the bare key, e.g. `X-API-Key`. Off by default.
    pub key_header: Option<Spanned<String>>,
    /// Data-plane threads (one runtime and listener each); 0 = one per core. Default 0.
    pub workers: usize,
    /// `auto` (default): each worker pinned to its own CPU when the process may run on
    /// exactly as many CPUs as there are workers; `off`: placement left to the kernel.
    pub cpu_affinity: Spanned<String>,
    /// `normal` (default): the workers are ordinary threads; `batch`: they run under
    /// Linux's `SCHED_BATCH`, so a worker woken by a socket does not preempt the
    /// thread running on its CPU but takes its turn, and serves more events per
    /// wake-up. More requests per second per CPU where keygate shares its cores with
    /// its client and upstream; up to a scheduler slice more latency per wake-up
    /// where it shares them with CPU-bound work. `auto`: `batch`, with each worker
    /// back under ordinary scheduling while its waits for its CPU show such work.
    pub sched_policy: Spanned<String>,
    /// Time to connect to the upstream before answering 502. Default `5s`.
    pub connect_timeout: Spanned<String>,
    /// Time to the upstream's response head before answering 504. Default `60s`.
    pub response_timeout: Spanned<String>,
    /// Idle upstream connections kept per worker and upstream. Default 128.
    pub pool_size: usize,
    /// Time in-flight requests get to finish after SIGTERM. Default `30s`.
    pub shutdown_grace: Spanned<String>,
    /// Time a client connection may take to send a request head, counted from the
    /// end of the previous response on a kept-alive connection. Default `30s`.
    pub idle_timeout: Spanned<String>,
    /// One access log line per request (target `keygate::access`, INFO). Default true.
    pub access_log: bool,
    /// Serve plain HTTP/1.1 requests on keygate's own fast path (the rest always goes
    /// through hyper). Default true; `false` sends every request through hyper.
    pub fast_path: bool,
    /// Failed authentications allowed per client IP per minute before the address
    /// gets 429 `too_many_failed_attempts`; 0 = unlimited. Default 0.
    pub max_failed_auth_per_minute: u32,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            listen: spanned("127.0.0.1:8080".into()),
            upstream: spanned("http://127.0.0.1:3000".into()),
            unmatched: spanned("deny".into()),
            other_credentials: spanned("reject".into()),
            key_header: None,
            workers: 0,
            cpu_affinity: spanned("auto".into()),
            sched_policy: spanned("normal".into()),
            connect_timeout: spanned("5s".into()),
            response_timeout: spanned("60s".into()),
            pool_size: 128,
            shutdown_grace: spanned("30s".into()),
            idle_timeout: spanned("30s".into()),
            access_log: true,
            fast_path: true,
            max_failed_auth_per_minute: 0,
        }
    }
}

/// `[admin]`
#[derive(Debug, Deserialize)]
pub struct Admin {
    /// Address of the admin listener.
    pub listen: Spanned<String>,
    /// Failed authentications allowed per client IP per minute; 0 = unlimited. Default 10.
    #[serde(default = "ten")]
    pub max_failed_auth_per_minute: u32,
}

impl Admin {
    /// Default of `max_failed_auth_per_minute`.
    pub const DEFAULT_MAX_FAILED_AUTH: u32 = 10;
}

fn ten() -> u32 {
    Admin::DEFAULT_MAX_FAILED_AUTH
}

/// `[store]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct StoreTable {
    /// Admin store URL, `sqlite://PATH` or `postgres://...`; env `KEYGATE_DATABASE_URL`
    /// wins. Default `sqlite://keygate.db`.
    pub url: Spanned<String>,
    /// How often a running proxy reads the store's change feed to evict changed keys. Default `250ms`.
    pub poll_interval: Spanned<String>,
    /// How often quota counts and last-used times are written. Default `1s`.
    pub flush_interval: Spanned<String>,
}

impl Default for StoreTable {
    fn default() -> Self {
        Self {
            url: spanned("sqlite://keygate.db".into()),
            poll_interval: spanned("250ms".into()),
            flush_interval: spanned("1s".into()),
        }
    }
}

/// `[redis]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RedisTable {
    /// `redis://[user:password@]host:port[/db]`; env `KEYGATE_REDIS_URL` wins.
    pub url: Option<Spanned<String>>,
    /// Prefix of every Redis key and channel keygate uses. Default `keygate:`.
    pub key_prefix: String,
    /// Time a Redis call may take before it counts as failed. Default `200ms`.
    pub timeout: Spanned<String>,
    /// TTL of key records in the L2 cache. Default `60s`.
    pub cache_ttl: Spanned<String>,
}

impl Default for RedisTable {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "keygate:".into(),
            timeout: spanned("200ms".into()),
            cache_ttl: spanned("60s".into()),
        }
    }
}

/// `[keys]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Keys {
    /// Key prefix (`a-z0-9`, inner `_`). Default `kg`.
    pub prefix: Spanned<String>,
    /// Environment this deployment accepts (`a-z0-9`). Default `live`.
    pub environment: Spanned<String>,
    /// Status for revoked keys: 401 (default) or 403.
    pub revoked_status: Spanned<u16>,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            prefix: spanned("kg".into()),
            environment: spanned("live".into()),
            revoked_status: spanned(401),
        }
    }
}

/// `[quota]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Quota {
    /// Requests (cost units) per period for keys without their own limit. Default 1000.
    pub limit: u64,
    /// `month` (calendar month, UTC) or `<N>d` (N-day windows from the key's creation). Default `30d`.
    pub period: Spanned<String>,
    /// While Redis is unreachable: `local` (count in-process, reconcile later; default),
    /// `allow` (admit, count later) or `deny` (503 `quota_unavailable`).
    pub on_redis_error: Spanned<String>,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            limit: 1000,
            period: spanned("30d".into()),
            on_redis_error: spanned("local".into()),
        }
    }
}

/// `[cache]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Cache {
    /// How long a key record is used without asking the store. Default `30s`.
    pub ttl: Spanned<String>,
    /// How long an unknown key is remembered as unknown. Default `30s`.
    pub negative_ttl: Spanned<String>,
    /// Known keys kept at most. Default 100000.
    pub capacity: usize,
    /// Unknown keys remembered at most. Default 200000.
    pub negative_capacity: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            ttl: spanned("30s".into()),
            negative_ttl: spanned("30s".into()),
            capacity: 100_000,
            negative_capacity: 200_000,
        }
    }
}

/// `[identity]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Identity {
    /// Prefix of identity headers. Default `X-Keygate-`.
    pub header_prefix: Spanned<String>,
    /// Secret for the signed identity (`X-Keygate-Signature`); absent = unsigned.
    /// Env `KEYGATE_IDENTITY_SIGNING_KEY` wins.
    pub signing_key: Option<Spanned<String>>,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            header_prefix: spanned("X-Keygate-".into()),
            signing_key: None,
        }
    }
}

/// `[rate_limit]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    /// Requests per second, minute or hour for keys without their own limit
    /// (`100/s`, `600/m`, `1000/h`). Absent = off.
    pub per_key: Option<Spanned<String>>,
}

/// `[mcp]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Mcp {
    /// Largest request body on an MCP route, in bytes. Default 1 MiB.
    pub max_body_bytes: Spanned<u64>,
    /// Tools that are read-only (exact names and `*` globs).
    pub read_only_tools: Vec<Spanned<String>>,
    /// Believe the upstream's `readOnlyHint` annotations. Default true.
    pub trust_read_only_hint: bool,
    /// Methods that cost nothing (exact names and `*` globs).
    pub free_methods: Option<Vec<Spanned<String>>>,
    /// Cost of a `tools/call` per tool (name or glob → units).
    pub tool_costs: toml::Table,
    /// Tools named in metrics.
    pub tool_labels: Vec<Spanned<String>>,
}

impl Default for Mcp {
    fn default() -> Self {
        Self {
            max_body_bytes: spanned(1 << 20),
            read_only_tools: Vec::new(),
            trust_read_only_hint: true,
            free_methods: None,
            tool_costs: toml::Table::new(),
            tool_labels: Vec::new(),
        }
    }
}

/// `[clients]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Clients {
    /// Proxies (addresses or CIDR networks) whose `X-Forwarded-For` is believed.
    /// Empty (default) = the socket peer is the client.
    pub trusted_proxies: Vec<Spanned<String>>,
}

/// `[hygiene]`
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Hygiene {
    /// Pause keys unused for this long (by last use, or creation when never used),
    /// e.g. `90d`. Absent = off.
    pub pause_after_idle: Option<Spanned<String>>,
    /// What a leak report does to its key: `pause` (default) or `revoke`.
    pub on_leak: Spanned<String>,
    /// GitHub's secret scanning public keys (the JSON document of
    /// `GET https://api.github.com/meta/public_keys/secret_scanning`, saved to a
    /// file). Set = the admin listener accepts signed reports. Absent = off.
    pub github_public_keys: Option<Spanned<String>>,
}

impl Default for Hygiene {
    fn default() -> Self {
        Self {
            pause_after_idle: None,
            on_leak: spanned("pause".into()),
            github_public_keys: None,
        }
    }
}

/// `[[route]]`
#[derive(Debug, Deserialize)]
pub struct Route {
    /// Unique name (logs, restrictions).
    pub name: Spanned<String>,
    /// Methods; absent or empty = any.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Path template: literals, `{param}`, `*`, and a final `**`.
    pub path: Spanned<String>,
    /// Scopes the key must all hold.
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    /// The `{param}` that must equal the key's org.
    pub org_param: Option<Spanned<String>>,
    /// No key needed.
    #[serde(default)]
    pub public: bool,
    /// Quota units per request. Default 1.
    #[serde(default = "one")]
    pub cost: u64,
    /// Upstream base URL for this route instead of `[proxy] upstream`.
    pub upstream: Option<Spanned<String>>,
    /// `reject` or `pass`, overriding `[proxy] other_credentials` for this route.
    pub other_credentials: Option<Spanned<String>>,
    /// A query parameter that may carry the key (e.g. `api_key`), for clients that
    /// can only be given a URL. Off by default; the header is the better place.
    pub key_query_param: Option<Spanned<String>>,
    /// A Streamable HTTP MCP endpoint: JSON-RPC aware (per-key tool allowlists,
    /// read-only keys, per-call quota).
    #[serde(default)]
    pub mcp: bool,
}

fn one() -> u64 {
    1
}
