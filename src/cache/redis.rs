//! Redis: the connection shared by the L2 key cache, the quota counters and the
//! invalidation channel, plus the L2 operations themselves.
//!
//! A health flag makes a dead Redis cost one failed call, not one per request: after
//! a failure, callers skip Redis until a background PING succeeds again. Every call
//! runs on the control runtime, so the connection's I/O (and its reconnects) never
//! land on a data-plane thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use uuid::Uuid;

use super::Lookup;
use crate::keys::{CachedKey, KeyHash, KeyRecord};

/// Redis settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel keygate uses.
    pub key_prefix: String,
    /// Time a Redis call may take before it counts as failed.
    pub timeout: Duration,
    /// TTL of key records in L2.
    pub cache_ttl: Duration,
    /// TTL of unknown-key markers in L2.
    pub negative_ttl: Duration,
}

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis answered with an error or the connection failed.
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis is known to be down; the call was not tried.
    #[error("redis is unavailable")]
    Down,
    /// A cached value could not be decoded.
    #[error("undecodable cache entry")]
    Decode(#[source] serde_json::Error),
}

/// The shared Redis connection.
pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
    up: AtomicBool,
    settings: Settings,
    control: tokio::runtime::Handle,
}

const NEGATIVE: &str = "-";

impl Redis {
    /// A lazily connecting client: keygate starts even while Redis is down. Call it
    /// on the control runtime.
    ///
    /// # Errors
    /// When the URL is invalid.
    pub fn connect(settings: Settings) -> Result<Arc<Self>, Error> {
        let control = tokio::runtime::Handle::current();
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Arc::new(Self {
            client,
            conn,
            up: AtomicBool::new(true),
            settings,
            control,
        }))
    }

    /// Whether calls are currently attempted.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A new dedicated connection for pub/sub.
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub, Error> {
        let connecting = self.client.get_async_pubsub();
        tokio::time::timeout(self.settings.timeout.max(Duration::from_millis(500)), connecting)
            .await
            .map_err(|_| Error::Timeout(self.settings.timeout))?
            .map_err(Error::from)
    }

    /// Runs one call with the timeout, marking Redis down when it fails.
    ///
    /// # Errors
    /// [`Error::Down`] without trying while Redis is marked down; the call's error otherwise.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        if !self.is_up() {
            return Err(Error::Down);
        }
        let timeout = self.settings.timeout;
        let call = f(self.conn.clone());
        let ran = self
            .control
            .spawn(async move { tokio::time::timeout(timeout, call).await })
            .await;
        let result = match ran {
            Err(_) | Ok(Err(_)) => Err(Error::Timeout(timeout)),
            Ok(Ok(r)) => r.map_err(Error::from),
        };
        // A server-side error (a bad script, a wrong type) is an answer: Redis is up.
        if let Err(e) = &result
            && !matches!(e, Error::Redis(r) if matches!(r.kind(), redis::ErrorKind::Server(_) | redis::ErrorKind::UnexpectedReturnType))
            && self.up.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "redis unavailable; falling back until it answers again");
        }
        result
    }

    /// The full Redis key for `parts`.
    pub(crate) fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.settings.key_prefix)
    }

    /// The invalidation channel.
    pub(crate) fn channel(&self) -> String {
        format!("{}key-changes", self.settings.key_prefix)
    }

    /// L2 lookup of a key record by hash.
    ///
    /// # Errors
    /// When Redis fails or the entry is undecodable.
    pub async fn get_key(&self, hash: &KeyHash) -> Result<Lookup, Error> {
        let key = self.key("key", &hash.to_hex());
        let raw: Option<String> = self.call(|mut c| async move { c.get(key).await }).await?;
        match raw.as_deref() {
            None => Ok(Lookup::Miss),
            Some(NEGATIVE) => Ok(Lookup::Negative),
            Some(json) => {
                let record: KeyRecord = serde_json::from_str(json).map_err(Error::Decode)?;
                Ok(Lookup::Hit(Arc::new(CachedKey::from(&record))))
            }
        }
    }

    /// Stores what the store said about `hash` in L2 (`None` = unknown).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn put_key(&self, hash: &KeyHash, record: Option<&KeyRecord>) -> Result<(), Error> {
        let key = self.key("key", &hash.to_hex());
        let (value, ttl) = match record {
            Some(r) => (
                serde_json::to_string(r).map_err(Error::Decode)?,
                self.settings.cache_ttl,
            ),
            None => (NEGATIVE.to_owned(), self.settings.negative_ttl),
        };
        let secs = ttl.as_secs().max(1);
        self.call(|mut c| async move { c.set_ex::<_, _, ()>(key, value, secs).await })
            .await
    }

    /// Drops a key record from L2 and tells every replica to drop it from L1.
    ///
    /// # Errors
    /// When Redis fails (replicas then learn from the store's change feed).
    pub async fn invalidate(&self, id: Uuid, hash: &KeyHash) -> Result<(), Error> {
        let key = self.key("key", &hash.to_hex());
        let channel = self.channel();
        self.call(|mut c| async move {
            redis::pipe()
                .del(key)
                .ignore()
                .publish(channel, id.to_string())
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Drops a key record from L2 only.
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn forget(&self, hash: &KeyHash) -> Result<(), Error> {
        let key = self.key("key", &hash.to_hex());
        self.call(|mut c| async move { c.del::<_, ()>(key).await }).await
    }

    /// PINGs Redis every `every` until `stop`: marks it down when a PING fails (so a
    /// dropped connection is found before a request trips on it) and up again on the
    /// first answer.
    pub async fn watch_health(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let mut conn = self.conn.clone();
            let ping = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
            let answered = matches!(tokio::time::timeout(self.settings.timeout, ping).await, Ok(Ok(_)));
            match (answered, self.up.swap(answered, Ordering::Relaxed)) {
                (true, false) => tracing::info!("redis answers again"),
                (false, true) => tracing::warn!("redis does not answer; falling back until it does"),
                _ => {}
            }
        }
    }
}
