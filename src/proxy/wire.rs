//! Request framing hyper accepts and keygate refuses anyway, before any decision:
//! the RFC 9112 rules on `Host` (§3.2) and transfer codings (§6.1) that a proxy must
//! enforce so that it and the upstream cannot disagree about what was asked.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{StatusCode, Version};

/// Why a request is refused: status, code and message of the JSON answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    /// 400 or 501.
    pub status: StatusCode,
    /// `invalid_request` or `unsupported_transfer_encoding`.
    pub code: &'static str,
    /// For humans.
    pub message: &'static str,
}

const fn bad_host(message: &'static str) -> Problem {
    Problem {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_request",
        message,
    }
}

/// Checks `Host` and `Transfer-Encoding`.
///
/// # Errors
/// An HTTP/1.1 request without `Host`; more than one `Host`; a `Host` that is not
/// `host[:port]` (an empty one is allowed, as RFC 9112 allows it); a transfer coding
/// other than `chunked` (hyper only decodes that one; anything else would reach the
/// upstream still coded, its framing unknown to keygate).
pub fn check(version: Version, headers: &HeaderMap) -> Result<(), Problem> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => {
            return Err(bad_host("an HTTP/1.1 request needs a Host header"));
        }
        (Some(_), Some(_)) => return Err(bad_host("the request has more than one Host header")),
        (Some(host), None) if !is_host(host) => {
            return Err(bad_host("the Host header is not host[:port]"));
        }
        _ => {}
    }
    let codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','));
    for coding in codings {
        if !coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Problem {
                status: StatusCode::NOT_IMPLEMENTED,
                code: "unsupported_transfer_encoding",
                message: "only the chunked transfer coding is supported",
            });
        }
    }
    Ok(())
}

fn is_host(value: &HeaderValue) -> bool {
    is_host_bytes(value.as_bytes())
}

/// Whether a `Host` value is `host[:port]` (or empty).
pub(crate) fn is_host_bytes(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    if text.is_empty() {
        return true;
    }
    // `host [":" port]`, port all digits; `Authority` checks the host's characters.
    let port = match text.strip_prefix('[') {
        Some(ipv6) => match ipv6.split_once(']') {
            Some((_, "")) => "",
            Some((_, after)) => match after.strip_prefix(':') {
                Some(port) => port,
                None => return false,
            },
            None => return false,
        },
        None => text.rsplit_once(':').map_or("", |(_, port)| port),
    };
    !text.contains('@') && port.bytes().all(|b| b.is_ascii_digit()) && Authority::try_from(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    #[test]
    fn host_follows_rfc_9112() {
        let v11 = Version::HTTP_11;
        for ok in ["example.com", "example.com:8080", "127.0.0.1", "[::1]:80", ""] {
            assert_eq!(check(v11, &headers(&[("host", ok)])), Ok(()), "{ok:?}");
        }
        assert_eq!(
            check(Version::HTTP_10, &headers(&[])),
            Ok(()),
            "HTTP/1.0 may omit Host"
        );
        let missing = check(v11, &headers(&[])).expect_err("missing");
        assert_eq!(
            (missing.status, missing.code),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        assert!(check(v11, &headers(&[("host", "a"), ("host", "a")])).is_err());
        for bad in ["a b", "a/b?c", "user@host", "host:port", "a\"b", "[::1]x", "[::1"] {
            assert!(check(v11, &headers(&[("host", bad)])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_chunked_transfer_coding_passes() {
        let with = |te: &str| {
            check(
                Version::HTTP_11,
                &headers(&[("host", "h"), ("transfer-encoding", te)]),
            )
        };
        assert_eq!(with("chunked"), Ok(()));
        assert_eq!(with("Chunked"), Ok(()));
        let err = with("gzip, chunked").expect_err("gzip");
        assert_eq!(err.status, StatusCode::NOT_IMPLEMENTED);
        assert!(with("deflate").is_err());
    }
}
