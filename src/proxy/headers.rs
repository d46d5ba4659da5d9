//! Header rewriting: what leaves the client's request (credentials, hop-by-hop and
//! every client-sent identity header), what keygate adds (identity, request id,
//! `X-Forwarded-*`), and the quota headers on responses.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::keys::CachedKey;
use crate::quota::Usage;

/// The identity header names, built once from `[identity] header_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    prefix: String,
    key_id: HeaderName,
    key_name: HeaderName,
    org_id: HeaderName,
    environment: HeaderName,
    scopes: HeaderName,
    owner: HeaderName,
    auth_method: HeaderName,
    signature: HeaderName,
}

impl Default for Identity {
    fn default() -> Self {
        Self::new("X-Keygate-").unwrap_or_else(|_| unreachable!("the default prefix is valid"))
    }
}

impl Identity {
    /// Header names under `prefix` (e.g. `X-Keygate-` → `x-keygate-key-id`, ...).
    ///
    /// # Errors
    /// When `prefix` does not end in `-` or makes invalid header names.
    pub fn new(prefix: &str) -> Result<Self, String> {
        if !prefix.ends_with('-') || prefix.len() < 2 {
            return Err(format!("`{prefix}` must end with `-`, like `X-Keygate-`"));
        }
        let prefix = prefix.to_ascii_lowercase();
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .map_err(|_| format!("`{prefix}` does not make valid header names"))
        };
        Ok(Self {
            key_id: name("key-id")?,
            key_name: name("key-name")?,
            org_id: name("org-id")?,
            environment: name("environment")?,
            scopes: name("scopes")?,
            owner: name("owner")?,
            auth_method: name("auth-method")?,
            signature: name("signature")?,
            prefix,
        })
    }

    /// The headers the signed identity covers, in the order it covers them.
    pub fn signed(&self) -> [&HeaderName; 7] {
        [
            &self.key_id,
            &self.key_name,
            &self.org_id,
            &self.environment,
            &self.scopes,
            &self.owner,
            &self.auth_method,
        ]
    }

    /// The signature header's name (`X-Keygate-Signature`).
    pub fn signature(&self) -> &HeaderName {
        &self.signature
    }

    /// Whether a client-sent header name is one of ours, in any spelling: case is
    /// already folded by `http`, and `_` counts as `-` (some frameworks fold them).
    pub fn is_identity(&self, name: &HeaderName) -> bool {
        self.is_identity_name(name.as_str().as_bytes())
    }

    /// [`is_identity`](Self::is_identity) for a name as sent, in any case.
    pub fn is_identity_name(&self, name: &[u8]) -> bool {
        name.len() >= self.prefix.len()
            && name
                .iter()
                .zip(self.prefix.as_bytes())
                .all(|(&n, &p)| n.to_ascii_lowercase() == p || (n == b'_' && p == b'-'))
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One scan over what is there instead of a hashed removal per name: most messages
    // carry none of these.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(present.iter()) {
        headers.remove(name);
    }
}

/// What the upstream should learn about the request besides its own headers.
#[derive(Debug)]
pub struct Forwarded<'a> {
    /// The authenticated key (absent on public routes).
    pub key: Option<&'a CachedKey>,
    /// The client's address as keygate saw it.
    pub peer: SocketAddr,
    /// This request's id.
    pub request_id: &'a HeaderValue,
    /// The upstream's `Host`.
    pub host: &'a HeaderValue,
    /// The authority of an absolute-form request target, which wins over the
    /// client's `Host` (RFC 9112 §3.2.2).
    pub authority: Option<&'a http::uri::Authority>,
    /// Leave `Authorization` and the key header as sent: the request was passed
    /// through to the API's own login (`other_credentials = "pass"`).
    pub keep_credentials: bool,
}

