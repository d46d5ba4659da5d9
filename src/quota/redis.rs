//! Quota counters in Redis: one counter per key and period, charged by a server-side
//! script so check-and-charge is atomic across every replica.

use redis::Script;
use std::sync::LazyLock;
use uuid::Uuid;

use super::Window;
use crate::cache::redis::{Error, Redis};

/// Seeds a missing counter with the count the store knows, refuses a charge that
/// does not fit, and otherwise adds it. Returns `{admitted (0|1), used}`.
static CHARGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local used = redis.call('GET', KEYS[1])
if not used then
  used = tonumber(ARGV[3])
  redis.call('SET', KEYS[1], used, 'PXAT', ARGV[4])
else
  used = tonumber(used)
end
local cost = tonumber(ARGV[1])
if used + cost > tonumber(ARGV[2]) then
  return {0, used}
end
return {1, redis.call('INCRBY', KEYS[1], cost)}
",
    )
});

/// What Redis said about a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    /// Whether the charge fitted (and was added).
    pub admitted: bool,
    /// Units used in the period after the charge (or as it stands, when refused).
    pub used: u64,
}

fn counter_key(redis: &Redis, key_id: Uuid, window: Window) -> String {
    redis.key("quota", &format!("{key_id}:{}", window.start.timestamp()))
}

/// The shared count for `key_id` in `window`, if Redis has one.
///
/// # Errors
/// When Redis fails or is marked down.
pub async fn peek(redis: &Redis, key_id: Uuid, window: Window) -> Result<Option<u64>, Error> {
    let key = counter_key(redis, key_id, window);
    redis
        .call(|mut c| async move { ::redis::AsyncCommands::get(&mut c, key).await })
        .await
}

/// Charges `cost` against `limit` for `key_id` in `window`; a missing counter starts at `seed`.
///
/// # Errors
/// When Redis fails or is marked down.
pub async fn charge(
    redis: &Redis,
    key_id: Uuid,
    window: Window,
    cost: u64,
    limit: u64,
    seed: u64,
) -> Result<Charged, Error> {
    let key = counter_key(redis, key_id, window);
    // Counters outlive their period by a day so late reconciliation still finds them.
    let expire_at_ms = window.end.timestamp_millis() + 86_400_000;
    let (admitted, used): (u8, u64) = redis
        .call(|mut c| async move {
            CHARGE
                .key(key)
                .arg(cost)
                .arg(limit)
                .arg(seed)
                .arg(expire_at_ms)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok(Charged {
        admitted: admitted == 1,
        used,
    })
}
