//! The SQLite admin store (embedded default): WAL mode, so a CLI in another process
//! can change keys while `keygate serve` runs.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use uuid::Uuid;

use super::{
    Actor, AuditEntry, AuditPage, Change, Error, ListQuery, Page, Patch, UsageRow, format_ts, parse_ts,
    to_i64,
};
use crate::keys::{KeyHash, KeyRecord, Owner, Status};

const COLUMNS: &str = "id, org_id, owner_type, owner_id, name, display_prefix, key_hash, \
    environment, scopes, restrictions, quota_limit, metadata, created_by, created_at, \
    last_used_at, expires_at, paused, revoked_at";

/// The most changes one read of the change feed returns.
const CHANGES_PER_READ: i64 = 1000;

mod feed;

/// A pool of connections to one SQLite file.
#[derive(Debug, Clone)]
pub struct Sqlite {
    pool: SqlitePool,
    /// The file's write-ahead log, which every commit writes (`None` in memory).
    wal: Option<PathBuf>,
    /// Reads of the change feed so far (tests hold an idle poll to none).
    feed_reads: Arc<AtomicU64>,
    /// Polls of the change feed so far (tests hold a quiet feed to none).
    feed_polls: Arc<AtomicU64>,
}

impl Sqlite {
    pub(super) async fn open(url: &str) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            // SQLite's page cache is per connection (2 MiB each by default). keygate's
            // hot data lives in L1, so the store is read on cache misses and by the
            // admin API; the OS page cache keeps the file warm either way.
            .pragma("cache_size", "-512");
        // An in-memory database exists per connection, so it gets exactly one.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let max = if in_memory { 1 } else { 4 };
        let file = options.get_filename().to_owned();
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        // SQLite names the log after the file a symbolic link leads to; a path
        // that cannot be resolved leaves no log to look at (every poll reads).
        let wal = if in_memory {
            None
        } else {
            std::fs::canonicalize(&file).ok().map(|file| {
                let mut path = file.into_os_string();
                path.push("-wal");
                PathBuf::from(path)
            })
        };
        Ok(Self {
            pool,
            wal,
            feed_reads: Arc::default(),
            feed_polls: Arc::default(),
        })
    }

    pub(super) async fn create(&self, r: &KeyRecord, actor: &Actor) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        insert(&mut tx, r).await?;
        audit(&mut tx, actor, "create", r, serde_json::json!({"name": r.name})).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, Error> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM keys WHERE key_hash = $1"));
        let row = sqlx::query(sql)
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    pub(super) async fn get(&self, id: Uuid) -> Result<Option<KeyRecord>, Error> {
        get(&self.pool, id).await
    }

    pub(super) async fn list(&self, q: &ListQuery, now: DateTime<Utc>) -> Result<Page, Error> {
        // One static statement; absent filters are NULL and match everything.
        const FILTER: &str = "WHERE ($1 IS NULL OR org_id = $1) \
            AND ($2 IS NULL OR name LIKE $2 ESCAPE '\\' OR display_prefix LIKE $2 ESCAPE '\\') \
            AND ($3 IS NULL OR (CASE \
                WHEN revoked_at IS NOT NULL AND revoked_at <= $4 THEN 'revoked' \
                WHEN paused <> 0 THEN 'paused' \
                WHEN expires_at IS NOT NULL AND expires_at <= $4 THEN 'expired' \
                ELSE 'active' END) = $3) \
            AND ($5 IS NULL OR COALESCE(last_used_at, created_at) < $5)";
        let search = q.search.as_ref().map(|s| super::like_pattern(s));
        let status = q.status.map(Status::as_str);
        let now = format_ts(now);
        let idle_since = q.idle_since.map(format_ts);
        let limit = q.limit.clamp(1, 1000);
        let page = q.page.max(1);
        let total: i64 = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM keys {FILTER}")))
            .bind(&q.org)
            .bind(&search)
            .bind(status)
            .bind(&now)
            .bind(&idle_since)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let sql =
            format!("SELECT {COLUMNS} FROM keys {FILTER} ORDER BY created_at DESC, id LIMIT $6 OFFSET $7");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&q.org)
            .bind(&search)
            .bind(status)
            .bind(&now)
            .bind(&idle_since)
            .bind(i64::from(limit))
            .bind(i64::from(page - 1) * i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(Page {
            items: rows.iter().map(decode).collect::<Result<_, _>>()?,
            total: u64::try_from(total).unwrap_or_default(),
            page,
            limit,
        })
    }

    pub(super) async fn update(
        &self,
        id: Uuid,
        patch: &Patch,
        actor: &Actor,
    ) -> Result<Option<KeyRecord>, Error> {
        let mut tx = self.pool.begin().await?;
        let Some(mut record) = get(&mut *tx, id).await? else {
            return Ok(None);
        };
        patch.apply(&mut record);
        sqlx::query(
            "UPDATE keys SET name = $2, scopes = $3, restrictions = $4, quota_limit = $5, \
             expires_at = $6, metadata = $7 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(&record.name)
        .bind(json(&record.scopes))
        .bind(json(&record.restrictions))
        .bind(record.quota_limit.map(to_i64))
        .bind(record.expires_at.map(format_ts))
        .bind(record.metadata.to_string())
        .execute(&mut *tx)
        .await?;
        audit(&mut tx, actor, "update", &record, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    pub(super) async fn set_paused(
        &self,
        id: Uuid,
        paused: bool,
        actor: &Actor,
        detail: serde_json::Value,
    ) -> Result<Option<KeyRecord>, Error> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE keys SET paused = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(paused)
            .execute(&mut *tx)
            .await?;
        let action = if paused { "pause" } else { "resume" };
        audited(tx, done.rows_affected(), id, actor, action, detail).await
    }

    pub(super) async fn pause_if_idle(
        &self,
        id: Uuid,
        idle_since: DateTime<Utc>,
        now: DateTime<Utc>,
        actor: &Actor,
        detail: serde_json::Value,
    ) -> Result<Option<KeyRecord>, Error> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE keys SET paused = 1 WHERE id = $1 AND paused = 0 \
             AND (revoked_at IS NULL OR revoked_at > $3) AND (expires_at IS NULL OR expires_at > $3) \
             AND COALESCE(last_used_at, created_at) < $2",
        )
        .bind(id.to_string())
        .bind(format_ts(idle_since))
        .bind(format_ts(now))
        .execute(&mut *tx)
        .await?;
        audited(tx, done.rows_affected(), id, actor, "pause", detail).await
    }

    pub(super) async fn revoke(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        actor: &Actor,
        detail: serde_json::Value,
    ) -> Result<Option<KeyRecord>, Error> {
        let mut tx = self.pool.begin().await?;
        let record = revoke(&mut tx, id, at).await?;
        if let Some(r) = &record {
            audit(&mut tx, actor, "revoke", r, detail).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    pub(super) async fn rotate(
        &self,
        old_id: Uuid,
        new: &KeyRecord,
        revoke_at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<KeyRecord>, Error> {
        let mut tx = self.pool.begin().await?;
        let Some(old) = revoke(&mut tx, old_id, revoke_at).await? else {
            return Ok(None);
        };
        insert(&mut tx, new).await?;
        let detail = serde_json::json!({"new_id": new.id, "old_revoked_at": format_ts(revoke_at)});
        audit(&mut tx, actor, "rotate", &old, detail).await?;
        tx.commit().await?;
        Ok(Some(new.clone()))
    }

    pub(super) async fn usage(&self, key_id: Uuid, period_start: i64) -> Result<u64, Error> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT used FROM quota_usage WHERE key_id = $1 AND period_start = $2")
                .bind(key_id.to_string())
                .bind(period_start)
                .fetch_optional(&self.pool)
                .await?;
        Ok(used.map_or(0, |u| u64::try_from(u).unwrap_or_default()))
    }

    pub(super) async fn flush(
        &self,
        usage: &[UsageRow],
        last_used: &[(Uuid, DateTime<Utc>)],
    ) -> Result<(), Error> {
        // One statement per table, the rows as a JSON array: a statement per row costs
        // a round trip to SQLite's worker thread each (docs/performance.md).
        let usage: Vec<_> = usage
            .iter()
            .map(|row| (row.key_id.to_string(), row.period_start, to_i64(row.used)))
            .collect();
        let last_used: Vec<_> = last_used
            .iter()
            .map(|(id, at)| (id.to_string(), format_ts(*at)))
            .collect();
        let mut tx = self.pool.begin().await?;
        if !usage.is_empty() {
            // One writer per SQLite store owns the count, so the larger value is the truth.
            sqlx::query(
                "INSERT INTO quota_usage (key_id, period_start, used) \
                 SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each($1) WHERE true \
                 ON CONFLICT (key_id, period_start) DO UPDATE SET used = MAX(used, excluded.used)",
            )
            .bind(sqlx::types::Json(&usage))
            .execute(&mut *tx)
            .await?;
        }
        if !last_used.is_empty() {
            sqlx::query(
                "UPDATE keys SET last_used_at = u.value ->> 1 FROM json_each($1) AS u \
                 WHERE keys.id = u.value ->> 0 \
                 AND (keys.last_used_at IS NULL OR keys.last_used_at < u.value ->> 1)",
            )
            .bind(sqlx::types::Json(&last_used))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn changes_since(&self, seq: i64) -> Result<Vec<Change>, Error> {
        let rows = sqlx::query(
            "SELECT seq, key_id FROM audit_log WHERE seq > $1 AND action <> 'create' ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(CHANGES_PER_READ)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let key_id: Option<String> = row.try_get("key_id")?;
                Ok(Change {
                    seq: row.try_get("seq")?,
                    key_id: key_id.as_deref().map(parse_uuid).transpose()?,
                })
            })
            .collect()
    }

    pub(super) async fn last_change(&self) -> Result<i64, Error> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log")
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    pub(super) async fn audit(&self, org: Option<&str>, page: u32, limit: u32) -> Result<AuditPage, Error> {
        let limit = limit.clamp(1, 1000);
        let page = page.max(1);
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE ($1 IS NULL OR org_id = $1)")
                .bind(org)
                .fetch_one(&self.pool)
                .await?;
        let rows = sqlx::query(
            "SELECT seq, at, actor, actor_key_id, action, key_id, org_id, client_ip, auth_method, detail \
             FROM audit_log WHERE ($1 IS NULL OR org_id = $1) ORDER BY seq DESC LIMIT $2 OFFSET $3",
        )
        .bind(org)
        .bind(i64::from(limit))
        .bind(i64::from(page - 1) * i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(|row| {
                let opt_uuid = |name: &str| -> Result<Option<Uuid>, Error> {
                    row.try_get::<Option<String>, _>(name)?
                        .as_deref()
                        .map(parse_uuid)
                        .transpose()
                };
                Ok(AuditEntry {
                    seq: row.try_get("seq")?,
                    at: parse_ts(&row.try_get::<String, _>("at")?)?,
                    actor: row.try_get("actor")?,
                    actor_key_id: opt_uuid("actor_key_id")?,
                    action: row.try_get("action")?,
                    key_id: opt_uuid("key_id")?,
                    org_id: row.try_get("org_id")?,
                    client_ip: row.try_get("client_ip")?,
                    auth_method: row.try_get("auth_method")?,
                    detail: from_json(&row.try_get::<String, _>("detail")?)?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(AuditPage {
            items,
            total: u64::try_from(total).unwrap_or_default(),
            page,
            limit,
        })
    }

    pub(super) async fn usage_history(&self, key_id: Uuid, limit: u32) -> Result<Vec<(i64, u64)>, Error> {
        let rows = sqlx::query(
            "SELECT period_start, used FROM quota_usage WHERE key_id = $1 ORDER BY period_start DESC LIMIT $2",
        )
        .bind(key_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("period_start")?,
                    u64::try_from(r.try_get::<i64, _>("used")?).unwrap_or_default(),
                ))
            })
            .collect()
    }

    pub(super) async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// After an update of key `id` that matched `affected` rows: its record and an audit
/// entry for `action`, committed; `None` (nothing written) when it matched none.
async fn audited(
    mut tx: Tx,
    affected: u64,
    id: Uuid,
    actor: &Actor,
    action: &str,
    detail: serde_json::Value,
) -> Result<Option<KeyRecord>, Error> {
    if affected == 0 {
        return Ok(None);
    }
    let record = get(&mut *tx, id).await?;
    if let Some(r) = &record {
        audit(&mut tx, actor, action, r, detail).await?;
    }
    tx.commit().await?;
    Ok(record)
}

async fn get<'e, E>(executor: E, id: Uuid) -> Result<Option<KeyRecord>, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM keys WHERE id = $1"));
    let row = sqlx::query(sql)
        .bind(id.to_string())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(decode).transpose()
}

async fn insert(tx: &mut Tx, r: &KeyRecord) -> Result<(), Error> {
    let (owner_type, owner_id) = match &r.owner {
        Owner::User(id) => ("user", id),
        Owner::Org(id) => ("org", id),
    };
    let sql = sqlx::AssertSqlSafe(format!(
        "INSERT INTO keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
    ));
    sqlx::query(sql)
        .bind(r.id.to_string())
        .bind(&r.org_id)
        .bind(owner_type)
        .bind(owner_id)
        .bind(&r.name)
        .bind(&r.display_prefix)
        .bind(r.hash.to_hex())
        .bind(&r.environment)
        .bind(json(&r.scopes))
        .bind(json(&r.restrictions))
        .bind(r.quota_limit.map(to_i64))
        .bind(r.metadata.to_string())
        .bind(&r.created_by)
        .bind(format_ts(r.created_at))
        .bind(r.last_used_at.map(format_ts))
        .bind(r.expires_at.map(format_ts))
        .bind(r.paused)
        .bind(r.revoked_at.map(format_ts))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn revoke(tx: &mut Tx, id: Uuid, at: DateTime<Utc>) -> Result<Option<KeyRecord>, Error> {
    sqlx::query("UPDATE keys SET revoked_at = $2 WHERE id = $1 AND (revoked_at IS NULL OR revoked_at > $2)")
        .bind(id.to_string())
        .bind(format_ts(at))
        .execute(&mut **tx)
        .await?;
    get(&mut **tx, id).await
}

async fn audit(
    tx: &mut Tx,
    actor: &Actor,
    action: &str,
    target: &KeyRecord,
    detail: serde_json::Value,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, key_id, detail, actor_key_id, client_ip, auth_method, org_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(format_ts(Utc::now()))
    .bind(&actor.name)
    .bind(action)
    .bind(target.id.to_string())
    .bind(detail.to_string())
    .bind(actor.key_id.map(|id| id.to_string()))
    .bind(&actor.client_ip)
    .bind(actor.auth_method)
    .bind(&target.org_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn decode(row: &SqliteRow) -> Result<KeyRecord, Error> {
    let text = |name: &str| -> Result<String, Error> { Ok(row.try_get::<String, _>(name)?) };
    let opt_ts = |name: &str| -> Result<Option<DateTime<Utc>>, Error> {
        row.try_get::<Option<String>, _>(name)?
            .as_deref()
            .map(parse_ts)
            .transpose()
    };
    let owner_id = text("owner_id")?;
    let owner = match text("owner_type")?.as_str() {
        "user" => Owner::User(owner_id),
        _ => Owner::Org(owner_id),
    };
    let hash = text("key_hash")?;
    Ok(KeyRecord {
        id: parse_uuid(&text("id")?)?,
        org_id: row.try_get("org_id")?,
        owner,
        name: text("name")?,
        display_prefix: text("display_prefix")?,
        hash: KeyHash::from_hex(&hash).ok_or_else(|| Error::Corrupt("bad key hash".into()))?,
        environment: text("environment")?,
        scopes: from_json(&text("scopes")?)?,
        restrictions: from_json(&text("restrictions")?)?,
        quota_limit: row
            .try_get::<Option<i64>, _>("quota_limit")?
            .map(|q| u64::try_from(q).unwrap_or_default()),
        metadata: from_json(&text("metadata")?)?,
        created_by: text("created_by")?,
        created_at: parse_ts(&text("created_at")?)?,
        last_used_at: opt_ts("last_used_at")?,
        expires_at: opt_ts("expires_at")?,
        paused: row.try_get("paused")?,
        revoked_at: opt_ts("revoked_at")?,
    })
}

fn parse_uuid(s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s).map_err(|_| Error::Corrupt(format!("bad uuid `{s}`")))
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, Error> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("bad JSON column: {e}")))
}
