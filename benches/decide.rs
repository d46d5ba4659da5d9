//! Micro-benchmarks of the request decision and the pure pieces it is made of.
//!
//! * `decide`: [`Decider::decide`] for an allowed request whose key is in L1 (route
//!   match, credential extraction, SHA-256, L1 hit, scope and org check, quota charge),
//!   with the same request through the store (L1 emptied first) as the baseline, the
//!   harness's own cost, and each phase on its own.
//! * `key`: [`Format::parse`] on a valid and a mistyped key, against SHA-256 alone.
//! * `routes`: [`Table::match_request`] over 200 routes, against a matcher that reads
//!   the template strings at match time.
//!
//! Run with `cargo bench --bench decide` (release profile); `docs/performance.md`
//! has the figures of one run.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};
use keygate::auth::route::{self, Route, Spec, Table, Unmatched};
use keygate::auth::verify::{self, Verifier};
use keygate::auth::{Decider, RequestHead, authorize, credential};
use keygate::cache::{L1, Lookup};
use keygate::clock::{SharedClock, SystemClock};
use keygate::keys::{Format, KeyHash};
use keygate::manage::{Keys, NewKey};
use keygate::quota::Counters;
use keygate::store::Store;
use keygate::telemetry::Metrics;
use tokio::runtime::Runtime;

/// The example config's routes, on an SQLite store in `dir`, with a quota no run
/// exhausts and an L1 TTL no run outlasts.
fn config_text(dir: &std::path::Path) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:9"

[store]
url = "sqlite://{dir}/keygate.db"

[keys]
prefix = "kg"
environment = "live"

[quota]
limit = 1000000000000
period = "month"

# Longer than a run, so every measured decision is an L1 hit (the default 30s
# would expire the entry part-way through and send one decision to the store).
[cache]
ttl = "1h"

[[route]]
name      = "read-items"
methods   = ["GET", "HEAD"]
path      = "/v1/orgs/{{org}}/items/**"
scopes    = ["read"]
org_param = "org"

[[route]]
name      = "write-items"
methods   = ["POST", "PUT", "PATCH", "DELETE"]
path      = "/v1/orgs/{{org}}/items/**"
scopes    = ["write"]
org_param = "org"

[[route]]
name      = "run-report"
methods   = ["POST"]
path      = "/v1/orgs/{{org}}/reports"
scopes    = ["read", "execute"]
org_param = "org"
cost      = 10

[[route]]
name   = "health"
path   = "/healthz"
public = true
"#,
        dir = dir.display()
    )
}

const PATH: &str = "/v1/orgs/acme/items/42";

/// What `app::start` wires for the decision, without listeners or background tasks.
struct Fixture {
    _dir: tempfile::TempDir,
    settings: keygate::auth::Settings,
    store: Store,
    l1: Arc<L1>,
    counters: Arc<Counters>,
    decider: Decider,
    clock: SharedClock,
    key: String,
    headers: HeaderMap,
}

