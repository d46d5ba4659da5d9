//! `keygate keys ...`: the same commands against the store named by the config, or
//! against a running admin API (`--admin-url`, key from `KEYGATE_ADMIN_KEY`). Both
//! paths produce the admin API's JSON view of a key, so output is identical.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::remote;
use crate::admin::keys::KeyView;
use crate::clock::SharedClock;
use crate::config::{self, Env, ProcessEnv};
use crate::keys::{KeyRecord, McpPolicy, Owner, Rate, Restrictions, Status};
use crate::manage::{self, NewKey};
use crate::store::{Actor, ListQuery, Patch, Store};

/// `keygate keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Act through a running admin API (http://host:port) instead of the store;
    /// the admin key comes from the KEYGATE_ADMIN_KEY environment variable.
    #[arg(long, global = true, env = "KEYGATE_ADMIN_URL")]
    admin_url: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; the plaintext is printed once and never stored.
    Create(CreateArgs),
    /// List keys (never the keys themselves).
    List(ListArgs),
    /// Show one key.
    Show(IdArgs),
    /// Change a key's name, scopes, quota, expiry or restrictions.
    Update(UpdateArgs),
    /// Pause a key (reversible with resume).
    Pause(IdArgs),
    /// Resume a paused key.
    Resume(IdArgs),
    /// Revoke a key at once (irreversible; no prompt).
    Revoke(IdArgs),
    /// Issue a successor key and revoke this one (now, or after --overlap).
    Rotate(RotateArgs),
    /// Pause or revoke (per [hygiene] on_leak) the key read from stdin, found leaked.
    ReportLeak(ReportLeakArgs),
}

