//! `File` → `Config`: every check, every problem collected (never stop at the first).

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::file::{self, File};
use super::{Diagnostic, Env, parse_addr, parse_duration};
use crate::auth::{self, StatusPolicy, credential, route};
use crate::keys::Format;
use crate::keys::format::is_valid_name;
use crate::proxy::{self, Upstream, headers::Identity, signature::Signer};
use crate::{cache, quota};

/// A validated configuration. It has no `Deserialize`: the only way to get one is
/// through validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data plane.
    pub proxy: proxy::Settings,
    /// The decision.
    pub auth: auth::Settings,
    /// Quota defaults.
    pub quota: quota::Settings,
    /// L1 cache.
    pub cache: cache::Settings,
    /// Admin store.
    pub store: StoreSettings,
    /// Redis, when configured.
    pub redis: Option<cache::redis::Settings>,
    /// Admin/ops listener address, when configured.
    pub admin: Option<crate::admin::Settings>,
    /// Idle and leaked keys.
    pub hygiene: Hygiene,
}

/// `[hygiene]`: what happens to keys nobody uses and keys reported as leaked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hygiene {
    /// Pause keys unused for this long; `None` = never.
    pub pause_after_idle: Option<Duration>,
    /// What a leak report does to its key.
    pub on_leak: crate::manage::OnLeak,
    /// GitHub's secret scanning public keys, read from `github_public_keys` at
    /// load; `None` = reports are off.
    pub github_keys: Option<crate::admin::leaks::GithubKeys>,
}

/// Where the admin store is and how often it is read and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Store URL.
    pub url: String,
    /// Change-feed polling interval.
    pub poll_interval: Duration,
    /// Quota / last-used flush interval.
    pub flush_interval: Duration,
}

struct Check<'s> {
    src: &'s str,
    diagnostics: Vec<Diagnostic>,
}

impl Check<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::at(self.src, span, message));
    }

    fn duration(&mut self, value: &Spanned<String>, key: &str) -> Duration {
        parse_duration(value.get_ref()).unwrap_or_else(|| {
            self.error(
                value.span(),
                format!(
                    "{key}: `{}` is not a duration (use e.g. `250ms`, `5s`, `10m`, `1h`, `30d`)",
                    value.get_ref()
                ),
            );
            Duration::ZERO
        })
    }

    fn upstream(&mut self, value: &Spanned<String>, key: &str) -> Option<Upstream> {
        Upstream::parse(value.get_ref())
            .map_err(|e| self.error(value.span(), format!("{key}: {e}")))
            .ok()
    }
}

pub(super) fn parse(src: &str, env: &dyn Env) -> Result<Config, Vec<Diagnostic>> {
    let table =
        DeTable::parse(src).map_err(|e| vec![Diagnostic::at(src, e.span().unwrap_or(0..0), e.message())])?;
    let mut unknown = Vec::new();
    let deserializer = toml::Deserializer::parse(src)
        .map_err(|e| vec![Diagnostic::at(src, e.span().unwrap_or(0..0), e.message())])?;
    let mut file: File = serde_ignored::deserialize(deserializer, |path| unknown.push(segments(&path)))
        .map_err(|e: toml::de::Error| vec![Diagnostic::at(src, e.span().unwrap_or(0..0), e.message())])?;
    let overridden = apply_env(&mut file, env);
    let mut check = Check {
        src,
        diagnostics: Vec::new(),
    };
    for path in unknown {
        let dotted = path.iter().map(Segment::to_string).collect::<Vec<_>>().join(".");
        let span = locate(table.get_ref(), &path).unwrap_or(0..0);
        check.error(span, format!("unknown key `{dotted}`"));
    }
    let config = build(&file, env, &mut check);
    let mut diagnostics = check.diagnostics;
    for d in &mut diagnostics {
        // A value from the environment has no place in the file: name its variable.
        if let Some((key, var)) = overridden
            .iter()
            .find(|(key, _)| d.message.starts_with(&format!("{key}:")))
        {
            d.message = format!("{var} ({key}){}", &d.message[key.len()..]);
        }
    }
    if diagnostics.is_empty() {
        return Ok(config);
    }
    diagnostics.sort_by_key(|d| d.at.unwrap_or((usize::MAX, 0)));
    Err(diagnostics)
}

