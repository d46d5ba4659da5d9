//! The admin store: the source of truth for keys, quota usage and the audit log.
//!
//! One type, [`Store`], chosen by URL: SQLite (`sqlite://`, the embedded default) or
//! PostgreSQL (`postgres://`, production). The store knows records and rows, not HTTP
//! or caches. Every mutation writes an audit row with its actor, and running proxies
//! learn about it through [`Store::watch`]: SQLite by polling the audit log, PostgreSQL
//! by `LISTEN`/`NOTIFY`.

mod postgres;
mod sqlite;

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::keys::{KeyRecord, Restrictions};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no supported store.
    #[error("unsupported store URL `{0}` (expected sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
    /// The database refused or could not be reached.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The runtime running the call shut down.
    #[error("the store call was interrupted by shutdown")]
    Interrupted,
    /// A row could not be decoded.
    #[error("corrupt row in the store: {0}")]
    Corrupt(String),
}

/// Filters for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only keys of this org.
    pub org: Option<String>,
    /// Substring of the name or display prefix.
    pub search: Option<String>,
    /// Only keys in this status (`active`, `paused`, `expired`, `revoked`).
    pub status: Option<crate::keys::Status>,
    /// Only keys not used since this instant (by last use, or creation when never
    /// used); last use is written in batches, so up to a flush interval behind.
    pub idle_since: Option<DateTime<Utc>>,
    /// 1-based page.
    pub page: u32,
    /// Page size.
    pub limit: u32,
}

/// One page of keys.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The keys on this page, newest first.
    pub items: Vec<KeyRecord>,
    /// Keys matching the filters, on all pages.
    pub total: u64,
    /// This page (1-based).
    pub page: u32,
    /// Page size.
    pub limit: u32,
}

/// Changes to a key's mutable fields; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    /// New name.
    pub name: Option<String>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New read-only flag and route allowlist (the other fields of `Restrictions`
    /// are ignored here: the IP allowlist and rate limit have their own fields, so
    /// changing one restriction never widens another).
    pub restrictions: Option<Restrictions>,
    /// New IP allowlist (empty = any address).
    pub allowed_ips: Option<Vec<ipnet::IpNet>>,
    /// New rate limit (`Some(None)` = back to `[rate_limit] per_key`).
    pub rate_limit: Option<Option<crate::keys::Rate>>,
    /// New MCP policy (replaces the whole policy).
    pub mcp: Option<crate::keys::McpPolicy>,
    /// New quota override (`Some(None)` clears it).
    pub quota_limit: Option<Option<u64>>,
    /// New expiry (`Some(None)` clears it).
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// New metadata.
    pub metadata: Option<serde_json::Value>,
}

impl Patch {
    /// Applies the patch to `record`.
    pub fn apply(&self, record: &mut KeyRecord) {
        if let Some(v) = &self.name {
            record.name.clone_from(v);
        }
        if let Some(v) = &self.scopes {
            record.scopes.clone_from(v);
        }
        let restrictions = std::sync::Arc::make_mut(&mut record.restrictions);
        if let Some(v) = &self.restrictions {
            restrictions.read_only = v.read_only;
            restrictions.routes.clone_from(&v.routes);
        }
        if let Some(v) = &self.allowed_ips {
            restrictions.allowed_ips.clone_from(v);
        }
        if let Some(v) = self.rate_limit {
            restrictions.rate_limit = v;
        }
        if let Some(v) = &self.mcp {
            restrictions.mcp.clone_from(v);
        }
        if let Some(v) = self.quota_limit {
            record.quota_limit = v;
        }
        if let Some(v) = self.expires_at {
            record.expires_at = v;
        }
        if let Some(v) = &self.metadata {
            record.metadata.clone_from(v);
        }
    }
}

/// Charged units of one key in one quota period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRow {
    /// The key.
    pub key_id: Uuid,
    /// Start of the period (unix seconds).
    pub period_start: i64,
    /// Units charged in the period so far.
    pub used: u64,
}

/// Who made a change, from where and how; written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// A name: the CLI's `--actor` (or OS user), an admin key's name, or `system`.
    pub name: String,
    /// The admin key used, when the change came through the admin API.
    pub key_id: Option<Uuid>,
    /// The client's address, when the change came over the network.
    pub client_ip: Option<String>,
    /// `cli`, `admin_key` or `system`.
    pub auth_method: &'static str,
}

impl Actor {
    /// keygate itself (the idle-key sweep).
    pub fn system() -> Self {
        Self {
            name: "system".to_owned(),
            key_id: None,
            client_ip: None,
            auth_method: "system",
        }
    }

    /// Someone using the CLI on the store directly.
    pub fn cli(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            key_id: None,
            client_ip: None,
            auth_method: "cli",
        }
    }

    /// An admin key over the admin API; named after the key.
    pub fn admin_key(key: &crate::keys::CachedKey, client_ip: Option<String>) -> Self {
        Self {
            name: key.name.to_string(),
            key_id: Some(key.id),
            client_ip,
            auth_method: "admin_key",
        }
    }
}

