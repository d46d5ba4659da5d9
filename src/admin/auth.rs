//! Admin authentication: a keygate key with the `admin` scope, checked through the
//! same credential parsing and verifier as the data plane. Failed attempts are
//! limited per client IP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::State;
use super::error::ApiError;
use crate::auth::{Denial, Rejection, credential};
use crate::keys::{CachedKey, KeyRecord};
use crate::store::Actor;

/// An authenticated admin: its key and the actor written to the audit log.
pub struct Admin {
    /// The admin key, as the key cache holds it.
    pub key: Arc<CachedKey>,
    /// Who is acting.
    pub actor: Actor,
}

impl Admin {
    /// The org this admin is confined to (`None`: a platform admin).
    pub fn org(&self) -> Option<&str> {
        self.key.org_id.as_deref()
    }

    /// Whether this admin may see and manage `record`.
    pub fn may_manage(&self, record: &KeyRecord) -> bool {
        self.org().is_none_or(|org| record.org_id.as_deref() == Some(org))
    }
}

impl FromRequestParts<State> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, ApiError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        let now = state.clock.now();
        let now_ms = now.timestamp_millis();
        if let Some(retry_after) = state.failures.blocked(ip, state.max_failed_auth, now_ms) {
            return Err(ApiError::too_many_failures(retry_after));
        }
        let fail = |e: ApiError| {
            if matches!(e.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                state.failures.record(ip, now_ms);
            }
            e
        };
        let presented = credential::extract(&parts.headers, &state.credentials)
            .map_err(|r| fail(ApiError::rejected(&r)))?;
        let key = state
            .verifier
            .verify(&presented, now)
            .await
            .map_err(|d| match d {
                Denial::Rejected(r) => fail(ApiError::rejected(&r)),
                Denial::Unavailable(f) => ApiError::unavailable(&f),
            })?;
        if !key.has_scope("admin") {
            return Err(fail(ApiError::rejected(&Rejection::InsufficientScope {
                missing: vec!["admin".into()],
            })));
        }
        let actor = Actor::admin_key(&key, Some(ip.to_string()));
        Ok(Self { key, actor })
    }
}
