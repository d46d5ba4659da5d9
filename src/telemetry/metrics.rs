//! Prometheus metrics: one `Metrics` per running keygate, rendered at `/metrics` on
//! the admin listener. Labels are route names and outcome codes only — never key
//! ids, keys or raw paths — so every label set is bounded by the configuration.
//!
//! The metrics every request updates (requests, the two latency histograms, in
//! flight, cache lookups) have one copy per thread that updates them, summed when
//! scraped: one shared copy would have both workers write the same few cache lines
//! on every request. A scrape sees every update made before it, as with one copy.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: 50 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Copies of the per-request metrics: threads beyond this many share them (still
/// exact, only slower).
const SHARDS: usize = 16;

/// The metrics of one keygate.
pub struct Metrics {
    /// Tells this instance's entries in a thread's [`Memo`] from another's.
    id: usize,
    registry: Registry,
    hot: Arc<[Hot]>,
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
        let hot: Arc<[Hot]> = (0..SHARDS).map(|_| Hot::new()).collect();
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
            Box::new(Summed(Arc::clone(&hot))) as Box<dyn Collector>,
            Box::new(dependency_errors.clone()),
            Box::new(reloads.clone()),
            Box::new(reload_ok.clone()),
            Box::new(hygiene.clone()),
            Box::new(mcp.clone()),
            Box::new(build),
        ] {
            registry.register(m).expect("unique metric names");
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            registry,
            hot,
            dependency_errors,
            reloads,
            reload_ok,
            hygiene,
            mcp,
        }
    }

    /// This thread's copy of the per-request metrics.
    fn hot(&self) -> &Hot {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        &self.hot[SHARD.with(|i| *i) % self.hot.len()]
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
        self.counted(Family::Requests, route, code);
    }

    /// Records how long a decision took.
    pub fn decision(&self, seconds: f64) {
        self.hot().decision.observe(seconds);
    }

    /// Records how long the upstream took to its response head.
    pub fn upstream(&self, seconds: f64) {
        self.hot().upstream.observe(seconds);
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        let gauge = &self.hot().in_flight;
        gauge.inc();
        InFlight(gauge)
    }

    /// Counts one cache lookup.
    pub fn cache(&self, layer: &'static str, result: &'static str) {
        self.counted(Family::Cache, layer, result);
    }

    /// Adds one to this thread's counter of `family` labelled `a`, `b`, found in the
    /// thread's [`Memo`] when it counted the same labels lately.
    fn counted(&self, family: Family, a: &str, b: &str) {
        MEMO.with_borrow_mut(|memo| {
            let found = memo
                .entries
                .iter()
                .find(|e| e.metrics == self.id && e.family == family && *e.a == *a && *e.b == *b);
            if let Some(entry) = found {
                entry.counter.inc();
                return;
            }
            let hot = self.hot();
            let counter = match family {
                Family::Requests => hot.requests.with_label_values(&[a, b]),
                Family::Cache => hot.cache.with_label_values(&[a, b]),
            };
            counter.inc();
            let entry = Memoised {
                metrics: self.id,
                family,
                a: a.into(),
                b: b.into(),
                counter,
            };
            if memo.entries.len() < MEMO_SIZE {
                memo.entries.push(entry);
            } else {
                memo.entries[memo.next] = entry;
                memo.next = (memo.next + 1) % MEMO_SIZE;
            }
        });
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

/// The labelled counters a thread counted lately, resolved: a lookup by labels
/// hashes them and takes the vector's lock, and every request does two (its
/// outcome, its cache lookup), nearly always with the labels of the one before.
#[derive(Default)]
struct Memo {
    entries: Vec<Memoised>,
    /// The entry replaced next once full.
    next: usize,
}

/// Label sets a thread keeps resolved.
const MEMO_SIZE: usize = 8;

struct Memoised {
    metrics: usize,
    family: Family,
    a: Box<str>,
    b: Box<str>,
    counter: IntCounter,
}

/// The labelled counters every request updates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Requests,
    Cache,
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::default();
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One copy of the metrics each request updates.
struct Hot {
    requests: IntCounterVec,
    decision: Histogram,
    upstream: Histogram,
    in_flight: IntGauge,
    cache: IntCounterVec,
}

impl Hot {
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
                .expect("valid metric")
        };
        Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "keygate_requests_total",
                    "Requests by route name and outcome code (forwarded, or the refusal code).",
                ),
                &["route", "code"],
            )
            .expect("valid metric"),
            decision: histogram(
                "keygate_decision_duration_seconds",
                "Time to decide a request (route, key, scopes, quota).",
            ),
            upstream: histogram(
                "keygate_upstream_duration_seconds",
                "Time from sending to the upstream to its response head.",
            ),
            in_flight: IntGauge::new("keygate_requests_in_flight", "Requests being handled now.")
                .expect("valid metric"),
            cache: IntCounterVec::new(
                Opts::new(
                    "keygate_cache_lookups_total",
                    "Key lookups by cache layer (l1, l2, store) and result (hit, negative, miss, coalesced, error).",
                ),
                &["layer", "result"],
            )
            .expect("valid metric"),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 5] {
        [
            &self.requests,
            &self.decision,
            &self.upstream,
            &self.in_flight,
            &self.cache,
        ]
    }
}