impl From<&str> for Actor {
    fn from(name: &str) -> Self {
        Self::cli(name)
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Position in the log.
    pub seq: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who acted (see [`Actor::name`]).
    pub actor: String,
    /// The admin key that acted, if any.
    pub actor_key_id: Option<Uuid>,
    /// `create`, `update`, `pause`, `resume`, `revoke` or `rotate`.
    pub action: String,
    /// The key acted on.
    pub key_id: Option<Uuid>,
    /// That key's org.
    pub org_id: Option<String>,
    /// The client's address, for changes over the network.
    pub client_ip: Option<String>,
    /// `cli`, `admin_key` or `system`.
    pub auth_method: String,
    /// Details (e.g. the successor of a rotated key).
    pub detail: serde_json::Value,
}

/// One page of the audit log, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    /// Entries on this page.
    pub items: Vec<AuditEntry>,
    /// Entries matching, on all pages.
    pub total: u64,
    /// This page (1-based).
    pub page: u32,
    /// Page size.
    pub limit: u32,
}

/// A key change seen in the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Position in the feed.
    pub seq: i64,
    /// The key that changed.
    pub key_id: Option<Uuid>,
}

/// A change announced by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// This key changed.
    Changed(Uuid),
    /// Changes may have been missed (a lost connection): forget everything cached.
    Resync,
}

/// The admin store.
#[derive(Debug, Clone)]
pub enum Store {
    /// An SQLite file (embedded default).
    Sqlite(sqlite::Sqlite),
    /// A PostgreSQL database.
    Postgres(postgres::Postgres),
}

