//! Why a request was refused: one variant per public error code, each with its status
//! and message declared here, next to it.

use std::net::IpAddr;

use http::StatusCode;

/// A refusal that is the client's outcome (as opposed to a failure of ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The path could be read differently by two HTTP stacks.
    InvalidPath,
    /// More than one credential in the request.
    AmbiguousCredentials,
    /// No `Authorization: Bearer` (or key header) credential.
    MissingApiKey {
        /// An `Authorization` header of another scheme (Basic, ...) was sent.
        other_scheme: bool,
    },
    /// A token with our prefix but the wrong shape or checksum, or a foreign token.
    MalformedApiKey {
        /// What is wrong with it (never the token itself).
        reason: String,
    },
    /// A JWT / OAuth token where an API key was expected.
    NotAnApiKey,
    /// A key of another environment.
    WrongEnvironment {
        /// The environment named in the key.
        found: String,
        /// The environment this deployment accepts.
        expected: String,
    },
    /// A well-formed key the store does not know.
    UnknownApiKey,
    /// The key was revoked.
    KeyRevoked,
    /// The key is paused.
    KeyPaused,
    /// The key is past its expiry.
    KeyExpired,
    /// The key lacks scopes the route requires.
    InsufficientScope {
        /// The scopes it lacks.
        missing: Vec<String>,
    },
    /// The key's organisation does not own the path.
    OrgMismatch,
    /// A per-key restriction forbids the request.
    KeyRestricted {
        /// Which restriction.
        reason: &'static str,
    },
    /// The key may not be used from the client's address.
    IpNotAllowed {
        /// The client address as keygate determined it (`None`: a trusted proxy
        /// reported something that is not an address).
        ip: Option<IpAddr>,
    },
    /// No route matches and unmatched paths are denied.
    RouteNotFound,
    /// The key's quota for this period is spent.
    QuotaExceeded {
        /// The period's limit.
        limit: u64,
        /// Whole seconds until the period resets.
        retry_after: u64,
    },
    /// The key's short-window rate limit is reached.
    RateLimited {
        /// Requests per window (the bucket's size).
        limit: u64,
        /// Whole seconds until a request would be admitted (at least 1).
        retry_after: u64,
    },
}

/// How configurable statuses are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusPolicy {
    /// Status for revoked keys (401 or 403).
    pub revoked: StatusCode,
}

impl Default for StatusPolicy {
    fn default() -> Self {
        Self {
            revoked: StatusCode::UNAUTHORIZED,
        }
    }
}