/// Rewrites request headers for the upstream: strips credentials, hop-by-hop and every
/// client-sent identity header, then sets the trusted ones.
pub fn prepare_request(
    headers: &mut HeaderMap,
    identity: &Identity,
    key_header: Option<&HeaderName>,
    fwd: &Forwarded<'_>,
) {
    // Taken before the hop-by-hop sweep: `Connection: host` must not let a client
    // drop Host and have its own X-Forwarded-Host passed on as keygate's.
    let host = headers.remove(header::HOST);
    let host = match fwd.authority {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => host,
    };
    remove_hop_by_hop(headers);
    // Credentials, the client's X-Forwarded-Host, identity headers, and credential
    // headers spelled with `_` (`X_API_Key`), which frameworks that fold `_` into `-`
    // would read as the credential: found in one scan, removed by name.
    let mut spoofed = 0;
    let strip: Vec<HeaderName> = headers
        .keys()
        .filter(|&n| {
            let ours =
                identity.is_identity(n) || is_underscored_credential(n.as_str().as_bytes(), key_header);
            spoofed += usize::from(ours);
            let credential = !fwd.keep_credentials && (n == header::AUTHORIZATION || Some(n) == key_header);
            ours || credential || n == X_FORWARDED_HOST
        })
        .cloned()
        .collect();
    if spoofed > 0 {
        tracing::debug!(
            count = spoofed,
            "stripped client-sent identity and credential headers"
        );
    }
    for name in &strip {
        headers.remove(name);
    }
    insert_identity(headers, identity, fwd.key);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(header::HOST, fwd.host.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    append_forwarded_for(headers, fwd.peer);
    headers.insert(X_REQUEST_ID, fwd.request_id.clone());
}

/// The key header spelled with `_` for some `-` (`X_API_Key`), in any case.
pub fn is_underscored_credential(name: &[u8], key_header: Option<&HeaderName>) -> bool {
    let folds_to = |target: &str| {
        name.len() == target.len()
            && name
                .iter()
                .zip(target.as_bytes())
                .all(|(&n, &t)| n.to_ascii_lowercase() == t || (n == b'_' && t == b'-'))
    };
    name.contains(&b'_') && key_header.is_some_and(|h| folds_to(h.as_str()))
}

/// Sets the trusted identity headers for `key` (or `auth-method: none` on a public
/// route). Callers strip client-sent identity headers first.
pub fn insert_identity(headers: &mut HeaderMap, identity: &Identity, key: Option<&CachedKey>) {
    match key {
        Some(key) => {
            headers.insert(identity.key_id.clone(), uuid_value(key));
            headers.insert(identity.key_name.clone(), text_value(&key.name));
            if let Some(org) = &key.org_id {
                headers.insert(identity.org_id.clone(), text_value(org));
            }
            headers.insert(identity.environment.clone(), text_value(&key.environment));
            headers.insert(identity.scopes.clone(), text_value(&key.scopes.join(",")));
            headers.insert(identity.owner.clone(), text_value(&key.owner));
            headers.insert(identity.auth_method.clone(), HeaderValue::from_static("api_key"));
        }
        None => {
            headers.insert(identity.auth_method.clone(), HeaderValue::from_static("none"));
        }
    }
}

/// Appends the identity headers [`insert_identity`] sets as HTTP/1.1 field lines
/// (`name: value\r\n`) to `out`, the same values written in place, with no header
/// value built.
pub fn write_identity(out: &mut Vec<u8>, identity: &Identity, key: Option<&CachedKey>) {
    fn line(out: &mut Vec<u8>, name: &HeaderName, value: impl FnOnce(&mut Vec<u8>)) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        value(out);
        out.extend_from_slice(b"\r\n");
    }
    let Some(key) = key else {
        line(out, &identity.auth_method, |o| o.extend_from_slice(b"none"));
        return;
    };
    let mut id = uuid::Uuid::encode_buffer();
    let id = key.id.hyphenated().encode_lower(&mut id);
    line(out, &identity.key_id, |o| o.extend_from_slice(id.as_bytes()));
    line(out, &identity.key_name, |o| write_text(o, &key.name));
    if let Some(org) = &key.org_id {
        line(out, &identity.org_id, |o| write_text(o, org));
    }
    line(out, &identity.environment, |o| write_text(o, &key.environment));
    line(out, &identity.scopes, |o| {
        for (i, scope) in key.scopes.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            write_text(o, scope);
        }
    });
    line(out, &identity.owner, |o| write_text(o, &key.owner));
    line(out, &identity.auth_method, |o| o.extend_from_slice(b"api_key"));
}

