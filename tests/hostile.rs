//! A hostile-request corpus: malformed, ambiguous and smuggling-shaped HTTP/1.x
//! requests, sent byte for byte to one keygate. Each case is checked for its status,
//! its refusal code, whether it reached the upstream, and, when it did, that the
//! upstream got exactly the authorised path and query, the client's host and no
//! credential. Then the whole corpus runs again, eight connections at a time.
//!
//! Expected outcomes come from the README (path rule, refusals, headers) or from
//! RFC 9110/9112; where a case pins behaviour neither states, its comment says
//! "observed". `rfc_9112_cases` holds the cases this corpus first found keygate
//! getting wrong (Host checks, transfer codings, `X_API_Key`, absolute-form hosts).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::TestApp;
use keygate::keys::format::RANDOM_LEN;
use keygate::keys::{ApiKey, Format};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ITEMS: &str = "/v1/orgs/acme/items/1";
const ECHO_BODY: &str = "/v1/echo-body";
const ADMIN: &str = "/v1/admin/x";
/// A request without a key, to smuggle after or inside a body.
const SMUGGLED: &str = "GET /v1/admin/x HTTP/1.1\r\nHost: hostile.test\r\nConnection: close\r\n\r\n";
/// A JWS compact token where an API key belongs.
const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
/// Every case's bytes are complete, so a case still open after this has hung.
const READ_LIMIT: Duration = Duration::from_secs(10);
/// How long the head of a broken body may take to land upstream after the answer.
const SETTLE: Duration = Duration::from_millis(250);
/// Connections open at once in the concurrent run.
const CONCURRENCY: usize = 8;

/// A raw HTTP/1.x request, written line by line. `Connection: close` and the blank
/// line are added at the end unless the case keeps the connection open (to send
/// more after it) or is verbatim.
#[derive(Clone, Debug, Default)]
struct Raw {
    head: Vec<u8>,
    body: Vec<u8>,
    keep_alive: bool,
    /// Shut the write side after sending: a client that stops mid-body.
    half_close: bool,
    /// `head` is the whole request, line endings included: nothing is added.
    verbatim: bool,
}

impl Raw {
    /// The request line alone; no headers.
    fn line(line: impl AsRef<[u8]>) -> Self {
        Self::default().header(line)
    }

    /// Exactly these bytes.
    fn verbatim(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            head: bytes.into(),
            verbatim: true,
            ..Self::default()
        }
    }

    /// `METHOD target HTTP/1.1` with a `Host`.
    fn request(method: &str, target: &str) -> Self {
        Self::line(format!("{method} {target} HTTP/1.1")).header("Host: hostile.test")
    }

    fn get(target: &str) -> Self {
        Self::request("GET", target)
    }

    fn header(mut self, line: impl AsRef<[u8]>) -> Self {
        self.head.extend_from_slice(line.as_ref());
        self.head.extend_from_slice(b"\r\n");
        self
    }

    fn bearer(self, key: &str) -> Self {
        self.header(format!("Authorization: Bearer {key}"))
    }

    /// `Authorization: <prefix><key><suffix>`, for bytes around the key.
    fn authorization(self, prefix: &[u8], key: &str, suffix: &[u8]) -> Self {
        self.header([b"Authorization: ", prefix, key.as_bytes(), suffix].concat())
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    fn keep_alive(mut self) -> Self {
        self.keep_alive = true;
        self
    }

    fn half_close(mut self) -> Self {
        self.half_close = true;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        if self.verbatim {
            return out;
        }
        if !self.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The head's lines without line endings, from the request line on.
    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.head
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .skip_while(|line| line.is_empty())
    }

    /// The request target of the first request line.
    fn target(&self) -> Option<String> {
        let target = self.lines().next()?.split(|&b| b == b' ').nth(1)?;
        Some(String::from_utf8_lossy(target).into_owned())
    }

    /// The host the client addressed: the authority of an absolute-form target, which
    /// overrides `Host` (RFC 9112 §3.2.2), else each `Host` value sent.
    fn client_host(&self) -> Vec<String> {
        let target = self.target().unwrap_or_default();
        if let Some((_, rest)) = target.split_once("://") {
            return vec![rest.split(['/', '?', '#']).next().unwrap_or_default().to_owned()];
        }
        self.lines()
            .skip(1)
            .take_while(|line| !line.is_empty())
            .filter_map(|line| {
                let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
                let value = String::from_utf8_lossy(&value[1..]).trim().to_owned();
                name.eq_ignore_ascii_case(b"host").then_some(value)
            })
            .collect()
    }
}

/// How often a case may reach the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    Never,
    Once,
    /// A malformed body found only while it streams: the head may have gone upstream,
    /// the body never completes. Never more than once.
    AtMostOnce,
}

/// One hostile request and what must come of it.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    request: Raw,
    /// The first response's status; 0 means the connection closed without one.
    status: u16,
    /// `error.code` of a JSON refusal; `None` when the upstream answered or hyper
    /// answered a request it could not parse (no body).
    code: Option<&'static str>,
    reaches: Reach,
    /// On `/v1/echo-body`, the decoded body the upstream must have received and echoed.
    echoed: Option<&'static str>,
    /// Responses after the first on the same connection (pipelined requests).
    then: Vec<(u16, Option<&'static str>)>,
    /// A connection closed without a response is fine too: the client hung up first.
    or_closed: bool,
}

impl Case {
    fn new(name: impl Into<String>, request: Raw, status: u16, code: Option<&'static str>) -> Self {
        Self {
            name: name.into(),
            request,
            status,
            code,
            reaches: Reach::Never,
            echoed: None,
            then: Vec::new(),
            or_closed: false,
        }
    }

    fn echoes(mut self, body: &'static str) -> Self {
        self.echoed = Some(body);
        self
    }

    fn then(mut self, status: u16, code: Option<&'static str>) -> Self {
        self.then.push((status, code));
        self
    }

    fn or_closed(mut self) -> Self {
        self.or_closed = true;
        self
    }
}

/// Forwarded, and the upstream answered 200.
fn forwarded(name: impl Into<String>, request: Raw) -> Case {
    Case {
        reaches: Reach::Once,
        ..Case::new(name, request, 200, None)
    }
}

/// Refused by keygate with a JSON refusal; the upstream never sees it.
fn refused(name: impl Into<String>, request: Raw, status: u16, code: &'static str) -> Case {
    Case::new(name, request, status, Some(code))
}

/// Refused by the HTTP parser (hyper's own 400/431, no body); no decision was made.
fn unparsable(name: impl Into<String>, request: Raw, status: u16) -> Case {
    Case::new(name, request, status, None)
}

