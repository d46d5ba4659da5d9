//! Key lifecycle operations shared by the CLI and the running server: create, update,
//! pause, resume, revoke, rotate. Each writes the store (which audit-logs it with the
//! actor) and evicts this process's cache, so the change holds from the next request.
//! With Redis it also drops the key from L2 and announces the change on the
//! invalidation channel; every other process also learns it from the store's own
//! change feed (`cache::invalidation`).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::cache::L1;
use crate::cache::redis::Redis;
use crate::clock::SharedClock;
use crate::keys::{ApiKey, Format, KeyHash, KeyRecord, Owner, Restrictions};
use crate::store::{self, Actor, ListQuery, Page, Patch, Store};

/// What a new key should be.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Human label.
    pub name: String,
    /// Organisation binding.
    pub org_id: Option<String>,
    /// Owner; defaults to the org, else the actor as a user.
    pub owner: Option<Owner>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Environment; defaults to the deployment's.
    pub environment: Option<String>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Quota override.
    pub quota_limit: Option<u64>,
    /// Restrictions.
    pub restrictions: Restrictions,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
}

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// No key with that id.
    #[error("no key with id {0}")]
    NotFound(Uuid),
    /// The request itself is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The OS random source failed.
    #[error(transparent)]
    Random(#[from] crate::keys::secret::RandomError),
}

/// The instant a key must not have been used since to be idle for `idle` at `now`;
/// the Unix epoch when that is further back than the calendar reaches (no key is
/// that idle). `None` when `idle` is too long to be a chrono duration at all.
pub fn idle_since(now: DateTime<Utc>, idle: std::time::Duration) -> Option<DateTime<Utc>> {
    let idle = Duration::from_std(idle).ok()?;
    Some(
        now.checked_sub_signed(idle)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
    )
}

/// What a leak report does to its key (`[hygiene] on_leak`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnLeak {
    /// Pause it: reversible once it has been rotated out of the leak.
    #[default]
    Pause,
    /// Revoke it for good.
    Revoke,
}

/// How a leak report ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakOutcome {
    /// The key was paused.
    Paused,
    /// The key was revoked.
    Revoked,
    /// The key had been revoked already; nothing changed.
    AlreadyRevoked,
    /// Not a key of this deployment (prefix, shape or checksum): a false positive.
    NotAKey,
    /// A well-formed key that no record matches.
    Unknown,
}

impl LeakOutcome {
    /// `paused`, `revoked`, `already_revoked`, `not_a_key` or `unknown_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Revoked => "revoked",
            Self::AlreadyRevoked => "already_revoked",
            Self::NotAKey => "not_a_key",
            Self::Unknown => "unknown_key",
        }
    }

    /// Whether the report named a real key of this deployment.
    pub fn is_true_positive(self) -> bool {
        matches!(self, Self::Paused | Self::Revoked | Self::AlreadyRevoked)
    }

    /// `true_positive` or `false_positive`, as secret scanning services label tokens.
    pub fn label(self) -> &'static str {
        if self.is_true_positive() {
            "true_positive"
        } else {
            "false_positive"
        }
    }
}

/// Key management over one store.
#[derive(Clone)]
pub struct Keys {
    store: Store,
    format: Format,
    clock: SharedClock,
    l1: Option<Arc<L1>>,
    redis: Option<Arc<Redis>>,
}

