//! The stored key record and its status at a point in time.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::secret::KeyHash;

/// Who a key belongs to: a person, or an organisation as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Owner {
    /// A personal key of one user.
    User(String),
    /// A key owned by an organisation.
    Org(String),
}

impl Owner {
    /// `user:<id>` or `org:<id>`, as forwarded upstream and accepted by the CLI.
    pub fn to_tag(&self) -> String {
        match self {
            Self::User(id) => format!("user:{id}"),
            Self::Org(id) => format!("org:{id}"),
        }
    }

    /// Parses `user:<id>` or `org:<id>`.
    pub fn parse(tag: &str) -> Option<Self> {
        match tag.split_once(':') {
            Some((_, id)) if id.is_empty() || id.contains('\0') => None,
            Some(("user", id)) => Some(Self::User(id.to_owned())),
            Some(("org", id)) => Some(Self::Org(id.to_owned())),
            _ => None,
        }
    }
}

/// Limits a key carries beyond its scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restrictions {
    /// Only safe methods (GET, HEAD, OPTIONS) are allowed.
    #[serde(default)]
    pub read_only: bool,
    /// When non-empty, only these route names are allowed.
    #[serde(default)]
    pub routes: Vec<String>,
    /// When non-empty, only clients in these networks may use the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<IpNet>,
    /// The key's own short-window rate limit, instead of `[rate_limit] per_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    /// What the key may do on MCP routes.
    #[serde(default, skip_serializing_if = "McpPolicy::is_open")]
    pub mcp: McpPolicy,
}

/// A key's policy on `mcp = true` routes, independent of its REST access.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpPolicy {
    /// MCP paused for this key: every MCP method is refused except the few a client
    /// needs to fail gracefully (`initialize`, `ping`, notifications, `DELETE`).
    #[serde(default)]
    pub disabled: bool,
    /// Tools the key may see and call: exact names and `*` globs; empty = all.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Only read-only tools (`[mcp] read_only_tools`, or the upstream's `readOnlyHint`).
    #[serde(default)]
    pub read_only: bool,
}

impl McpPolicy {
    /// No MCP restriction at all.
    pub fn is_open(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether a tool allowlist entry is well formed: 1-128 characters of `A-Z`, `a-z`,
/// `0-9`, `_`, `-`, `.`, `/`, `:` and the glob `*`.
pub fn is_valid_tool_pattern(p: &str) -> bool {
    (1..=128).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b':' | b'*'))
}

impl Restrictions {
    /// Whether a client at `ip` may use the key (any client when the allowlist is empty).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_ips.is_empty() || self.allowed_ips.iter().any(|net| net.contains(&ip))
    }
}

/// Parses an IP allowlist entry: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare
/// address (one host). Strict, like the OpenAPI pattern: no surrounding space, no
/// leading zeros in an IPv4 octet or the prefix. Host bits below the prefix are
/// dropped (`10.1.2.3/8` is `10.0.0.0/8`).
///
/// # Errors
/// A sentence naming the entry.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let bad = || format!("`{s}` is not an IP address or CIDR network like 10.0.0.0/8 or 2001:db8::/32");
    let (addr, prefix) = match s.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (s, None),
    };
    // The standard library's parser refuses leading zeros in IPv4 octets.
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p)
            if p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0')) =>
        {
            p.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad)?
        }
        Some(_) => return Err(bad()),
    };
    IpNet::new(addr, prefix).map(|n| n.trunc()).map_err(|_| bad())
}

/// A short-window rate: `count` requests per second, minute or hour (`10/s`,
/// `600/m`, `1000/h`). Admitted as a token bucket holding `count` that refills
/// continuously at `count` per window: a burst of `count` at once, then one request
/// every window / `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    /// Requests per window (the burst), 1 to [`Rate::MAX_COUNT`].
    pub count: u32,
    /// The window in seconds: 1, 60 or 3600.
    pub window_secs: u32,
}

impl Rate {
    /// The largest count accepted (one request per microsecond at most).
    pub const MAX_COUNT: u32 = 999_999;