/// A body that breaks while it streams to the upstream. The head was valid and
/// authenticated, so the upstream may have been contacted, but it must never receive
/// the body as complete, and nothing after the bad bytes may be read as a request.
/// Observed: hyper finds the error when keygate starts forwarding the body, the
/// upstream exchange fails, and keygate answers 502.
fn broken_body(name: impl Into<String>, request: Raw) -> Case {
    Case {
        reaches: Reach::AtMostOnce,
        ..Case::new(name, request, 502, Some("upstream_unavailable"))
    }
}

/// `cases` with `prefix: ` before each name.
fn family(prefix: &str, cases: Vec<Case>) -> Vec<Case> {
    cases
        .into_iter()
        .map(|case| Case {
            name: format!("{prefix}: {}", case.name),
            ..case
        })
        .collect()
}

/// The keys the corpus uses.
struct Keys {
    /// Org `acme`, scope `read`.
    valid: String,
    /// Well formed, checksum right, never issued.
    unknown: String,
    /// A well-formed key of the `test` environment (this deployment is `live`).
    test_env: String,
}

impl Keys {
    async fn create(app: &TestApp) -> Self {
        let (valid, _) = app.acme_key(&["read"]).await;
        let format = Format::new("kg", "live").expect("the test deployment's key format");
        let unknown = ApiKey::generate(&format, "live")
            .expect("OS random source")
            .expose()
            .to_owned();
        let test_env = format.assemble("test", &"Q".repeat(RANDOM_LEN));
        Self {
            valid,
            unknown,
            test_env,
        }
    }
}

/// `key` with the character at `at` replaced by another base62 character.
fn retyped(key: &str, at: usize) -> String {
    let mut bytes = key.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'Z' { b'Y' } else { b'Z' };
    String::from_utf8(bytes).expect("ASCII stays ASCII")
}

fn credential_cases(keys: &Keys) -> Vec<Case> {
    let k = keys.valid.as_str();
    let get = || Raw::get(ITEMS);
    let auth = |value: &str| get().header(format!("Authorization: {value}"));
    let mut cases = vec![
        forwarded("Bearer key", get().bearer(k)),
        // Naming Authorization hop-by-hop does not hide the key from the decision;
        // it is stripped before forwarding either way.
        forwarded(
            "Connection names Authorization",
            get().bearer(k).header("Connection: authorization"),
        ),
        refused("no credential", get(), 401, "missing_api_key"),
        refused("unknown key", get().bearer(&keys.unknown), 401, "unknown_api_key"),
        refused(
            "key of the test environment",
            get().bearer(&keys.test_env),
            401,
            "wrong_environment",
        ),
        refused("JWT", get().bearer(JWT), 401, "not_an_api_key"),
    ];
    // Other spellings of a valid credential. Spoofed identity headers are replaced
    // by keygate's (checked on every forwarded case: the upstream sees one org, acme).
    for (what, line) in [
        ("X-API-Key alone", format!("X-API-Key: {k}")),
        ("X-API-Key with spaces around", format!("x-api-key:   {k}  ")),
        ("header name in lower case", format!("authorization: Bearer {k}")),
        ("header name in upper case", format!("AUTHORIZATION: Bearer {k}")),
        ("no space after the colon", format!("Authorization:Bearer {k}")),
    ] {
        cases.push(forwarded(what, get().header(line)));
    }
    for spoof in [
        "X-Keygate-Org-Id: beta",
        "X_Keygate_Org_Id: beta",
        "Connection: x-keygate-org-id",
    ] {
        cases.push(forwarded(spoof, get().bearer(k).header(spoof)));
    }
    // The scheme is case-insensitive (RFC 9110 §11.1); spaces and tabs around and
    // between scheme and key are tolerated (README "What happens to a request"), and
    // those at either end are not even part of the field value (RFC 9110 §5.5).
    for (what, prefix, suffix) in [
        ("lower-case scheme", "bearer ", ""),
        ("upper-case scheme", "BEARER ", ""),
        ("mixed-case scheme", "bEaReR ", ""),
        ("tab after the scheme", "Bearer\t", ""),
        ("three spaces after the scheme", "Bearer   ", ""),
        ("space and tabs after the scheme", "Bearer \t \t", ""),
        ("trailing spaces", "Bearer ", "   "),
        ("trailing tab", "Bearer ", "\t"),
        ("leading spaces", "   Bearer ", ""),
        ("leading tab", "\tBearer ", ""),
    ] {
        let raw = get().authorization(prefix.as_bytes(), k, suffix.as_bytes());
        cases.push(forwarded(what, raw));
    }
    // README "Refusals": no key, or another scheme, is `missing_api_key`.
    for (what, value) in [
        ("empty Authorization", String::new()),
        ("Bearer without a key", "Bearer".into()),
        ("Bearer and spaces only", "Bearer   ".into()),
        ("Bearer and a tab only", "Bearer\t".into()),
        ("Token scheme", format!("Token {k}")),
        ("Basic scheme", "Basic dXNlcjpwYXNz".into()),
        ("Digest scheme", "Digest username=\"a\", response=\"b\"".into()),
        ("bare key without a scheme", k.into()),
        ("Bearer: with a colon", format!("Bearer: {k}")),
        ("Bearer glued to the key", format!("Bearer{k}")),
        ("Bearer, comma-separated", format!("Bearer,{k}")),
    ] {
        cases.push(refused(what, auth(&value), 401, "missing_api_key"));
    }
    // Nowhere else is a key a credential.
    for (what, line) in [
        ("empty X-API-Key", "X-API-Key:".into()),
        ("key in X_API_Key", format!("X_API_Key: {k}")),
        (
            "key in Proxy-Authorization",
            format!("Proxy-Authorization: Bearer {k}"),
        ),
        ("key in a cookie", format!("Cookie: api_key={k}")),
    ] {
        cases.push(refused(what, get().header(line), 401, "missing_api_key"));
    }
    cases.push(refused(
        "key in the query",
        Raw::get(&format!("{ITEMS}?api_key={k}")),
        401,
        "missing_api_key",
    ));
    // A wrong shape, prefix or checksum is `malformed_api_key`. A changed character
    // anywhere breaks the checksum, and the checksum is checked before the
    // environment, so a mistyped test key is malformed too.
    for (what, token) in [
        ("first random character retyped", retyped(k, 8)),
        ("middle random character retyped", retyped(k, 24)),
        ("first checksum character retyped", retyped(k, k.len() - 6)),
        ("last character retyped", retyped(k, k.len() - 1)),
        ("test-environment key retyped", retyped(&keys.test_env, 10)),
        ("key in upper case", k.to_ascii_uppercase()),
        ("key truncated by one", k[..k.len() - 1].to_owned()),
        ("key plus one character", format!("{k}a")),
        ("key plus a second word", format!("{k} extra")),
        ("two keys comma-joined", format!("{k}, Bearer {k}")),
        (
            "two-part eyJ token",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0".into(),
        ),
        ("foreign prefix", "sk_live_0123456789abcdefABCDEF".into()),
        ("prefix only", "kg_live_".into()),
    ] {
        cases.push(refused(what, get().bearer(&token), 401, "malformed_api_key"));
    }
    cases.push(refused(
        "key header holding a Bearer credential",
        get().header(format!("X-API-Key: Bearer {k}")),
        401,
        "malformed_api_key",
    ));
    // A header value that is not visible ASCII cannot hold a key.
    for (what, prefix, suffix) in [
        ("invalid UTF-8 after the key", &b"Bearer "[..], &b"\xc3\x28"[..]),
        ("obs-text before the key", b"Bearer \xff\xfe", b""),
        ("obs-text after the key", b"Bearer ", b"\x80"),
        ("non-breaking space before the key", b"Bearer\xc2\xa0", b""),
    ] {
        let raw = get().authorization(prefix, k, suffix);
        cases.push(refused(what, raw, 401, "malformed_api_key"));
    }
    // README: two credentials are ambiguous, even when they agree.
    let key_header = format!("X-API-Key: {k}");
    for (what, raw) in [
        ("two Authorization headers, same key", get().bearer(k).bearer(k)),
        ("valid and unknown key", get().bearer(k).bearer(&keys.unknown)),
        ("Basic plus Bearer", auth("Basic dXNlcjpwYXNz").bearer(k)),
        ("empty Authorization plus Bearer", auth("").bearer(k)),
        (
            "Authorization plus X-API-Key",
            get().bearer(k).header(&key_header),
        ),
        (
            "two X-API-Key headers",
            get().header(&key_header).header(&key_header),
        ),
    ] {
        cases.push(refused(what, raw, 400, "ambiguous_credentials"));
    }
    // RFC 9110 §5.5 and RFC 9112 §5: NUL, CR and DEL are invalid in a field value,
    // no space may precede the colon, and obs-fold is refused in requests.
    let split_by_cr = format!("{}\r{}", &k[..12], &k[12..]);
    for (what, raw) in [
        ("NUL after the key", get().authorization(b"Bearer ", k, b"\0")),
        ("CR inside the key", get().bearer(&split_by_cr)),
        ("DEL after the key", get().authorization(b"Bearer ", k, b"\x7f")),
        (
            "space before the colon",
            get().header(format!("Authorization : Bearer {k}")),
        ),
        (
            "obs-fold between scheme and key",
            auth("Bearer").header(format!(" {k}")),
        ),
    ] {
        cases.push(unparsable(what, raw, 400));
    }
    family("credential", cases)
}