#[derive(Debug, Args)]
struct ReportLeakArgs {
    /// Where the key was found (a URL, a file, a ticket), recorded in the audit log.
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct Common {
    /// Who is acting (audit log, created_by); default: the OS user. Through the
    /// admin API, the admin key is the actor.
    #[arg(long)]
    actor: Option<String>,
    /// Print exactly one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Human label.
    #[arg(long)]
    name: String,
    /// Organisation the key is bound to.
    #[arg(long)]
    org: Option<String>,
    /// Owner, `user:<id>` or `org:<id>` (default: the org, else the actor).
    #[arg(long)]
    owner: Option<String>,
    /// Comma-separated scopes.
    #[arg(long, value_delimiter = ',', default_value = "read")]
    scopes: Vec<String>,
    /// Environment (default: the deployment's, [keys] environment).
    #[arg(long)]
    env: Option<String>,
    /// Expire after this long (e.g. 30d, 12h).
    #[arg(long)]
    expires_in: Option<String>,
    /// Quota per period instead of the configured default.
    #[arg(long)]
    quota: Option<u64>,
    /// Only GET, HEAD and OPTIONS.
    #[arg(long)]
    read_only: bool,
    /// Comma-separated route names the key may use (default: all).
    #[arg(long, value_delimiter = ',')]
    routes: Vec<String>,
    /// Short-window rate limit, e.g. 10/s, 600/m or 1000/h (default: [rate_limit] per_key).
    #[arg(long)]
    rate_limit: Option<String>,
    /// Comma-separated addresses or CIDR networks the key may be used from (default: any).
    #[arg(long, value_delimiter = ',')]
    allowed_ips: Vec<String>,
    /// MCP routes: comma-separated tools (exact names and `*` globs) the key may see and call (default: all).
    #[arg(long, value_delimiter = ',')]
    mcp_tools: Vec<String>,
    /// MCP routes: only read-only tools.
    #[arg(long)]
    mcp_read_only: bool,
    /// MCP routes: refused (REST routes still work).
    #[arg(long)]
    mcp_disabled: bool,
    /// JSON object stored with the key.
    #[arg(long)]
    metadata: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only keys of this org.
    #[arg(long)]
    org: Option<String>,
    /// Substring of name or prefix.
    #[arg(long)]
    search: Option<String>,
    /// active, paused, expired or revoked.
    #[arg(long)]
    status: Option<String>,
    /// Only keys unused for this long (e.g. 30d), by last use or, for keys never
    /// used, creation: the candidates of [hygiene] pause_after_idle.
    #[arg(long)]
    idle: Option<String>,
    /// Page (1-based).
    #[arg(long, default_value_t = 1)]
    page: u32,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Print exactly one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct IdArgs {
    /// Key id (UUID).
    id: Uuid,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// Key id (UUID).
    id: Uuid,
    /// New name.
    #[arg(long)]
    name: Option<String>,
    /// New comma-separated scopes.
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// New quota per period, or `default` to use the configured one.
    #[arg(long)]
    quota: Option<String>,
    /// New expiry from now (e.g. 30d), or `never`.
    #[arg(long)]
    expires_in: Option<String>,
    /// Read-only on or off.
    #[arg(long)]
    read_only: Option<bool>,
    /// New comma-separated route allowlist (empty string = all routes).
    #[arg(long)]
    routes: Option<String>,
    /// New rate limit (e.g. 10/s), or `default` for [rate_limit] per_key.
    #[arg(long)]
    rate_limit: Option<String>,
    /// New comma-separated IP allowlist (empty string = any address).
    #[arg(long)]
    allowed_ips: Option<String>,
    /// New comma-separated MCP tool allowlist (empty string = all tools).
    #[arg(long)]
    mcp_tools: Option<String>,
    /// MCP read-only on or off.
    #[arg(long)]
    mcp_read_only: Option<bool>,
    /// MCP paused (true) or allowed (false).
    #[arg(long)]
    mcp_disabled: Option<bool>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct RotateArgs {
    /// Key id (UUID).
    id: Uuid,
    /// Keep the old key working this long (e.g. 1h); default: revoke now.
    #[arg(long)]
    overlap: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// Where the commands act.
enum Target {
    Store {
        keys: manage::Keys,
        store: Store,
        clock: SharedClock,
        on_leak: manage::OnLeak,
    },
    Remote(remote::Client),
}

/// Runs a `keys` command.
///
/// # Errors
/// Config, store or admin API failures, and invalid input.
pub async fn run(args: KeysArgs, config_path: &Path, clock: SharedClock) -> anyhow::Result<ExitCode> {
    let target = match &args.admin_url {
        Some(url) => {
            let key = ProcessEnv
                .var("KEYGATE_ADMIN_KEY")
                .context("--admin-url needs the admin key in the KEYGATE_ADMIN_KEY environment variable")?;
            Target::Remote(remote::Client::new(url, key)?)
        }
        None => Target::local(config_path, clock).await?,
    };
    let result = target.execute(args.command).await;
    if let Target::Store { store, .. } = &target {
        store.close().await;
    }
    result
}

impl Target {
    async fn local(config_path: &Path, clock: SharedClock) -> anyhow::Result<Self> {
        let config = config::load(config_path, &ProcessEnv)?;
        let store = Store::open(&config.store.url).await.with_context(|| {
            format!(
                "cannot open the admin store {}",
                crate::app::redact_url(&config.store.url)
            )
        })?;
        // With Redis configured, changes are also announced there (replicas evict at
        // once); without it they still learn from the store's change feed.
        let redis = match &config.redis {
            Some(settings) => {
                Some(crate::cache::redis::Redis::connect(settings.clone()).context("invalid redis URL")?)
            }
            None => None,
        };
        let format = config.auth.credentials.format.clone();
        let keys = manage::Keys::new(store.clone(), format, Arc::clone(&clock), None, redis);
        Ok(Self::Store {
            keys,
            store,
            clock,
            on_leak: config.hygiene.on_leak,
        })
    }

    async fn execute(&self, command: KeysCommand) -> anyhow::Result<ExitCode> {
        match command {
            KeysCommand::ReportLeak(args) => return self.report_leak(&args).await,
            KeysCommand::Create(args) => {
                let json = args.common.json;
                let created = self.create(args).await?;
                print_created(&created, json);
            }
            KeysCommand::List(args) => {
                let json = args.json;
                print_list(&self.list(args).await?, json);
            }
            KeysCommand::Show(args) => print_record(&self.show(args.id).await?, args.common.json, None),
            KeysCommand::Update(args) => {
                let json = args.common.json;
                print_record(&self.update(args).await?, json, Some("updated"));
            }
            KeysCommand::Pause(args) => {
                let view = self.lifecycle(args.id, "pause", &args.common).await?;
                print_record(&view, args.common.json, Some("paused"));
            }
            KeysCommand::Resume(args) => {
                let view = self.lifecycle(args.id, "resume", &args.common).await?;
                print_record(&view, args.common.json, Some("resumed"));
            }
            KeysCommand::Revoke(args) => {
                let view = self.lifecycle(args.id, "revoke", &args.common).await?;
                print_record(&view, args.common.json, Some("revoked"));
            }
            KeysCommand::Rotate(args) => {
                let overlap = match &args.overlap {
                    Some(s) => chrono_duration(s)?,
                    None => chrono::Duration::zero(),
                };
                let created = self.rotate(args.id, overlap, &args.common).await?;
                print_created(&created, args.common.json);
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Exit 0 when the key was found and quarantined (or was revoked already), 1 when
    /// the input is not a key of this deployment or no key matches.
    async fn report_leak(&self, args: &ReportLeakArgs) -> anyhow::Result<ExitCode> {
        let Self::Store { keys, on_leak, .. } = self else {
            anyhow::bail!(
                "report-leak acts on the store directly; run it without --admin-url, where the config's store is reachable"
            );
        };
        let mut token = zeroize::Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
            .context("cannot read the key from stdin")?;
        let actor = Actor::cli(&actor(&args.common));
        let (outcome, record) = keys
            .report_leak(&token, *on_leak, args.source.as_deref(), &actor)
            .await?;
        let view = record.as_ref().map(|r| self.view(r));
        if args.common.json {
            println!(
                "{}",
                json!({
                    "outcome": outcome.as_str(),
                    "label": outcome.label(),
                    "key": view,
                })
            );
        } else {
            match &view {
                Some(v) => println!(
                    "{}: key {} ({}…), now {}",
                    outcome.as_str(),
                    v["id"].as_str().unwrap_or("?"),
                    v["prefix"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?")
                ),
                None => println!(
                    "{}: {}; nothing changed",
                    outcome.as_str(),
                    if outcome == manage::LeakOutcome::NotAKey {
                        "not a key of this deployment (prefix, shape or checksum)"
                    } else {
                        "no key matches"
                    }
                ),
            }
        }
        Ok(if outcome.is_true_positive() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    fn view(&self, record: &KeyRecord) -> Value {
        let now = match self {
            Self::Store { clock, .. } => clock.now(),
            Self::Remote(_) => Utc::now(),
        };
        serde_json::to_value(KeyView::of(record, now)).unwrap_or_default()
    }

    async fn create(&self, args: CreateArgs) -> anyhow::Result<Value> {
        let owner = match &args.owner {
            Some(tag) => Some(
                Owner::parse(tag)
                    .with_context(|| format!("--owner `{tag}` must be user:<id> or org:<id>"))?,
            ),
            None => None,
        };
        let metadata: Option<Value> = match &args.metadata {
            Some(m) => Some(serde_json::from_str(m).context("--metadata must be a JSON object")?),
            None => None,
        };
        let expires_at = match &args.expires_in {
            Some(s) => Some(Utc::now() + chrono_duration(s)?),
            None => None,
        };
        let new = NewKey {
            name: args.name,
            org_id: args.org,
            owner,
            scopes: args.scopes.into_iter().filter(|s| !s.is_empty()).collect(),
            environment: args.env,
            expires_at,
            quota_limit: args.quota,
            restrictions: Restrictions {
                read_only: args.read_only,
                routes: args.routes,
                allowed_ips: networks(args.allowed_ips.iter().map(String::as_str))?,
                rate_limit: args.rate_limit.as_deref().map(rate).transpose()?,
                mcp: McpPolicy {
                    disabled: args.mcp_disabled,
                    tools: tools(args.mcp_tools.iter().map(String::as_str))?,
                    read_only: args.mcp_read_only,
                },
            },
            metadata,
        };
        match self {
            Self::Store { keys, .. } => {
                let (key, record) = keys.create(new, &Actor::cli(&actor(&args.common))).await?;
                Ok(with_key(self.view(&record), key.expose()))
            }
            Self::Remote(client) => {
                let body = json!({
                    "name": new.name, "org": new.org_id, "owner": new.owner.map(|o| o.to_tag()),
                    "scopes": new.scopes, "environment": new.environment, "expires_at": new.expires_at,
                    "quota": new.quota_limit,
                    "restrictions": {"read_only": new.restrictions.read_only, "routes": new.restrictions.routes},
                    "allowed_ips": new.restrictions.allowed_ips,
                    "rate_limit": new.restrictions.rate_limit,
                    "mcp": new.restrictions.mcp,
                    "metadata": new.metadata,
                });
                client
                    .call(Method::POST, "/v1/keys", Some(&without_nulls(body)))
                    .await
            }
        }
    }

    async fn list(&self, args: ListArgs) -> anyhow::Result<Value> {
        let status = match &args.status {
            Some(s) => Some(
                Status::parse(s)
                    .with_context(|| format!("--status `{s}` must be active, paused, expired or revoked"))?,
            ),
            None => None,
        };
        match self {
            Self::Store { keys, clock, .. } => {
                let idle_since = match &args.idle {
                    Some(s) => Some(
                        crate::config::parse_duration(s)
                            .and_then(|idle| manage::idle_since(clock.now(), idle))
                            .with_context(|| {
                                format!("--idle `{s}` must be a duration like 30d, 12h or 90m")
                            })?,
                    ),
                    None => None,
                };
                let query = ListQuery {
                    org: args.org,
                    search: args.search,
                    status,
                    idle_since,
                    page: args.page,
                    limit: args.limit,
                };
                let page = keys.list(&query).await?;
                let items: Vec<Value> = page.items.iter().map(|r| self.view(r)).collect();
                Ok(json!({"items": items, "total": page.total, "page": page.page, "limit": page.limit}))
            }
            Self::Remote(client) => {
                let query = form_urlencoded(&[
                    ("page", Some(args.page.to_string())),
                    ("limit", Some(args.limit.to_string())),
                    ("org", args.org),
                    ("idle", args.idle),
                    ("search", args.search),
                    ("status", args.status),
                ]);
                client.call(Method::GET, &format!("/v1/keys?{query}"), None).await
            }
        }
    }

    async fn show(&self, id: Uuid) -> anyhow::Result<Value> {
        match self {
            Self::Store { keys, .. } => Ok(self.view(&keys.get(id).await?)),
            Self::Remote(client) => client.call(Method::GET, &format!("/v1/keys/{id}"), None).await,
        }
    }

    async fn update(&self, args: UpdateArgs) -> anyhow::Result<Value> {
        let mut patch = Patch {
            name: args.name,
            scopes: args.scopes,
            ..Patch::default()
        };
        if let Some(q) = &args.quota {
            patch.quota_limit = Some(match q.as_str() {
                "default" => None,
                n => Some(
                    n.parse()
                        .with_context(|| format!("--quota `{n}` must be a number or `default`"))?,
                ),
            });
        }
        if let Some(e) = &args.expires_in {
            patch.expires_at = Some(match e.as_str() {
                "never" => None,
                d => Some(Utc::now() + chrono_duration(d)?),
            });
        }
        if let Some(r) = &args.rate_limit {
            patch.rate_limit = Some(match r.as_str() {
                "default" => None,
                r => Some(rate(r)?),
            });
        }
        if let Some(list) = &args.allowed_ips {
            patch.allowed_ips = Some(networks(list.split(','))?);
        }
        let changes_mcp =
            args.mcp_tools.is_some() || args.mcp_read_only.is_some() || args.mcp_disabled.is_some();
        let changes_routes = args.read_only.is_some() || args.routes.is_some();
        // Fields patched whole are read once, changed by the flags given, written back.
        let current = if changes_mcp || changes_routes {
            self.show(args.id).await?
        } else {
            Value::Null
        };
        if changes_mcp {
            let mut mcp: McpPolicy = serde_json::from_value(current["mcp"].clone()).unwrap_or_default();
            if let Some(list) = &args.mcp_tools {
                mcp.tools = tools(list.split(','))?;
            }
            if let Some(read_only) = args.mcp_read_only {
                mcp.read_only = read_only;
            }
            if let Some(disabled) = args.mcp_disabled {
                mcp.disabled = disabled;
            }
            patch.mcp = Some(mcp);
        }
        if changes_routes {
            let mut restrictions: Restrictions =
                serde_json::from_value(current["restrictions"].clone()).unwrap_or_default();
            if let Some(read_only) = args.read_only {
                restrictions.read_only = read_only;
            }
            if let Some(routes) = &args.routes {
                restrictions.routes = routes
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            patch.restrictions = Some(restrictions);
        }
        match self {
            Self::Store { keys, .. } => {
                let record = keys
                    .update(args.id, &patch, &Actor::cli(&actor(&args.common)))
                    .await?;
                Ok(self.view(&record))
            }
            Self::Remote(client) => {
                let mut body = serde_json::Map::new();
                if let Some(v) = patch.name {
                    body.insert("name".into(), v.into());
                }
                if let Some(v) = patch.scopes {
                    body.insert("scopes".into(), v.into());
                }
                if let Some(v) = patch.quota_limit {
                    body.insert("quota".into(), json!(v));
                }
                if let Some(v) = patch.expires_at {
                    body.insert("expires_at".into(), json!(v));
                }
                if let Some(r) = patch.restrictions {
                    body.insert(
                        "restrictions".into(),
                        json!({"read_only": r.read_only, "routes": r.routes}),
                    );
                }
                if let Some(v) = patch.allowed_ips {
                    body.insert("allowed_ips".into(), json!(v));
                }
                if let Some(v) = patch.rate_limit {
                    body.insert("rate_limit".into(), json!(v));
                }
                if let Some(v) = patch.mcp {
                    body.insert("mcp".into(), json!(v));
                }
                client
                    .call(
                        Method::PATCH,
                        &format!("/v1/keys/{}", args.id),
                        Some(&Value::Object(body)),
                    )
                    .await
            }
        }
    }

    async fn lifecycle(&self, id: Uuid, action: &str, common: &Common) -> anyhow::Result<Value> {
        match self {
            Self::Store { keys, .. } => {
                let actor = Actor::cli(&actor(common));
                let record = match action {
                    "pause" => keys.pause(id, &actor).await?,
                    "resume" => keys.resume(id, &actor).await?,
                    _ => keys.revoke(id, &actor).await?,
                };
                Ok(self.view(&record))
            }
            Self::Remote(client) => match action {
                "revoke" => client.call(Method::DELETE, &format!("/v1/keys/{id}"), None).await,
                _ => {
                    client
                        .call(Method::POST, &format!("/v1/keys/{id}/{action}"), Some(&json!({})))
                        .await
                }
            },
        }
    }

    async fn rotate(&self, id: Uuid, overlap: chrono::Duration, common: &Common) -> anyhow::Result<Value> {
        match self {
            Self::Store { keys, .. } => {
                let (key, record) = keys.rotate(id, overlap, &Actor::cli(&actor(common))).await?;
                Ok(with_key(self.view(&record), key.expose()))
            }
            Self::Remote(client) => {
                let body = json!({"overlap_seconds": overlap.num_seconds()});
                client
                    .call(Method::POST, &format!("/v1/keys/{id}/rotate"), Some(&body))
                    .await
            }
        }
    }
}

fn with_key(mut view: Value, key: &str) -> Value {
    if let Some(o) = view.as_object_mut() {
        o.insert("key".into(), key.into());
    }
    view
}

fn without_nulls(mut value: Value) -> Value {
    if let Some(o) = value.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    value
}

fn form_urlencoded(pairs: &[(&str, Option<String>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent_encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn actor(common: &Common) -> String {
    common
        .actor
        .clone()
        .or_else(|| ProcessEnv.var("USER"))
        .or_else(|| ProcessEnv.var("LOGNAME"))
        .unwrap_or_else(|| "unknown".into())
}

/// `--rate-limit` as a [`Rate`].
fn rate(s: &str) -> anyhow::Result<Rate> {
    Rate::parse(s.trim()).map_err(|e| anyhow::anyhow!("--rate-limit {e}"))
}

/// `--mcp-tools` entries (empty entries are skipped).
fn tools<'a>(list: impl Iterator<Item = &'a str>) -> anyhow::Result<Vec<String>> {
    list.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if crate::keys::record::is_valid_tool_pattern(t) {
                Ok(t.to_owned())
            } else {
                Err(anyhow::anyhow!(
                    "--mcp-tools `{t}` must be 1-128 characters of A-Z, a-z, 0-9, `_`, `-`, `.`, `/`, `:` and `*`"
                ))
            }
        })
        .collect()
}

/// `--allowed-ips` entries as networks (empty entries are skipped).
fn networks<'a>(list: impl Iterator<Item = &'a str>) -> anyhow::Result<Vec<ipnet::IpNet>> {
    list.map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| crate::keys::record::parse_network(n).map_err(|e| anyhow::anyhow!("--allowed-ips {e}")))
        .collect()
}

fn chrono_duration(s: &str) -> anyhow::Result<chrono::Duration> {
    let d =
        config::parse_duration(s).with_context(|| format!("`{s}` is not a duration (e.g. 30d, 12h, 90m)"))?;
    chrono::Duration::from_std(d).map_err(|_| anyhow::anyhow!("`{s}` is too long"))
}

fn print_created(created: &Value, json: bool) {
    if json {
        println!("{created}");
        return;
    }
    println!("{}", text(&created["key"]));
    eprintln!(
        "created key {} ({}, prefix {}). The key above is shown only this once; keygate stores only its SHA-256 hash.",
        text(&created["id"]),
        text(&created["name"]),
        text(&created["prefix"])
    );
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn when(v: &Value, never: &str) -> String {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map_or_else(
            || never.to_owned(),
            |t| t.with_timezone(&Utc).format("%Y-%m-%d %H:%M").to_string(),
        )
}

fn print_list(page: &Value, json: bool) {
    if json {
        println!("{page}");
        return;
    }
    println!(
        "{:<36}  {:<24}  {:<18}  {:<10}  {:<8}  {:<12}  {:<16}  {:<16}",
        "ID", "NAME", "PREFIX", "ORG", "STATUS", "CREATED BY", "CREATED", "LAST USED"
    );
    for k in page["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
        println!(
            "{:<36}  {:<24}  {:<18}  {:<10}  {:<8}  {:<12}  {:<16}  {:<16}",
            text(&k["id"]),
            truncate(&text(&k["name"]), 24),
            format!("{}…", text(&k["prefix"])),
            truncate(&text(&k["org_id"]), 10),
            text(&k["status"]),
            truncate(&text(&k["created_by"]), 12),
            when(&k["created_at"], "-"),
            when(&k["last_used_at"], "never"),
        );
    }
    let total = page["total"].as_u64().unwrap_or_default();
    let limit = page["limit"].as_u64().unwrap_or(1).max(1);
    println!(
        "page {} of {} ({total} keys)",
        text(&page["page"]),
        total.div_ceil(limit).max(1)
    );
}

fn print_record(k: &Value, json: bool, done: Option<&str>) {
    if json {
        println!("{k}");
        return;
    }
    if let Some(done) = done {
        println!("{done} {}", text(&k["id"]));
    }
    // A list joined with commas, or `empty` when there is none.
    let list = |v: &Value, empty: &str| {
        v.as_array().filter(|r| !r.is_empty()).map_or_else(
            || empty.to_owned(),
            |r| r.iter().map(text).collect::<Vec<_>>().join(","),
        )
    };
    // A value, or `default` when it is null.
    let or_default = |v: &Value| {
        if v.is_null() {
            "default".to_owned()
        } else {
            text(v)
        }
    };
    let routes = list(&k["restrictions"]["routes"], "all");
    let scopes = k["scopes"]
        .as_array()
        .map(|s| s.iter().map(text).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    println!("id:           {}", text(&k["id"]));
    println!("name:         {}", text(&k["name"]));
    println!("prefix:       {}…", text(&k["prefix"]));
    println!("status:       {}", text(&k["status"]));
    println!("org:          {}", text(&k["org_id"]));
    println!("owner:        {}", text(&k["owner"]));
    println!("environment:  {}", text(&k["environment"]));
    println!("scopes:       {scopes}");
    println!(
        "read-only:    {}",
        k["restrictions"]["read_only"].as_bool().unwrap_or_default()
    );
    println!("routes:       {routes}");
    println!("allowed IPs:  {}", list(&k["allowed_ips"], "any"));
    println!("rate limit:   {}", or_default(&k["rate_limit"]));
    let mcp = &k["mcp"];
    println!(
        "mcp:          {}, tools {}{}",
        if mcp["disabled"] == true {
            "paused"
        } else {
            "allowed"
        },
        list(&mcp["tools"], "all"),
        if mcp["read_only"] == true {
            ", read-only"
        } else {
            ""
        }
    );
    println!("quota:        {}", or_default(&k["quota"]));
    println!("created by:   {}", text(&k["created_by"]));
    println!("created:      {}", text(&k["created_at"]));
    println!(
        "last used:    {}",
        if k["last_used_at"].is_null() {
            "never".to_owned()
        } else {
            text(&k["last_used_at"])
        }
    );
    println!("expires:      {}", text(&k["expires_at"]));
    println!("revoked:      {}", text(&k["revoked_at"]));
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_encoded() {
        let q = form_urlencoded(&[
            ("org", Some("a b&c".into())),
            ("search", None),
            ("status", Some("active".into())),
        ]);
        assert_eq!(q, "org=a%20b%26c&status=active");
    }
}
