//! The admin API's one error renderer: the same `{"error":{"code","message",
//! "request_id"}}` body as the data plane, and extractors whose rejections use it.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::auth::{Rejection, StatusPolicy};
use crate::manage;

/// An admin API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 `not_found` (also for keys of another org: their existence is not revealed).
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such key")
    }

    /// 429 `too_many_failed_attempts`.
    pub fn too_many_failures(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failed_attempts",
            crate::proxy::respond::TOO_MANY_FAILURES,
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// A data-plane rejection, with the same status and code.
    pub fn rejected(r: &Rejection) -> Self {
        Self::new(r.status(&StatusPolicy::default()), r.code(), r.message())
    }

    /// 503 for a failed dependency; the cause goes to the log, not the client.
    pub fn unavailable(cause: &dyn std::error::Error) -> Self {
        tracing::warn!(error = %cause, source = ?cause.source(), "admin request failed on a dependency");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the admin store is unavailable; retry shortly",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<manage::Error> for ApiError {
    fn from(e: manage::Error) -> Self {
        match e {
            manage::Error::NotFound(_) => Self::not_found(),
            manage::Error::Invalid(m) => Self::invalid(m),
            manage::Error::Store(e) => Self::unavailable(&e),
            manage::Error::Random(e) => {
                tracing::error!(error = %e, "cannot generate a key");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the key could not be generated",
                )
            }
        }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        Self::unavailable(&e)
    }
}

tokio::task_local! {
    static REQUEST_ID: HeaderValue;
}

/// Middleware: every admin response carries the request's id (the client's
/// `X-Request-Id` when it sent a sane one, else a new one), and an error body
/// names the same id.
pub async fn with_request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = crate::proxy::headers::request_id(req.headers());
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    resp.headers_mut().insert("x-request-id", id);
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID
            .try_with(HeaderValue::clone)
            .unwrap_or_else(|_| crate::proxy::headers::request_id(&axum::http::HeaderMap::new()));
        let body = serde_json::json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "request_id": request_id.to_str().unwrap_or_default(),
            }
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert("x-request-id", request_id);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keygate-admin\""),
            );
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// `Json<T>` whose rejection is an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(|e: JsonRejection| ApiError::invalid(e.body_text()))?;
        from_object(value).map(Self)
    }
}

/// Reads a request body that must be a JSON object (serde would also read a struct
/// from an array, which the schema does not allow).
///
/// # Errors
/// 400 `invalid_request` for anything else, or fields that do not fit `T`.
pub fn from_object<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

/// `Query<T>` whose rejection is an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Self(v))
            .map_err(|e: QueryRejection| ApiError::invalid(e.body_text()))
    }
}

/// `Path<T>` whose rejection is an [`ApiError`] (a malformed id is simply not found).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|_: PathRejection| ApiError::not_found())
    }
}