/// Settings that differ per environment, taken from `KEYGATE_*` variables when set
/// (they win over the file). The store and Redis URLs are read where they are built.
const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("proxy.listen", "KEYGATE_PROXY_LISTEN"),
    ("proxy.upstream", "KEYGATE_PROXY_UPSTREAM"),
    ("admin.listen", "KEYGATE_ADMIN_LISTEN"),
    ("keys.environment", "KEYGATE_KEYS_ENVIRONMENT"),
    ("identity.signing_key", "KEYGATE_IDENTITY_SIGNING_KEY"),
];

fn apply_env(file: &mut File, env: &dyn Env) -> Vec<(&'static str, &'static str)> {
    let mut applied = Vec::new();
    for &(key, var) in ENV_OVERRIDES {
        let Some(value) = env.var(var) else { continue };
        let value = Spanned::new(0..0, value);
        match key {
            "proxy.listen" => file.proxy.listen = value,
            "proxy.upstream" => file.proxy.upstream = value,
            "admin.listen" => match &mut file.admin {
                Some(admin) => admin.listen = value,
                // Setting the address turns the admin listener on.
                None => {
                    file.admin = Some(file::Admin {
                        listen: value,
                        max_failed_auth_per_minute: file::Admin::DEFAULT_MAX_FAILED_AUTH,
                    });
                }
            },
            "keys.environment" => file.keys.environment = value,
            "identity.signing_key" => file.identity.signing_key = Some(value),
            _ => unreachable!("every override is handled"),
        }
        applied.push((key, var));
    }
    applied
}

