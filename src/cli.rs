//! The command line: each subcommand parses its flags and calls one library function.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::clock::{SharedClock, SystemClock};
use crate::config::{self, Config, Env, ProcessEnv};
use crate::keys::{KeyRecord, Owner, Restrictions, Status};
use crate::manage::{self, NewKey};
use crate::store::{Actor, ListQuery, Patch, Store};
use crate::telemetry::LogFormat;

/// keygate: API-key authentication in front of the API you already run.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_CONFIG",
        default_value = "config/keygate.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run keygate with an embedded store and a demo upstream; prints a key and a curl.
    Quickstart {
        /// Proxy address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Run the proxy.
    Serve,
    /// Validate a config file and report every problem with line:column.
    CheckConfig {
        /// The file (default: --config).
        file: Option<PathBuf>,
    },
    /// Manage keys directly in the store.
    #[command(subcommand)]
    Keys(Box<KeysCommand>),
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
}

#[derive(Debug, Args)]
struct Common {
    /// Who is acting (audit log, created_by); default: the OS user.
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

/// Runs the parsed command line; errors go to stderr.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let clock: SharedClock = Arc::new(SystemClock);
    match cli.command {
        Command::Quickstart { listen } => quickstart(&listen, clock).await,
        Command::Serve => {
            let config = load(&cli.config)?;
            crate::app::serve(config, clock).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => Ok(check_config(file.as_deref().unwrap_or(&cli.config))),
        Command::Keys(command) => {
            let config = load(&cli.config)?;
            keys(*command, &config, clock).await
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(config::load(path, &ProcessEnv)?)
}

fn check_config(path: &Path) -> ExitCode {
    match config::load(path, &ProcessEnv) {
        Ok(config) => {
            println!(
                "{}: ok ({} routes, listening on {})",
                path.display(),
                config.auth.routes.routes().len(),
                config.proxy.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn keys(command: KeysCommand, config: &Config, clock: SharedClock) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.store.url).await.with_context(|| {
        format!(
            "cannot open the admin store {}",
            crate::app::redact_url(&config.store.url)
        )
    })?;
    // With Redis configured, changes are also announced there (replicas evict at once);
    // without it they still learn from the store's change feed.
    let redis = match &config.redis {
        Some(settings) => {
            Some(crate::cache::redis::Redis::connect(settings.clone()).context("invalid redis URL")?)
        }
        None => None,
    };
    let keys = manage::Keys::new(
        store.clone(),
        config.auth.credentials.format.clone(),
        Arc::clone(&clock),
        None,
        redis,
    );
    let now = clock.now();
    let result = match command {
        KeysCommand::Create(args) => create(&keys, args, now).await,
        KeysCommand::List(args) => list(&keys, args, now).await,
        KeysCommand::Show(args) => {
            let record = keys.get(args.id).await?;
            print_record(&record, now, args.common.json, None);
            Ok(())
        }
        KeysCommand::Update(args) => update(&keys, args, now).await,
        KeysCommand::Pause(args) => {
            let record = keys.pause(args.id, &Actor::cli(&actor(&args.common))).await?;
            print_record(&record, now, args.common.json, Some("paused"));
            Ok(())
        }
        KeysCommand::Resume(args) => {
            let record = keys.resume(args.id, &Actor::cli(&actor(&args.common))).await?;
            print_record(&record, now, args.common.json, Some("resumed"));
            Ok(())
        }
        KeysCommand::Revoke(args) => {
            let record = keys.revoke(args.id, &Actor::cli(&actor(&args.common))).await?;
            print_record(&record, clock.now(), args.common.json, Some("revoked"));
            Ok(())
        }
        KeysCommand::Rotate(args) => {
            let overlap = match &args.overlap {
                Some(s) => chrono_duration(s)?,
                None => chrono::Duration::zero(),
            };
            let (key, record) = keys
                .rotate(args.id, overlap, &Actor::cli(&actor(&args.common)))
                .await?;
            print_created(key.expose(), &record, now, args.common.json);
            Ok(())
        }
    };
    store.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn create(keys: &manage::Keys, args: CreateArgs, now: DateTime<Utc>) -> anyhow::Result<()> {
    let owner = match &args.owner {
        Some(tag) => Some(
            Owner::parse(tag).with_context(|| format!("--owner `{tag}` must be user:<id> or org:<id>"))?,
        ),
        None => None,
    };
    let metadata = match &args.metadata {
        Some(m) => Some(serde_json::from_str(m).context("--metadata must be a JSON object")?),
        None => None,
    };
    let expires_at = match &args.expires_in {
        Some(s) => Some(now + chrono_duration(s)?),
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
        },
        metadata,
    };
    let (key, record) = keys.create(new, &Actor::cli(&actor(&args.common))).await?;
    print_created(key.expose(), &record, now, args.common.json);
    Ok(())
}

async fn list(keys: &manage::Keys, args: ListArgs, now: DateTime<Utc>) -> anyhow::Result<()> {
    let status = match &args.status {
        Some(s) => Some(
            Status::parse(s)
                .with_context(|| format!("--status `{s}` must be active, paused, expired or revoked"))?,
        ),
        None => None,
    };
    let query = ListQuery {
        org: args.org,
        search: args.search,
        status,
        page: args.page,
        limit: args.limit,
    };
    let page = keys.list(&query).await?;
    if args.json {
        let items: Vec<_> = page.items.iter().map(|r| record_json(r, now)).collect();
        let doc =
            serde_json::json!({"items": items, "total": page.total, "page": page.page, "limit": page.limit});
        println!("{doc}");
        return Ok(());
    }
    println!(
        "{:<36}  {:<24}  {:<18}  {:<10}  {:<8}  {:<12}  {:<16}  {:<16}",
        "ID", "NAME", "PREFIX", "ORG", "STATUS", "CREATED BY", "CREATED", "LAST USED"
    );
    for r in &page.items {
        println!(
            "{:<36}  {:<24}  {:<18}  {:<10}  {:<8}  {:<12}  {:<16}  {:<16}",
            r.id,
            truncate(&r.name, 24),
            format!("{}…", r.display_prefix),
            truncate(r.org_id.as_deref().unwrap_or("-"), 10),
            r.status(now).as_str(),
            truncate(&r.created_by, 12),
            r.created_at.format("%Y-%m-%d %H:%M"),
            r.last_used_at
                .map_or_else(|| "never".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string()),
        );
    }
    let pages = page.total.div_ceil(u64::from(page.limit)).max(1);
    println!("page {} of {pages} ({} keys)", page.page, page.total);
    Ok(())
}

async fn update(keys: &manage::Keys, args: UpdateArgs, now: DateTime<Utc>) -> anyhow::Result<()> {
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
            d => Some(now + chrono_duration(d)?),
        });
    }
    if args.read_only.is_some() || args.routes.is_some() {
        let mut restrictions = keys.get(args.id).await?.restrictions;
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
    let record = keys
        .update(args.id, &patch, &Actor::cli(&actor(&args.common)))
        .await?;
    print_record(&record, now, args.common.json, Some("updated"));
    Ok(())
}

fn actor(common: &Common) -> String {
    common
        .actor
        .clone()
        .or_else(|| ProcessEnv.var("USER"))
        .or_else(|| ProcessEnv.var("LOGNAME"))
        .unwrap_or_else(|| "unknown".into())
}

fn chrono_duration(s: &str) -> anyhow::Result<chrono::Duration> {
    let d =
        config::parse_duration(s).with_context(|| format!("`{s}` is not a duration (e.g. 30d, 12h, 90m)"))?;
    chrono::Duration::from_std(d).map_err(|_| anyhow::anyhow!("`{s}` is too long"))
}

fn record_json(r: &KeyRecord, now: DateTime<Utc>) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("prefix".into(), r.display_prefix.clone().into());
        o.insert("status".into(), r.status(now).as_str().into());
        o.insert("owner".into(), r.owner.to_tag().into());
    }
    v
}

fn print_created(key: &str, record: &KeyRecord, now: DateTime<Utc>, json: bool) {
    if json {
        let mut v = record_json(record, now);
        if let Some(o) = v.as_object_mut() {
            o.insert("key".into(), key.into());
        }
        println!("{v}");
        return;
    }
    println!("{key}");
    eprintln!(
        "created key {} ({}, prefix {}). The key above is shown only this once; keygate stores only its SHA-256 hash.",
        record.id, record.name, record.display_prefix
    );
}

fn print_record(r: &KeyRecord, now: DateTime<Utc>, json: bool, done: Option<&str>) {
    if json {
        println!("{}", record_json(r, now));
        return;
    }
    if let Some(done) = done {
        println!("{done} {}", r.id);
    }
    let ts = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
    println!("id:           {}", r.id);
    println!("name:         {}", r.name);
    println!("prefix:       {}…", r.display_prefix);
    println!("status:       {}", r.status(now).as_str());
    println!("org:          {}", r.org_id.as_deref().unwrap_or("-"));
    println!("owner:        {}", r.owner.to_tag());
    println!("environment:  {}", r.environment);
    println!("scopes:       {}", r.scopes.join(","));
    println!("read-only:    {}", r.restrictions.read_only);
    println!(
        "routes:       {}",
        if r.restrictions.routes.is_empty() {
            "all".to_owned()
        } else {
            r.restrictions.routes.join(",")
        }
    );
    println!(
        "quota:        {}",
        r.quota_limit
            .map_or_else(|| "default".to_owned(), |q| q.to_string())
    );
    println!("created by:   {}", r.created_by);
    println!("created:      {}", r.created_at.to_rfc3339());
    println!(
        "last used:    {}",
        r.last_used_at
            .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339())
    );
    println!("expires:      {}", ts(r.expires_at));
    println!("revoked:      {}", ts(r.revoked_at));
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

const QUICKSTART: &str = include_str!("../config/quickstart.toml");

async fn quickstart(listen: &str, clock: SharedClock) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("keygate-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let upstream = crate::demo::start(([127, 0, 0, 1], 0).into()).await?;
    let text = QUICKSTART
        .replace("{LISTEN}", listen)
        .replace("{UPSTREAM}", &format!("http://{upstream}"))
        .replace(
            "{STORE}",
            &format!("sqlite://{}", dir.join("keygate.db").display()),
        );
    let config = config::parse(&text, &std::collections::HashMap::new()).map_err(|d| {
        let lines: Vec<String> = d.into_iter().map(|d| d.message).collect();
        anyhow::anyhow!("quickstart config: {}", lines.join("; "))
    })?;
    let app = match crate::app::start(config, Arc::clone(&clock)).await {
        Ok(app) => app,
        Err(e) => {
            bail!("{e:#}\n(is something else on {listen}? try `keygate quickstart --listen 127.0.0.1:8081`)")
        }
    };
    let new = NewKey {
        name: "quickstart".into(),
        org_id: Some("acme".into()),
        scopes: vec!["read".into(), "write".into()],
        ..NewKey::default()
    };
    let (key, _) = app.keys().create(new, &Actor::cli("quickstart")).await?;
    let addr = app.proxy_addr();
    let url = format!("http://{addr}/v1/orgs/acme/items/1");
    println!(
        "keygate is running on http://{addr} in front of a demo upstream on http://{upstream}\n\
         that echoes the headers it receives.\n\n\
         Your API key (shown once; keygate stores only its SHA-256 hash):\n  {key}\n\n\
         Try it from another terminal:\n\
         \x20 curl -s -H 'Authorization: Bearer {key}' {url}\n\
         \x20 curl -s {url}            # no key: 401 JSON\n\n\
         Store: {dir}/keygate.db. Press Ctrl-C to stop.",
        key = key.expose(),
        dir = dir.display(),
    );
    crate::app::wait_for_signal().await?;
    app.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
