//! Prometheus metrics: one `Metrics` per running keygate, rendered at `/metrics` on
//! the admin listener. Labels are route names and outcome codes only — never key
//! ids, keys or raw paths — so every label set is bounded by the configuration.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 50 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The metrics of one keygate.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    decision: Histogram,
    upstream: Histogram,
    in_flight: IntGauge,
    cache: IntCounterVec,
    dependency_errors: IntCounterVec,
    reloads: IntCounterVec,
    reload_ok: IntGauge,
    hygiene: IntCounterVec,
    mcp: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every keygate metric.
    ///
    /// # Panics
    /// Never in practice: names and label sets are fixed and valid.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "keygate_requests_total",
                "Requests by route name and outcome code (forwarded, or the refusal code).",
            ),
            &["route", "code"],
        )
        .expect("valid metric");
        let decision = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_decision_duration_seconds",
                "Time to decide a request (route, key, scopes, quota).",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let upstream = Histogram::with_opts(
            HistogramOpts::new(
                "keygate_upstream_duration_seconds",
                "Time from sending to the upstream to its response head.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let in_flight =
            IntGauge::new("keygate_requests_in_flight", "Requests being handled now.").expect("valid metric");
        let cache = IntCounterVec::new(
            Opts::new(
                "keygate_cache_lookups_total",
                "Key lookups by cache layer (l1, l2, store) and result (hit, negative, miss, coalesced, error).",
            ),
            &["layer", "result"],
        )
        .expect("valid metric");
        let dependency_errors = IntCounterVec::new(
            Opts::new(
                "keygate_dependency_errors_total",
                "Failed calls to the admin store or Redis.",
            ),
            &["dependency"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "keygate_config_reloads_total",
                "Config reloads (SIGHUP or a changed file) by result (ok, failed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        let reload_ok = IntGauge::new(
            "keygate_config_last_reload_successful",
            "1 when the last reload (or the start) applied the file, 0 when it was refused.",
        )
        .expect("valid metric");
        reload_ok.set(1);
        let hygiene = IntCounterVec::new(
            Opts::new(
                "keygate_keys_quarantined_total",
                "Keys paused or revoked by keygate's own policy, by reason (idle: [hygiene] pause_after_idle; leak: a verified secret scanning report).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in ["idle", "leak"] {
            hygiene.with_label_values(&[reason]);
        }
        let mcp = IntCounterVec::new(
            Opts::new(
                "keygate_mcp_messages_total",
                "JSON-RPC messages on MCP routes by route, method (MCP methods by name, else other), tool (names in [mcp] tool_labels, else other; empty for other methods) and outcome (forwarded or the refusal code).",
            ),
            &["route", "method", "tool", "outcome"],
        )
        .expect("valid metric");
        let build = IntGaugeVec::new(
            Opts::new("keygate_build_info", "Always 1; labels name the build."),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(decision.clone()),
            Box::new(upstream.clone()),
            Box::new(in_flight.clone()),
            Box::new(cache.clone()),
            Box::new(dependency_errors.clone()),
            Box::new(reloads.clone()),
            Box::new(reload_ok.clone()),
            Box::new(hygiene.clone()),
            Box::new(mcp.clone()),
            Box::new(build),
        ] {
            registry.register(m).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            decision,
            upstream,
            in_flight,
            cache,
            dependency_errors,
            reloads,
            reload_ok,
            hygiene,
            mcp,
        }
    }

    /// Counts one JSON-RPC message on an MCP route.
    pub fn mcp_message(&self, route: &str, method: &str, tool: &str, outcome: &str) {
        self.mcp.with_label_values(&[route, method, tool, outcome]).inc();
    }

    /// Counts `n` keys quarantined for `reason` (`idle` or `leak`).
    pub fn quarantined(&self, reason: &str, n: u64) {
        self.hygiene.with_label_values(&[reason]).inc_by(n);
    }

    /// Counts one finished request.
    pub fn request(&self, route: &str, code: &str) {
        self.requests.with_label_values(&[route, code]).inc();
    }

    /// Records how long a decision took.
    pub fn decision(&self, seconds: f64) {
        self.decision.observe(seconds);
    }

    /// Records how long the upstream took to its response head.
    pub fn upstream(&self, seconds: f64) {
        self.upstream.observe(seconds);
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Counts one cache lookup.
    pub fn cache(&self, layer: &'static str, result: &'static str) {
        self.cache.with_label_values(&[layer, result]).inc();
    }

    /// Counts a failed call to `dependency` (`store` or `redis`).
    pub fn dependency_error(&self, dependency: &'static str) {
        self.dependency_errors.with_label_values(&[dependency]).inc();
    }

    /// Counts a config reload that was applied (`ok`) or refused.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.with_label_values(&[result]).inc();
        self.reload_ok.set(i64::from(ok));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
