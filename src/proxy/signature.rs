//! The signed identity: an HMAC-SHA256 over what keygate tells the upstream, so an
//! upstream that other paths can also reach can check a request came through keygate.
//!
//! `X-Keygate-Signature: t=<unix seconds>,v1=<64 lowercase hex>`, the MAC over these
//! lines joined by `\n` (header values cannot hold a newline, so the lines are
//! unambiguous; an absent header is an empty line):
//!
//! ```text
//! keygate-v1
//! <t>
//! <method>
//! <path and query, exactly as forwarded>
//! <key-id> <key-name> <org-id> <environment> <scopes> <owner> <auth-method>  (one line each)
//! <x-request-id>
//! ```
//!
//! The values are read back from the outgoing headers, so the signature covers exactly
//! what the upstream receives. The header sits under the identity prefix, so a
//! client-sent one is stripped like any other identity header.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use super::headers::Identity;

/// Shortest accepted secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Signs forwarded requests with one secret.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

impl Signer {
    /// A signer keyed with the secret's bytes.
    ///
    /// # Errors
    /// When the secret is shorter than [`MIN_SECRET_LEN`] bytes (the message never
    /// repeats the secret).
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "must be at least {MIN_SECRET_LEN} bytes (e.g. `openssl rand -base64 32`); it has {}",
                secret.len()
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|_| "cannot key HMAC-SHA256 with this secret".to_owned())?;
        Ok(Self { mac })
    }

    /// The signature header value for a request about to be forwarded, whose identity
    /// headers and request id are already set in `headers`.
    pub fn sign(
        &self,
        identity: &Identity,
        method: &http::Method,
        path_and_query: &str,
        headers: &HeaderMap,
        unix_seconds: i64,
    ) -> HeaderValue {
        let mut mac = self.mac.clone();
        let t = unix_seconds.to_string();
        for part in [
            b"keygate-v1".as_slice(),
            t.as_bytes(),
            method.as_str().as_bytes(),
            path_and_query.as_bytes(),
        ] {
            mac.update(part);
            mac.update(b"\n");
        }
        for name in identity.signed() {
            mac.update(headers.get(name).map_or(&[][..], HeaderValue::as_bytes));
            mac.update(b"\n");
        }
        mac.update(headers.get(REQUEST_ID).map_or(&[][..], HeaderValue::as_bytes));
        let digest = mac.finalize().into_bytes();
        let mut value = format!("t={t},v1=");
        for byte in digest {
            value.push(char::from(HEX[usize::from(byte >> 4)]));
            value.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| unreachable!("digits, letters, `=` and `,`"))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    #[test]
    fn a_short_secret_is_refused_without_being_repeated() {
        let err = Signer::new("hunter2-hunter2").expect_err("15 bytes");
        assert!(err.contains("at least 32 bytes"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(
            format!("{:?}", Signer::new(SECRET).expect("32 bytes")),
            "Signer(<secret>)"
        );
    }

    /// The documented message, computed independently: any upstream can verify with
    /// a plain HMAC-SHA256 over these lines.
    #[test]
    fn signs_the_documented_lines() {
        let identity = Identity::default();
        let h = headers(&[
            ("x-keygate-key-id", "7f0c"),
            ("x-keygate-key-name", "ci"),
            ("x-keygate-environment", "live"),
            ("x-keygate-scopes", "read,write"),
            ("x-keygate-owner", "org:acme"),
            ("x-keygate-auth-method", "api_key"),
            ("x-request-id", "r1"),
        ]);
        let signer = Signer::new(SECRET).expect("valid");
        let got = signer.sign(&identity, &http::Method::GET, "/v1/x?a=1", &h, 1_700_000_000);
        let message =
            "keygate-v1\n1700000000\nGET\n/v1/x?a=1\n7f0c\nci\n\nlive\nread,write\norg:acme\napi_key\nr1";
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(message.as_bytes());
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got.to_str().expect("ascii"), format!("t=1700000000,v1={want}"));
    }

    #[test]
    fn every_covered_part_changes_the_signature() {
        let identity = Identity::default();
        let signer = Signer::new(SECRET).expect("valid");
        let base = headers(&[("x-keygate-org-id", "acme"), ("x-request-id", "r1")]);
        let sign = |m: &http::Method, p: &str, h: &HeaderMap, t: i64| signer.sign(&identity, m, p, h, t);
        let reference = sign(&http::Method::GET, "/a", &base, 1);
        assert_ne!(reference, sign(&http::Method::POST, "/a", &base, 1));
        assert_ne!(reference, sign(&http::Method::GET, "/b", &base, 1));
        assert_ne!(reference, sign(&http::Method::GET, "/a", &base, 2));
        let other_org = headers(&[("x-keygate-org-id", "beta"), ("x-request-id", "r1")]);
        assert_ne!(reference, sign(&http::Method::GET, "/a", &other_org, 1));
        let other_id = headers(&[("x-keygate-org-id", "acme"), ("x-request-id", "r2")]);
        assert_ne!(reference, sign(&http::Method::GET, "/a", &other_id, 1));
        // A value moved to the neighbouring header is a different message.
        let moved = headers(&[("x-keygate-environment", "acme"), ("x-request-id", "r1")]);
        assert_ne!(reference, sign(&http::Method::GET, "/a", &moved, 1));
        let other = Signer::new("another secret of at least 32 bytes!").expect("valid");
        assert_ne!(
            reference,
            other.sign(&identity, &http::Method::GET, "/a", &base, 1)
        );
    }
}
