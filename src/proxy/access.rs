//! The access log: one line per request on the `keygate::access` target, written
//! when the response head is known (body streaming time is not included). Fields
//! are bounded and carry no key material: the key id and org, never the key.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderValue, Method, Uri};

use crate::auth::AuthMethod;
use crate::auth::route::Route;
use crate::keys::CachedKey;

/// What one request came to.
pub(super) struct Line<'a> {
    pub method: Method,
    /// The request URI; its path is logged, never its query (which may carry
    /// secrets): only a key parameter's name, as `query_key` says. Borrowed on the
    /// fast path (a copy of a URI read from a buffer is an allocation).
    pub uri: Cow<'a, Uri>,
    pub route: &'a str,
    pub status: u16,
    pub code: &'a str,
    pub key: Option<&'a CachedKey>,
    pub request_id: &'a HeaderValue,
    pub decision: Duration,
    pub upstream: Option<Duration>,
    pub total: Duration,
    /// How a granted request was authenticated.
    pub auth: Option<AuthMethod>,
    /// The route's key query parameter when the request carried it: logged as
    /// `name=[redacted]`, its value never.
    pub query_key: Option<&'a str>,
    /// On MCP routes: the JSON-RPC method (`batch` for several messages).
    pub mcp_method: Option<String>,
    /// On MCP routes: the tool(s) called.
    pub mcp_tool: Option<String>,
}

/// The route's key query parameter, if `uri` carries it.
pub(super) fn query_key<'r>(route: &'r Route, uri: &Uri) -> Option<&'r str> {
    let name = route.key_query_param.as_deref()?;
    let query = uri.query()?;
    crate::auth::credential::query_values(query, name)
        .next()
        .map(|_| name)
}

struct Redacted<'a>(&'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=[redacted]", self.0)
    }
}

impl<'a> Line<'a> {
    /// A line for a request refused before any decision.
    pub(super) fn new(method: Method, uri: Cow<'a, Uri>, request_id: &'a HeaderValue) -> Self {
        Self {
            method,
            uri,
            route: "none",
            status: 0,
            code: "",
            key: None,
            request_id,
            decision: Duration::ZERO,
            upstream: None,
            total: Duration::ZERO,
            auth: None,
            query_key: None,
            mcp_method: None,
            mcp_tool: None,
        }
    }

    /// Writes the line at INFO (filter with `RUST_LOG=keygate::access=off`, or
    /// `[proxy] access_log = false`).
    pub(super) fn write(&self) {
        tracing::info!(
            target: "keygate::access",
            method = %self.method,
            path = self.uri.path(),
            query = self.query_key.map(|name| tracing::field::display(Redacted(name))),
            route = self.route,
            status = self.status,
            code = self.code,
            key_id = self.key.map(|k| tracing::field::display(k.id)),
            org = self.key.and_then(|k| k.org_id.as_deref()),
            auth = self.auth.map(AuthMethod::as_str),
            mcp_method = self.mcp_method.as_deref(),
            mcp_tool = self.mcp_tool.as_deref(),
            request_id = self.request_id.to_str().unwrap_or("-"),
            decision_us = micros(self.decision),
            upstream_us = self.upstream.map(micros),
            duration_us = micros(self.total),
            "request"
        );
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
