//! Reloading: which settings a running keygate swaps, and which only count at start.
//!
//! Swapped on reload: routes, `[proxy]` upstream/timeouts/pool/`key_header`/
//! `unmatched`/`access_log`/`fast_path`/`shutdown_grace`, `[identity]`, `[rate_limit]`, `[clients]`, `[mcp]`,
//! `keys.revoked_status` and `quota.limit`. Fixed until restart: listen addresses, `proxy.workers`,
//! `proxy.cpu_affinity`, `proxy.sched_policy`, `[store]`,
//! `[redis]`, `[admin]`, `[cache]`, `[hygiene]`, `keys.prefix`/`keys.environment` and
//! `quota.period`/`quota.on_redis_error`.

use super::Config;

/// The config to run after a reload from `running` to `new`: `new`'s reloadable
/// settings with `running`'s fixed ones, plus the names of the fixed settings that
/// `new` changed (they wait for a restart).
pub fn merge(running: &Config, new: Config) -> (Config, Vec<&'static str>) {
    let mut fixed = Vec::new();
    let mut note = |changed: bool, name: &'static str| {
        if changed {
            fixed.push(name);
        }
    };
    note(new.proxy.listen != running.proxy.listen, "proxy.listen");
    note(new.proxy.workers != running.proxy.workers, "proxy.workers");
    note(
        new.proxy.cpu_affinity != running.proxy.cpu_affinity,
        "proxy.cpu_affinity",
    );
    note(
        new.proxy.sched_policy != running.proxy.sched_policy,
        "proxy.sched_policy",
    );
    note(new.store != running.store, "store");
    note(new.redis != running.redis, "redis");
    note(new.admin != running.admin, "admin");
    note(new.cache != running.cache, "cache");
    note(new.hygiene != running.hygiene, "hygiene");
    note(
        new.auth.credentials.format != running.auth.credentials.format,
        "keys.prefix/keys.environment",
    );
    note(new.quota.period != running.quota.period, "quota.period");
    note(
        new.quota.on_redis_error != running.quota.on_redis_error,
        "quota.on_redis_error",
    );

    let mut merged = running.clone();
    merged.proxy = crate::proxy::Settings {
        listen: running.proxy.listen,
        workers: running.proxy.workers,
        cpu_affinity: running.proxy.cpu_affinity,
        sched_policy: running.proxy.sched_policy,
        ..new.proxy
    };
    merged.auth = new.auth;
    merged.auth.credentials.format = running.auth.credentials.format.clone();
    merged.quota.limit = new.quota.limit;
    (merged, fixed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(src: &str) -> Config {
        crate::config::parse(src, &HashMap::new()).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn reloadable_settings_are_taken_and_fixed_ones_kept_and_named() {
        let running = config("[proxy]\nlisten = \"127.0.0.1:8080\"\n[quota]\nlimit = 5\n");
        let new = config(
            "[proxy]\nlisten = \"127.0.0.1:9999\"\nresponse_timeout = \"3s\"\nsched_policy = \"batch\"\n\
             [keys]\nenvironment = \"test\"\n[quota]\nlimit = 7\nperiod = \"month\"\n\
             [[route]]\nname = \"r\"\npath = \"/r\"\n",
        );
        let (merged, fixed) = merge(&running, new);
        assert_eq!(
            fixed,
            [
                "proxy.listen",
                "proxy.sched_policy",
                "keys.prefix/keys.environment",
                "quota.period"
            ]
        );
        assert_eq!(merged.proxy.listen, running.proxy.listen);
        assert_eq!(merged.proxy.sched_policy, crate::proxy::SchedPolicy::Normal);
        assert_eq!(merged.proxy.response_timeout, std::time::Duration::from_secs(3));
        assert_eq!(merged.auth.credentials.format, running.auth.credentials.format);
        assert_eq!(merged.auth.routes.routes().len(), 1);
        assert_eq!(merged.quota.limit, 7);
        assert_eq!(merged.quota.period, running.quota.period);
    }

    #[test]
    fn an_unchanged_file_names_nothing() {
        let src = "[quota]\nlimit = 5\n";
        let (_, fixed) = merge(&config(src), config(src));
        assert!(fixed.is_empty());
    }
}
