//! The command line: each subcommand parses its flags and calls one library function.
//! `keys` commands live in `cli/keys.rs`; `cli/remote.rs` is their admin-API client.

mod explain;
mod keys;
mod remote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::clock::{SharedClock, SystemClock};
use crate::config::{self, Config, ProcessEnv};
use crate::manage::NewKey;
use crate::store::Actor;
use crate::telemetry::LogFormat;

/// keygate: API-key authentication in front of the API you already run.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, env = "KEYGATE_LOG_FORMAT", default_value_t = LogFormat::Human)]
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
    /// Run the proxy. SIGTERM/SIGINT drain and stop; SIGHUP reloads the config file.
    Serve {
        /// How often the config file is read for changes (reloaded when its content
        /// changed); `0s` = only on SIGHUP.
        #[arg(long, env = "KEYGATE_CONFIG_POLL_INTERVAL", default_value = "2s", value_parser = duration)]
        config_poll_interval: std::time::Duration,
    },
    /// Validate a config file and report every problem with line:column.
    CheckConfig {
        /// The file (default: --config).
        file: Option<PathBuf>,
    },
    /// Manage keys: directly in the store named by the config, or through a running
    /// admin API with --admin-url (admin key from KEYGATE_ADMIN_KEY).
    Keys(Box<keys::KeysArgs>),
    /// Explain what keygate would decide for a request, and why, without sending it.
    /// Exit 0: allowed; 1: refused; 2: usage or config error.
    Explain(explain::ExplainArgs),
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
        Command::Serve { config_poll_interval } => {
            let config = load(&cli.config)?;
            let source = crate::app::Source {
                path: cli.config,
                poll_interval: config_poll_interval,
            };
            crate::app::serve(config, source, clock).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => Ok(check_config(file.as_deref().unwrap_or(&cli.config))),
        Command::Keys(args) => keys::run(*args, &cli.config, clock).await,
        Command::Explain(args) => Ok(explain::run(args, &cli.config, clock).await),
    }
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    config::parse_duration(s).ok_or_else(|| format!("`{s}` is not a duration like 500ms, 2s or 1m"))
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

const QUICKSTART: &str = include_str!("../../config/quickstart.toml");

async fn quickstart(listen: &str, clock: SharedClock) -> anyhow::Result<ExitCode> {
    let mut signals = crate::app::Signals::install()?;
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
    signals.stop_or_hangup().await;
    app.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
