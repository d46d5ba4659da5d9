//! The decision: may this request through, and as whom? One pure pipeline used by
//! every mode (reverse proxy, forward-auth), one phase per line, one file per phase:
//!
//! 1. [`route`]: match method + path (and refuse ambiguous paths);
//! 2. [`credential`]: extract the key and check it offline;
//! 3. [`verify`]: L1 → store, and the key's status;
//! 4. [`authorize`]: scopes, org binding, restrictions (read-only, routes, client IP);
//! 5. rate limit: the key's short-window bucket ([`crate::quota::rate`]);
//! 6. quota: charge the key's budget ([`crate::quota`]).
//!
//! The result is a [`Grant`], the only proof of authorization `proxy` accepts. This
//! module does no I/O of its own beyond the lookups; it knows nothing of sockets.

pub mod authorize;
pub mod credential;
pub mod failures;
pub mod rejection;
pub mod route;
pub mod verify;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

pub use rejection::{Denial, Failure, Rejection, StatusPolicy};

use crate::clock::SharedClock;
use crate::keys::{CachedKey, Rate};
use crate::quota::rate::Limiter;
use crate::quota::{self, Counters, Usage};
use route::Route;
use verify::Verifier;

/// What the decision needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The route table.
    pub routes: route::Table,
    /// Where keys come from and what they look like.
    pub credentials: credential::Settings,
    /// Configurable statuses.
    pub status: StatusPolicy,
    /// The rate limit of keys without their own (`[rate_limit] per_key`); `None` = off.
    pub rate_limit: Option<Rate>,
}

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Raw path (no query).
    pub path: &'a str,
    /// Raw query, if any (read only on routes with `key_query_param`).
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The client's address: the socket peer, or what a trusted proxy reported;
    /// `None` when a trusted proxy reported something that is not an address.
    pub client: Option<IpAddr>,
}

/// Proof that a request may be forwarded.
#[derive(Debug)]
pub struct Grant<'a> {
    /// The matched route.
    pub route: &'a Route,
    /// The authenticated key, absent on public routes.
    pub key: Option<Arc<CachedKey>>,
    /// Where the key stands after this request: its quota, or its rate limit when
    /// that is the tighter of the two (what the `RateLimit-*` headers describe).
    pub usage: Option<Usage>,
    /// How the request was let through.
    pub auth: AuthMethod,
}

/// How a granted request was authenticated (`X-Keygate-Auth-Method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A keygate key: `api_key`; the credential is stripped before forwarding.
    ApiKey,
    /// A public route: `none`; credentials are stripped as on any keygate route.
    Public,
    /// No keygate-shaped key on an `other_credentials = "pass"` route: `none`; the
    /// request's own credentials reach the API untouched.
    Passed,
}

impl AuthMethod {
    /// The `X-Keygate-Auth-Method` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Public | Self::Passed => "none",
        }
    }
}

/// Runs the pipeline. The settings are an argument of [`Decider::decide`], not a
/// field: a reload swaps them, and each request decides under the snapshot it read
/// at its start.
pub struct Decider {
    verifier: Arc<Verifier>,
    quota: Arc<Counters>,
    rate: Arc<Limiter>,
    clock: SharedClock,
}

impl Decider {
    /// A decider over the given parts.
    pub fn new(
        verifier: Arc<Verifier>,
        quota: Arc<Counters>,
        rate: Arc<Limiter>,
        clock: SharedClock,
    ) -> Self {
        Self {
            verifier,
            quota,
            rate,
            clock,
        }
    }