/// [`text_value`]'s encoding, appended to `out` (byte by byte: the values are short,
/// and copying plain runs whole measured no cheaper for them).
fn write_text(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if is_plain_text(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
}

/// A byte free text carries as it is: printable ASCII but `%`.
fn is_plain_text(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'%'
}

thread_local! {
    // The last peer address and its text: a worker's clients are mostly one address
    // (a load balancer, the pod's own loopback), and formatting it is not free.
    static PEER_TEXT: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

fn peer_value(ip: IpAddr) -> Option<HeaderValue> {
    PEER_TEXT.with_borrow_mut(|last| {
        if let Some((seen, value)) = last.as_ref()
            && *seen == ip
        {
            return Some(value.clone());
        }
        let value = HeaderValue::from_str(&ip.to_string()).ok()?;
        *last = Some((ip, value.clone()));
        Some(value)
    })
}

/// Appends the peer to `X-Forwarded-For` (the rightmost entry is the one keygate saw).
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let prior: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if let Some(value) = forwarded_for(&prior, peer) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// `X-Forwarded-For`: the `prior` entries the client sent, then the peer.
pub fn forwarded_for(prior: &[&str], peer: SocketAddr) -> Option<HeaderValue> {
    let ip = peer_value(peer.ip())?;
    if prior.is_empty() {
        return Some(ip);
    }
    let value = format!("{}, {}", prior.join(", "), String::from_utf8_lossy(ip.as_bytes()));
    HeaderValue::from_str(&value).ok()
}

/// Rewrites upstream response headers for the client: hop-by-hop out, request id and
/// quota headers in.
pub fn prepare_response(
    headers: &mut HeaderMap,
    usage: Option<&Usage>,
    request_id: &HeaderValue,
    now: DateTime<Utc>,
) {
    remove_hop_by_hop(headers);
    if let Some(usage) = usage {
        insert_rate_limit(
            headers,
            usage.limit,
            usage.remaining,
            crate::quota::seconds_until(usage.reset_at, now),
        );
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// Sets `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds).
pub fn insert_rate_limit(headers: &mut HeaderMap, limit: u64, remaining: u64, reset_secs: u64) {
    for (name, value) in rate_limit_fields(limit, remaining, reset_secs) {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// The `RateLimit-*` fields' names and values.
pub fn rate_limit_fields(limit: u64, remaining: u64, reset_secs: u64) -> [(HeaderName, u64); 3] {
    [
        (RATELIMIT_LIMIT, limit),
        (RATELIMIT_REMAINING, remaining),
        (RATELIMIT_RESET, reset_secs),
    ]
}

/// The request id: the client's `X-Request-Id` when it is short and plain, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    request_id_or_new(headers.get(X_REQUEST_ID).cloned())
}

/// The client's request id `sent`, when it is short and plain, else a new one.
pub fn request_id_or_new(sent: Option<HeaderValue>) -> HeaderValue {
    if let Some(v) = sent
        && (1..=128).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return v;
    }
    new_request_id()
}

thread_local! {
    static REQUEST_IDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A unique id: a random per-thread base plus a counter (no syscall per request).
fn new_request_id() -> HeaderValue {
    let (base, n) = REQUEST_IDS.with(|ids| {
        let (mut base, n) = ids.get();
        if base == 0 {
            let mut bytes = [0u8; 8];
            // A failed random source only makes ids less unique across threads.
            let _ = getrandom::fill(&mut bytes);
            base = u64::from_le_bytes(bytes) | 1;
        }
        ids.set((base, n.wrapping_add(1)));
        (base, n)
    });
    // 32 lowercase hex digits, two per byte from a table: `format!` costs more than
    // the rest of the id, and a digit at a time four times the table.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const PAIRS: [[u8; 2]; 256] = {
        let mut pairs = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        pairs
    };
    let mut text = [0u8; 32];
    let words = [base.to_be_bytes(), n.to_be_bytes()];
    for (pair, byte) in text.chunks_exact_mut(2).zip(words.as_flattened()) {
        pair.copy_from_slice(&PAIRS[usize::from(*byte)]);
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn uuid_value(key: &CachedKey) -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(key.id.hyphenated().encode_lower(&mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A header value for free text: bytes outside printable ASCII (and `%`) are
/// percent-encoded, so any name fits and can be decoded upstream.
fn text_value(s: &str) -> HeaderValue {
    if s.bytes().all(is_plain_text)
        && let Ok(v) = HeaderValue::from_str(s)
    {
        return v;
    }
    let mut encoded = Vec::with_capacity(s.len() * 3);
    write_text(&mut encoded, s);
    HeaderValue::from_bytes(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_lines_match_the_identity_headers() {
        use crate::keys::KeyRecord;
        let record = KeyRecord {
            name: "Ünïcode % name\twith tab".into(),
            scopes: vec!["read".into(), "wr%te".into()],
            ..KeyRecord::example("acme")
        };
        let key = CachedKey::from(&record);
        let identity = Identity::default();
        for key in [Some(&key), None] {
            let mut headers = HeaderMap::new();
            insert_identity(&mut headers, &identity, key);
            let mut want: Vec<String> = headers
                .iter()
                .map(|(n, v)| format!("{n}: {}\r\n", v.to_str().expect("ascii")))
                .collect();
            let mut out = Vec::new();
            write_identity(&mut out, &identity, key);
            let text = String::from_utf8(out).expect("ascii");
            let mut lines: Vec<String> = text.split_inclusive("\r\n").map(str::to_owned).collect();
            want.sort_unstable();
            lines.sort_unstable();
            assert_eq!(lines, want);
        }
    }

    #[test]
    fn identity_spellings_are_all_recognised() {
        let id = Identity::default();
        for n in [
            "x-keygate-key-id",
            "x_keygate_key_id",
            "x-keygate_org-id",
            "x-keygate-anything",
            "x_keygate-",
        ] {
            assert!(
                id.is_identity(&HeaderName::from_bytes(n.as_bytes()).expect("name")),
                "{n}"
            );
        }
        for n in ["x-keygat", "x-request-id", "keygate-key-id", "xx-keygate-key-id"] {
            assert!(
                !id.is_identity(&HeaderName::from_bytes(n.as_bytes()).expect("name")),
                "{n}"
            );
        }
    }

    fn forwarded(headers: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_static(v));
        }
        let host = HeaderValue::from_static("api:3000");
        let request_id = HeaderValue::from_static("r1");
        let fwd = Forwarded {
            key: None,
            peer: SocketAddr::from(([127, 0, 0, 1], 5000)),
            request_id: &request_id,
            host: &host,
            authority: None,
            keep_credentials: false,
        };
        prepare_request(&mut h, &Identity::default(), None, &fwd);
        h
    }

    #[test]
    fn x_forwarded_host_is_keygates_record_of_host_never_the_clients() {
        let h = forwarded(&[("host", "public.example"), ("x-forwarded-host", "evil.example")]);
        assert_eq!(h["x-forwarded-host"], "public.example");
        assert_eq!(h["host"], "api:3000");
        // `Connection: host` drops nothing keygate relies on.
        let h = forwarded(&[
            ("host", "public.example"),
            ("connection", "host, x-forwarded-host"),
            ("x-forwarded-host", "evil.example"),
        ]);
        assert_eq!(h["x-forwarded-host"], "public.example");
        let h = forwarded(&[("x-forwarded-host", "evil.example")]);
        assert!(
            h.get("x-forwarded-host").is_none(),
            "no Host, no X-Forwarded-Host"
        );
    }

    #[test]
    fn an_absolute_target_names_the_forwarded_host_and_underscored_key_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("hostile.test"));
        h.insert("x_api_key", HeaderValue::from_static("kg_live_secret"));
        h.insert("x_api-key", HeaderValue::from_static("kg_live_secret"));
        h.insert("x_api_keys", HeaderValue::from_static("other"));
        let (host, request_id) = (
            HeaderValue::from_static("api:3000"),
            HeaderValue::from_static("r1"),
        );
        let authority: http::uri::Authority = "evil.example".parse().expect("authority");
        let fwd = Forwarded {
            key: None,
            peer: SocketAddr::from(([127, 0, 0, 1], 5000)),
            request_id: &request_id,
            host: &host,
            authority: Some(&authority),
            keep_credentials: false,
        };
        let key_header = HeaderName::from_static("x-api-key");
        prepare_request(&mut h, &Identity::default(), Some(&key_header), &fwd);
        assert_eq!(h["x-forwarded-host"], "evil.example");
        assert!(h.get("x_api_key").is_none() && h.get("x_api-key").is_none());
        assert_eq!(h["x_api_keys"], "other", "only the key header's spellings");
    }

    #[test]
    fn text_values_are_percent_encoded_when_needed() {
        assert_eq!(text_value("ci deploy"), "ci deploy");
        assert_eq!(text_value("café 100%"), "caf%C3%A9 100%25");
        assert_eq!(text_value("a\r\nb"), "a%0D%0Ab");
        // Encoded bytes first, last, alone and side by side.
        assert_eq!(text_value("%"), "%25");
        assert_eq!(text_value("\u{7f}ops"), "%7Fops");
        assert_eq!(text_value("ops\t"), "ops%09");
        assert_eq!(text_value("é"), "%C3%A9");
        assert_eq!(text_value(""), "");
    }

    #[test]
    fn request_ids_are_reused_only_when_plain() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn new_request_ids_are_a_thread_base_and_a_counter_in_32_hex_digits() {
        let (a, b) = (new_request_id(), new_request_id());
        let parts = |v: &HeaderValue| {
            let text = v.to_str().expect("text");
            assert_eq!(text.len(), 32, "{text}");
            let word = |s| u64::from_str_radix(s, 16).expect("hex");
            (word(&text[..16]), word(&text[16..]))
        };
        let ((base_a, n_a), (base_b, n_b)) = (parts(&a), parts(&b));
        assert_eq!(base_a, base_b);
        assert_eq!(base_a & 1, 1, "the base is never zero");
        assert_eq!(n_b, n_a + 1);
        assert!(
            a.to_str()
                .expect("text")
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        );
    }

    #[test]
    fn x_forwarded_for_gets_the_peer_appended_whichever_peer_came_before() {
        let peer = |ip: [u8; 4], prior: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(p) = prior {
                h.insert("x-forwarded-for", HeaderValue::from_static(p));
            }
            append_forwarded_for(&mut h, SocketAddr::from((ip, 1)));
            h["x-forwarded-for"].clone()
        };
        assert_eq!(peer([10, 0, 0, 1], None), "10.0.0.1");
        // The per-thread text of the last peer is not reused for another one.
        assert_eq!(peer([10, 0, 0, 2], None), "10.0.0.2");
        assert_eq!(peer([10, 0, 0, 2], Some("203.0.113.9")), "203.0.113.9, 10.0.0.2");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "[2001:db8::1]:80".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
    }
}
