use std::collections::HashMap;
use std::path::Path;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn messages(src: &str) -> Vec<String> {
    match parse(src, &env(&[])) {
        Ok(_) => Vec::new(),
        Err(d) => d
            .into_iter()
            .map(|d| match d.at {
                Some((l, c)) => format!("{l}:{c}: {}", d.message),
                None => d.message,
            })
            .collect(),
    }
}

#[test]
fn the_example_config_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = load(&root.join("config/keygate.toml"), &env(&[])).expect("example config is valid");
    assert_eq!(config.auth.routes.routes().len(), 5);
    assert!(
        config
            .auth
            .routes
            .routes()
            .iter()
            .any(|r| r.name == "mcp" && r.mcp)
    );
    assert_eq!(config.quota.limit, 1000);
    assert_eq!(config.proxy.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.admin.expect("admin").listen.to_string(), "127.0.0.1:9091");
}

/// The commented-out `table` of the example config, uncommented.
fn example_block(table: &str) -> String {
    let example = include_str!("../../config/keygate.toml");
    let start = example
        .find(&format!("# [{table}]"))
        .unwrap_or_else(|| panic!("commented [{table}] table"));
    example[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_example_redis_table_loads_when_uncommented() {
    let block = example_block("redis");
    let config = parse(&block, &env(&[])).unwrap_or_else(|d| panic!("{block}\n{d:?}"));
    assert_eq!(config.redis.expect("redis").url, "redis://127.0.0.1:6379");
}

#[test]
fn the_example_hygiene_table_loads_when_uncommented() {
    let block = example_block("hygiene");
    let config = parse(&block, &env(&[])).unwrap_or_else(|d| panic!("{block}\n{d:?}"));
    assert_eq!(
        config.hygiene.pause_after_idle,
        Some(std::time::Duration::from_secs(90 * 86_400))
    );
    assert_eq!(config.hygiene.on_leak, crate::manage::OnLeak::Pause);
    let errors = messages("[hygiene]\npause_after_idle = \"10m\"\non_leak = \"delete\"\n");
    assert_eq!(
        errors,
        [
            "2:20: hygiene.pause_after_idle: must be at least 1h",
            "3:11: hygiene.on_leak: `delete` must be `pause` or `revoke`",
        ]
    );
}

#[test]
fn the_quickstart_config_loads_once_filled_in() {
    let text = include_str!("../../config/quickstart.toml")
        .replace("{LISTEN}", "127.0.0.1:0")
        .replace("{UPSTREAM}", "http://127.0.0.1:1")
        .replace("{STORE}", "sqlite::memory:");
    assert!(parse(&text, &env(&[])).is_ok());
}

#[test]
fn an_empty_file_gives_the_documented_defaults() {
    let config = parse("", &env(&[])).expect("defaults are valid");
    assert_eq!(config.store.url, "sqlite://keygate.db");
    assert_eq!(config.quota.limit, 1000);
    assert_eq!(config.quota.period, crate::quota::Period::Days(30));
    assert_eq!(config.auth.credentials.format.prefix(), "kg");
    assert_eq!(config.auth.status.revoked, http::StatusCode::UNAUTHORIZED);
    assert!(config.auth.routes.routes().is_empty());
}

#[test]
fn every_problem_is_reported_at_once_with_line_and_column() {
    let src = include_str!("../../config/test/invalid.toml");
    let got = messages(src);
    let expected = [
        "2:10: proxy.listen: `localhost` is not an address like 127.0.0.1:8080",
        "3:12: proxy.upstream: `https://api.example.com`: TLS upstreams are not supported",
        "4:13: proxy.unmatched: `maybe` must be `deny` or `authenticate`",
        "5:1: unknown key `proxy.listne`",
        "8:18: keys.revoked_status: 404 must be 401 or 403",
        "11:10: quota.period: `monthly` must be `month` or `<N>d`",
        "15:8: route `a`: org_param `orgz` is not a `{param}` of the path",
        "17:1: unknown key `route.0.scops`",
        "20:8: route `a` is defined twice",
        "21:12: route `a`: `get` is not an uppercase HTTP method",
        "22:8: route `a`: `**` may only be the last segment",
    ];
    for want in expected {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing `{want}` in {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len(), "{got:#?}");
}

#[test]
fn sched_policy_is_normal_unless_auto_or_batch_is_asked_for() {
    use crate::proxy::SchedPolicy;
    let parsed = |src: &str| parse(src, &env(&[])).map(|c| c.proxy.sched_policy).ok();
    assert_eq!(parsed(""), Some(SchedPolicy::Normal));
    for policy in [SchedPolicy::Normal, SchedPolicy::Auto, SchedPolicy::Batch] {
        let src = format!("[proxy]\nsched_policy = \"{}\"\n", policy.name());
        assert_eq!(parsed(&src), Some(policy));
    }
    assert_eq!(
        messages("[proxy]\nsched_policy = \"fifo\"\n"),
        ["2:16: proxy.sched_policy: `fifo` must be `normal`, `auto` or `batch`"]
    );
}

#[test]
fn cpu_affinity_is_auto_unless_turned_off() {
    let parsed = |src: &str| parse(src, &env(&[])).map(|c| c.proxy.cpu_affinity).ok();
    assert_eq!(parsed(""), Some(crate::proxy::CpuAffinity::Auto));
    assert_eq!(
        parsed("[proxy]\ncpu_affinity = \"off\"\n"),
        Some(crate::proxy::CpuAffinity::Off)
    );
    assert_eq!(
        messages("[proxy]\ncpu_affinity = \"pin\"\n"),
        ["2:16: proxy.cpu_affinity: `pin` must be `auto` or `off`"]
    );
    // Three names read as a list.
    assert_eq!(
        messages("[quota]\non_redis_error = \"crash\"\n"),
        ["2:18: quota.on_redis_error: `crash` must be `local`, `allow` or `deny`"]
    );
}

#[test]
fn syntax_errors_have_a_place() {
    let got = messages("[proxy]\nlisten = \n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("2:"), "{got:?}");
}

#[test]
fn type_errors_have_a_place() {
    let got = messages("[quota]\nlimit = \"lots\"\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("2:9"), "{got:?}");
}

#[test]
fn unsupported_tables_are_refused_clearly() {
    let got = messages("[redis]\nurl = \"http://127.0.0.1\"\n");
    assert!(
        got[0].starts_with("2:7: redis.url: must start with redis://"),
        "{got:?}"
    );
    let got = messages("[redis]\ntimeout = \"1s\"\n");
    assert!(got[0].contains("needs `url`"), "{got:?}");
    let got = messages("[ratelimit]\nper_key = \"1/s\"\n");
    assert!(got[0].contains("unknown key `ratelimit`"), "{got:?}");
}

#[test]
fn the_example_rate_limit_and_clients_tables_load_when_uncommented() {
    let block = format!("{}{}", example_block("rate_limit"), example_block("clients"));
    let config = parse(&block, &env(&[])).unwrap_or_else(|d| panic!("{block}\n{d:?}"));
    assert_eq!(
        config.auth.rate_limit.map(|r| r.to_string()).as_deref(),
        Some("100/s")
    );
    let trusted: Vec<String> = config
        .proxy
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(trusted, ["10.0.0.0/8", "fd00::/8"]);
    assert_eq!(parse("", &env(&[])).expect("valid").auth.rate_limit, None);
    let errors = messages(
        "[rate_limit]\nper_key = \"100/d\"\n[clients]\ntrusted_proxies = [\"10.0.0.0/33\", \"192.0.2.1\"]\n",
    );
    assert_eq!(
        errors,
        [
            "2:11: rate_limit.per_key: `100/d` is not a rate like 10/s, 600/m or 1000/h (1 to 999999 per window)",
            "4:20: clients.trusted_proxies: `10.0.0.0/33` is not an IP address or CIDR network like 10.0.0.0/8 or 2001:db8::/32",
        ]
    );
}

#[test]
fn database_url_comes_from_the_environment() {
    let config = parse("", &env(&[("KEYGATE_DATABASE_URL", "sqlite:///tmp/x.db")])).expect("valid");
    assert_eq!(config.store.url, "sqlite:///tmp/x.db");
}

#[test]
fn redis_comes_from_the_table_or_the_environment() {
    let config = parse("[redis]\nurl = \"redis://127.0.0.1:6379\"\n", &env(&[])).expect("valid");
    let redis = config.redis.expect("redis configured");
    assert_eq!(redis.url, "redis://127.0.0.1:6379");
    assert_eq!(redis.key_prefix, "keygate:");
    assert_eq!(redis.timeout, Duration::from_millis(200));
    let config = parse("", &env(&[("KEYGATE_REDIS_URL", "redis://10.0.0.1:6379/2")])).expect("valid");
    assert_eq!(
        config.redis.expect("redis from env").url,
        "redis://10.0.0.1:6379/2"
    );
    assert!(parse("", &env(&[])).expect("valid").redis.is_none());
    let config = parse("[store]\nurl = \"postgres://localhost/keygate\"\n", &env(&[])).expect("valid");
    assert_eq!(config.store.url, "postgres://localhost/keygate");
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("30d"), Some(Duration::from_secs(30 * 86_400)));
    for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn per_environment_settings_come_from_keygate_variables_and_win_over_the_file() {
    let file = "[proxy]\nlisten = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:3000\"\n";
    let config = parse(
        file,
        &env(&[
            ("KEYGATE_PROXY_LISTEN", "0.0.0.0:9000"),
            ("KEYGATE_PROXY_UPSTREAM", "http://app:8000"),
            ("KEYGATE_ADMIN_LISTEN", "127.0.0.1:9191"),
            ("KEYGATE_KEYS_ENVIRONMENT", "test"),
        ]),
    )
    .expect("valid");
    assert_eq!(config.proxy.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.proxy.upstreams[0].authority(), "app:8000");
    let admin = config.admin.expect("the variable turns the admin listener on");
    assert_eq!(admin.listen.to_string(), "127.0.0.1:9191");
    assert_eq!(admin.max_failed_auth_per_minute, 10);
    assert_eq!(config.auth.credentials.format.environment(), "test");
    let config = parse(file, &env(&[])).expect("valid");
    assert_eq!(config.proxy.listen.to_string(), "127.0.0.1:8080");
    assert!(config.admin.is_none());
}

#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let err = parse(
        "",
        &env(&[
            ("KEYGATE_PROXY_LISTEN", "everywhere"),
            ("KEYGATE_KEYS_ENVIRONMENT", "Prod!"),
        ]),
    )
    .expect_err("invalid");
    let got: Vec<_> = err.iter().map(|d| (d.at, d.message.as_str())).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter().all(|(at, _)| at.is_none()),
        "no place in the file: {got:?}"
    );
    assert!(
        got.iter()
            .any(|(_, m)| m.starts_with("KEYGATE_PROXY_LISTEN (proxy.listen): `everywhere`")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|(_, m)| m.starts_with("KEYGATE_KEYS_ENVIRONMENT (keys.environment): ")),
        "{got:?}"
    );
}

#[test]
fn the_signing_key_is_checked_without_being_repeated_and_may_come_from_the_environment() {
    assert_eq!(
        messages("[identity]\nsigning_key = \"short-secret\"\n"),
        ["2:15: identity.signing_key: must be at least 32 bytes (e.g. `openssl rand -base64 32`); it has 12"]
    );
    let config = parse("", &env(&[])).expect("valid");
    assert!(config.proxy.signer.is_none(), "unsigned by default");
    let secret = "from-the-environment-0123456789abcdef";
    let config = parse("", &env(&[("KEYGATE_IDENTITY_SIGNING_KEY", secret)])).expect("valid");
    assert!(config.proxy.signer.is_some());
    let err = parse("", &env(&[("KEYGATE_IDENTITY_SIGNING_KEY", "short-secret")])).expect_err("short");
    assert!(
        err[0]
            .message
            .starts_with("KEYGATE_IDENTITY_SIGNING_KEY (identity.signing_key): must be at least 32 bytes"),
        "{err:?}"
    );
    assert!(
        !format!("{err:?}{config:?}").contains("short-secret") && !format!("{config:?}").contains(secret)
    );
}

#[test]
fn other_credentials_default_for_routes_and_a_route_may_override_it() {
    let config = parse(
        "[proxy]\nother_credentials = \"pass\"\n\
         [[route]]\nname = \"a\"\npath = \"/a\"\n\
         [[route]]\nname = \"b\"\npath = \"/b\"\nother_credentials = \"reject\"\nkey_query_param = \"api_key\"\n",
        &env(&[]),
    )
    .expect("valid");
    let routes = config.auth.routes.routes();
    assert_eq!(
        routes[0].other_credentials,
        crate::auth::route::OtherCredentials::Pass
    );
    assert_eq!(routes[0].key_query_param, None);
    assert_eq!(
        routes[1].other_credentials,
        crate::auth::route::OtherCredentials::Reject
    );
    assert_eq!(routes[1].key_query_param.as_deref(), Some("api_key"));
    let errors = messages(
        "[proxy]\nother_credentials = \"allow\"\n\
         [[route]]\nname = \"a\"\npath = \"/a\"\nother_credentials = \"maybe\"\nkey_query_param = \"api key\"\n",
    );
    assert_eq!(
        errors,
        [
            "2:21: proxy.other_credentials: `allow` must be `reject` or `pass`",
            "6:21: route `a` other_credentials: `maybe` must be `reject` or `pass`",
            "7:19: route `a` key_query_param: `api key` must be 1-64 characters of A-Z, a-z, 0-9, `_`, `-`, `.`",
        ]
    );
}

#[test]
fn github_public_keys_must_be_a_readable_key_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("keys.json");
    std::fs::write(
        &bad,
        r#"{"public_keys": [{"key_identifier": "k1", "key": "not a pem"}]}"#,
    )
    .expect("write");
    let errors = messages(&format!(
        "[hygiene]\ngithub_public_keys = \"{}\"\n",
        bad.display()
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("2:22: hygiene.github_public_keys:"),
        "{errors:?}"
    );
    assert!(
        errors[0].ends_with("key `k1` is not a P-256 public key in PEM"),
        "{errors:?}"
    );
    let missing = messages("[hygiene]\ngithub_public_keys = \"/nonexistent/keys.json\"\n");
    assert!(missing[0].contains("/nonexistent/keys.json"), "{missing:?}");
}

#[test]
fn the_example_mcp_table_loads_when_uncommented() {
    let block = example_block("mcp");
    let config = parse(&block, &env(&[])).unwrap_or_else(|d| panic!("{block}\n{d:?}"));
    let mcp = &config.proxy.mcp;
    assert_eq!(mcp.max_body, 1 << 20);
    assert_eq!(mcp.read_only_tools, ["search_*", "get_*"]);
    assert_eq!(mcp.tool_costs, [("report".to_owned(), 5)]);
    assert_eq!(mcp.free_methods, crate::mcp::Settings::default().free_methods);
    assert_eq!(
        parse("", &env(&[])).expect("valid").proxy.mcp,
        crate::mcp::Settings::default()
    );
    let errors = messages("[mcp]\nmax_body_bytes = 10\nread_only_tools = [\"bad tool\"]\n");
    assert_eq!(
        errors,
        [
            "2:18: mcp.max_body_bytes: must be from 1024 to 67108864 (64 MiB)",
            "3:20: mcp.read_only_tools: `bad tool` must be 1-128 characters of A-Z, a-z, 0-9, `_`, `-`, `.`, `/`, `:` and `*`",
        ]
    );
}