    /// Decides `req` under `settings`.
    ///
    /// # Errors
    /// A [`Refusal`]: [`Denial::Rejected`] with the precise refusal, or
    /// [`Denial::Unavailable`] when a dependency failed and the key could not be judged.
    pub async fn decide<'s>(
        &self,
        settings: &'s Settings,
        req: RequestHead<'_>,
    ) -> Result<Grant<'s>, Refusal<'s>> {
        let matched = settings.routes.match_request(req.method, req.path)?; // 1 route
        let route = matched.route;
        if route.public {
            return Ok(Grant {
                route,
                key: None,
                usage: None,
                auth: AuthMethod::Public,
            });
        }
        let refuse = |denial: Denial| Refusal::on(route, None, denial);
        let query = route
            .key_query_param
            .as_deref()
            .map(|name| (req.query.unwrap_or(""), name));
        let presented = match credential::present(req.headers, query, &settings.credentials) {
            credential::Presented::Key(key) => key,
            credential::Presented::Other(_) if route.other_credentials == route::OtherCredentials::Pass => {
                return Ok(Grant {
                    route,
                    key: None,
                    usage: None,
                    auth: AuthMethod::Passed,
                });
            }
            credential::Presented::Other(r) | credential::Presented::Refused(r) => {
                return Err(refuse(r.into()));
            }
        }; // 2 extract
        let now = self.clock.now();
        let key = self.verifier.find(&presented, now).await.map_err(refuse)?; // 3 verify: the record
        let refuse = |denial: Denial| Refusal::on(route, Some(&key), denial);
        verify::check_status(&key, presented.environment(), now).map_err(|r| refuse(r.into()))?; // 3 verify: its status
        authorize::check(&key, &matched, req.method, req.client).map_err(|r| refuse(r.into()))?; // 4 authorize
        let rate = match key.restrictions.rate_limit.or(settings.rate_limit) {
            // The clock again: `now` was read before a cache miss's store lookup, and
            // a Redis lease must not be spent after it expired.
            Some(rate) => Some(
                self.rate
                    .admit(key.id, rate, self.clock.now().timestamp_micros())
                    .await
                    .map_err(|l| refuse(rate_denial(l)))?,
            ),
            None => None,
        }; // 5 rate limit
        // An MCP route charges per JSON-RPC message once the body is read (`charge`).
        let cost = if route.mcp { 0 } else { route.cost };
        let usage = self
            .quota
            .charge(&key, cost, now)
            .await
            .map_err(|e| refuse(quota_denial(e, now)))?; // 6 quota
        Ok(Grant {
            route,
            key: Some(key),
            usage: Some(tighter(usage, rate, now)),
            auth: AuthMethod::ApiKey,
        })
    }
}

impl Decider {
    /// Charges `cost` more units to `key` after the decision (an MCP route's
    /// messages).
    ///
    /// # Errors
    /// `quota_exceeded`, or [`Denial::Unavailable`] when Redis is unreachable and
    /// the policy is `deny`.
    pub async fn charge(&self, key: &CachedKey, cost: u64) -> Result<Usage, Denial> {
        let now = self.clock.now();
        self.quota
            .charge(key, cost, now)
            .await
            .map_err(|e| quota_denial(e, now))
    }
}

fn rate_denial(limited: quota::rate::Limited) -> Denial {
    let retry_after = u64::try_from(limited.retry_after)
        .unwrap_or_default()
        .div_ceil(1_000_000);
    Denial::Rejected(Rejection::RateLimited {
        limit: limited.limit,
        retry_after: retry_after.max(1),
    })
}

/// The quota standing, or the rate limit's when fewer requests are left under it.
fn tighter(usage: Usage, rate: Option<quota::rate::Admitted>, now: chrono::DateTime<chrono::Utc>) -> Usage {
    match rate {
        Some(r) if r.remaining < usage.remaining => Usage {
            limit: r.limit,
            remaining: r.remaining,
            reset_at: now + chrono::Duration::microseconds(r.reset),
        },
        _ => usage,
    }
}

fn quota_denial(e: quota::Error, now: chrono::DateTime<chrono::Utc>) -> Denial {
    match e {
        quota::Error::Exceeded { limit, reset_at } => {
            let retry_after = quota::seconds_until(reset_at, now).max(1);
            Denial::Rejected(Rejection::QuotaExceeded { limit, retry_after })
        }
        quota::Error::Unavailable(e) => Denial::Unavailable(Failure::Quota(e)),
    }
}

/// A refused request, with what the decision had learnt by then (for the access log
/// and metrics: the route once matched, the key once found).
#[derive(Debug)]
pub struct Refusal<'s> {
    /// Why.
    pub denial: Denial,
    /// The matched route, if matching got that far.
    pub route: Option<&'s Route>,
    /// The presented key's record, if it was found.
    pub key: Option<Arc<CachedKey>>,
}

impl<'s> Refusal<'s> {
    fn on(route: &'s Route, key: Option<&Arc<CachedKey>>, denial: Denial) -> Self {
        Self {
            denial,
            route: Some(route),
            key: key.cloned(),
        }
    }
}

impl From<Rejection> for Refusal<'_> {
    fn from(rejection: Rejection) -> Self {
        Self {
            denial: rejection.into(),
            route: None,
            key: None,
        }
    }
}