impl Keys {
    /// Management over `store`; `l1` is this process's cache, if it serves traffic;
    /// `redis` carries invalidations to other replicas, if configured.
    pub fn new(
        store: Store,
        format: Format,
        clock: SharedClock,
        l1: Option<Arc<L1>>,
        redis: Option<Arc<Redis>>,
    ) -> Self {
        Self {
            store,
            format,
            clock,
            l1,
            redis,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a key; the returned plaintext exists nowhere else.
    ///
    /// # Errors
    /// Invalid input, the random source, or the store.
    pub async fn create(&self, new: NewKey, actor: &Actor) -> Result<(ApiKey, KeyRecord), Error> {
        validate_new(&new)?;
        let environment = new
            .environment
            .clone()
            .unwrap_or_else(|| self.format.environment().to_owned());
        if !crate::keys::format::is_valid_name(&environment, false) {
            return Err(Error::Invalid(format!(
                "environment `{environment}` must be a-z and 0-9"
            )));
        }
        let key = ApiKey::generate(&self.format, &environment)?;
        let owner = new.owner.clone().unwrap_or_else(|| match &new.org_id {
            Some(org) => Owner::Org(org.clone()),
            None => Owner::User(actor.name.clone()),
        });
        let record = KeyRecord {
            id: Uuid::new_v4(),
            org_id: new.org_id,
            owner,
            name: new.name,
            display_prefix: self.format.display_prefix(key.expose()),
            hash: key.hash(),
            environment,
            scopes: new.scopes,
            restrictions: Arc::new(new.restrictions),
            quota_limit: new.quota_limit,
            metadata: new.metadata.unwrap_or_else(|| serde_json::json!({})),
            created_by: actor.name.clone(),
            created_at: self.clock.now(),
            last_used_at: None,
            expires_at: new.expires_at,
            paused: false,
            revoked_at: None,
        };
        self.store.create(&record, actor).await?;
        Ok((key, record))
    }

    /// The key with `id`.
    ///
    /// # Errors
    /// Not found, or the store.
    pub async fn get(&self, id: Uuid) -> Result<KeyRecord, Error> {
        self.store.get(id).await?.ok_or(Error::NotFound(id))
    }

    /// A page of keys.
    ///
    /// # Errors
    /// The store.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        if [&query.org, &query.search]
            .into_iter()
            .flatten()
            .any(|s| s.contains('\0'))
        {
            return Err(Error::Invalid(
                "org and search must not contain NUL characters".into(),
            ));
        }
        Ok(self.store.list(query, self.clock.now()).await?)
    }

    /// Changes name, scopes, restrictions, quota, expiry or metadata.
    ///
    /// # Errors
    /// Invalid scopes, not found, or the store.
    pub async fn update(&self, id: Uuid, patch: &Patch, actor: &Actor) -> Result<KeyRecord, Error> {
        if let Some(scopes) = &patch.scopes {
            validate_scopes(scopes)?;
        }
        if let Some(name) = &patch.name {
            validate_name(name)?;
        }
        if let Some(metadata) = &patch.metadata {
            validate_metadata(metadata)?;
        }
        if let Some(mcp) = &patch.mcp {
            validate_mcp(mcp)?;
        }
        let record = self.store.update(id, patch, actor).await?;
        self.evicted(id, record).await
    }

    /// Pauses a key (reversible).
    ///
    /// # Errors
    /// Not found, or the store.
    pub async fn pause(&self, id: Uuid, actor: &Actor) -> Result<KeyRecord, Error> {
        let record = self
            .store
            .set_paused(id, true, actor, serde_json::json!({}))
            .await?;
        self.evicted(id, record).await
    }

    /// Resumes a paused key.
    ///
    /// # Errors
    /// Not found, or the store.
    pub async fn resume(&self, id: Uuid, actor: &Actor) -> Result<KeyRecord, Error> {
        let record = self
            .store
            .set_paused(id, false, actor, serde_json::json!({}))
            .await?;
        self.evicted(id, record).await
    }

    /// Revokes a key now (irreversible; revoking again changes nothing).
    ///
    /// # Errors
    /// Not found, or the store.
    pub async fn revoke(&self, id: Uuid, actor: &Actor) -> Result<KeyRecord, Error> {
        let record = self
            .store
            .revoke(id, self.clock.now(), actor, serde_json::json!({}))
            .await?;
        self.evicted(id, record).await
    }

    /// Pauses every active key unused for `idle` (by last use, or creation when
    /// never used), as of now; each pause is audited with the actor `system` and
    /// `{"reason": "idle", ...}`. Returns the paused keys.
    ///
    /// # Errors
    /// The store; keys paused before the failure stay paused.
    pub async fn pause_idle(&self, idle: std::time::Duration) -> Result<Vec<KeyRecord>, Error> {
        let now = self.clock.now();
        let idle_since = idle_since(now, idle).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let query = ListQuery {
            status: Some(crate::keys::Status::Active),
            idle_since: Some(idle_since),
            page: 1,
            limit: 500,
            ..ListQuery::default()
        };
        let mut paused = Vec::new();
        let mut skipped = std::collections::HashSet::new();
        loop {
            let page = self.store.list(&query, now).await?;
            let fresh: Vec<KeyRecord> = page
                .items
                .into_iter()
                .filter(|k| !skipped.contains(&k.id))
                .collect();
            if fresh.is_empty() {
                return Ok(paused);
            }
            for key in fresh {
                let detail = serde_json::json!({
                    "reason": "idle",
                    "idle_since": idle_since,
                    "last_used_at": key.last_used_at,
                });
                match self
                    .store
                    .pause_if_idle(key.id, idle_since, now, &Actor::system(), detail)
                    .await?
                {
                    Some(record) => paused.push(self.evicted(key.id, Some(record)).await?),
                    // Used or paused meanwhile (another replica's sweep): left alone.
                    None => {
                        skipped.insert(key.id);
                    }
                }
            }
        }
    }

    /// Quarantines a key reported as found in the open: pauses or revokes it as
    /// `on_leak` says, with `{"reason": "leak", "source": ...}` in the audit entry.
    /// A string that is not a key of this deployment's prefix, or fails its
    /// checksum, is a false positive and changes nothing; so does a well-formed key
    /// no record matches. A key of another environment is still quarantined.
    ///
    /// # Errors
    /// The store.
    pub async fn report_leak(
        &self,
        token: &str,
        on_leak: OnLeak,
        source: Option<&str>,
        actor: &Actor,
    ) -> Result<(LeakOutcome, Option<KeyRecord>), Error> {
        let token = token.trim();
        match self.format.parse(token) {
            Ok(_) | Err(crate::keys::format::Error::WrongEnvironment { .. }) => {}
            Err(_) => return Ok((LeakOutcome::NotAKey, None)),
        }
        let Some(found) = self.store.find_by_hash(&KeyHash::of(token)).await? else {
            return Ok((LeakOutcome::Unknown, None));
        };
        let now = self.clock.now();
        if found.revoked_at.is_some_and(|at| at <= now) {
            return Ok((LeakOutcome::AlreadyRevoked, Some(found)));
        }
        let detail = serde_json::json!({"reason": "leak", "source": source});
        let (outcome, record) = match on_leak {
            OnLeak::Pause => (
                LeakOutcome::Paused,
                self.store.set_paused(found.id, true, actor, detail).await?,
            ),
            OnLeak::Revoke => (
                LeakOutcome::Revoked,
                self.store.revoke(found.id, now, actor, detail).await?,
            ),
        };
        let record = self.evicted(found.id, record).await?;
        tracing::warn!(
            key_id = %record.id,
            outcome = outcome.as_str(),
            source = source.unwrap_or("-"),
            "key reported as leaked"
        );
        Ok((outcome, Some(record)))
    }

    /// Issues a successor with the same attributes and revokes the old key after
    /// `overlap` (zero = now). Returns the new plaintext and record.
    ///
    /// # Errors
    /// Not found, already revoked, or the store.
    pub async fn rotate(
        &self,
        id: Uuid,
        overlap: Duration,
        actor: &Actor,
    ) -> Result<(ApiKey, KeyRecord), Error> {
        let old = self.get(id).await?;
        let now = self.clock.now();
        if old.revoked_at.is_some_and(|at| at <= now) {
            return Err(Error::Invalid(format!(
                "key {id} is revoked; a revoked key cannot be rotated"
            )));
        }
        let key = ApiKey::generate(&self.format, &old.environment)?;
        let new = KeyRecord {
            id: Uuid::new_v4(),
            display_prefix: self.format.display_prefix(key.expose()),
            hash: key.hash(),
            created_by: actor.name.clone(),
            created_at: now,
            last_used_at: None,
            paused: false,
            revoked_at: None,
            ..old.clone()
        };
        let revoke_at = now + overlap.max(Duration::zero());
        let record = self
            .store
            .rotate(id, &new, revoke_at, actor)
            .await?
            .ok_or(Error::NotFound(id))?;
        // The old key changed (it now has a revocation time): every cache must forget it.
        self.evicted(id, Some(old)).await?;
        Ok((key, record))
    }

    async fn evicted(&self, id: Uuid, record: Option<KeyRecord>) -> Result<KeyRecord, Error> {
        if let Some(l1) = &self.l1 {
            match &record {
                Some(record) => l1.evict(&record.hash),
                None => l1.evict_id(id),
            }
        }
        let record = record.ok_or(Error::NotFound(id))?;
        if let Some(redis) = &self.redis
            && let Err(e) = redis.invalidate(id, &record.hash).await
        {
            tracing::warn!(error = %e, key_id = %id, "cannot announce the change in redis; replicas learn it from the store");
        }
        Ok(record)
    }
}

fn validate_new(new: &NewKey) -> Result<(), Error> {
    validate_name(&new.name)?;
    if let Some(org) = &new.org_id
        && (org.is_empty() || org.chars().count() > 200 || org.contains(['/', '\0']))
    {
        return Err(Error::Invalid("org ids are 1-200 characters without `/`".into()));
    }
    if let Some(metadata) = &new.metadata {
        validate_metadata(metadata)?;
    }
    validate_mcp(&new.restrictions.mcp)?;
    validate_scopes(&new.scopes)
}

/// At most 100 tool patterns, each [`crate::keys::record::is_valid_tool_pattern`].
fn validate_mcp(mcp: &crate::keys::McpPolicy) -> Result<(), Error> {
    if mcp.tools.len() > 100 {
        return Err(Error::Invalid(
            "an MCP tool allowlist holds at most 100 entries".into(),
        ));
    }
    match mcp
        .tools
        .iter()
        .find(|t| !crate::keys::record::is_valid_tool_pattern(t))
    {
        Some(bad) => Err(Error::Invalid(format!(
            "MCP tool `{bad}` must be 1-128 characters of A-Z, a-z, 0-9, `_`, `-`, `.`, `/`, `:` and `*`"
        ))),
        None => Ok(()),
    }
}

fn validate_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.contains('\0') {
        return Err(Error::Invalid("a key needs a name of 1-200 characters".into()));
    }
    Ok(())
}

/// Metadata must be a JSON object (any size up to the request limit; every store
/// keeps it as written).
fn validate_metadata(metadata: &serde_json::Value) -> Result<(), Error> {
    if metadata.is_object() {
        Ok(())
    } else {
        Err(Error::Invalid("metadata must be a JSON object".into()))
    }
}

fn validate_scopes(scopes: &[String]) -> Result<(), Error> {
    match scopes.iter().find(|s| !crate::keys::is_valid_scope(s)) {
        Some(bad) => Err(Error::Invalid(format!(
            "scope `{bad}` must be 1-64 characters of a-z, 0-9, `_`, `-`, `.`, `:`"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_be_an_object() {
        assert!(validate_metadata(&serde_json::json!({"n": 1.7976931348623157e308, "s": "a\0b"})).is_ok());
        assert!(validate_metadata(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(validate_name(&"€".repeat(200)).is_ok());
        assert!(validate_name(&"€".repeat(201)).is_err());
        assert!(validate_name("  ").is_err());
        assert!(validate_name("a\0b").is_err());
    }
}
