//! Heads on the fast path: a client's request head read and sorted (the common
//! shape, or something for hyper), an upstream's response head read for its framing,
//! and both written out with keygate's edits, every other field passed through as
//! its bytes came.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, Response, StatusCode, Uri};

use super::body::Framing;

/// Most header fields in a head (hyper's `max_headers` on the other path).
pub const MAX_FIELDS: usize = 100;
/// Largest request body the fast path reads before forwarding; larger ones stream
/// through hyper.
pub const MAX_BODY: usize = 64 * 1024;

/// One header field: where its name and value sit in the head.
#[derive(Debug, Clone)]
pub struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

impl Field {
    fn at(head: &[u8], h: &httparse::Header<'_>) -> Self {
        let start = head.as_ptr() as usize;
        let name = h.name.as_ptr() as usize - start;
        let value = h.value.as_ptr() as usize - start;
        Self {
            name: name..name + h.name.len(),
            value: value..value + h.value.len(),
        }
    }

    /// The name as sent (any case).
    pub fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.name.clone()]
    }

    /// The value as sent.
    pub fn value<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.value.clone()]
    }

    /// `name: value` as it came (one `:` and optional whitespace between), when
    /// the value is not empty.
    fn line<'h>(&self, head: &'h [u8]) -> Option<&'h [u8]> {
        (self.value.start >= self.name.end && !self.value.is_empty())
            .then(|| &head[self.name.start..self.value.end])
    }

    /// Writes the field as a line of `out`.
    pub fn write(&self, out: &mut Vec<u8>, head: &[u8]) {
        match self.line(head) {
            Some(line) => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            None => field(out, self.name(head), self.value(head)),
        }
    }

    /// The value as a shared slice of `head`.
    pub fn shared(&self, head: &Bytes) -> Bytes {
        head.slice(self.value.clone())
    }
}

/// What the bytes at the start of a client connection's buffer are.
#[derive(Debug)]
pub enum Scan {
    /// Not a whole head yet.
    Partial,
    /// Something the fast path leaves to hyper: another version, a body coding, an
    /// upgrade, `Expect`, a large body, a head hyper refuses (and explains).
    Unusual,
    /// A request the fast path serves.
    Request(Request),
}

/// A client's request head in the common shape.
#[derive(Debug)]
pub struct Request {
    /// Length of the head in the buffer.
    pub len: usize,
    /// The method.
    pub method: Method,
    /// The origin-form target.
    pub uri: Uri,
    /// `Content-Length` (0 without one).
    pub body: usize,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// Index of the `Host` field in the fields.
    pub host: usize,
}

/// Room for a head's fields that `httparse` fills as it parses. Left unset: filling
/// a hundred empty slots first wrote 3.2 KiB of stack per head, twice per request,
/// for the two or three fields a request usually has.
fn unset_fields<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS] {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// Sorts the start of `buf`; on [`Scan::Request`] `fields` holds the head's fields.
/// `valid_host` is the last `Host` value found valid on this connection (kept up to
/// date here): the same value again is not checked again.
pub fn scan_request(buf: &[u8], fields: &mut Vec<Field>, valid_host: &mut Vec<u8>) -> Scan {
    let mut headers = unset_fields();
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Scan::Partial,
        Err(_) => return Scan::Unusual,
    };
    let (Some(1), Some(method), Some(target)) = (req.version, req.method, req.path) else {
        return Scan::Unusual;
    };
    if !target.starts_with('/') || target.starts_with("/_keygate/") {
        return Scan::Unusual;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Scan::Unusual;
    };
    if method == Method::CONNECT {
        return Scan::Unusual;
    }
    let Ok(uri) = Uri::try_from(target) else {
        return Scan::Unusual;
    };
    fields.clear();
    let (mut host, mut hosts, mut body, mut lengths, mut close) = (0, 0, 0, 0, false);
    for h in req.headers.iter() {
        let field = Field::at(buf, h);
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            host = fields.len();
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            match length(h.value) {
                Some(n) if n <= MAX_BODY as u64 => body = usize::try_from(n).unwrap_or(MAX_BODY),
                _ => return Scan::Unusual,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return Scan::Unusual;
                }
            }
        } else if ["transfer-encoding", "upgrade", "expect", "http2-settings"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        {
            return Scan::Unusual;
        }
        fields.push(field);
    }
    if hosts != 1 || lengths > 1 {
        return Scan::Unusual;
    }
    let host_value = fields[host].value(buf);
    if host_value != valid_host.as_slice() {
        if !crate::proxy::wire::is_host_bytes(host_value) {
            return Scan::Unusual;
        }
        valid_host.clear();
        valid_host.extend_from_slice(host_value);
    }
    Scan::Request(Request {
        len,
        method,
        uri,
        body,
        close,
        host,
    })
}