fn head_cases(k: &str) -> Vec<Case> {
    let get = || Raw::get(ITEMS).bearer(k);
    // Forward-auth answers itself, so its field limit is keygate's alone.
    let asked = || Raw::get(&format!("/_keygate/auth{ITEMS}")).bearer(k);
    let fields = |raw: Raw, n: usize| (0..n).fold(raw, |raw, i| raw.header(format!("X-H{i}: 1")));
    let big = |kib: usize| "a".repeat(kib * 1024);
    let long_target = Raw::get(&format!("{ITEMS}/{}", big(20))).bearer(k);
    let bare_lf =
        format!("GET {ITEMS} HTTP/1.1\nHost: h.test\nAuthorization: Bearer {k}\nConnection: close\n\n");
    let empty_host = Raw::line(format!("GET {ITEMS} HTTP/1.1"))
        .header("Host:")
        .bearer(k);
    let mut cases = vec![
        // README: request heads over 16 KiB or with more than 100 header fields get 431.
        forwarded(
            "a 15 KiB header fits",
            get().header(format!("X-Big: {}", big(15))),
        ),
        unparsable(
            "one 17 KiB header",
            get().header(format!("X-Big: {}", big(17))),
            431,
        ),
        unparsable(
            "a 17 KiB header name",
            get().header(format!("X-{}: 1", big(17))),
            431,
        ),
        unparsable("a 20 KiB request target", long_target, 431),
        // Host, Authorization, 97 more and Connection: exactly 100 fields.
        Case::new("exactly 100 header fields", fields(asked(), 97), 200, None),
        unparsable("101 header fields", fields(asked(), 98), 431),
        unparsable("101 header fields, forwarding route", fields(get(), 98), 431),
        unparsable("3000 header fields", fields(get(), 3000), 431),
        // Observed: keygate accepts 100 fields but forwards about ten more (identity,
        // X-Request-Id, X-Forwarded-*); the echo upstream (hyper, 100 fields) refuses
        // that with a bare 431 before its handler runs, and keygate relays it.
        unparsable(
            "100 fields grow past the upstream's limit",
            fields(get(), 97),
            431,
        ),
        // RFC 9112 §2.2: a recipient MAY take a bare LF as a line terminator; hyper
        // does (observed), and the request is judged like any other.
        forwarded("bare LF line endings", Raw::verbatim(bare_lf)),
        // RFC 9110 §7.2: an empty Host is valid when the target has no authority.
        forwarded("empty Host", empty_host),
    ];
    // README "Headers": `Connection: host` must not drop the client's Host from
    // X-Forwarded-Host (checked on every forwarded case); Upgrade is hop-by-hop.
    for line in ["Connection: host", "Upgrade: websocket"] {
        cases.push(forwarded(line, get().header(line)));
    }
    // RFC 9112 §5: obs-fold is refused in requests; a field needs a name and a
    // colon; a name is a token; a value holds no NUL.
    for (what, lines) in [
        ("obs-fold continuation line", &["X-Folded: a", " b"][..]),
        ("header line without a colon", &["X-No-Colon"]),
        ("empty header name", &[": value"]),
        ("parenthesis in a header name", &["X-Bad(: 1"]),
        ("NUL in another header", &["X-Nul: a\0b"]),
    ] {
        let raw = lines.iter().fold(get(), |raw, line| raw.header(line));
        cases.push(unparsable(what, raw, 400));
    }
    family("head", cases)
}

/// A POST to `/v1/echo-body` with the valid key, `framing` header lines and `body`.
fn framed(key: &str, framing: &[&str], body: &str) -> Raw {
    framing
        .iter()
        .fold(Raw::request("POST", ECHO_BODY).bearer(key), |raw, line| {
            raw.header(line)
        })
        .body(body)
}

