//! Wiring: a validated `Config` → store, Redis, caches, counters, decider, proxy, and
//! the background tasks (invalidation, batch flush, Redis health). `serve` adds
//! signal handling: SIGTERM/SIGINT drain and stop, SIGHUP (or a changed file) reloads.
//!
//! Call [`start`] from inside a tokio runtime: that runtime becomes the control
//! runtime, which owns the store's connections and the background tasks, while the
//! proxy runs on its own per-core threads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::auth::{Decider, verify::Verifier};
use crate::cache::redis::Redis;
use crate::cache::{L1, invalidation};
use crate::clock::SharedClock;
use crate::config::{self, Config, Env};
use crate::manage;
use crate::proxy;
use crate::quota::Counters;
use crate::quota::rate::Limiter;
use crate::store::Store;
use crate::telemetry::Metrics;

/// A running keygate.
pub struct App {
    proxy: proxy::Running,
    admin_addr: Option<SocketAddr>,
    live: proxy::Snapshot,
    running: Mutex<Config>,
    metrics: Arc<Metrics>,
    counters: Arc<Counters>,
    store: Store,
    keys: manage::Keys,
    clock: SharedClock,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens the store and starts the proxy and background tasks.
///
/// # Errors
/// When the store cannot be opened or the listener cannot be bound.
pub async fn start(config: Config, clock: SharedClock) -> anyhow::Result<App> {
    let store = Store::open(&config.store.url)
        .await
        .with_context(|| format!("cannot open the admin store {}", redact_url(&config.store.url)))?;
    let control = tokio::runtime::Handle::current();
    let redis = match &config.redis {
        Some(settings) => Some(Redis::connect(settings.clone()).context("invalid redis URL")?),
        None => None,
    };
    let l1 = Arc::new(L1::new(config.cache, Arc::clone(&clock)));
    let counters = Arc::new(Counters::new(
        config.quota,
        store.clone(),
        redis.clone(),
        control.clone(),
    ));
    let metrics = Arc::new(Metrics::new());
    let verifier = Arc::new(Verifier::new(
        Arc::clone(&l1),
        redis.clone(),
        store.clone(),
        control,
        Arc::clone(&metrics),
    ));
    let limiter = Arc::new(Limiter::new(redis.clone()));
    let decider = Arc::new(Decider::new(
        Arc::clone(&verifier),
        Arc::clone(&counters),
        Arc::clone(&limiter),
        Arc::clone(&clock),
    ));
    let keys = manage::Keys::new(
        store.clone(),
        config.auth.credentials.format.clone(),
        Arc::clone(&clock),
        Some(Arc::clone(&l1)),
        redis.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let notices = store.watch(config.store.poll_interval, stopped.clone());
    let mut tasks = vec![
        tokio::spawn(invalidation::apply_store_notices(
            notices,
            Arc::clone(&l1),
            store.clone(),
            redis.clone(),
        )),
        tokio::spawn(flush_periodically(
            Arc::clone(&counters),
            limiter,
            Arc::clone(&clock),
            config.store.flush_interval,
            stopped.clone(),
        )),
    ];
    if let Some(idle) = config.hygiene.pause_after_idle {
        tasks.push(tokio::spawn(pause_idle_periodically(
            keys.clone(),
            idle,
            Arc::clone(&metrics),
            stopped.clone(),
        )));
    }
    if let Some(redis) = &redis {
        tasks.push(tokio::spawn(invalidation::follow_channel(
            Arc::clone(redis),
            Arc::clone(&l1),
            store.clone(),
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(
            Arc::clone(redis).watch_health(Duration::from_millis(200), stopped),
        ));
    }
    let admin_addr = match config.admin {
        None => None,
        Some(settings) => {
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("cannot listen on {} (admin)", settings.listen))?;
            let addr = listener.local_addr()?;
            let state = admin::State::new(admin::Inner {
                keys: keys.clone(),
                verifier,
                credentials: config.auth.credentials.clone(),
                counters: Arc::clone(&counters),
                store: store.clone(),
                redis: redis.clone(),
                clock: Arc::clone(&clock),
                failures: crate::auth::failures::Failures::default(),
                max_failed_auth: settings.max_failed_auth_per_minute,
                metrics: Arc::clone(&metrics),
                on_leak: config.hygiene.on_leak,
                github_keys: config.hygiene.github_keys.clone(),
            });
            tasks.push(tokio::spawn(admin::serve(listener, state, stop.subscribe())));
            tracing::info!(%addr, "admin listening");
            Some(addr)
        }
    };
    let live = Arc::new(ArcSwap::from_pointee(proxy::Live {
        auth: config.auth.clone(),
        proxy: config.proxy.clone(),
    }));
    let proxy = proxy::start(
        Arc::clone(&live),
        decider,
        Arc::clone(&clock),
        Arc::clone(&metrics),
    )
    .with_context(|| format!("cannot listen on {}", config.proxy.listen))?;
    Ok(App {
        proxy,
        admin_addr,
        live,
        running: Mutex::new(config),
        metrics,
        counters,
        store,
        keys,
        clock,
        stop,
        tasks,
    })
}

impl App {
    /// The proxy's bound address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy.local_addr()
    }

    /// The admin listener's bound address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Key management that also evicts this process's cache.
    pub fn keys(&self) -> &manage::Keys {
        &self.keys
    }

    /// Swaps in `new`'s reloadable settings at once: requests that started before
    /// finish under the old ones. Returns the fixed settings `new` changed, which
    /// wait for a restart (see [`config::reload`]); they are also logged.
    pub fn apply(&self, new: Config) -> Vec<&'static str> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let (merged, fixed) = config::reload::merge(&running, new);
        self.live.store(Arc::new(proxy::Live {
            auth: merged.auth.clone(),
            proxy: merged.proxy.clone(),
        }));
        self.counters.set_default_limit(merged.quota.limit);
        self.metrics.reload(true);
        tracing::info!(routes = merged.auth.routes.routes().len(), "config reloaded");
        if !fixed.is_empty() {
            tracing::warn!(
                settings = fixed.join(", "),
                "these settings changed in the file but only apply at restart; the running values stay"
            );
        }
        *running = merged;
        fixed
    }

    /// Reads and validates `path` and applies it; an invalid or unreadable file
    /// keeps the running config, logs every diagnostic (line:col) and counts a
    /// failed reload.
    ///
    /// # Errors
    /// The file's problems.
    pub fn reload(&self, path: &Path, env: &dyn Env) -> Result<Vec<&'static str>, config::Error> {
        match config::load(path, env) {
            Ok(new) => Ok(self.apply(new)),
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!("config reload refused; the running config stays in force:\n{e}");
                Err(e)
            }
        }
    }

    /// Drains the proxy, stops the background tasks and writes the last counts.
    ///
    /// # Errors
    /// When the final flush fails (counts since the last flush are then lost).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.proxy.shutdown().await;
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // Unused quota leases go back to Redis before the last counts are written.
        self.counters.release_leases(None).await;
        let flushed = self.counters.flush(self.clock.now()).await;
        self.store.close().await;
        flushed.context("cannot write the final quota counts")
    }
}

