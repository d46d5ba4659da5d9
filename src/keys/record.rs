//! The stored key record and its status at a point in time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::secret::KeyHash;

/// Who a key belongs to: a person, or an organisation as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Owner {
    /// A personal key of one user.
    User(String),
    /// A key owned by an organisation.
    Org(String),
}

impl Owner {
    /// `user:<id>` or `org:<id>`, as forwarded upstream and accepted by the CLI.
    pub fn to_tag(&self) -> String {
        match self {
            Self::User(id) => format!("user:{id}"),
            Self::Org(id) => format!("org:{id}"),
        }
    }

    /// Parses `user:<id>` or `org:<id>`.
    pub fn parse(tag: &str) -> Option<Self> {
        match tag.split_once(':') {
            Some((_, id)) if id.is_empty() || id.contains('\0') => None,
            Some(("user", id)) => Some(Self::User(id.to_owned())),
            Some(("org", id)) => Some(Self::Org(id.to_owned())),
            _ => None,
        }
    }
}

/// Limits a key carries beyond its scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restrictions {
    /// Only safe methods (GET, HEAD, OPTIONS) are allowed.
    #[serde(default)]
    pub read_only: bool,
    /// When non-empty, only these route names are allowed.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// A key as the admin store keeps it. Never holds the plaintext. (De)serialised for
/// the L2 cache without its hash, which is the cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Stable id (UUID v4).
    pub id: Uuid,
    /// The organisation the key is bound to, if any.
    pub org_id: Option<String>,
    /// Who the key belongs to.
    pub owner: Owner,
    /// Human label.
    pub name: String,
    /// Prefix safe to display (`kg_live_8f760b49`).
    pub display_prefix: String,
    /// SHA-256 of the key.
    #[serde(skip, default)]
    pub hash: KeyHash,
    /// Environment the key was issued for.
    pub environment: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Further limits.
    pub restrictions: Restrictions,
    /// Quota limit overriding the configured default.
    pub quota_limit: Option<u64>,
    /// Free-form metadata.
    pub metadata: serde_json::Value,
    /// Who created the key.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (written in batches, so up to a flush interval behind).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Temporarily disabled.
    pub paused: bool,
    /// When it was revoked (irreversible).
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key's state at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Usable.
    Active,
    /// Paused; resume makes it usable again.
    Paused,
    /// Past its expiry.
    Expired,
    /// Revoked for good.
    Revoked,
}

impl Status {
    /// The lowercase name used in listings and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "paused" => Some(Self::Paused),
            "expired" => Some(Self::Expired),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl KeyRecord {
    /// The key's status at `now`; revocation wins over pause, pause over expiry.
    pub fn status(&self, now: DateTime<Utc>) -> Status {
        if self.revoked_at.is_some_and(|at| at <= now) {
            Status::Revoked
        } else if self.paused {
            Status::Paused
        } else if self.expires_at.is_some_and(|at| at <= now) {
            Status::Expired
        } else {
            Status::Active
        }
    }

    /// Whether the key holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}