/// A `Content-Length` value: digits only.
fn length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value
        .iter()
        .try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// An upstream's response head.
#[derive(Debug)]
pub struct Answer {
    /// Length of the head.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// How its body ends.
    pub framing: Framing,
    /// The connection may carry another request afterwards.
    pub reusable: bool,
    /// Interim (1xx): skipped, the final head follows.
    pub interim: bool,
}

/// Why an upstream's head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Not a whole head yet.
    Partial,
    /// Not HTTP/1.x, or framing that contradicts itself.
    Invalid,
}

/// Reads the response head at the start of `buf` (to a `HEAD` request when `head`);
/// `fields` receives its fields, minus those its `Connection` lists.
///
/// # Errors
/// [`Bad::Partial`] for more bytes, [`Bad::Invalid`] for an answer keygate refuses.
pub fn scan_response(buf: &[u8], head: bool, fields: &mut Vec<Field>) -> Result<Answer, Bad> {
    let mut headers = unset_fields();
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(Bad::Partial),
        Err(_) => return Err(Bad::Invalid),
    };
    let (Some(version), Some(status @ 100..)) = (resp.version, resp.code) else {
        return Err(Bad::Invalid);
    };
    if (100..200).contains(&status) {
        // 101 would switch protocols, which the fast path never asks for.
        return if status == 101 {
            Err(Bad::Invalid)
        } else {
            Ok(Answer {
                len,
                status,
                framing: Framing::Empty,
                reusable: true,
                interim: true,
            })
        };
    }
    fields.clear();
    let (mut close, mut keep_alive) = (false, false);
    let (mut length, mut chunked, mut coded) = (None, false, false);
    let mut listed: Vec<&[u8]> = Vec::new();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = self::length(h.value).ok_or(Bad::Invalid)?;
            if length.is_some_and(|l| l != n) {
                return Err(Bad::Invalid);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coded = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !token.eq_ignore_ascii_case(b"content-length")
                    && !token.eq_ignore_ascii_case(b"transfer-encoding")
                {
                    // The framing fields stay whatever `Connection` says: the body
                    // is relayed by them.
                    listed.push(token);
                }
            }
        }
        fields.push(Field::at(buf, h));
    }
    if !listed.is_empty() {
        // Fields named in `Connection`, before or after it, leave in one pass.
        fields.retain(|f| !listed.iter().any(|l| l.eq_ignore_ascii_case(f.name(buf))));
    }
    let mut reusable = !close && (version == 1 || keep_alive);
    if coded && length.is_some() {
        // Both framings at once: the classic request-smuggling shape.
        return Err(Bad::Invalid);
    }
    let framing = if head || status == 204 || status == 304 {
        Framing::Empty
    } else if coded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    Ok(Answer {
        len,
        status,
        framing,
        reusable,
        interim: false,
    })
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and what keygate replaces on a response.
pub fn dropped_from_response(name: &[u8], rate_limited: bool) -> bool {
    const HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ];
    const RATE: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];
    name.eq_ignore_ascii_case(b"x-request-id")
        || HOP.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        || (rate_limited && RATE.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes())))
}

/// Writes `name: value\r\n`.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the response line and the upstream's fields minus hop-by-hop ones, the
/// request id and, when keygate sets them (`rate_limited`), the `RateLimit-*`
/// fields. The caller adds its own and the blank line. `true` when the upstream
/// sent a `Date`.
pub fn write_answer_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    status: u16,
    fields: &[Field],
    rate_limited: bool,
) -> bool {
    out.extend_from_slice(b"HTTP/1.1 ");
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for f in fields {
        let name = f.name(buf);
        if !dropped_from_response(name, rate_limited) {
            dated |= name.eq_ignore_ascii_case(b"date");
            f.write(out, buf);
        }
    }
    dated
}