/// The copies of [`Hot`] as one set of metrics: per label set, counters, gauges and
/// histograms (counts, sums, buckets) add up.
struct Summed(Arc<[Hot]>);

impl Collector for Summed {
    fn desc(&self) -> Vec<&Desc> {
        self.0
            .first()
            .map(|hot| hot.collectors().into_iter().flat_map(|c| c.desc()).collect())
            .unwrap_or_default()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: Vec<MetricFamily> = Vec::new();
        for hot in self.0.iter() {
            for mut family in hot.collectors().into_iter().flat_map(|c| c.collect()) {
                match families.iter_mut().find(|f| f.name() == family.name()) {
                    Some(sum) => {
                        let kind = sum.get_field_type();
                        for metric in family.take_metric() {
                            let same = sum
                                .get_metric()
                                .iter()
                                .position(|m| m.get_label() == metric.get_label());
                            match same {
                                Some(i) => add(kind, &mut sum.mut_metric()[i], &metric),
                                None => sum.mut_metric().push(metric),
                            }
                        }
                    }
                    None => families.push(family),
                }
            }
        }
        families
    }
}

/// Adds `more` to `sum`, two samples of one metric with the same labels.
fn add(kind: MetricType, sum: &mut proto::Metric, more: &proto::Metric) {
    match kind {
        MetricType::COUNTER => {
            let mut c = proto::Counter::default();
            c.set_value(sum.get_counter().get_value() + more.get_counter().get_value());
            sum.set_counter(c);
        }
        MetricType::GAUGE => {
            let mut g = proto::Gauge::default();
            g.set_value(sum.get_gauge().get_value() + more.get_gauge().get_value());
            sum.set_gauge(g);
        }
        MetricType::HISTOGRAM => {
            let (a, b) = (sum.get_histogram(), more.get_histogram());
            let mut h = proto::Histogram::default();
            h.set_sample_count(a.get_sample_count() + b.get_sample_count());
            h.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
            h.set_bucket(
                a.get_bucket()
                    .iter()
                    .zip(b.get_bucket())
                    .map(|(x, y)| {
                        let mut bucket = x.clone();
                        bucket.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
                        bucket
                    })
                    .collect(),
            );
            sum.set_histogram(h);
        }
        // Only the kinds above have copies.
        MetricType::SUMMARY | MetricType::UNTYPED => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_on_many_threads_scrape_as_one_set_of_metrics() {
        let metrics = Metrics::new();
        let held = metrics.in_flight();
        std::thread::scope(|s| {
            for i in 0..SHARDS + 3 {
                let metrics = &metrics;
                s.spawn(move || {
                    let _in_flight = metrics.in_flight();
                    metrics.request("items", "forwarded");
                    metrics.decision(0.000_2);
                    metrics.upstream(if i % 2 == 0 { 0.003 } else { 2.0 });
                    metrics.cache("l1", "hit");
                });
            }
        });
        metrics.request("items", "quota_exceeded");
        let text = metrics.render();
        let n = SHARDS + 3;
        for line in [
            format!(r#"keygate_requests_total{{code="forwarded",route="items"}} {n}"#),
            r#"keygate_requests_total{code="quota_exceeded",route="items"} 1"#.to_owned(),
            format!(r#"keygate_cache_lookups_total{{layer="l1",result="hit"}} {n}"#),
            format!("keygate_decision_duration_seconds_count {n}"),
            format!(r#"keygate_decision_duration_seconds_bucket{{le="0.00025"}} {n}"#),
            format!(
                r#"keygate_upstream_duration_seconds_bucket{{le="0.005"}} {}"#,
                n.div_ceil(2)
            ),
            format!(r#"keygate_upstream_duration_seconds_bucket{{le="+Inf"}} {n}"#),
            "keygate_requests_in_flight 1".to_owned(),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert_eq!(text.matches("# TYPE keygate_requests_total counter").count(), 1);
        drop(held);
        assert!(metrics.render().contains("keygate_requests_in_flight 0"));
    }

    #[test]
    fn a_thread_counting_more_label_sets_than_it_keeps_resolved_counts_each_exactly() {
        let (one, two) = (Metrics::new(), Metrics::new());
        let routes: Vec<String> = (0..MEMO_SIZE + 3).map(|i| format!("r{i}")).collect();
        for round in 1..=3 {
            for (i, route) in routes.iter().enumerate() {
                one.request(route, "forwarded");
                // The same labels on another instance, every other time.
                if i % 2 == 0 {
                    two.request(route, "forwarded");
                }
            }
            one.cache("l1", "hit");
            let (a, b) = (one.render(), two.render());
            for (i, route) in routes.iter().enumerate() {
                let line = |n| format!(r#"keygate_requests_total{{code="forwarded",route="{route}"}} {n}"#);
                assert!(a.contains(&line(round)), "{} missing from\n{a}", line(round));
                if i % 2 == 0 {
                    assert!(b.contains(&line(round)), "{} missing from\n{b}", line(round));
                } else {
                    assert!(
                        !b.contains(&format!(r#"route="{route}""#)),
                        "{route} counted on the other instance"
                    );
                }
            }
            let hits = format!(r#"keygate_cache_lookups_total{{layer="l1",result="hit"}} {round}"#);
            assert!(a.contains(&hits) && !b.contains("keygate_cache_lookups_total{"));
        }
    }
}