impl Fixture {
    /// Built on `rt`, which is also the control runtime (store calls run on it).
    fn new(rt: &Runtime) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = keygate::config::parse(&config_text(dir.path()), &HashMap::new())
            .unwrap_or_else(|d| panic!("bench config invalid: {d:?}"));
        let clock: SharedClock = Arc::new(SystemClock);
        rt.block_on(async {
            let store = Store::open(&config.store.url).await.expect("open the store");
            let control = tokio::runtime::Handle::current();
            let l1 = Arc::new(L1::new(config.cache, Arc::clone(&clock)));
            let counters = Arc::new(Counters::new(config.quota, store.clone(), None, control.clone()));
            let verifier = Arc::new(Verifier::new(
                Arc::clone(&l1),
                None,
                store.clone(),
                control,
                Arc::new(Metrics::new()),
            ));
            let decider = Decider::new(
                verifier,
                Arc::clone(&counters),
                Arc::new(keygate::quota::rate::Limiter::new(None)),
                Arc::clone(&clock),
            );
            let keys = Keys::new(
                store.clone(),
                config.auth.credentials.format.clone(),
                Arc::clone(&clock),
                Some(Arc::clone(&l1)),
                None,
            );
            let (key, _) = keys
                .create(
                    NewKey {
                        name: "bench".into(),
                        org_id: Some("acme".into()),
                        scopes: vec!["read".into()],
                        ..NewKey::default()
                    },
                    &"bench".into(),
                )
                .await
                .expect("create a key");
            let key = key.expose().to_owned();
            let mut headers = HeaderMap::new();
            headers.insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {key}")).expect("header value"),
            );
            headers.insert("host", HeaderValue::from_static("api.example.com"));
            headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
            headers.insert("accept", HeaderValue::from_static("application/json"));
            let fixture = Self {
                _dir: dir,
                settings: config.auth,
                store,
                l1,
                counters,
                decider,
                clock,
                key,
                headers,
            };
            // Warm up: the first decision loads the key into L1 and the quota counter.
            fixture.decide().await.expect("the bench request is allowed");
            assert!(
                matches!(fixture.l1.get(&KeyHash::of(&fixture.key)), Lookup::Hit(_)),
                "the key is in L1 after one decision"
            );
            fixture
        })
    }

    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &Method::GET,
            path: PATH,
            query: None,
            headers: &self.headers,
            client: Some(std::net::IpAddr::from([127, 0, 0, 1])),
        }
    }

    /// One decision, the refusal rendered as text.
    async fn decide(&self) -> Result<(), String> {
        match self.decider.decide(&self.settings, self.head()).await {
            Ok(grant) => {
                black_box(grant);
                Ok(())
            }
            Err(refusal) => Err(format!("{:?}", refusal.denial)),
        }
    }
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn decide(c: &mut Criterion) {
    let rt = current_thread();
    let f = Fixture::new(&rt);

    let mut g = c.benchmark_group("decide");
    // The figure: `to_async` runs one `block_on` per batch of iterations.
    g.bench_function("cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let grant = f
                .decider
                .decide(&f.settings, black_box(f.head()))
                .await
                .expect("allowed");
            black_box(grant.usage);
        });
    });
    // The same with one `block_on` per decision, as a caller outside the runtime would do.
    g.bench_function("cache_hit_block_on", |b| {
        b.iter(|| {
            let grant = rt
                .block_on(f.decider.decide(&f.settings, black_box(f.head())))
                .expect("allowed");
            black_box(grant.usage);
        });
    });
    // Baseline: L1 emptied before each decision, so the key comes from SQLite (the
    // quota counter stays loaded; only the key lookup goes to the store).
    g.bench_function("cache_miss_store", |b| {
        b.to_async(&rt).iter(|| async {
            f.l1.clear();
            let grant = f
                .decider
                .decide(&f.settings, black_box(f.head()))
                .await
                .expect("allowed");
            black_box(grant.usage);
        });
    });
    g.finish();
    // Put the key back in L1 for the phases below.
    rt.block_on(f.decide()).expect("allowed");

    // What the harness itself costs per iteration, to subtract mentally.
    let mut g = c.benchmark_group("harness");
    g.bench_function("to_async_empty", |b| b.to_async(&rt).iter(|| async {}));
    g.bench_function("block_on_empty", |b| b.iter(|| rt.block_on(async {})));
    g.finish();

    // The decision's phases one by one, through their public entry points.
    let mut g = c.benchmark_group("decide_phase");
    g.bench_function("1_route_match", |b| {
        b.iter(|| {
            f.settings
                .routes
                .match_request(black_box(&Method::GET), black_box(PATH))
                .map(|m| m.route.cost)
        });
    });
    g.bench_function("1a_path_segments", |b| {
        b.iter(|| route::segments(black_box(PATH)).map(|s| s.len()));
    });
    g.bench_function("2_extract_and_parse", |b| {
        b.iter(|| {
            credential::extract(black_box(&f.headers), &f.settings.credentials).map(|p| p.environment().len())
        });
    });
    g.bench_function("3a_sha256", |b| b.iter(|| KeyHash::of(black_box(&f.key))));
    let hash = KeyHash::of(&f.key);
    g.bench_function("3b_l1_get", |b| {
        b.iter(|| matches!(f.l1.get(black_box(&hash)), Lookup::Hit(_)));
    });
    let metrics = Metrics::new();
    g.bench_function("3c_metrics_cache_hit", |b| {
        b.iter(|| metrics.cache(black_box("l1"), black_box("hit")));
    });
    g.bench_function("3d_clock_now", |b| b.iter(|| f.clock.now()));
    let Lookup::Hit(record) = f.l1.get(&hash) else {
        panic!("the key is in L1");
    };
    let now = f.clock.now();
    g.bench_function("3e_check_status", |b| {
        b.iter(|| verify::check_status(black_box(&record), black_box("live"), now).is_ok());
    });
    let matched = f
        .settings
        .routes
        .match_request(&Method::GET, PATH)
        .expect("route");
    g.bench_function("4_authorize", |b| {
        b.iter(|| {
            authorize::check(
                black_box(&record),
                black_box(&matched),
                &Method::GET,
                Some(std::net::IpAddr::from([127, 0, 0, 1])),
            )
            .is_ok()
        });
    });
    g.bench_function("5_quota_charge", |b| {
        b.to_async(&rt).iter(|| async {
            f.counters
                .charge(black_box(&record), 1, now)
                .await
                .expect("under quota")
        });
    });
    g.finish();

    rt.block_on(f.store.close());
}

/// A key of the deployment's format with a fixed random part.
fn sample_key(format: &Format) -> String {
    format.assemble("live", "w39uIA1E9VLDmmbdtVwYzAWukdPlDBx7")
}

fn key(c: &mut Criterion) {
    let format = Format::new("kg", "live").expect("format");
    let valid = sample_key(&format);
    assert!(format.parse(&valid).is_ok());
    // One character of the random part changed: shape fine, checksum wrong.
    let mut typo = valid.clone().into_bytes();
    let at = "kg_live_".len() + 5;
    typo[at] = if typo[at] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).expect("ascii");
    assert_eq!(format.parse(&typo), Err(keygate::keys::format::Error::Checksum));

    let mut g = c.benchmark_group("key");
    g.bench_function("parse_checksum", |b| {
        b.iter(|| format.parse(black_box(&valid)).map(|p| p.environment().len()));
    });
    g.bench_function("parse_typo", |b| {
        b.iter(|| format.parse(black_box(&typo)).is_err());
    });
    g.bench_function("sha256_baseline", |b| b.iter(|| KeyHash::of(black_box(&valid))));
    g.finish();
}

