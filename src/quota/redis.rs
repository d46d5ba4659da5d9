//! Quota counters in Redis: one counter per key and period, charged by a server-side
//! script so check-and-charge is atomic across every replica.
//!
//! Replicas do not charge each request there: they lease blocks of budget ([`lease`])
//! and admit from the block in-process, so the counter holds the units used plus the
//! units leased out and never exceeds the limit. Blocks shrink as the budget does (a
//! sixteenth of what is left, at most [`MAX_BLOCK`]; the last units one request at a
//! time), and a replica gives back what it did not use ([`release`]).

use redis::Script;
use std::sync::LazyLock;
use uuid::Uuid;

use super::Window;
use crate::cache::redis::{Error, Redis};

/// Most units one lease hands out.
pub const MAX_BLOCK: u64 = 64;

/// Seeds a missing counter with the count the store knows, refuses a charge that
/// does not fit, and otherwise adds a block: a sixteenth of what is left (at most
/// `ARGV[5]`, at least the cost). Returns `{granted (0 = refused), used}`.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
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
local limit = tonumber(ARGV[2])
if used + cost > limit then
  return {0, used}
end
local block = math.min(math.floor((limit - used) / 16), tonumber(ARGV[5]))
if block < cost then
  block = cost
end
return {block, redis.call('INCRBY', KEYS[1], block)}
",
    )
});

/// Gives back up to `ARGV[1]` unused units (never below 0, never creating a counter
/// that is gone). Returns the count after.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local used = redis.call('GET', KEYS[1])
if not used then
  return 0
end
local back = math.min(tonumber(ARGV[1]), tonumber(used))
if back > 0 then
  return redis.call('DECRBY', KEYS[1], back)
end
return tonumber(used)
",
    )
});

/// A lease: units handed to this replica, and the shared count after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    /// Units leased (0: the charge does not fit).
    pub granted: u64,
    /// Units used or leased out in the period after the lease.
    pub used: u64,
}

/// Leases a block that covers at least `cost` for `key_id` in `window`; a missing
/// counter starts at `seed`.
///
/// # Errors
/// When Redis fails or is marked down.
pub async fn lease(
    redis: &Redis,
    key_id: Uuid,
    window: Window,
    cost: u64,
    limit: u64,
    seed: u64,
) -> Result<Leased, Error> {
    run_lease(redis, key_id, window, [cost, limit, seed, MAX_BLOCK]).await
}

/// Runs `LEASE` with `[cost, limit, seed, max_block]`.
async fn run_lease(redis: &Redis, key_id: Uuid, window: Window, args: [u64; 4]) -> Result<Leased, Error> {
    let key = counter_key(redis, key_id, window);
    // Counters outlive their period by a day so late reconciliation still finds them.
    let expire_at_ms = window.end.timestamp_millis() + 86_400_000;
    let [cost, limit, seed, max_block] = args;
    let (granted, used): (u64, u64) = redis
        .call(|mut c| async move {
            LEASE
                .key(key)
                .arg(cost)
                .arg(limit)
                .arg(seed)
                .arg(expire_at_ms)
                .arg(max_block)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok(Leased { granted, used })
}

/// Gives `units` of an unused lease back.
///
/// # Errors
/// When Redis fails or is marked down.
pub async fn release(redis: &Redis, key_id: Uuid, window: Window, units: u64) -> Result<u64, Error> {
    let key = counter_key(redis, key_id, window);
    redis
        .call(|mut c| async move { RELEASE.key(key).arg(units).invoke_async(&mut c).await })
        .await
}

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

/// Charges exactly `cost` (> 0) against `limit` for `key_id` in `window` (a lease
/// with no block beyond the cost); a missing counter starts at `seed`.
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
    let leased = run_lease(redis, key_id, window, [cost, limit, seed, 0]).await?;
    Ok(Charged {
        admitted: leased.granted > 0,
        used: leased.used,
    })
}
