//! The admin listener: the REST API under `/v1` (admin keys only), the console at
//! `/console`, `/openapi.json`, and the ops endpoints `/healthz`, `/readyz` and
//! `/metrics`.
//!
//! It manages keys through `manage` (audit log, cache invalidation) and reads usage
//! from `quota`; it knows nothing of the data plane's sockets.

pub mod auth;
pub mod error;
pub mod keys;
pub mod leaks;
pub mod openapi;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use utoipa::OpenApi as _;

use crate::auth::credential;
use crate::auth::failures::Failures;
use crate::auth::verify::Verifier;
use crate::cache::redis::Redis;
use crate::clock::SharedClock;
use crate::manage;
use crate::quota::Counters;
use crate::store::Store;

/// Admin settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Failed authentications allowed per client IP per minute (0 = unlimited).
    pub max_failed_auth_per_minute: u32,
}

/// What the handlers share.
#[derive(Clone)]
pub struct State(Arc<Inner>);

/// The parts behind [`State`].
pub struct Inner {
    /// Key management (audit-logged, invalidating).
    pub keys: manage::Keys,
    /// Verifies admin keys (same caches as the data plane).
    pub verifier: Arc<Verifier>,
    /// Where keys come from and what they look like.
    pub credentials: credential::Settings,
    /// Quota counters, for usage.
    pub counters: Arc<Counters>,
    /// The store (audit log, readiness).
    pub store: Store,
    /// Redis, for readiness.
    pub redis: Option<Arc<Redis>>,
    /// Time.
    pub clock: SharedClock,
    /// Failed authentication attempts per IP.
    pub failures: Failures,
    /// Failures allowed per IP per minute (0 = unlimited).
    pub max_failed_auth: u32,
    /// Metrics, for `/metrics`.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// What a leak report does to its key.
    pub on_leak: manage::OnLeak,
    /// GitHub's secret scanning keys; `None` = reports are off.
    pub github_keys: Option<leaks::GithubKeys>,
}

impl std::ops::Deref for State {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl State {
    /// Shared state over `inner`.
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}

/// The admin router.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route(
            "/v1/keys/{id}",
            get(keys::show).patch(keys::update).delete(keys::revoke),
        )
        .route("/v1/keys/{id}/pause", post(keys::pause))
        .route("/v1/keys/{id}/resume", post(keys::resume))
        .route("/v1/keys/{id}/rotate", post(keys::rotate))
        .route("/v1/keys/{id}/usage", get(keys::usage))
        .route("/v1/audit", get(keys::audit))
        .route("/v1/secret-scanning/github", post(leaks::github))
        .route("/openapi.json", get(openapi_json))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/console", get(console_page))
        .route("/console/", get(console_page))
        .route("/console/console.js", get(console_js))
        .route("/console/console.css", get(console_css))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(error::with_request_id))
        .with_state(state)
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn openapi_json() -> Response {
    let doc = openapi::ApiDoc::openapi();
    axum::Json(doc).into_response()
}

async fn metrics(axum::extract::State(state): axum::extract::State<State>) -> Response {
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Ready when the store answers (and Redis, when configured).
async fn readyz(axum::extract::State(state): axum::extract::State<State>) -> Response {
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await,
        Ok(Ok(()))
    );
    let redis = state.redis.as_ref().map(|r| r.is_up());
    let ready = store_ok && redis != Some(false);
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "redis": match redis { None => "not_configured", Some(true) => "ok", Some(false) => "unreachable" },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The console only talks to this origin; no inline scripts, no framing.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

async fn console_page() -> Response {
    asset(CONSOLE_HTML, "text/html; charset=utf-8")
}

async fn console_js() -> Response {
    asset(CONSOLE_JS, "text/javascript; charset=utf-8")
}

async fn console_css() -> Response {
    asset(CONSOLE_CSS, "text/css; charset=utf-8")
}

/// Serves the admin router on `listener` until `stop` changes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: State,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