/// Where a served config came from, for reloads.
#[derive(Debug, Clone)]
pub struct Source {
    /// The config file.
    pub path: PathBuf,
    /// How often the file is read for changes; zero = only on SIGHUP.
    pub poll_interval: Duration,
}

/// The signals keygate answers, installed before the store opens and the workers
/// start: one sent meanwhile is acted on, instead of killing the process by the
/// default action (orchestrators send SIGTERM at any moment, and the process is
/// already listening before `start` returns).
pub struct Signals {
    term: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the SIGTERM, SIGINT and SIGHUP handlers.
    ///
    /// # Errors
    /// When a handler cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT.
    pub async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }

    /// Waits for SIGTERM, SIGINT or SIGHUP: the end of a terminal session
    /// (`keygate quickstart`, which has no file to reload).
    pub async fn stop_or_hangup(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP, or a change to
/// the file's content, reloads it.
///
/// # Errors
/// Start-up failures and a failed final flush.
pub async fn serve(config: Config, source: Source, clock: SharedClock) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %source.path.display(),
        "starting"
    );
    // A stop asked for during start-up ends it there (what was opened is dropped).
    let app = tokio::select! {
        app = start(config, clock) => app?,
        () = signals.stop() => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
    };
    // The content last seen, valid or not, so a bad file is reported once.
    let mut seen = std::fs::read(&source.path).ok();
    let poll = source.poll_interval;
    let mut ticks = tokio::time::interval(if poll.is_zero() {
        Duration::from_secs(3600)
    } else {
        poll
    });
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.interrupt.recv() => break,
            _ = signals.hangup.recv() => {
                tracing::info!(path = %source.path.display(), "SIGHUP: reloading the config");
                seen = std::fs::read(&source.path).ok();
                let _ = app.reload(&source.path, &config::ProcessEnv);
            }
            _ = ticks.tick(), if !poll.is_zero() => {
                let now = std::fs::read(&source.path).ok();
                if now.is_some() && now != seen {
                    tracing::info!(path = %source.path.display(), "the config file changed: reloading");
                    seen = now;
                    let _ = app.reload(&source.path, &config::ProcessEnv);
                }
            }
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    app.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// `[hygiene] pause_after_idle`: a sweep at start and every ten minutes. Each key is
/// paused by one conditional statement, so replicas sweeping at once pause it once.
async fn pause_idle_periodically(
    keys: manage::Keys,
    idle: Duration,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        match keys.pause_idle(idle).await {
            Ok(paused) if !paused.is_empty() => {
                metrics.quarantined("idle", paused.len() as u64);
                tracing::info!(count = paused.len(), idle = ?idle, "paused idle keys");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot pause idle keys; retrying at the next sweep"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Writes quota counts and last uses to the store every `every`, and forgets rate
/// limit buckets that are full again.
async fn flush_periodically(
    counters: Arc<Counters>,
    limiter: Arc<Limiter>,
    clock: SharedClock,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        limiter.sweep(clock.now().timestamp_micros());
        match counters.flush(clock.now()).await {
            Ok(()) if failing => {
                tracing::info!("quota counts written again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot write quota counts; keeping them in memory and retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// A store URL with any password removed, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