/// Whether `url` names a supported store.
pub fn is_supported_url(url: &str) -> bool {
    url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Store {
    /// Opens (and creates and migrates, if needed) the store at `url`.
    ///
    /// # Errors
    /// When the URL is unsupported, the database cannot be opened or migrations fail.
    pub async fn open(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            return Ok(Self::Sqlite(sqlite::Sqlite::open(url).await?));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(postgres::Postgres::open(url).await?));
        }
        Err(Error::UnsupportedUrl(url.to_owned()))
    }

    /// Inserts a new key.
    ///
    /// # Errors
    /// On database failure (including a duplicate hash).
    pub async fn create(&self, record: &KeyRecord, actor: &Actor) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.create(record, actor).await,
            Self::Postgres(s) => s.create(record, actor).await,
        }
    }

    /// The key with this hash, if any.
    ///
    /// # Errors
    /// On database failure.
    pub async fn find_by_hash(&self, hash: &crate::keys::KeyHash) -> Result<Option<KeyRecord>, Error> {
        match self {
            Self::Sqlite(s) => s.find_by_hash(hash).await,
            Self::Postgres(s) => s.find_by_hash(hash).await,
        }
    }

    /// The key with this id, if any.
    ///
    /// # Errors
    /// On database failure.
    pub async fn get(&self, id: Uuid) -> Result<Option<KeyRecord>, Error> {
        match self {
            Self::Sqlite(s) => s.get(id).await,
            Self::Postgres(s) => s.get(id).await,
        }
    }

    /// One page of keys matching `query`, newest first; statuses are judged at `now`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn list(&self, query: &ListQuery, now: DateTime<Utc>) -> Result<Page, Error> {
        match self {
            Self::Sqlite(s) => s.list(query, now).await,
            Self::Postgres(s) => s.list(query, now).await,
        }
    }

    /// Applies `patch` to a key; `None` when the key does not exist.
    ///
    /// # Errors
    /// On database failure.
    pub async fn update(&self, id: Uuid, patch: &Patch, actor: &Actor) -> Result<Option<KeyRecord>, Error> {
        match self {
            Self::Sqlite(s) => s.update(id, patch, actor).await,
            Self::Postgres(s) => s.update(id, patch, actor).await,
        }
    }

    /// Pauses or resumes a key, with `detail` in its audit entry (`{}` when there is
    /// nothing to add); `None` when the key does not exist.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_paused(
        &self,
        id: Uuid,
        paused: bool,
        actor: &Actor,
        detail: serde_json::Value,
    ) -> Result<Option<KeyRecord>, Error> {
        match self {
            Self::Sqlite(s) => s.set_paused(id, paused, actor, detail).await,
            Self::Postgres(s) => s.set_paused(id, paused, actor, detail).await,
        }
    }

    /// Pauses key `id` only if it is still active and still unused since
    /// `idle_since` (checked in the same statement, so a key used or paused
    /// meanwhile, e.g. by another replica's sweep, is left alone); `None` then.
    ///
    /// # Errors
    /// On database failure.
    pub async fn pause_if_idle(
        &self,
        id: Uuid,
        idle_since: DateTime<Utc>,
        now: DateTime<Utc>,
        actor: &Actor,
        detail: serde_json::Value,
    ) -> Result<Option<KeyRecord>, Error> {
        match self {
            Self::Sqlite(s) => s.pause_if_idle(id, idle_since, now, actor, detail).await,
            Self::Postgres(s) => s.pause_if_idle(id, idle_since, now, actor, detail).await,
        }
    }

    /// Revokes a key as of `at` (irreversible; an earlier revocation stands), with
    /// `detail` in its audit entry. `None` when the key does not exist.
    ///
    /// # Errors
    /// On database failure.
    pub async fn revoke(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        actor: &Actor,
        detail: serde_json::Value,
    ) -> Result<Option<KeyRecord>, Error> {
        match self {
            Self::Sqlite(s) => s.revoke(id, at, actor, detail).await,
            Self::Postgres(s) => s.revoke(id, at, actor, detail).await,
        }
    }

    /// Inserts `new` as the successor of `old_id` and revokes the old key as of
    /// `revoke_at`, in one transaction. `None` when the old key does not exist.
    ///
    /// # Errors
    /// On database failure.
    pub async fn rotate(
        &self,
        old_id: Uuid,
        new: &KeyRecord,
        revoke_at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<KeyRecord>, Error> {
        match self {
            Self::Sqlite(s) => s.rotate(old_id, new, revoke_at, actor).await,
            Self::Postgres(s) => s.rotate(old_id, new, revoke_at, actor).await,
        }
    }

    /// Units charged to a key in the period starting at `period_start`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn usage(&self, key_id: Uuid, period_start: i64) -> Result<u64, Error> {
        match self {
            Self::Sqlite(s) => s.usage(key_id, period_start).await,
            Self::Postgres(s) => s.usage(key_id, period_start).await,
        }
    }

    /// Audit entries, newest first; only those about keys of `org` when given.
    ///
    /// # Errors
    /// On database failure.
    pub async fn audit(&self, org: Option<&str>, page: u32, limit: u32) -> Result<AuditPage, Error> {
        match self {
            Self::Sqlite(s) => s.audit(org, page, limit).await,
            Self::Postgres(s) => s.audit(org, page, limit).await,
        }
    }

    /// The stored usage of a key's most recent `limit` periods, newest first, as
    /// `(period_start unix seconds, used)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn usage_history(&self, key_id: Uuid, limit: u32) -> Result<Vec<(i64, u64)>, Error> {
        match self {
            Self::Sqlite(s) => s.usage_history(key_id, limit).await,
            Self::Postgres(s) => s.usage_history(key_id, limit).await,
        }
    }

    /// Writes a batch of usage counts and last-used times in one transaction.
    ///
    /// # Errors
    /// On database failure.
    pub async fn flush(&self, usage: &[UsageRow], last_used: &[(Uuid, DateTime<Utc>)]) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.flush(usage, last_used).await,
            Self::Postgres(s) => s.flush(usage, last_used).await,
        }
    }

    /// Key changes after `seq`, oldest first (at most 1,000); creations are left out,
    /// since a new key has nothing to invalidate.
    ///
    /// # Errors
    /// On database failure.
    pub async fn changes_since(&self, seq: i64) -> Result<Vec<Change>, Error> {
        match self {
            Self::Sqlite(s) => s.changes_since(seq).await,
            Self::Postgres(s) => s.changes_since(seq).await,
        }
    }

    /// The newest position in the change feed (0 when empty).
    ///
    /// # Errors
    /// On database failure.
    pub async fn last_change(&self) -> Result<i64, Error> {
        match self {
            Self::Sqlite(s) => s.last_change().await,
            Self::Postgres(s) => s.last_change().await,
        }
    }

    /// Checks that the store answers.
    ///
    /// # Errors
    /// On database failure.
    pub async fn ping(&self) -> Result<(), Error> {
        match self {
            Self::Sqlite(s) => s.ping().await,
            Self::Postgres(s) => s.ping().await,
        }
    }

    /// Follows key changes made by any process until `stop` changes, sending them on
    /// the returned channel. SQLite polls the audit log every `poll`; PostgreSQL
    /// listens for `NOTIFY` (and sends [`Notice::Resync`] after a lost connection).
    pub fn watch(&self, poll: Duration, stop: watch::Receiver<bool>) -> mpsc::Receiver<Notice> {
        let (tx, rx) = mpsc::channel(1024);
        match self.clone() {
            Self::Sqlite(s) => {
                tokio::spawn(s.watch(poll, tx, stop));
            }
            Self::Postgres(s) => {
                tokio::spawn(s.watch(tx, stop));
            }
        }
        rx
    }

    /// Closes all connections.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }
}

/// A `LIKE` pattern matching `s` anywhere, with `\\`, `%` and `_` escaped.
pub(crate) fn like_pattern(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Formats a timestamp as fixed-width UTC text (sorts as text).
pub(crate) fn format_ts(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses [`format_ts`] output.
pub(crate) fn parse_ts(s: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Error::Corrupt(format!("bad timestamp `{s}`")))
}

/// Runs a store call on the control runtime, which owns the database connections;
/// the data-plane cores never drive database I/O themselves.
///
/// # Errors
/// The call's own error, or [`Error::Interrupted`] when the control runtime is gone.
pub async fn run_on<T: Send + 'static>(
    control: &tokio::runtime::Handle,
    call: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    control.spawn(call).await.map_err(|_| Error::Interrupted)?
}