    /// Parses `N/s`, `N/m` or `N/h`.
    ///
    /// # Errors
    /// A sentence naming the value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a rate like 10/s, 600/m or 1000/h (1 to {} per window)",
                Self::MAX_COUNT
            )
        };
        let (count, unit) = s.split_once('/').ok_or_else(bad)?;
        let window_secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        if count.is_empty() || count.starts_with('0') || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let count: u32 = count.parse().map_err(|_| bad())?;
        if !(1..=Self::MAX_COUNT).contains(&count) {
            return Err(bad());
        }
        Ok(Self { count, window_secs })
    }

    /// Microseconds between two requests at the sustained rate (at least 1).
    pub fn interval_micros(self) -> i64 {
        (i64::from(self.window_secs) * 1_000_000 / i64::from(self.count)).max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.window_secs {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl TryFrom<String> for Rate {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> Self {
        r.to_string()
    }
}

/// A key as the admin store keeps it. Never holds the plaintext. (De)serialised for
/// the L2 cache without its hash, which is the cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Stable id (UUID v4).
    pub id: Uuid,
    /// The organisation the key is bound to, if any.
    pub org_id: Option<String>,
    /// Who the key belongs to.
    pub owner: Owner,
    /// Human label.
    pub name: String,
    /// Prefix safe to display (`kg_live_8f760b49`).
    pub display_prefix: String,
    /// SHA-256 of the key.
    #[serde(skip, default)]
    pub hash: KeyHash,
    /// Environment the key was issued for.
    pub environment: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Further limits. Shared: cached records without any point at one instance.
    pub restrictions: Arc<Restrictions>,
    /// Quota limit overriding the configured default.
    pub quota_limit: Option<u64>,
    /// Free-form metadata.
    pub metadata: serde_json::Value,
    /// Who created the key.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (written in batches, so up to a flush interval behind).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Temporarily disabled.
    pub paused: bool,
    /// When it was revoked (irreversible).
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key's state at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Usable.
    Active,
    /// Paused; resume makes it usable again.
    Paused,
    /// Past its expiry.
    Expired,
    /// Revoked for good.
    Revoked,
}

impl Status {
    /// The status at `now` of a key revoked, paused and expiring as given (times of
    /// any one kind: `DateTime`s, or the cache's integer nanoseconds): revocation
    /// wins over pause, pause over expiry.
    pub fn at<T: PartialOrd>(revoked_at: Option<T>, paused: bool, expires_at: Option<T>, now: T) -> Self {
        if revoked_at.is_some_and(|at| at <= now) {
            Self::Revoked
        } else if paused {
            Self::Paused
        } else if expires_at.is_some_and(|at| at <= now) {
            Self::Expired
        } else {
            Self::Active
        }
    }

    /// The lowercase name used in listings and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// Parses a status name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "paused" => Some(Self::Paused),
            "expired" => Some(Self::Expired),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl KeyRecord {
    /// The key's status at `now`; revocation wins over pause, pause over expiry.
    pub fn status(&self, now: DateTime<Utc>) -> Status {
        Status::at(self.revoked_at, self.paused, self.expires_at, now)
    }

    /// Whether the key holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The record as L2 (Redis) holds it: without what only the admin store's
    /// readers show (`metadata`, `created_by`, `display_prefix`, `last_used_at`),
    /// which the decision never reads. L1 holds a [`CachedKey`](super::CachedKey).
    #[must_use]
    pub fn for_cache(self) -> Self {
        Self {
            metadata: serde_json::Value::Null,
            created_by: String::new(),
            display_prefix: String::new(),
            last_used_at: None,
            ..self
        }
    }
}

#[cfg(test)]
impl KeyRecord {
    /// A live key of `org` (owned by it) for the crate's unit tests: no scopes, no
    /// limits, no expiry, created now.
    pub(crate) fn example(org: &str) -> Self {
        Self {
            id: Uuid::new_v4(),
            org_id: Some(org.into()),
            owner: Owner::Org(org.into()),
            name: "k".into(),
            display_prefix: "kg_live_x".into(),
            hash: KeyHash::default(),
            environment: "live".into(),
            scopes: Vec::new(),
            restrictions: Arc::default(),
            quota_limit: None,
            metadata: serde_json::Value::Null,
            created_by: "test".into(),
            created_at: Utc::now(),
            last_used_at: None,
            expires_at: None,
            paused: false,
            revoked_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_the_same() {
        for (text, count, window_secs, interval) in [
            ("10/s", 10, 1, 100_000),
            ("600/m", 600, 60, 100_000),
            ("1/h", 1, 3600, 3_600_000_000),
            ("999999/s", 999_999, 1, 1),
        ] {
            let rate = Rate::parse(text).expect("a valid rate");
            assert_eq!((rate.count, rate.window_secs), (count, window_secs), "{text}");
            assert_eq!(rate.interval_micros(), interval, "{text}");
            assert_eq!(rate.to_string(), text);
        }
        for bad in [
            "",
            "10",
            "0/s",
            "10/d",
            "1000000/s",
            "-1/s",
            "+1/s",
            "1.5/s",
            "10/ s",
            "/s",
            "01/s",
            " 10/s",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
        let json: Rate = serde_json::from_str("\"5/m\"").expect("from JSON");
        assert_eq!(serde_json::to_string(&json).expect("to JSON"), "\"5/m\"");
    }

    #[test]
    fn networks_parse_as_cidrs_or_hosts() {
        for (text, net) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("::/0", "::/0"),
        ] {
            assert_eq!(parse_network(text).expect("valid").to_string(), net, "{text}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/08",
            "10.0.0.0/",
            "01.2.3.4",
            "host",
            "::/129",
            "1.2.3.4/+8",
            "01.2.3.4/8",
            " 127.0.0.1/32",
            "127.0.0.1/32 ",
        ] {
            assert!(parse_network(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_allowlist_admits_only_its_networks_and_is_open_when_empty() {
        let open = Restrictions::default();
        assert!(open.allows_ip("203.0.113.1".parse().expect("ip")));
        let restricted = Restrictions {
            allowed_ips: vec![
                parse_network("10.0.0.0/8").expect("net"),
                parse_network("2001:db8::/32").expect("net"),
            ],
            ..Restrictions::default()
        };
        for (ip, allowed) in [
            ("10.200.3.4", true),
            ("::ffff:10.0.0.1", true),
            ("2001:db8:1::9", true),
            ("11.0.0.1", false),
            ("2001:db9::1", false),
            ("::1", false),
        ] {
            assert_eq!(restricted.allows_ip(ip.parse().expect("ip")), allowed, "{ip}");
        }
        // Records written before these fields existed still load.
        let old: Restrictions = serde_json::from_str(r#"{"read_only":true,"routes":[]}"#).expect("old JSON");
        assert_eq!(old.allowed_ips, Vec::<IpNet>::new());
        assert_eq!(old.rate_limit, None);
    }
}
