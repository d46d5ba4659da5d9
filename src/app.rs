//! Wiring: a validated `Config` → store, cache, counters, decider, proxy, and the
//! background tasks (change feed, batch flush). `serve` adds signal handling.
//!
//! Call [`start`] from inside a tokio runtime: that runtime becomes the control
//! runtime, which owns the store's connections and the background tasks, while the
//! proxy runs on its own per-core threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Decider, verify::Verifier};
use crate::cache::L1;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::manage;
use crate::proxy;
use crate::quota::Counters;
use crate::store::Store;

/// A running keygate.
pub struct App {
    proxy: proxy::Running,
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
    let l1 = Arc::new(L1::new(config.cache, Arc::clone(&clock)));
    let counters = Arc::new(Counters::new(config.quota, store.clone(), control.clone()));
    let verifier = Verifier::new(Arc::clone(&l1), store.clone(), control);
    let decider = Arc::new(Decider::new(
        config.auth.clone(),
        verifier,
        Arc::clone(&counters),
        Arc::clone(&clock),
    ));
    let keys = manage::Keys::new(
        store.clone(),
        config.auth.credentials.format.clone(),
        Arc::clone(&clock),
        Some(Arc::clone(&l1)),
    );
    let since = store
        .last_change()
        .await
        .context("cannot read the store's change feed")?;
    let (stop, stopped) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(follow_changes(
            store.clone(),
            l1,
            since,
            config.store.poll_interval,
            stopped.clone(),
        )),
        tokio::spawn(flush_periodically(
            Arc::clone(&counters),
            Arc::clone(&clock),
            config.store.flush_interval,
            stopped,
        )),
    ];
    let proxy = proxy::start(config.proxy.clone(), decider, Arc::clone(&clock))
        .with_context(|| format!("cannot listen on {}", config.proxy.listen))?;
    Ok(App {
        proxy,
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

    /// Key management that also evicts this process's cache.
    pub fn keys(&self) -> &manage::Keys {
        &self.keys
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
        let flushed = self.counters.flush(self.clock.now()).await;
        self.store.close().await;
        flushed.context("cannot write the final quota counts")
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
///
/// # Errors
/// Start-up failures and a failed final flush.
pub async fn serve(config: Config, clock: SharedClock) -> anyhow::Result<()> {
    let app = start(config, clock).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down: draining in-flight requests");
    app.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

/// Evicts keys changed by any process (CLI, another server) from this process's L1.
async fn follow_changes(
    store: Store,
    l1: Arc<L1>,
    mut since: i64,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        match store.changes_since(since).await {
            Ok(changes) => {
                for change in changes {
                    if let Some(id) = change.key_id {
                        l1.evict(id);
                    }
                    since = change.seq;
                }
                if failing {
                    tracing::info!("change feed readable again");
                    failing = false;
                }
            }
            Err(e) if !failing => {
                // Cached keys keep working; the cache TTL bounds how stale they get.
                tracing::warn!(error = %e, "cannot read the change feed; cached keys stay valid until their TTL");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn flush_periodically(
    counters: Arc<Counters>,
    clock: SharedClock,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        if let Err(e) = counters.flush(clock.now()).await {
            tracing::warn!(error = %e, "cannot write quota counts; will retry");
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