/// Writes a response keygate made itself (a refusal, a 502), with `Date`,
/// `Content-Length` and, when `close`, `Connection: close`; the body is left out
/// for a `HEAD` request (`head_only`).
pub fn write_own(out: &mut Vec<u8>, resp: &Response<Bytes>, date: &[u8], close: bool, head_only: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(resp.status().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.status().canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers() {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    field(out, b"date", date);
    let mut len = itoa_buf();
    field(
        out,
        b"content-length",
        decimal(&mut len, resp.body().len() as u64),
    );
    if close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(resp.body());
    }
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// `n` in decimal, written into `buf` two digits at a time (half the divisions).
pub fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    const PAIRS: [[u8; 2]; 100] = {
        let mut pairs = [[0; 2]; 100];
        let mut i = 0;
        while i < 100 {
            pairs[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
            i += 1;
        }
        pairs
    };
    let mut i = buf.len();
    while n >= 100 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[(n % 100) as usize]);
        n /= 100;
    }
    if n >= 10 {
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[n as usize]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    &buf[i..]
}

/// Whether a client-sent field stays on the forwarded request, given the checks
/// `strip` makes (credentials, identity, forwarding fields).
pub fn kept_on_request(name: &[u8], strip: impl FnOnce(&[u8]) -> bool) -> bool {
    const REPLACED: [&str; 13] = [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-for",
        "x-request-id",
    ];
    !REPLACED.iter().any(|r| name.eq_ignore_ascii_case(r.as_bytes())) && !strip(name)
}

/// A header name as `http` spells it, for the signature and the decision.
pub fn name_is(name: &[u8], known: &HeaderName) -> bool {
    name.eq_ignore_ascii_case(known.as_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Scan {
        scan_request(head.as_bytes(), &mut Vec::new(), &mut Vec::new())
    }

    #[test]
    fn the_common_shape_is_served_here() {
        let Scan::Request(r) =
            request("GET /v1/items?a=1 HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer x\r\n\r\n")
        else {
            panic!("a plain GET is the fast path's");
        };
        assert_eq!(
            (r.method, r.uri.path(), r.uri.query(), r.body, r.close),
            (Method::GET, "/v1/items", Some("a=1"), 0, false)
        );
        let Scan::Request(r) = request(
            "POST /v1/items HTTP/1.1\r\nhost: api\r\ncontent-length: 12\r\nConnection: close\r\n\r\n",
        ) else {
            panic!("a small body is the fast path's");
        };
        assert_eq!((r.body, r.close), (12, true));
        assert!(matches!(
            request("GET / HTTP/1.1\r\nHost: api\r\n"),
            Scan::Partial
        ));
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for head in [
            "GET / HTTP/1.0\r\nHost: api\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /_keygate/auth HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(matches!(request(head), Scan::Unusual), "{head:?}");
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |head: &str, is_head: bool| {
            scan_response(head.as_bytes(), is_head, &mut Vec::new()).map(|a| (a.framing, a.reusable))
        };
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Ok((Framing::Empty, true))
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok((Framing::Empty, true))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                false
            ),
            Ok((Framing::Length(0), false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            Ok((Framing::Length(0), false))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(Bad::Invalid)
        );
        assert_eq!(
            framing("HTTP/1.1 101 Switching\r\n\r\n", false),
            Err(Bad::Invalid)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n", false), Err(Bad::Partial));
        let interim = scan_response(
            b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n",
            false,
            &mut Vec::new(),
        )
        .expect("1xx");
        assert!(interim.interim);
    }

    #[test]
    fn connection_listed_and_hop_by_hop_fields_leave_the_response() {
        let head = b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: x-secret\r\nKeep-Alive: 5\r\nX-Request-Id: up\r\nRateLimit-Limit: 9\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n";
        let mut fields = Vec::new();
        let answer = scan_response(head, false, &mut fields).expect("valid");
        let mut out = Vec::new();
        write_answer_head(&mut out, head, answer.status, &fields, true);
        let text = String::from_utf8(out).expect("ascii");
        assert_eq!(text, "HTTP/1.1 200 OK\r\nX-Kept: 2\r\nContent-Length: 0\r\n");
    }

    #[test]
    fn hop_by_hop_and_forwarding_fields_are_replaced_whatever_their_case() {
        for name in [
            "Host",
            "connection",
            "KEEP-ALIVE",
            "proxy-connection",
            "Proxy-Authorization",
            "te",
            "Trailer",
            "transfer-encoding",
            "upgrade",
            "X-Forwarded-Host",
            "x-forwarded-proto",
            "x-forwarded-for",
            "X-Request-Id",
        ] {
            assert!(!kept_on_request(name.as_bytes(), |_| false), "{name}");
        }
        for name in [
            "user-agent",
            "accept",
            "x-forwarded-hosts",
            "tes",
            "hosts",
            "x-request",
            "authorization",
            "",
        ] {
            assert!(kept_on_request(name.as_bytes(), |_| false), "{name}");
        }
        assert!(!kept_on_request(b"authorization", |_| true));
    }

    #[test]
    fn lengths_format_in_decimal() {
        let mut buf = [0; 20];
        assert_eq!(decimal(&mut buf, 0), b"0");
        assert_eq!(decimal(&mut buf, 1234567), b"1234567");
        for n in [9, 10, 99, 100, 101, 999, 1000, 10_000_000_000] {
            assert_eq!(decimal(&mut buf, n), n.to_string().as_bytes());
        }
        assert_eq!(decimal(&mut buf, u64::MAX), u64::MAX.to_string().as_bytes());
    }
}