impl Rejection {
    /// The stable snake_case code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPath => "invalid_path",
            Self::AmbiguousCredentials => "ambiguous_credentials",
            Self::MissingApiKey { .. } => "missing_api_key",
            Self::MalformedApiKey { .. } => "malformed_api_key",
            Self::NotAnApiKey => "not_an_api_key",
            Self::WrongEnvironment { .. } => "wrong_environment",
            Self::UnknownApiKey => "unknown_api_key",
            Self::KeyRevoked => "key_revoked",
            Self::KeyPaused => "key_paused",
            Self::KeyExpired => "key_expired",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::OrgMismatch => "org_mismatch",
            Self::KeyRestricted { .. } => "key_restricted",
            Self::IpNotAllowed { .. } => "ip_not_allowed",
            Self::RouteNotFound => "route_not_found",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    /// The HTTP status under `policy`.
    pub fn status(&self, policy: &StatusPolicy) -> StatusCode {
        match self {
            Self::InvalidPath | Self::AmbiguousCredentials => StatusCode::BAD_REQUEST,
            Self::MissingApiKey { .. }
            | Self::MalformedApiKey { .. }
            | Self::NotAnApiKey
            | Self::WrongEnvironment { .. }
            | Self::UnknownApiKey
            | Self::KeyPaused
            | Self::KeyExpired => StatusCode::UNAUTHORIZED,
            Self::KeyRevoked => policy.revoked,
            Self::InsufficientScope { .. }
            | Self::OrgMismatch
            | Self::KeyRestricted { .. }
            | Self::IpNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::QuotaExceeded { .. } | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Whether this is a failed attempt to authenticate: a credential was presented
    /// and is not a usable key (what a guesser or a leaked-then-revoked key produces).
    /// Missing keys and refusals of a valid key do not count.
    pub fn is_failed_authentication(&self) -> bool {
        matches!(
            self,
            Self::MalformedApiKey { .. }
                | Self::NotAnApiKey
                | Self::WrongEnvironment { .. }
                | Self::UnknownApiKey
                | Self::KeyRevoked
                | Self::KeyPaused
                | Self::KeyExpired
        )
    }

    /// A sentence for humans. Never contains key material.
    pub fn message(&self) -> String {
        match self {
            Self::InvalidPath => "the request path contains `.`/`..` or empty segments, a backslash, or an encoded `/`, `\\`, `.` or `%`".into(),
            Self::AmbiguousCredentials => "the request carries more than one credential; send exactly one API key".into(),
            Self::MissingApiKey { other_scheme: false } => "no API key; send `Authorization: Bearer <key>`".into(),
            Self::MissingApiKey { other_scheme: true } => "the Authorization header does not use the Bearer scheme; send `Authorization: Bearer <key>`".into(),
            Self::MalformedApiKey { reason } => format!("malformed API key: {reason}"),
            Self::NotAnApiKey => "this looks like an OAuth/JWT token; send an API key".into(),
            Self::WrongEnvironment { found, expected } => format!("this key belongs to the `{found}` environment; this deployment accepts `{expected}` keys"),
            Self::UnknownApiKey => "unknown API key".into(),
            Self::KeyRevoked => "this API key has been revoked".into(),
            Self::KeyPaused => "this API key is paused".into(),
            Self::KeyExpired => "this API key has expired".into(),
            Self::InsufficientScope { missing } => format!("this API key lacks the scope(s): {}", missing.join(", ")),
            Self::OrgMismatch => "this API key belongs to another organisation".into(),
            Self::KeyRestricted { reason } => format!("this API key is restricted: {reason}"),
            Self::IpNotAllowed { ip: Some(ip) } => format!("this API key may not be used from {ip}"),
            Self::IpNotAllowed { ip: None } => {
                "this API key may not be used from an address keygate could not determine".into()
            }
            Self::RouteNotFound => "no route matches this method and path".into(),
            Self::QuotaExceeded { limit, retry_after } => format!("the quota of {limit} requests for this period is used up; it resets in {retry_after} s"),
            Self::RateLimited { retry_after, .. } => format!("too many requests with this API key; retry in {retry_after} s"),
        }
    }
}

/// A failure of a dependency while deciding (not the client's fault).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The admin store could not be asked.
    #[error("the admin store is unavailable")]
    Store(#[source] crate::store::Error),
    /// The shared quota counters could not be asked and the policy is `deny`.
    #[error("the quota counters are unavailable")]
    Quota(#[source] crate::cache::redis::Error),
}

/// The outcome of a refused decision.
#[derive(Debug)]
pub enum Denial {
    /// Refused: the client's request or key is at fault.
    Rejected(Rejection),
    /// Could not decide: a dependency failed; answered 503, never 401.
    Unavailable(Failure),
}

impl From<Rejection> for Denial {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<Rejection> {
        vec![
            Rejection::InvalidPath,
            Rejection::AmbiguousCredentials,
            Rejection::MissingApiKey { other_scheme: false },
            Rejection::MalformedApiKey { reason: "x".into() },
            Rejection::NotAnApiKey,
            Rejection::WrongEnvironment {
                found: "test".into(),
                expected: "live".into(),
            },
            Rejection::UnknownApiKey,
            Rejection::KeyRevoked,
            Rejection::KeyPaused,
            Rejection::KeyExpired,
            Rejection::InsufficientScope {
                missing: vec!["write".into()],
            },
            Rejection::OrgMismatch,
            Rejection::KeyRestricted { reason: "read-only" },
            Rejection::IpNotAllowed {
                ip: Some(IpAddr::from([192, 0, 2, 1])),
            },
            Rejection::RouteNotFound,
            Rejection::QuotaExceeded {
                limit: 1,
                retry_after: 1,
            },
            Rejection::RateLimited {
                limit: 1,
                retry_after: 1,
            },
        ]
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let codes: Vec<_> = every_variant().iter().map(Rejection::code).collect();
        let mut unique = codes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        for code in codes {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
    }

    #[test]
    fn revoked_status_follows_the_policy() {
        let forbidden = StatusPolicy {
            revoked: StatusCode::FORBIDDEN,
        };
        assert_eq!(
            Rejection::KeyRevoked.status(&StatusPolicy::default()),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(Rejection::KeyRevoked.status(&forbidden), StatusCode::FORBIDDEN);
        for r in every_variant() {
            assert!(r.status(&forbidden).is_client_error(), "{}", r.code());
        }
    }
}