fn body_cases(k: &str) -> Vec<Case> {
    const CL: &str = "Content-Length: 5";
    const TE: &str = "Transfer-Encoding: chunked";
    const HELLO: &str = "5\r\nhello\r\n0\r\n\r\n";
    let post = |framing: &[&str], body: &str| framed(k, framing, body);
    let chunked = |body: &str| post(&[TE], body);
    let smuggled_in_chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let get_with_body = Raw::get(ITEMS)
        .bearer(k)
        .header(format!("Content-Length: {}", SMUGGLED.len()))
        .body(SMUGGLED);
    let unkeyed_bad_chunks = Raw::request("POST", ECHO_BODY)
        .header(TE)
        .body(format!("zz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"));
    let http10 = Raw::line(format!("POST {ECHO_BODY} HTTP/1.0"))
        .bearer(k)
        .header(TE)
        .body(HELLO);
    let mut cases = vec![
        forwarded("Content-Length 0", post(&["Content-Length: 0"], "")).echoes(""),
        forwarded(
            "three chunks",
            chunked("3\r\nhel\r\n2\r\nlo\r\nA\r\n0123456789\r\n0\r\n\r\n"),
        )
        .echoes("hello0123456789"),
        // The GET's body must stay a body upstream: a second upstream hit would mean
        // the upstream parsed it as a request.
        forwarded("a request as the body of a GET", get_with_body),
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length and the server
        // closes the connection after responding, so bytes after the last chunk are
        // never read as a request (one response, one upstream hit).
        forwarded(
            "Content-Length and chunked, a request after the last chunk",
            post(&["Content-Length: 4", TE], &format!("{HELLO}{SMUGGLED}")).keep_alive(),
        )
        .echoes("hello"),
        forwarded(
            "chunked and Content-Length, a request inside the chunk",
            post(&[TE, "Content-Length: 3"], &smuggled_in_chunk).keep_alive(),
        )
        .echoes(SMUGGLED),
        // Bytes after a Content-Length body are the next request on the connection,
        // judged on its own: without a key it is refused.
        forwarded(
            "an unkeyed request after a Content-Length body",
            post(&[CL], &format!("hello{SMUGGLED}")).keep_alive(),
        )
        .echoes("hello")
        .then(401, Some("missing_api_key")),
        // No key: refused on the head; the malformed body is never read.
        refused(
            "bad chunks without a key",
            unkeyed_bad_chunks,
            401,
            "missing_api_key",
        ),
        // RFC 9112 §6.1: Transfer-Encoding did not exist in HTTP/1.0.
        unparsable("Transfer-Encoding in HTTP/1.0", http10, 400),
    ];
    // Framings that deliver exactly "hello".
    for (what, framing, body) in [
        ("Content-Length", &[CL][..], "hello"),
        ("chunked", &[TE], HELLO),
        ("chunk extension", &[TE], "5;name=value\r\nhello\r\n0\r\n\r\n"),
        (
            "chunked with a trailer",
            &[TE],
            "5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
        ),
        (
            "Transfer-Encoding in upper case",
            &["Transfer-Encoding: CHUNKED"],
            HELLO,
        ),
        // Observed: hyper decodes chunked once and keygate re-frames the body for
        // the upstream, so the two framings cannot disagree downstream.
        ("chunked on two Transfer-Encoding lines", &[TE, TE], HELLO),
        // RFC 9110 §8.6: identical Content-Length lines are one length.
        ("the same Content-Length twice", &[CL, CL], "hello"),
        (
            "Content-Length with leading zeros",
            &["Content-Length: 005"],
            "hello",
        ),
        ("Expect 100-continue", &[CL, "Expect: 100-continue"], "hello"),
    ] {
        cases.push(forwarded(what, post(framing, body)).echoes("hello"));
    }
    // RFC 9110 §8.6 and RFC 9112 §6: a Content-Length that is not one decimal
    // length, or a Transfer-Encoding whose final coding is not chunked, is 400.
    for (what, framing) in [
        (
            "two different Content-Length values",
            &[CL, "Content-Length: 6"][..],
        ),
        ("Content-Length list", &["Content-Length: 5, 5"]),
        ("Content-Length not a number", &["Content-Length: abc"]),
        ("negative Content-Length", &["Content-Length: -5"]),
        ("Content-Length with a sign", &["Content-Length: +5"]),
        ("Content-Length with a fraction", &["Content-Length: 5.0"]),
        ("empty Content-Length", &["Content-Length:"]),
        (
            "Content-Length beyond u64",
            &["Content-Length: 99999999999999999999999"],
        ),
        (
            "Transfer-Encoding chunked, identity",
            &["Transfer-Encoding: chunked, identity"],
        ),
        ("Transfer-Encoding identity", &["Transfer-Encoding: identity"]),
        ("Transfer-Encoding xchunked", &["Transfer-Encoding: xchunked"]),
        ("chunked, then identity", &[TE, "Transfer-Encoding: identity"]),
        ("space before the colon", &["Transfer-Encoding : chunked"]),
        (
            "obs-fold inside Transfer-Encoding",
            &["Transfer-Encoding: identity", " chunked"],
        ),
    ] {
        cases.push(unparsable(what, post(framing, HELLO), 400));
    }
    // Observed: hyper answers a length above its maximum (u64::MAX - 2) with 431.
    let max = post(&["Content-Length: 18446744073709551615"], "hello");
    cases.push(unparsable("Content-Length of u64::MAX", max, 431));
    for (what, body) in [
        ("non-hex chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        ("negative chunk size", "-5\r\nhello\r\n0\r\n\r\n"),
        ("0x-prefixed chunk size", "0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size overflowing u64",
            "10000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk data without its CRLF", "5\r\nhelloXX0\r\n\r\n"),
        ("chunk longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        ("chunked with bare LF", "5\nhello\n0\n\n"),
    ] {
        cases.push(broken_body(what, chunked(body)));
    }
    let after_bad_chunk = format!("5\r\nhelloXX\r\n0\r\n\r\n{SMUGGLED}");
    cases.extend([
        broken_body(
            "a request after a bad chunk",
            chunked(&after_bad_chunk).keep_alive(),
        ),
        broken_body(
            "Content-Length above the body, then EOF",
            post(&["Content-Length: 10"], "hello").half_close(),
        )
        .or_closed(),
        broken_body(
            "chunked cut before the last chunk, then EOF",
            chunked("5\r\nhello\r\n").half_close(),
        )
        .or_closed(),
    ]);
    family("body", cases)
}

fn request_line_cases(k: &str) -> Vec<Case> {
    let keyed = |line: &str| Raw::line(line).header("Host: hostile.test").bearer(k);
    let items = |method: &str, version: &str| keyed(&format!("{method} {ITEMS} {version}"));
    // Host agrees with the target's authority here; `rfc_9112_cases` has the case
    // where they differ.
    let absolute = |authority: &str, path: &str| {
        let line = format!("GET {authority}{path} HTTP/1.1");
        let host = authority.split_once("://").map_or("", |(_, host)| host);
        Raw::line(line).header(format!("Host: {host}")).bearer(k)
    };
    let empty_line_first = format!(
        "\r\nGET {ITEMS} HTTP/1.1\r\nHost: h.test\r\nAuthorization: Bearer {k}\r\nConnection: close\r\n\r\n"
    );
    let h2_preface = Raw::verbatim(*b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let evil = "http://evil.example";
    let mut cases = vec![
        forwarded("HTTP/1.0 with Host", items("GET", "HTTP/1.0")),
        forwarded(
            "HTTP/1.0 without Host",
            Raw::line(format!("GET {ITEMS} HTTP/1.0")).bearer(k),
        ),
        refused(
            "HTTP/1.0 without a key",
            Raw::line(format!("GET {ITEMS} HTTP/1.0")),
            401,
            "missing_api_key",
        ),
        // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the
        // request line.
        forwarded(
            "an empty line before the request line",
            Raw::verbatim(empty_line_first),
        ),
        // Observed: hyper's HTTP/1-only server closes on the HTTP/2 preface without
        // a response.
        Case::new("HTTP/2 prior-knowledge preface", h2_preface, 0, None),
        // A route without `methods` takes any method, invented ones too.
        forwarded("PURGE on a methodless route", keyed("PURGE /v1/slow HTTP/1.1")),
        refused(
            "PURGE on the admin route",
            keyed(&format!("PURGE {ADMIN} HTTP/1.1")),
            403,
            "insufficient_scope",
        ),
        // Absolute form: judged on its path, forwarded in origin form to the
        // upstream's own Host (both checked on every forwarded case).
        forwarded("absolute form", absolute(evil, ITEMS)),
        forwarded(
            "absolute form with a query",
            absolute(evil, &format!("{ITEMS}?org=beta")),
        ),
        forwarded(
            "absolute https form",
            absolute("https://evil.example:8443", ITEMS),
        ),
        refused(
            "absolute form, another org",
            absolute(evil, "/v1/orgs/beta/items/1"),
            403,
            "org_mismatch",
        ),
        refused(
            "absolute form without a path",
            absolute(evil, ""),
            404,
            "route_not_found",
        ),
        // Observed: authority and asterisk forms have no path, which the path rule
        // refuses (it wants a leading `/`).
        refused(
            "CONNECT authority form",
            keyed("CONNECT evil.example:443 HTTP/1.1"),
            400,
            "invalid_path",
        ),
        refused(
            "OPTIONS asterisk form",
            keyed("OPTIONS * HTTP/1.1"),
            400,
            "invalid_path",
        ),
    ];
    // Methods are case-sensitive (RFC 9110 §9.1): `get` is not GET. The items
    // routes list GET and HEAD for `read` and the write methods for `write`.
    for (method, status, code) in [
        ("get", 404, "route_not_found"),
        ("PURGE", 404, "route_not_found"),
        ("TRACE", 404, "route_not_found"),
        ("OPTIONS", 404, "route_not_found"),
        ("POST", 403, "insufficient_scope"),
        ("DELETE", 403, "insufficient_scope"),
    ] {
        cases.push(refused(
            format!("{method} on items"),
            items(method, "HTTP/1.1"),
            status,
            code,
        ));
    }
    // RFC 9110 §2.5 says a higher minor version SHOULD be read as 1.1; hyper refuses
    // it (observed), the conservative reading. The rest is no HTTP/1.x request line.
    for (what, raw) in [
        ("HTTP/0.9 request line", Raw::line(format!("GET {ITEMS}"))),
        ("HTTP/2.0 over HTTP/1", items("GET", "HTTP/2.0")),
        ("HTTP/1.2", items("GET", "HTTP/1.2")),
        ("HTTP/3.0", items("GET", "HTTP/3.0")),
        ("lower-case http/1.1", items("GET", "http/1.1")),
        ("no version after the target", items("GET", "")),
        ("a fourth word", items("GET", "HTTP/1.1 extra")),
        ("two spaces after the method", items("GET ", "HTTP/1.1")),
        ("tabs as separators", keyed(&format!("GET\t{ITEMS}\tHTTP/1.1"))),
        ("invalid method token", items("G@T", "HTTP/1.1")),
        ("no leading slash", keyed("GET v1/orgs/acme/items/1 HTTP/1.1")),
        (
            "TLS ClientHello",
            Raw::line(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ),
    ] {
        cases.push(unparsable(what, raw, 400));
    }
    family("line", cases)
}

fn path_cases(k: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    // Matched on percent-decoded segments and forwarded unchanged (README "The path
    // rule"); on every forwarded case the upstream's path is compared with the one sent.
    for path in [
        ITEMS,
        "/v1/orgs/acme/items/1/",
        "/v1/orgs/acme/items",
        "/v1/orgs/acme/items/",
        "/v1/orgs/%61cme/items/1",
        "/v1/orgs/acme/items/%C3%A9",
        "/v1/orgs/acme/items/1;x",
        "/v1/orgs/acme/items/a;v=1",
        "/v1/orgs/acme/items/...",
        "/v1/orgs/acme/items/.x",
        "/v1/orgs/acme/items/1?org=beta",
        "/v1/orgs/acme/items/1?x=/../../admin/x",
        "/v1/orgs/acme/items/1?%2e%2e",
        "/v1/orgs/acme/items/a%20b",
        // A fragment is no part of a request target; it is dropped before both the
        // decision and the forward.
        "/v1/orgs/acme/items/1#frag",
        // Observed: raw UTF-8 and some characters RFC 3986 excludes pass the HTTP
        // parser; they are matched and forwarded byte for byte.
        "/v1/orgs/acme/items/\u{e9}",
        "/v1/orgs/acme/items/a\"b",
        "/v1/orgs/acme/items/{x}",
        "/v1/orgs/acme/items/a|b",
        "/v1/orgs/acme/items/a^b",
        // Observed: fullwidth full stops (U+FF0E) are not dots to keygate; an upstream
        // that applies NFKC before resolving dot segments would read `..` here.
        "/v1/orgs/acme/items/%EF%BC%8E%EF%BC%8E/x",
    ] {
        cases.push(forwarded(path, Raw::get(path).bearer(k)));
    }
    for path in [
        "/v1/orgs/acme/../beta/items/1",
        "/v1/orgs/acme/items/../../beta/items/1",
        "/v1/orgs/acme/items/./1",
        "/v1/orgs/acme/items/..",
        "/v1/orgs/acme/items/.",
        "/v1/orgs/acme/items/%2e%2e/x",
        "/v1/orgs/acme/items/%2E%2E/x",
        "/v1/orgs/acme/items/.%2e/x",
        "/v1/orgs/acme/items/%2e",
        "/v1/orgs/acme%2Fitems/1",
        "/v1/orgs/acme%2fitems/1",
        "/v1/orgs/acme/items/a%5Cb",
        "/v1/orgs/acme/items/a%5cb",
        "/v1/orgs/acme/items/a\\b",
        "/v1/orgs/acme\\..\\beta/items/1",
        "//v1/orgs/acme/items/1",
        "/v1//orgs/acme/items/1",
        "/v1/orgs/acme/items/1//",
        "/v1/orgs/acme/items/..;/x",
        "/v1/orgs/acme/items/..;x/x",
        "/v1/orgs/acme/items/.;x",
        "/v1/orgs/acme/items/;x",
        "/v1/orgs/acme%3Bx/items/1",
        "/v1/orgs/acme%3bx/items/1",
        "/v1/orgs/acme/items/%00",
        "/v1/orgs/acme/items/%09",
        "/v1/orgs/acme/items/%7F",
        "/v1/orgs/acme/items/%25",
        "/v1/orgs/acme/items/%252e%252e",
        "/v1/orgs/acme/items/%zz",
        "/v1/orgs/acme/items/%",
        "/v1/orgs/acme/items/%2",
        "/v1/orgs/acme/items/%FF",
        // Overlong UTF-8 for `.`: not UTF-8 at all once decoded.
        "/v1/orgs/acme/items/%C0%AE%C0%AE/x",
        "/v1/admin/../orgs/acme/items/1",
        "/healthz/../v1/admin/x",
    ] {
        cases.push(refused(path, Raw::get(path).bearer(k), 400, "invalid_path"));
    }
    for (path, status, code) in [
        ("/v1/orgs/beta/items/1", 403, "org_mismatch"),
        ("/v1/orgs/beta/items/1?org=acme", 403, "org_mismatch"),
        ("/v1/orgs/beta/items/1#/../../acme/items/1", 403, "org_mismatch"),
        ("/v1/orgs/%62eta/items/1", 403, "org_mismatch"),
        ("/v1/orgs/\u{e1}cme/items/1", 403, "org_mismatch"),
        // Case-sensitive matching: `ACME` is another org, `V1` another path.
        ("/v1/orgs/ACME/items/1", 403, "org_mismatch"),
        ("/V1/orgs/acme/items/1", 404, "route_not_found"),
        // Parameters on an ordinary segment stay part of it: org `acme;x`.
        ("/v1/orgs/acme;x/items/1", 403, "org_mismatch"),
        ("/v1/orgs/acme", 404, "route_not_found"),
        ("/v1/orgs/acme/item/1", 404, "route_not_found"),
        ("/healthz;x", 404, "route_not_found"),
        (ADMIN, 403, "insufficient_scope"),
        ("/v1/admin", 403, "insufficient_scope"),
    ] {
        cases.push(refused(path, Raw::get(path).bearer(k), status, code));
    }
    // Refused by the HTTP parser: bytes that are not UTF-8, and separators or
    // delimiters inside the target.
    for path in [
        b"/v1/orgs/acme/items/\xff".as_slice(),
        b"/v1/orgs/acme/items/\xc0\xae\xc0\xae/x",
        b"/v1/orgs/acme/items/a b",
        b"/v1/orgs/acme/items/<x>",
        b"/v1/orgs/acme/items/a`b",
    ] {
        let line = [b"GET ", path, b" HTTP/1.1"].concat();
        let raw = Raw::line(line).header("Host: hostile.test").bearer(k);
        cases.push(unparsable(path.escape_ascii().to_string(), raw, 400));
    }
    family("path", cases)
}

fn forward_auth_and_public_cases(k: &str) -> Vec<Case> {
    let asked_by_headers = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .fold(Raw::get("/_keygate/auth").bearer(k), |raw, (name, value)| {
                raw.header(format!("{name}: {value}"))
            })
    };
    vec![
        // Forward-auth answers for the request it asks about and forwards nothing.
        Case::new(
            "forward-auth: allowed path",
            Raw::get(&format!("/_keygate/auth{ITEMS}")).bearer(k),
            200,
            None,
        ),
        refused(
            "forward-auth: another org",
            Raw::get("/_keygate/auth/v1/orgs/beta/items/1").bearer(k),
            403,
            "org_mismatch",
        ),
        refused(
            "forward-auth: dot segments in the asked path",
            Raw::get("/_keygate/auth/v1/orgs/acme/../beta/items/1").bearer(k),
            400,
            "invalid_path",
        ),
        refused(
            "forward-auth: asked URI in absolute form",
            asked_by_headers(&[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "http://evil.example/v1/admin/x"),
            ]),
            400,
            "invalid_request",
        ),
        refused(
            "forward-auth: the two header styles disagree",
            asked_by_headers(&[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", ITEMS),
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Uri", ADMIN),
            ]),
            400,
            "invalid_request",
        ),
        // Public routes skip extraction, so a hostile credential does not matter;
        // it is still stripped (checked on every forwarded case).
        forwarded("public: no key", Raw::get("/healthz")),
        forwarded("public: trailing slash", Raw::get("/healthz/")),
        forwarded(
            "public: garbage Authorization",
            Raw::get("/healthz").header("Authorization: Bearer x y z"),
        ),
        forwarded(
            "public: two credentials",
            Raw::get("/healthz").bearer(k).header(format!("X-API-Key: {k}")),
        ),
    ]
}

/// Pipelined requests after a valid one: each is judged on its own.
fn pipelining_cases(k: &str) -> Vec<Case> {
    let after_a_valid_request = |second: Raw| Raw::get(ITEMS).bearer(k).keep_alive().body(second.bytes());
    let cases = vec![
        forwarded("unkeyed", after_a_valid_request(Raw::get(ADMIN))).then(401, Some("missing_api_key")),
        forwarded(
            "another org",
            after_a_valid_request(Raw::get("/v1/orgs/beta/items/1").bearer(k)),
        )
        .then(403, Some("org_mismatch")),
        forwarded(
            "an ambiguous path",
            after_a_valid_request(Raw::get("/v1/orgs/acme/items/../../beta/items/1").bearer(k)),
        )
        .then(400, Some("invalid_path")),
    ];
    family("pipelining", cases)
}

/// Every case expected to pass today.
fn corpus(keys: &Keys) -> Vec<Case> {
    let k = keys.valid.as_str();
    let mut cases = credential_cases(keys);
    cases.extend(head_cases(k));
    cases.extend(body_cases(k));
    cases.extend(request_line_cases(k));
    cases.extend(path_cases(k));
    cases.extend(forward_auth_and_public_cases(k));
    cases.extend(pipelining_cases(k));
    cases.extend(rfc_9112_cases(k));
    cases
}

/// RFC 9112 rules hyper leaves to the application (`src/proxy/wire.rs`), and
/// credential spellings only a folding upstream would read.
fn rfc_9112_cases(k: &str) -> Vec<Case> {
    let line = || Raw::line(format!("GET {ITEMS} HTTP/1.1"));
    vec![
        // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code
        // to any HTTP/1.1 request message that lacks a Host header field and to any
        // request message that contains more than one Host header field line or a
        // Host header field with an invalid field value."
        refused(
            "host: HTTP/1.1 without Host",
            line().bearer(k),
            400,
            "invalid_request",
        ),
        refused(
            "host: two Host headers",
            Raw::get(ITEMS).header("Host: other.example").bearer(k),
            400,
            "invalid_request",
        ),
        refused(
            "host: Host with a space",
            line().header("Host: a b").bearer(k),
            400,
            "invalid_request",
        ),
        refused(
            "host: Host with a path",
            line().header("Host: a/b?c").bearer(k),
            400,
            "invalid_request",
        ),
        refused(
            "host: Host with userinfo",
            line().header("Host: user@a").bearer(k),
            400,
            "invalid_request",
        ),
        // RFC 9112 §6.1: a transfer coding the server does not understand SHOULD get
        // 501. hyper decodes only the chunked layer; the rest would reach the upstream
        // still coded, presented as plain content.
        refused(
            "body: gzip, chunked transfer coding",
            framed(
                k,
                &["Transfer-Encoding: gzip, chunked"],
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            501,
            "unsupported_transfer_encoding",
        ),
        // The key header never reaches the upstream, in the `_` spelling that
        // frameworks folding `_` into `-` would read as it either.
        forwarded(
            "credential: Authorization plus X_API_Key",
            Raw::get(ITEMS).bearer(k).header(format!("X_API_Key: {k}")),
        ),
        // RFC 9112 §3.2.2: with an absolute-form target the server MUST ignore Host
        // and use the target's authority, which keygate reports as X-Forwarded-Host.
        forwarded(
            "line: absolute form with a different Host",
            Raw::line(format!("GET http://evil.example{ITEMS} HTTP/1.1"))
                .header("Host: hostile.test")
                .bearer(k),
        ),
    ]
}

/// One response as read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body's framing was complete (all of Content-Length, or the last chunk).
    complete: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `error.code` of a JSON refusal.
    fn code(&self) -> Option<String> {
        let body: Value = serde_json::from_slice(&self.body).ok()?;
        body["error"]["code"].as_str().map(str::to_owned)
    }
}

/// Everything one connection brought back.
#[derive(Debug)]
struct Exchange {
    responses: Vec<Response>,
    hung: bool,
}

impl Exchange {
    fn status(&self) -> u16 {
        self.responses.first().map_or(0, |r| r.status)
    }

    fn code(&self) -> Option<String> {
        self.responses.first()?.code()
    }
}

/// Sends `raw` on a new connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, raw: &Raw) -> Exchange {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("keygate accepts connections");
    // The server may answer and close before reading everything (a 431), so a failed
    // write is part of the outcome, not a test error; so is a reset while reading.
    let _ = stream.write_all(&raw.bytes()).await;
    if raw.half_close {
        let _ = stream.shutdown().await;
    }
    let mut received = Vec::new();
    let read = tokio::time::timeout(READ_LIMIT, async {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    Exchange {
        responses: parse_responses(&received),
        hung: read.is_err(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits what a connection returned into responses (skipping 1xx).
fn parse_responses(mut rest: &[u8]) -> Vec<Response> {
    let mut responses = Vec::new();
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.get(9..12))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) {
            continue;
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
            complete: true,
        };
        let used = if response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            dechunk(rest, &mut response)
        } else if let Some(len) = response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let n = len.min(rest.len());
            response.body = rest[..n].to_vec();
            response.complete = n == len;
            n
        } else {
            response.body = rest.to_vec();
            rest.len()
        };
        rest = &rest[used..];
        responses.push(response);
    }
    responses
}

/// Decodes a chunked body into `response`; returns the bytes it used.
fn dechunk(bytes: &[u8], response: &mut Response) -> usize {
    let mut at = 0;
    response.complete = false;
    while let Some(eol) = find(&bytes[at..], b"\r\n") {
        let line = String::from_utf8_lossy(&bytes[at..at + eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return bytes.len();
        };
        at += eol + 2;
        if size == 0 {
            // Trailers, up to the blank line.
            let Some(end) = find(&bytes[at..], b"\r\n") else {
                return bytes.len();
            };
            let trailers_end = if end == 0 {
                at + 2
            } else {
                find(&bytes[at..], b"\r\n\r\n").map_or(bytes.len(), |e| at + e + 4)
            };
            response.complete = true;
            return trailers_end;
        }
        let Some(data) = bytes.get(at..at + size) else {
            response.body.extend_from_slice(&bytes[at..]);
            return bytes.len();
        };
        response.body.extend_from_slice(data);
        at += size + 2;
        if at > bytes.len() {
            return bytes.len();
        }
    }
    bytes.len()
}

/// The path and query a request target must reach the upstream as: origin form,
/// without a fragment.
fn origin_path(target: &str) -> (String, Option<String>) {
    let target = target.split('#').next().unwrap_or_default();
    let origin = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |slash| &rest[slash..]),
        None => target,
    };
    match origin.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (origin.to_owned(), None),
    }
}

