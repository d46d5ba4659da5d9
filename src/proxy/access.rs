//! The access log: one line per request on the `keygate::access` target, written
//! when the response head is known (body streaming time is not included). Fields
//! are bounded and carry no key material: the key id and org, never the key.

use std::time::Duration;

use http::{HeaderValue, Method, Uri};

use crate::keys::KeyRecord;

/// What one request came to.
pub(super) struct Line<'a> {
    pub method: Method,
    /// The request URI; its path is logged, never its query (which may carry secrets).
    pub uri: Uri,
    pub route: &'a str,
    pub status: u16,
    pub code: &'a str,
    pub key: Option<&'a KeyRecord>,
    pub request_id: &'a HeaderValue,
    pub decision: Duration,
    pub upstream: Option<Duration>,
    pub total: Duration,
}

impl<'a> Line<'a> {
    /// A line for a request refused before any decision.
    pub(super) fn new(method: Method, uri: Uri, request_id: &'a HeaderValue) -> Self {
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
        }
    }

    /// Writes the line at INFO (filter with `RUST_LOG=keygate::access=off`, or
    /// `[proxy] access_log = false`).
    pub(super) fn write(&self) {
        tracing::info!(
            target: "keygate::access",
            method = %self.method,
            path = self.uri.path(),
            route = self.route,
            status = self.status,
            code = self.code,
            key_id = self.key.map(|k| tracing::field::display(k.id)),
            org = self.key.and_then(|k| k.org_id.as_deref()),
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