fn build(file: &File, env: &dyn Env, check: &mut Check<'_>) -> Config {
    let p = &file.proxy;
    let listen = parse_addr(p.listen.get_ref()).unwrap_or_else(|| {
        check.error(
            p.listen.span(),
            format!(
                "proxy.listen: `{}` is not an address like 127.0.0.1:8080",
                p.listen.get_ref()
            ),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let mut upstreams: Vec<Upstream> = check
        .upstream(&p.upstream, "proxy.upstream")
        .into_iter()
        .collect();
    let unmatched = choice(
        &p.unmatched,
        "proxy.unmatched",
        &[
            ("deny", route::Unmatched::Deny),
            ("authenticate", route::Unmatched::Authenticate),
        ],
        check,
    )
    .unwrap_or(route::Unmatched::Deny);
    let other_credentials =
        other_credentials(&p.other_credentials, "proxy.other_credentials", check).unwrap_or_default();
    let cpu_affinity = choice(
        &p.cpu_affinity,
        "proxy.cpu_affinity",
        &[
            ("auto", proxy::CpuAffinity::Auto),
            ("off", proxy::CpuAffinity::Off),
        ],
        check,
    )
    .unwrap_or_default();
    let sched_policy = choice(
        &p.sched_policy,
        "proxy.sched_policy",
        &[
            ("normal", proxy::SchedPolicy::Normal),
            ("auto", proxy::SchedPolicy::Auto),
            ("batch", proxy::SchedPolicy::Batch),
        ],
        check,
    )
    .unwrap_or_default();
    let key_header = p.key_header.as_ref().and_then(|h| {
        HeaderName::from_bytes(h.get_ref().as_bytes())
            .map_err(|_| {
                check.error(
                    h.span(),
                    format!("proxy.key_header: `{}` is not a header name", h.get_ref()),
                )
            })
            .ok()
            .filter(|name| {
                let clash = *name == http::header::AUTHORIZATION;
                if clash {
                    check.error(
                        h.span(),
                        "proxy.key_header: Authorization is always read; name another header",
                    );
                }
                !clash
            })
    });
    let connect_timeout = check.duration(&p.connect_timeout, "proxy.connect_timeout");
    let response_timeout = check.duration(&p.response_timeout, "proxy.response_timeout");
    let shutdown_grace = check.duration(&p.shutdown_grace, "proxy.shutdown_grace");
    let idle_timeout = check.duration(&p.idle_timeout, "proxy.idle_timeout");
    if idle_timeout.is_zero() {
        check.error(p.idle_timeout.span(), "proxy.idle_timeout must be more than 0s");
    }
    if p.pool_size == 0 {
        check.error(0..0, "proxy.pool_size must be at least 1");
    }

    let identity = Identity::new(file.identity.header_prefix.get_ref()).unwrap_or_else(|e| {
        check.error(
            file.identity.header_prefix.span(),
            format!("identity.header_prefix: {e}"),
        );
        Identity::default()
    });
    let signer = file.identity.signing_key.as_ref().and_then(|secret| {
        Signer::new(secret.get_ref())
            .map_err(|e| check.error(secret.span(), format!("identity.signing_key: {e}")))
            .ok()
    });

    let k = &file.keys;
    let format = Format::new(k.prefix.get_ref(), k.environment.get_ref()).unwrap_or_else(|e| {
        let (span, key) = if is_valid_name(k.prefix.get_ref(), true) {
            (k.environment.span(), "keys.environment")
        } else {
            (k.prefix.span(), "keys.prefix")
        };
        check.error(span, format!("{key}: {e}"));
        Format::new("kg", "live").unwrap_or_else(|_| unreachable!("the default format is valid"))
    });
    let revoked = match *k.revoked_status.get_ref() {
        401 => StatusCode::UNAUTHORIZED,
        403 => StatusCode::FORBIDDEN,
        other => {
            check.error(
                k.revoked_status.span(),
                format!("keys.revoked_status: {other} must be 401 or 403"),
            );
            StatusCode::UNAUTHORIZED
        }
    };

    let q = &file.quota;
    let period = quota::Period::parse(q.period.get_ref()).unwrap_or_else(|| {
        check.error(
            q.period.span(),
            format!(
                "quota.period: `{}` must be `month` or `<N>d` (1-3660 days)",
                q.period.get_ref()
            ),
        );
        quota::Period::Month
    });
    let on_redis_error = choice(
        &q.on_redis_error,
        "quota.on_redis_error",
        &[
            ("local", quota::OnRedisError::Local),
            ("allow", quota::OnRedisError::Allow),
            ("deny", quota::OnRedisError::Deny),
        ],
        check,
    )
    .unwrap_or(quota::OnRedisError::Local);

    let c = &file.cache;
    let cache = cache::Settings {
        ttl: check.duration(&c.ttl, "cache.ttl"),
        negative_ttl: check.duration(&c.negative_ttl, "cache.negative_ttl"),
        capacity: c.capacity.max(1),
        negative_capacity: c.negative_capacity.max(1),
    };

    let s = &file.store;
    let store = StoreSettings {
        url: env
            .var("KEYGATE_DATABASE_URL")
            .unwrap_or_else(|| s.url.get_ref().clone()),
        poll_interval: check.duration(&s.poll_interval, "store.poll_interval"),
        flush_interval: check.duration(&s.flush_interval, "store.flush_interval"),
    };
    if !crate::store::is_supported_url(&store.url) {
        let span = if env.var("KEYGATE_DATABASE_URL").is_some() {
            0..0
        } else {
            s.url.span()
        };
        check.error(span, "store.url: must start with sqlite:// or postgres://");
    }
    let redis = redis(file, env, &cache, check);

    let admin = file.admin.as_ref().and_then(|a| {
        let addr = parse_addr(a.listen.get_ref());
        if addr.is_none() {
            check.error(
                a.listen.span(),
                format!(
                    "admin.listen: `{}` is not an address like 127.0.0.1:9091",
                    a.listen.get_ref()
                ),
            );
        }
        addr.map(|listen| crate::admin::Settings {
            listen,
            max_failed_auth_per_minute: a.max_failed_auth_per_minute,
        })
    });

    let routes = routes(&file.routes, other_credentials, &mut upstreams, check);
    let rate_limit = file.rate_limit.per_key.as_ref().and_then(|r| {
        crate::keys::Rate::parse(r.get_ref())
            .map_err(|e| check.error(r.span(), format!("rate_limit.per_key: {e}")))
            .ok()
    });
    let trusted_proxies = file
        .clients
        .trusted_proxies
        .iter()
        .filter_map(|n| {
            crate::keys::record::parse_network(n.get_ref())
                .map_err(|e| check.error(n.span(), format!("clients.trusted_proxies: {e}")))
                .ok()
        })
        .collect();
    let mcp = mcp_settings(&file.mcp, check);
    let h = &file.hygiene;
    let hygiene = Hygiene {
        pause_after_idle: h.pause_after_idle.as_ref().map(|d| {
            let idle = check.duration(d, "hygiene.pause_after_idle");
            if idle < Duration::from_secs(3600) {
                check.error(d.span(), "hygiene.pause_after_idle: must be at least 1h");
            }
            idle
        }),
        on_leak: choice(
            &h.on_leak,
            "hygiene.on_leak",
            &[
                ("pause", crate::manage::OnLeak::Pause),
                ("revoke", crate::manage::OnLeak::Revoke),
            ],
            check,
        )
        .unwrap_or_default(),
        github_keys: h.github_public_keys.as_ref().and_then(|p| {
            let read = std::fs::read_to_string(p.get_ref())
                .map_err(|e| e.to_string())
                .and_then(|text| crate::admin::leaks::GithubKeys::parse(&text));
            match read {
                Ok(keys) => Some(keys),
                Err(e) => {
                    check.error(
                        p.span(),
                        format!("hygiene.github_public_keys: `{}`: {e}", p.get_ref()),
                    );
                    None
                }
            }
        }),
    };

    Config {
        proxy: proxy::Settings {
            listen,
            workers: p.workers,
            cpu_affinity,
            sched_policy,
            upstreams,
            connect_timeout,
            response_timeout,
            pool_size: p.pool_size.max(1),
            shutdown_grace,
            idle_timeout,
            identity,
            key_header: key_header.clone(),
            access_log: p.access_log,
            fast_path: p.fast_path,
            signer,
            max_failed_auth_per_minute: p.max_failed_auth_per_minute,
            trusted_proxies,
            mcp,
        },
        auth: auth::Settings {
            routes: route::Table::new(routes, unmatched).with_other_credentials(other_credentials),
            credentials: credential::Settings { format, key_header },
            status: StatusPolicy { revoked },
            rate_limit,
        },
        quota: quota::Settings {
            limit: q.limit,
            period,
            on_redis_error,
        },
        cache,
        store,
        redis,
        admin,
        hygiene,
    }
}

fn mcp_settings(m: &file::Mcp, check: &mut Check<'_>) -> crate::mcp::Settings {
    let defaults = crate::mcp::Settings::default();
    let mut patterns = |list: &[Spanned<String>], key: &str| -> Vec<String> {
        list.iter()
            .filter_map(|p| {
                let ok = crate::keys::record::is_valid_tool_pattern(p.get_ref());
                if !ok {
                    check.error(
                        p.span(),
                        format!(
                            "mcp.{key}: `{}` must be 1-128 characters of A-Z, a-z, 0-9, `_`, `-`, `.`, `/`, `:` and `*`",
                            p.get_ref()
                        ),
                    );
                }
                ok.then(|| p.get_ref().clone())
            })
            .collect()
    };
    let read_only_tools = patterns(&m.read_only_tools, "read_only_tools");
    let tool_labels = patterns(&m.tool_labels, "tool_labels");
    let free_methods = match &m.free_methods {
        Some(list) => patterns(list, "free_methods"),
        None => defaults.free_methods,
    };
    let mut tool_costs = Vec::new();
    for (tool, cost) in &m.tool_costs {
        match cost.as_integer().and_then(|c| u64::try_from(c).ok()) {
            Some(c) if crate::keys::record::is_valid_tool_pattern(tool) => tool_costs.push((tool.clone(), c)),
            _ => check.error(
                m.max_body_bytes.span(),
                format!("mcp.tool_costs: `{tool}` needs a tool name or glob and a cost of 0 or more units"),
            ),
        }
    }
    let max_body = *m.max_body_bytes.get_ref();
    if !(1024..=64 << 20).contains(&max_body) {
        check.error(
            m.max_body_bytes.span(),
            "mcp.max_body_bytes: must be from 1024 to 67108864 (64 MiB)",
        );
    }
    crate::mcp::Settings {
        max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
        read_only_tools,
        trust_read_only_hint: m.trust_read_only_hint,
        free_methods,
        tool_costs,
        tool_labels,
    }
}

fn redis(
    file: &File,
    env: &dyn Env,
    cache: &cache::Settings,
    check: &mut Check<'_>,
) -> Option<cache::redis::Settings> {
    let from_env = env.var("KEYGATE_REDIS_URL");
    if file.redis.is_none() && from_env.is_none() {
        return None;
    }
    let defaults = file::RedisTable::default();
    let table = file.redis.as_ref().unwrap_or(&defaults);
    let (url, span) = match (&from_env, &table.url) {
        (Some(url), _) => (url.clone(), 0..0),
        (None, Some(url)) => (url.get_ref().clone(), url.span()),
        (None, None) => {
            check.error(
                0..0,
                "[redis] needs `url` (or the KEYGATE_REDIS_URL environment variable)",
            );
            return None;
        }
    };
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
        check.error(
            span,
            "redis.url: must start with redis:// (Cluster and Sentinel URLs are not supported yet)",
        );
    }
    Some(cache::redis::Settings {
        url,
        key_prefix: table.key_prefix.clone(),
        timeout: check.duration(&table.timeout, "redis.timeout"),
        cache_ttl: check.duration(&table.cache_ttl, "redis.cache_ttl"),
        negative_ttl: cache.negative_ttl,
    })
}

fn other_credentials(
    raw: &Spanned<String>,
    what: &str,
    check: &mut Check<'_>,
) -> Option<route::OtherCredentials> {
    choice(
        raw,
        what,
        &[
            ("reject", route::OtherCredentials::Reject),
            ("pass", route::OtherCredentials::Pass),
        ],
        check,
    )
}

/// The value `raw` names among `choices`; `None`, with an error listing the names,
/// when it names none.
fn choice<T: Copy>(
    raw: &Spanned<String>,
    what: &str,
    choices: &[(&str, T)],
    check: &mut Check<'_>,
) -> Option<T> {
    let found = choices
        .iter()
        .find(|(name, _)| name == raw.get_ref())
        .map(|&(_, value)| value);
    if found.is_none() {
        let names: Vec<String> = choices.iter().map(|(name, _)| format!("`{name}`")).collect();
        let names = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        };
        check.error(raw.span(), format!("{what}: `{}` must be {names}", raw.get_ref()));
    }
    found
}

fn routes(
    raw: &[file::Route],
    default_other: route::OtherCredentials,
    upstreams: &mut Vec<Upstream>,
    check: &mut Check<'_>,
) -> Vec<route::Route> {
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for r in raw {
        let name = r.name.get_ref();
        if names.contains(&name.as_str()) {
            check.error(r.name.span(), format!("route `{name}` is defined twice"));
        }
        names.push(name);
        let methods = r
            .methods
            .iter()
            .filter_map(|m| {
                let valid = !m.get_ref().is_empty() && m.get_ref().bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(m.get_ref().as_bytes()) {
                    Ok(method) if valid => Some(method),
                    _ => {
                        check.error(
                            m.span(),
                            format!(
                                "route `{name}`: `{}` is not an uppercase HTTP method",
                                m.get_ref()
                            ),
                        );
                        None
                    }
                }
            })
            .collect();
        let scopes = r
            .scopes
            .iter()
            .filter_map(|s| {
                if crate::keys::is_valid_scope(s.get_ref()) {
                    Some(s.get_ref().clone())
                } else {
                    check.error(s.span(), format!("route `{name}`: scope `{}` must be 1-64 characters of a-z, 0-9, `_`, `-`, `.`, `:`", s.get_ref()));
                    None
                }
            })
            .collect();
        let upstream = match &r.upstream {
            None => 0,
            Some(u) => match check.upstream(u, &format!("route `{name}` upstream")) {
                Some(up) => upstreams.iter().position(|x| *x == up).unwrap_or_else(|| {
                    upstreams.push(up);
                    upstreams.len() - 1
                }),
                None => 0,
            },
        };
        let spec = route::Spec {
            name: name.clone(),
            methods,
            path: r.path.get_ref().clone(),
            scopes,
            org_param: r.org_param.as_ref().map(|o| o.get_ref().clone()),
            public: r.public,
            cost: r.cost,
            upstream,
            other_credentials: r
                .other_credentials
                .as_ref()
                .and_then(|o| other_credentials(o, &format!("route `{name}` other_credentials"), check))
                .unwrap_or(default_other),
            mcp: r.mcp,
            key_query_param: r.key_query_param.as_ref().and_then(|q| {
                let valid = !q.get_ref().is_empty()
                    && q.get_ref().len() <= 64
                    && q.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
                if !valid {
                    check.error(
                        q.span(),
                        format!("route `{name}` key_query_param: `{}` must be 1-64 characters of A-Z, a-z, 0-9, `_`, `-`, `.`", q.get_ref()),
                    );
                }
                valid.then(|| q.get_ref().clone())
            }),
        };
        match route::Route::compile(spec) {
            Ok(route) => out.push(route),
            Err(e) => check.error(r.path.span(), format!("route `{name}`: {e}")),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(k) => f.write_str(k),
            Self::Index(i) => write!(f, "{i}"),
        }
    }
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        // toml's span wrapper shows up as internal keys; they are not the user's.
        Path::Map { key, .. } if !key.starts_with("$__") => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

fn locate(table: &DeTable<'_>, path: &[Segment]) -> Option<std::ops::Range<usize>> {
    let (Segment::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let (key, mut value) = table.iter().find(|(k, _)| k.get_ref() == first)?;
    let mut span = key.span();
    for seg in rest {
        let next = match (seg, value.get_ref()) {
            (Segment::Key(name), DeValue::Table(t)) => {
                t.iter().find(|(k, _)| k.get_ref() == name).map(|(k, v)| {
                    span = k.span();
                    v
                })
            }
            (Segment::Index(i), DeValue::Array(a)) => a.get(*i).inspect(|v| span = v.span()),
            _ => None,
        };
        value = next?;
    }
    Some(span)
}