/// Compares an exchange with its case; `hits` is the upstream's count change when
/// it can be told apart (sequential runs). Returns what is wrong, if anything.
fn problems(case: &Case, got: &Exchange, hits: Option<usize>, echo: SocketAddr) -> Vec<String> {
    let mut wrong = Vec::new();
    if got.hung {
        wrong.push(format!("no end within {READ_LIMIT:?}"));
    }
    let closed_early = case.or_closed && got.responses.is_empty();
    if got.status() != case.status && !closed_early {
        wrong.push(format!("status {} (want {})", got.status(), case.status));
    }
    if let Some(code) = case.code
        && got.code().as_deref() != Some(code)
        && !closed_early
    {
        wrong.push(format!("code {:?} (want {code})", got.code()));
    }
    let later: Vec<(u16, Option<String>)> = got
        .responses
        .iter()
        .skip(1)
        .map(|r| (r.status, r.code()))
        .collect();
    let want: Vec<(u16, Option<String>)> = case
        .then
        .iter()
        .map(|(s, c)| (*s, c.map(str::to_owned)))
        .collect();
    if later != want {
        wrong.push(format!("later responses {later:?} (want {want:?})"));
    }
    if let Some(hits) = hits {
        let allowed = match case.reaches {
            Reach::Never => 0..=0,
            Reach::Once => 1..=1,
            Reach::AtMostOnce => 0..=1,
        };
        if !allowed.contains(&hits) {
            wrong.push(format!("reached the upstream {hits} times (want {allowed:?})"));
        }
    }
    if case.reaches == Reach::Once
        && let Some(first) = got.responses.first().filter(|r| r.status == 200)
    {
        wrong.extend(upstream_problems(case, first, echo));
    }
    wrong
}

