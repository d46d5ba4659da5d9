//! The PostgreSQL admin store (production): native types, and every change announced
//! with `NOTIFY keygate_key_changes` inside its own transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{Actor, AuditEntry, AuditPage, Change, Error, ListQuery, Notice, Page, Patch, UsageRow};
use crate::keys::{KeyHash, KeyRecord, Owner, Status};

const COLUMNS: &str = "id, org_id, owner_type, owner_id, name, display_prefix, key_hash, \
    environment, scopes, restrictions::text AS restrictions, quota_limit, metadata::text AS metadata, \
    created_by, created_at, last_used_at, expires_at, paused, revoked_at";

const INSERT: &str = "INSERT INTO keys (id, org_id, owner_type, owner_id, name, display_prefix, key_hash, \
    environment, scopes, restrictions, quota_limit, metadata, created_by, created_at, last_used_at, \
    expires_at, paused, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::json, $11, \
    $12::json, $13, $14, $15, $16, $17, $18)";

/// The channel every key change is announced on (payload: the key id).
pub const CHANNEL: &str = "keygate_key_changes";

/// A pool of connections to one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct Postgres {
    pool: PgPool,
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

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

impl Postgres {
    pub(super) async fn open(url: &str) -> Result<Self, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(1))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
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
        const FILTER: &str = "WHERE ($1::text IS NULL OR org_id = $1) \
            AND ($2::text IS NULL OR name ILIKE $2 OR display_prefix ILIKE $2) \
            AND ($3::text IS NULL OR (CASE \
                WHEN revoked_at IS NOT NULL AND revoked_at <= $4 THEN 'revoked' \
                WHEN paused THEN 'paused' \
                WHEN expires_at IS NOT NULL AND expires_at <= $4 THEN 'expired' \
                ELSE 'active' END) = $3) \
            AND ($5::timestamptz IS NULL OR COALESCE(last_used_at, created_at) < $5)";
        let search = q.search.as_ref().map(|s| super::like_pattern(s));
        let status = q.status.map(Status::as_str);
        let limit = q.limit.clamp(1, 1000);
        let page = q.page.max(1);
        let total: i64 = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM keys {FILTER}")))
            .bind(&q.org)
            .bind(&search)
            .bind(status)
            .bind(now)
            .bind(q.idle_since)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let sql =
            format!("SELECT {COLUMNS} FROM keys {FILTER} ORDER BY created_at DESC, id LIMIT $6 OFFSET $7");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&q.org)
            .bind(&search)
            .bind(status)
            .bind(now)
            .bind(q.idle_since)
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
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM keys WHERE id = $1 FOR UPDATE"));
        let Some(row) = sqlx::query(sql).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let mut record = decode(&row)?;
        patch.apply(&mut record);
        sqlx::query(
            "UPDATE keys SET name = $2, scopes = $3, restrictions = $4::json, quota_limit = $5, \
             expires_at = $6, metadata = $7::json WHERE id = $1",
        )
        .bind(id)
        .bind(&record.name)
        .bind(&record.scopes)
        .bind(json(&record.restrictions))
        .bind(record.quota_limit.map(super::to_i64))
        .bind(record.expires_at)
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
            .bind(id)
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
            "UPDATE keys SET paused = true WHERE id = $1 AND NOT paused \
             AND (revoked_at IS NULL OR revoked_at > $3) AND (expires_at IS NULL OR expires_at > $3) \
             AND COALESCE(last_used_at, created_at) < $2",
        )
        .bind(id)
        .bind(idle_since)
        .bind(now)
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
        let detail = serde_json::json!({"new_id": new.id, "old_revoked_at": revoke_at});
        audit(&mut tx, actor, "rotate", &old, detail).await?;
        tx.commit().await?;
        Ok(Some(new.clone()))
    }

    pub(super) async fn usage(&self, key_id: Uuid, period_start: i64) -> Result<u64, Error> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT used FROM quota_usage WHERE key_id = $1 AND period_start = $2")
                .bind(key_id)
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
        // One statement per table over arrays: a statement per row is a round trip
        // each. Rows go in key order, so replicas flushing the same keys at once take
        // their row locks in the same order and cannot deadlock.
        let mut usage = usage.to_vec();
        usage.sort_unstable_by_key(|row| (row.key_id, row.period_start));
        let mut last_used = last_used.to_vec();
        last_used.sort_unstable_by_key(|(id, _)| *id);
        let mut tx = self.pool.begin().await?;
        if !usage.is_empty() {
            let ids: Vec<Uuid> = usage.iter().map(|row| row.key_id).collect();
            let starts: Vec<i64> = usage.iter().map(|row| row.period_start).collect();
            let used: Vec<i64> = usage.iter().map(|row| super::to_i64(row.used)).collect();
            // Replicas report the shared count they last saw; the largest report is the truth.
            sqlx::query(
                "INSERT INTO quota_usage (key_id, period_start, used) \
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[]) \
                 ON CONFLICT (key_id, period_start) DO UPDATE SET used = GREATEST(quota_usage.used, excluded.used)",
            )
            .bind(ids)
            .bind(starts)
            .bind(used)
            .execute(&mut *tx)
            .await?;
        }
        if !last_used.is_empty() {
            let (ids, ats): (Vec<Uuid>, Vec<DateTime<Utc>>) = last_used.into_iter().unzip();
            sqlx::query(
                "UPDATE keys SET last_used_at = u.at FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, at) \
                 WHERE keys.id = u.id AND (keys.last_used_at IS NULL OR keys.last_used_at < u.at)",
            )
            .bind(ids)
            .bind(ats)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn changes_since(&self, seq: i64) -> Result<Vec<Change>, Error> {
        let rows = sqlx::query(
            "SELECT seq, key_id FROM audit_log WHERE seq > $1 AND action <> 'create' ORDER BY seq LIMIT 1000",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    seq: row.try_get("seq")?,
                    key_id: row.try_get("key_id")?,
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
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE ($1::text IS NULL OR org_id = $1)")
                .bind(org)
                .fetch_one(&self.pool)
                .await?;
        let rows = sqlx::query(
            "SELECT seq, at, actor, actor_key_id, action, key_id, org_id, client_ip, auth_method, detail \
             FROM audit_log WHERE ($1::text IS NULL OR org_id = $1) ORDER BY seq DESC LIMIT $2 OFFSET $3",
        )
        .bind(org)
        .bind(i64::from(limit))
        .bind(i64::from(page - 1) * i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(AuditEntry {
                    seq: row.try_get("seq")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    actor_key_id: row.try_get("actor_key_id")?,
                    action: row.try_get("action")?,
                    key_id: row.try_get("key_id")?,
                    org_id: row.try_get("org_id")?,
                    client_ip: row.try_get("client_ip")?,
                    auth_method: row.try_get("auth_method")?,
                    detail: row.try_get("detail")?,
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
        .bind(key_id)
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

    /// Follows `NOTIFY` on [`CHANNEL`] until `stop`; a lost connection yields a
    /// [`Notice::Resync`] once listening again, since notices may have been missed.
    pub(super) async fn watch(self, notices: mpsc::Sender<Notice>, mut stop: watch::Receiver<bool>) {
        let mut reported = false;
        loop {
            let connected = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                l = connected => match l {
                    Ok(l) => l,
                    Err(e) => {
                        if !reported {
                            tracing::warn!(error = %e, "cannot listen for key changes; cached keys stay valid until their TTL");
                            reported = true;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(250)) => continue,
                            _ = stop.changed() => return,
                        }
                    }
                },
                _ = stop.changed() => return,
            };
            if reported {
                tracing::info!("listening for key changes again");
                reported = false;
            }
            if notices.send(Notice::Resync).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    n = listener.try_recv() => n,
                    _ = stop.changed() => return,
                };
                let notice = match next {
                    Ok(Some(n)) => match Uuid::parse_str(n.payload()) {
                        Ok(id) => Notice::Changed(id),
                        Err(_) => continue,
                    },
                    // Lost and already reconnected: something may have been missed.
                    Ok(None) => Notice::Resync,
                    Err(_) => break,
                };
                if notices.send(notice).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn get<'e, E>(executor: E, id: Uuid) -> Result<Option<KeyRecord>, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM keys WHERE id = $1"));
    let row = sqlx::query(sql).bind(id).fetch_optional(executor).await?;
    row.as_ref().map(decode).transpose()
}

async fn insert(tx: &mut Tx, r: &KeyRecord) -> Result<(), Error> {
    let (owner_type, owner_id) = match &r.owner {
        Owner::User(id) => ("user", id),
        Owner::Org(id) => ("org", id),
    };
    sqlx::query(INSERT)
        .bind(r.id)
        .bind(&r.org_id)
        .bind(owner_type)
        .bind(owner_id)
        .bind(&r.name)
        .bind(&r.display_prefix)
        .bind(r.hash.to_hex())
        .bind(&r.environment)
        .bind(&r.scopes)
        .bind(json(&r.restrictions))
        .bind(r.quota_limit.map(super::to_i64))
        .bind(r.metadata.to_string())
        .bind(&r.created_by)
        .bind(r.created_at)
        .bind(r.last_used_at)
        .bind(r.expires_at)
        .bind(r.paused)
        .bind(r.revoked_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn revoke(tx: &mut Tx, id: Uuid, at: DateTime<Utc>) -> Result<Option<KeyRecord>, Error> {
    sqlx::query("UPDATE keys SET revoked_at = $2 WHERE id = $1 AND (revoked_at IS NULL OR revoked_at > $2)")
        .bind(id)
        .bind(at)
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
    let key_id = target.id;
    sqlx::query(
        "INSERT INTO audit_log (actor, action, key_id, detail, actor_key_id, client_ip, auth_method, org_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&actor.name)
    .bind(action)
    .bind(key_id)
    .bind(detail)
    .bind(actor.key_id)
    .bind(&actor.client_ip)
    .bind(actor.auth_method)
    .bind(&target.org_id)
    .execute(&mut **tx)
    .await?;
    // A new key has nothing cached anywhere; announcing it would only evict it from
    // caches that a first request may have filled already.
    if action != "create" {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(key_id.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn decode(row: &PgRow) -> Result<KeyRecord, Error> {
    let owner_id: String = row.try_get("owner_id")?;
    let owner = match row.try_get::<String, _>("owner_type")?.as_str() {
        "user" => Owner::User(owner_id),
        _ => Owner::Org(owner_id),
    };
    let hash: String = row.try_get("key_hash")?;
    let restrictions: String = row.try_get("restrictions")?;
    let metadata: String = row.try_get("metadata")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        owner,
        name: row.try_get("name")?,
        display_prefix: row.try_get("display_prefix")?,
        hash: KeyHash::from_hex(&hash).ok_or_else(|| Error::Corrupt("bad key hash".into()))?,
        environment: row.try_get("environment")?,
        scopes: row.try_get("scopes")?,
        restrictions: serde_json::from_str(&restrictions)
            .map_err(|e| Error::Corrupt(format!("bad restrictions: {e}")))?,
        quota_limit: row
            .try_get::<Option<i64>, _>("quota_limit")?
            .map(|q| u64::try_from(q).unwrap_or_default()),
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| Error::Corrupt(format!("bad metadata: {e}")))?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        expires_at: row.try_get("expires_at")?,
        paused: row.try_get("paused")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
