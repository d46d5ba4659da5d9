//! Invalidation: making every replica forget a changed key at once.
//!
//! Two sources feed it: the store's change feed ([`crate::store::Store::watch`]: SQLite
//! polling or PostgreSQL `NOTIFY`) and, with Redis, the pub/sub channel that
//! `manage` publishes on. Either one alone keeps replicas correct; the L1 TTL is the
//! hard bound if both are lost. A lost subscription clears L1, since messages may
//! have been missed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::L1;
use super::redis::Redis;
use crate::keys::KeyHash;
use crate::store::{Notice, Store};

/// Applies store notices: evict from L1 and, with Redis, drop the record from L2
/// (the change may come from a CLI that has no Redis configured).
pub async fn apply_store_notices(
    mut notices: mpsc::Receiver<Notice>,
    l1: Arc<L1>,
    store: Store,
    redis: Option<Arc<Redis>>,
) {
    while let Some(notice) = notices.recv().await {
        match notice {
            Notice::Resync => l1.clear(),
            Notice::Changed(id) => {
                let hash = evict(&l1, &store, id).await;
                if let (Some(redis), Some(hash)) = (&redis, hash)
                    && let Err(e) = redis.forget(&hash).await
                {
                    tracing::debug!(error = %e, "cannot drop a changed key from L2; its TTL bounds it");
                }
            }
        }
    }
}

/// Evicts the key `id` from L1 by its hash, read from the store (L1 keeps no id →
/// hash map); when the store cannot say, by a scan of L1. Returns the hash if known.
async fn evict(l1: &L1, store: &Store, id: Uuid) -> Option<KeyHash> {
    match store.get(id).await {
        Ok(Some(record)) => {
            l1.evict(&record.hash);
            Some(record.hash)
        }
        Ok(None) => {
            l1.evict_id(id);
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read a changed key; evicting it by a scan of L1");
            l1.evict_id(id);
            None
        }
    }
}

/// Follows the Redis invalidation channel until `stop`, evicting announced keys from
/// L1 (the message names the key's id; its hash comes from the store); (re)subscribing
/// clears L1.
pub async fn follow_channel(redis: Arc<Redis>, l1: Arc<L1>, store: Store, mut stop: watch::Receiver<bool>) {
    let channel = redis.channel();
    let mut reported = false;
    loop {
        let subscribed = async {
            let mut pubsub = redis.pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, super::redis::Error>(pubsub)
        };
        let pubsub = tokio::select! {
            s = subscribed => s,
            _ = stop.changed() => return,
        };
        let pubsub = match pubsub {
            Ok(p) => p,
            Err(e) => {
                if !reported {
                    tracing::warn!(error = %e, "cannot subscribe to key changes in redis; the store's change feed still applies");
                    reported = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        if reported {
            tracing::info!("subscribed to key changes in redis again");
            reported = false;
        }
        // Anything published while we were not subscribed is lost.
        l1.clear();
        let mut messages = pubsub.into_on_message();
        loop {
            let message = tokio::select! {
                m = messages.next() => m,
                _ = stop.changed() => return,
            };
            let Some(message) = message else { break };
            let payload: String = message.get_payload().unwrap_or_default();
            if let Ok(id) = Uuid::parse_str(&payload) {
                evict(&l1, &store, id).await;
            }
        }
    }
}