/// Resource names for the 200-route table.
const RESOURCES: [&str; 40] = [
    "users",
    "teams",
    "projects",
    "items",
    "orders",
    "invoices",
    "payments",
    "refunds",
    "customers",
    "products",
    "prices",
    "coupons",
    "subscriptions",
    "plans",
    "webhooks",
    "events",
    "logs",
    "reports",
    "exports",
    "imports",
    "files",
    "folders",
    "comments",
    "tags",
    "labels",
    "tickets",
    "messages",
    "threads",
    "channels",
    "devices",
    "sessions",
    "tokens",
    "roles",
    "policies",
    "audits",
    "alerts",
    "metrics",
    "dashboards",
    "queries",
    "jobs",
];

/// One route template as written in the config: methods (empty = any) and path.
struct Template {
    methods: Vec<Method>,
    path: String,
}

/// 200 templates, 5 per resource, in this order: list and read below an org (`**`),
/// create, update and delete one by id (`{id}`), and an org-less stats route (`*`).
fn templates() -> Vec<Template> {
    let mut out = Vec::with_capacity(200);
    for res in RESOURCES {
        out.push(Template {
            methods: vec![Method::GET, Method::HEAD],
            path: format!("/v1/orgs/{{org}}/{res}/**"),
        });
        out.push(Template {
            methods: vec![Method::POST],
            path: format!("/v1/orgs/{{org}}/{res}"),
        });
        out.push(Template {
            methods: vec![Method::PUT, Method::PATCH],
            path: format!("/v1/orgs/{{org}}/{res}/{{id}}"),
        });
        out.push(Template {
            methods: vec![Method::DELETE],
            path: format!("/v1/orgs/{{org}}/{res}/{{id}}"),
        });
        out.push(Template {
            methods: vec![],
            path: format!("/v1/{res}/*/stats"),
        });
    }
    out
}

fn table(templates: &[Template]) -> Table {
    let routes = templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Route::compile(Spec {
                name: format!("r{i}"),
                methods: t.methods.clone(),
                path: t.path.clone(),
                scopes: vec!["read".into()],
                org_param: t.path.contains("{org}").then(|| "org".into()),
                cost: 1,
                ..Spec::default()
            })
            .expect("template compiles")
        })
        .collect();
    Table::new(routes, Unmatched::Deny)
}

/// The baseline: no compile step; every request re-reads every template string
/// (split on `/`, compared segment by segment) until one matches. The path goes
/// through the same [`route::segments`] rule as the table's, so only matching differs.
fn naive_match<'t>(templates: &'t [Template], method: &Method, path: &str) -> Option<&'t Template> {
    let segs = route::segments(path).ok()?;
    templates.iter().find(|t| {
        if !t.methods.is_empty() && !t.methods.contains(method) {
            return false;
        }
        let mut parts = t.path[1..].split('/').filter(|p| !p.is_empty());
        let mut path = segs.iter();
        loop {
            match (parts.next(), path.next()) {
                (Some("**"), _) => return true,
                (None, None) => return true,
                (Some(p), Some(s)) if p == "*" || p.starts_with('{') || p == s => {}
                _ => return false,
            }
        }
    })
}

fn routes(c: &mut Criterion) {
    let templates = templates();
    assert_eq!(templates.len(), 200);
    let table = table(&templates);
    let cases: [(&str, Method, &str, Option<usize>); 4] = [
        ("start", Method::GET, "/v1/orgs/acme/users/42", Some(0)),
        ("middle", Method::PUT, "/v1/orgs/acme/files/42", Some(102)),
        ("end", Method::GET, "/v1/jobs/nightly/stats", Some(199)),
        ("miss", Method::GET, "/v2/orgs/acme/users/42", None),
    ];
    for (name, method, path, expected) in &cases {
        let by_table = table
            .match_request(method, path)
            .ok()
            .map(|m| m.route.name.clone());
        assert_eq!(by_table, expected.map(|i| format!("r{i}")), "{name}");
        let by_naive = naive_match(&templates, method, path).map(|t| t.path.clone());
        assert_eq!(by_naive, expected.map(|i| templates[i].path.clone()), "{name}");
    }

    let mut g = c.benchmark_group("routes");
    for (name, method, path, _) in &cases {
        g.bench_with_input(BenchmarkId::new("match_200", name), path, |b, path| {
            b.iter(|| {
                table
                    .match_request(black_box(method), black_box(path))
                    .map(|m| m.route.cost)
            });
        });
        g.bench_with_input(BenchmarkId::new("naive_200", name), path, |b, path| {
            b.iter(|| naive_match(&templates, black_box(method), black_box(path)).map(|t| t.path.len()));
        });
    }
    g.finish();
}

criterion_group!(benches, decide, key, routes);
criterion_main!(benches);
