//! One renderer for every refusal on the data plane: status, JSON body
//! `{"error":{"code","message","request_id"}}` and the headers that go with it.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::forward;
use super::headers::insert_rate_limit;
use crate::auth::{Denial, Failure, Rejection, StatusPolicy};

/// The outcome code of a refused decision (as in its body and in metrics).
pub fn code(denial: &Denial) -> &'static str {
    match denial {
        Denial::Rejected(r) => r.code(),
        Denial::Unavailable(Failure::Store(_)) => "auth_unavailable",
        Denial::Unavailable(Failure::Quota(_)) => "quota_unavailable",
    }
}

/// The outcome code of a failed forward.
pub fn upstream_code(e: &forward::Error) -> &'static str {
    match e {
        forward::Error::Timeout(_) => "upstream_timeout",
        forward::Error::Connect(_)
        | forward::Error::Http(_)
        | forward::Error::Io(_)
        | forward::Error::Protocol(_) => "upstream_unavailable",
    }
}

/// The response for a refused decision.
pub fn denial(denial: &Denial, request_id: &HeaderValue, policy: &StatusPolicy) -> Response<Full<Bytes>> {
    match denial {
        Denial::Rejected(r) => rejection(r, request_id, policy),
        Denial::Unavailable(Failure::Store(e)) => {
            tracing::warn!(error = %e, source = ?std::error::Error::source(e), "admin store unavailable; answering 503");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                code(denial),
                "the key could not be checked right now; retry shortly",
                request_id,
            )
        }
        Denial::Unavailable(Failure::Quota(e)) => {
            tracing::warn!(error = %e, "quota counters unavailable and on_redis_error = \"deny\"; answering 503");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                code(denial),
                "the quota could not be checked right now; retry shortly",
                request_id,
            )
        }
    }
}

/// The response for a rejection.
pub fn rejection(r: &Rejection, request_id: &HeaderValue, policy: &StatusPolicy) -> Response<Full<Bytes>> {
    let status = r.status(policy);
    let mut resp = error(status, r.code(), &r.message(), request_id);
    let h = resp.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        let challenge = match r {
            Rejection::MissingApiKey { .. } => "Bearer realm=\"keygate\"",
            _ => "Bearer realm=\"keygate\", error=\"invalid_token\"",
        };
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    if let Rejection::QuotaExceeded { limit, retry_after } | Rejection::RateLimited { limit, retry_after } = r
    {
        h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        insert_rate_limit(h, *limit, 0, *retry_after);
    }
    resp
}

/// The message of 429 `too_many_failed_attempts`, on the data plane and the admin API.
pub const TOO_MANY_FAILURES: &str = "too many failed authentication attempts from this address; retry later";

/// 429 `too_many_failed_attempts`: the client's address failed to authenticate too
/// often this minute (`[proxy] max_failed_auth_per_minute`).
pub fn too_many_failures(retry_after: u64, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failed_attempts",
        TOO_MANY_FAILURES,
        request_id,
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// The response for a failed forward.
pub fn upstream(e: &forward::Error, request_id: &HeaderValue) -> Response<Full<Bytes>> {
    tracing::warn!(error = %e, source = ?std::error::Error::source(e), "upstream request failed");
    match e {
        forward::Error::Timeout(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            upstream_code(e),
            "the upstream did not answer in time",
            request_id,
        ),
        forward::Error::Connect(_)
        | forward::Error::Http(_)
        | forward::Error::Io(_)
        | forward::Error::Protocol(_) => error(
            StatusCode::BAD_GATEWAY,
            upstream_code(e),
            "the upstream could not be reached",
            request_id,
        ),
    }
}

/// 502 `upstream_unavailable` for a route whose upstream is not configured.
pub fn no_upstream(request_id: &HeaderValue) -> Response<Full<Bytes>> {
    error(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "no upstream configured",
        request_id,
    )
}

/// A JSON error response.
pub fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &HeaderValue,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-request-id", request_id.clone());
    resp
}
