//! `keygate explain`: what keygate would decide for a request, and why, without
//! sending anything upstream or charging any quota.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::route::OtherCredentials;
use crate::auth::{AuthMethod, Rejection, StatusPolicy, authorize, credential, verify};
use crate::clock::SharedClock;
use crate::config::{self, ProcessEnv};
use crate::keys::{KeyHash, KeyRecord};
use crate::quota::Counters;
use crate::store::Store;

/// `keygate explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The key, by id (UUID) ...
    #[arg(long, conflicts_with = "key_stdin", required_unless_present = "key_stdin")]
    key_id: Option<Uuid>,
    /// ... or the key itself, read from standard input (never from the command line).
    #[arg(long)]
    key_stdin: bool,
    /// Request method, e.g. GET.
    method: String,
    /// Request path, e.g. /v1/orgs/acme/items/1.
    path: String,
    /// The client address the request comes from, for keys with an IP allowlist.
    #[arg(long, default_value = "127.0.0.1")]
    client_ip: std::net::IpAddr,
    /// Print exactly one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `explain`: exit 0 when the request would be allowed, 1 when refused, 2 on
/// usage or config errors.
pub async fn run(args: ExplainArgs, config_path: &Path, clock: SharedClock) -> ExitCode {
    match explain(&args, config_path, clock).await {
        Ok(report) => {
            let allowed = report["decision"] == "allow";
            if args.json {
                println!("{report}");
            } else {
                print_human(&report);
            }
            if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn explain(args: &ExplainArgs, config_path: &Path, clock: SharedClock) -> anyhow::Result<Value> {
    let config = config::load(config_path, &ProcessEnv)?;
    let method =
        Method::from_bytes(args.method.to_ascii_uppercase().as_bytes()).context("not an HTTP method")?;
    let now = clock.now();
    let policy = config.auth.status;
    let mut report = json!({"method": method.as_str(), "path": args.path, "client_ip": args.client_ip});

    let matched = match config.auth.routes.match_request(&method, &args.path) {
        Ok(m) => m,
        Err(r) => return Ok(refuse(report, "route", &r, &policy)),
    };
    let route = matched.route;
    report["route"] = json!({
        "name": route.name,
        "public": route.public,
        "scopes": route.scopes,
        "org": matched.org.as_deref(),
        "cost": route.cost,
        "other_credentials": match route.other_credentials {
            OtherCredentials::Reject => "reject",
            OtherCredentials::Pass => "pass",
        },
        "key_query_param": route.key_query_param,
    });
    if route.public {
        report["auth_method"] = AuthMethod::Public.as_str().into();
        report["decision"] = "allow".into();
        report["reason"] = "the route is public: no key needed".into();
        return Ok(report);
    }

    let store = Store::open(&config.store.url).await.with_context(|| {
        format!(
            "cannot open the admin store {}",
            crate::app::redact_url(&config.store.url)
        )
    })?;
    let environment = config.auth.credentials.format.environment().to_owned();
    let record = match (args.key_id, args.key_stdin) {
        (Some(id), _) => store
            .get(id)
            .await?
            .with_context(|| format!("no key with id {id}"))?,
        (None, _) => {
            let mut token = String::new();
            std::io::stdin()
                .read_to_string(&mut token)
                .context("cannot read the key from stdin")?;
            let token = token.trim();
            if let Err(r) = credential::classify(token, &config.auth.credentials.format) {
                return Ok(refuse(report, "credential", &r, &policy));
            }
            match store.find_by_hash(&KeyHash::of(token)).await? {
                Some(record) => record,
                None => return Ok(refuse(report, "verify", &Rejection::UnknownApiKey, &policy)),
            }
        }
    };
    // The explained request presents this key, so it is judged as one whatever the
    // route's other_credentials: a keygate key is never passed through.
    report["auth_method"] = AuthMethod::ApiKey.as_str().into();
    report["key"] = describe(&record, now);
    report["rate_limit"] = match (record.restrictions.rate_limit, config.auth.rate_limit) {
        (Some(own), _) => json!({"rate": own.to_string(), "from": "key"}),
        (None, Some(default)) => json!({"rate": default.to_string(), "from": "[rate_limit] per_key"}),
        (None, None) => Value::Null,
    };
    // Judged as the proxy judges it: from the form the key cache holds.
    let cached = crate::keys::CachedKey::from(&record);
    if let Err(r) = verify::check_status(&cached, &environment, now) {
        return Ok(refuse(report, "verify", &r, &policy));
    }
    if let Err(r) = authorize::check(&cached, &matched, &method, Some(args.client_ip)) {
        return Ok(refuse(report, "authorize", &r, &policy));
    }
    let redis = match &config.redis {
        Some(settings) => Some(crate::cache::redis::Redis::connect(settings.clone())?),
        None => None,
    };
    let counters = Counters::new(
        config.quota,
        store.clone(),
        redis,
        tokio::runtime::Handle::current(),
    );
    let standing = counters.standing(&record, now).await?;
    report["quota"] = json!({
        "used": standing.used,
        "limit": standing.limit,
        "cost": route.cost,
        "reset_at": standing.window.end,
    });
    if standing.used.saturating_add(route.cost) > standing.limit {
        let retry_after = crate::quota::seconds_until(standing.window.end, now).max(1);
        let r = Rejection::QuotaExceeded {
            limit: standing.limit,
            retry_after,
        };
        return Ok(refuse(report, "quota", &r, &policy));
    }
    report["decision"] = "allow".into();
    report["reason"] = format!(
        "route `{}` matched; the key is active, holds every required scope{}, and {} of {} units are left",
        route.name,
        if matched.org.is_some() {
            ", belongs to the path's org"
        } else {
            ""
        },
        standing.limit - standing.used,
        standing.limit
    )
    .into();
    store.close().await;
    Ok(report)
}

fn refuse(mut report: Value, phase: &str, r: &Rejection, policy: &StatusPolicy) -> Value {
    report["decision"] = "refuse".into();
    report["phase"] = phase.into();
    report["status"] = r.status(policy).as_u16().into();
    report["code"] = r.code().into();
    report["reason"] = r.message().into();
    report
}

fn describe(record: &KeyRecord, now: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "id": record.id,
        "name": record.name,
        "prefix": record.display_prefix,
        "org_id": record.org_id,
        "environment": record.environment,
        "scopes": record.scopes,
        "status": record.status(now).as_str(),
        "read_only": record.restrictions.read_only,
        "routes": record.restrictions.routes,
        "allowed_ips": record.restrictions.allowed_ips,
    })
}

fn print_human(report: &Value) {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!("request:   {} {}", text(&report["method"]), text(&report["path"]));
    if let Some(route) = report.get("route") {
        let scopes = route["scopes"]
            .as_array()
            .map(|s| s.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        println!(
            "route:     {} (requires: {}; cost {}{})",
            text(&route["name"]),
            if route["public"] == true {
                "nothing, public".to_owned()
            } else if scopes.is_empty() {
                "a valid key".to_owned()
            } else {
                format!("scopes {scopes}")
            },
            route["cost"],
            route["org"]
                .as_str()
                .map(|o| format!("; org {o}"))
                .unwrap_or_default()
        );
    } else {
        println!("route:     none matched");
    }
    if let Some(method) = report.get("auth_method") {
        let other = report["route"]["other_credentials"] == "pass";
        let source = match report["route"]["key_query_param"].as_str() {
            Some(param) => format!("Authorization: Bearer, or the `{param}` query parameter"),
            None => "Authorization: Bearer".to_owned(),
        };
        println!(
            "auth:      {}{}",
            text(method),
            match (text(method).as_str(), other) {
                ("api_key", true) => format!(
                    " (from {source}; without a key this route passes the request to the API's own login as `none`)"
                ),
                ("api_key", false) => format!(" (from {source})"),
                _ => " (public route: no key needed)".to_owned(),
            }
        );
    }
    if let Some(key) = report.get("key") {
        println!(
            "key:       {} ({}…, {}, org {}, scopes {})",
            text(&key["id"]),
            text(&key["prefix"]),
            text(&key["status"]),
            text(&key["org_id"]),
            key["scopes"]
        );
    }
    if let Some(r) = report.get("rate_limit").filter(|r| !r.is_null()) {
        println!(
            "rate:      {} (from {}; not charged by explain)",
            text(&r["rate"]),
            text(&r["from"])
        );
    }
    if let Some(q) = report.get("quota") {
        println!(
            "quota:     {} of {} used, this request costs {}",
            q["used"], q["limit"], q["cost"]
        );
    }
    match report["decision"].as_str() {
        Some("allow") => println!("decision:  ALLOW — {}", text(&report["reason"])),
        _ => println!(
            "decision:  REFUSE {} {} at {} — {}",
            report["status"],
            text(&report["code"]),
            text(&report["phase"]),
            text(&report["reason"])
        ),
    }
}