/// What the upstream received, checked against the rules for every forwarded request.
fn upstream_problems(case: &Case, response: &Response, echo: SocketAddr) -> Vec<String> {
    let mut wrong = Vec::new();
    if !response.complete {
        wrong.push("the forwarded response broke off".to_owned());
    }
    if let Some(echoed) = case.echoed {
        if response.body != echoed.as_bytes() {
            wrong.push(format!(
                "the upstream received body {:?} (want {echoed:?})",
                String::from_utf8_lossy(&response.body)
            ));
        }
        return wrong;
    }
    let Ok(seen) = serde_json::from_slice::<Value>(&response.body) else {
        wrong.push("the upstream's echo is not JSON".to_owned());
        return wrong;
    };
    let target = case.request.target().unwrap_or_default();
    let (path, query) = origin_path(&target);
    if seen["path"].as_str() != Some(path.as_str()) {
        wrong.push(format!(
            "the upstream received path {} (want {path})",
            seen["path"]
        ));
    }
    if seen["query"].as_str().map(str::to_owned) != query {
        wrong.push(format!(
            "the upstream received query {} (want {query:?})",
            seen["query"]
        ));
    }
    let headers: Vec<(&str, &str)> = seen["headers"]
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| Some((p[0].as_str()?, p[1].as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect()
    };
    // In any spelling: frameworks that fold `_` into `-` would read `x_api_key` as
    // the key header (README "Headers" strips identity headers for that reason).
    for (name, _) in &headers {
        let folded = name.replace('_', "-");
        if ["authorization", "x-api-key", "proxy-authorization"].contains(&folded.as_str()) {
            wrong.push(format!("`{name}` reached the upstream"));
        }
    }
    let want_host = case.request.client_host();
    if values("x-forwarded-host") != want_host {
        wrong.push(format!(
            "the upstream received X-Forwarded-Host {:?} (want {want_host:?})",
            values("x-forwarded-host")
        ));
    }
    let echo_host = echo.to_string();
    if values("host") != [echo_host.as_str()] {
        wrong.push(format!(
            "the upstream received Host {:?} (want {echo_host})",
            values("host")
        ));
    }
    let public = path.starts_with("/healthz");
    let want_org: &[&str] = if public { &[] } else { &["acme"] };
    if values("x-keygate-org-id") != want_org {
        wrong.push(format!(
            "the upstream received org {:?} (want {want_org:?})",
            values("x-keygate-org-id")
        ));
    }
    wrong
}

/// A case's result in the sequential run.
struct Outcome {
    got: Exchange,
    /// Requests the upstream received meanwhile.
    hits: usize,
    wrong: Vec<String>,
}

/// Runs `cases` one after another, each on its own connection.
async fn run_sequentially(app: &TestApp, cases: &[Case]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(cases.len());
    for case in cases {
        let before = app.echo.hits();
        let got = exchange(app.addr, &case.request).await;
        if case.reaches == Reach::AtMostOnce {
            // The head of a broken body may reach the upstream after keygate has
            // answered (or the client hung up). Let it land now, so it is counted for
            // this case and not the next.
            let landed = async {
                while app.echo.hits() == before {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            let _ = tokio::time::timeout(SETTLE, landed).await;
        }
        let hits = app.echo.hits() - before;
        let wrong = problems(case, &got, Some(hits), app.echo.addr);
        outcomes.push(Outcome { got, hits, wrong });
    }
    outcomes
}

/// Runs `cases` again, `CONCURRENCY` connections at a time; returns each case's
/// problems and the upstream's total count change.
async fn run_concurrently(app: &TestApp, cases: &[Case]) -> (Vec<Vec<String>>, usize) {
    let before = app.echo.hits();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let tasks: Vec<_> = cases
        .iter()
        .map(|case| {
            let (permits, addr, raw) = (Arc::clone(&permits), app.addr, case.request.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore open");
                exchange(addr, &raw).await
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(cases.len());
    for (case, task) in cases.iter().zip(tasks) {
        let got = task.await.expect("exchange task");
        outcomes.push(problems(case, &got, None, app.echo.addr));
    }
    (outcomes, app.echo.hits() - before)
}

fn print_summary(cases: &[Case], outcomes: &[Outcome]) {
    let width = cases.iter().map(|c| c.name.len()).max().unwrap_or(0);
    println!("{:width$}  status  {:21}  upstream", "case", "code");
    for (case, outcome) in cases.iter().zip(outcomes) {
        let mark = if outcome.wrong.is_empty() {
            ""
        } else {
            "  <-- WRONG"
        };
        println!(
            "{:width$}  {:>6}  {:21}  {:>8}{mark}",
            case.name,
            outcome.got.status(),
            outcome.got.code().unwrap_or_else(|| "-".to_owned()),
            outcome.hits,
        );
    }
}

fn describe(cases: &[Case], problems: &[Vec<String>]) -> String {
    cases
        .iter()
        .zip(problems)
        .filter(|(_, wrong)| !wrong.is_empty())
        .map(|(case, wrong)| format!("{}: {}", case.name, wrong.join("; ")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_unique_names(cases: &[Case]) {
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "case names must be unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_documented_outcome_and_never_reach_the_upstream_unauthenticated() {
    let app = TestApp::start().await;
    let keys = Keys::create(&app).await;
    let cases = corpus(&keys);
    assert_unique_names(&cases);
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());

    let outcomes = run_sequentially(&app, &cases).await;
    print_summary(&cases, &outcomes);
    let sequential: Vec<Vec<String>> = outcomes.iter().map(|o| o.wrong.clone()).collect();
    let failures = describe(&cases, &sequential);
    assert!(
        failures.is_empty(),
        "hostile cases with the wrong outcome:\n{failures}"
    );
    // The process survived all of it.
    assert_eq!(
        app.get(ITEMS, &keys.valid).await.status(),
        200,
        "keygate stopped answering"
    );

    let (concurrent, hits) = run_concurrently(&app, &cases).await;
    let failures = describe(&cases, &concurrent);
    assert!(
        failures.is_empty(),
        "concurrently, hostile cases with the wrong outcome:\n{failures}"
    );
    let at_least = cases.iter().filter(|c| c.reaches == Reach::Once).count();
    let at_most = at_least + cases.iter().filter(|c| c.reaches == Reach::AtMostOnce).count();
    assert!(
        (at_least..=at_most).contains(&hits),
        "concurrently, the upstream was reached {hits} times (want {at_least}..={at_most})"
    );
    assert_eq!(
        app.get(ITEMS, &keys.valid).await.status(),
        200,
        "keygate stopped answering"
    );

    let reached = outcomes.iter().filter(|o| o.hits > 0).count();
    println!(
        "hostile corpus: {} cases, {reached} reached the upstream (all authenticated or public), 0 crashes",
        cases.len()
    );
    app.stop().await;
}
