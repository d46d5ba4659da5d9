//! Extracting the credential: `Authorization: Bearer <key>` or a configured key header,
//! with every offline check (shape, checksum, environment, JWT) done here, before any
//! lookup.

use http::header::{AUTHORIZATION, HeaderMap, HeaderName};

use super::rejection::Rejection;
use crate::keys::format::{self, Format, Parsed};

/// Where keys are looked for and what they look like.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The deployment's key format.
    pub format: Format,
    /// An extra header that may carry the bare key (e.g. `x-api-key`).
    pub key_header: Option<HeaderName>,
}

/// Extracts and checks the one key in `headers`.
///
/// # Errors
/// The precise rejection: missing, ambiguous, not an API key, malformed, wrong environment.
pub fn extract<'h>(headers: &'h HeaderMap, settings: &Settings) -> Result<Parsed<'h>, Rejection> {
    let mut found = None;
    let mut count = 0usize;
    for value in headers.get_all(AUTHORIZATION) {
        count += 1;
        found = Some((value, true));
    }
    if let Some(name) = &settings.key_header {
        for value in headers.get_all(name) {
            count += 1;
            found = Some((value, false));
        }
    }
    if count > 1 {
        return Err(Rejection::AmbiguousCredentials);
    }
    let Some((value, is_authorization)) = found else {
        return Err(Rejection::MissingApiKey { other_scheme: false });
    };
    let value = value.to_str().map_err(|_| Rejection::MalformedApiKey {
        reason: "the credential header holds bytes other than visible ASCII".into(),
    })?;
    let token = if is_authorization {
        bearer_token(value)?
    } else {
        value.trim()
    };
    if token.is_empty() {
        return Err(Rejection::MissingApiKey { other_scheme: false });
    }
    classify(token, &settings.format)
}

/// The token of a `Bearer` credential: scheme case-insensitive, whitespace tolerated.
fn bearer_token(value: &str) -> Result<&str, Rejection> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::MissingApiKey {
            other_scheme: !scheme.is_empty(),
        });
    }
    Ok(token.trim_matches([' ', '\t']))
}

/// Checks a bare token against the key format.
///
/// # Errors
/// `not_an_api_key`, `malformed_api_key` or `wrong_environment`.
pub fn classify<'t>(token: &'t str, format: &Format) -> Result<Parsed<'t>, Rejection> {
    if looks_like_jwt(token) {
        return Err(Rejection::NotAnApiKey);
    }
    format.parse(token).map_err(|e| match e {
        format::Error::WrongEnvironment { found, expected } => {
            Rejection::WrongEnvironment { found, expected }
        }
        other @ (format::Error::ForeignPrefix { .. } | format::Error::Shape | format::Error::Checksum) => {
            Rejection::MalformedApiKey {
                reason: other.to_string(),
            }
        }
    })
}

/// A JWS compact serialisation: three base64url parts, the header starting `eyJ` (`{"`).
fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let is_b64 = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(h), Some(p), Some(s), None) if h.starts_with("eyJ") && !p.is_empty() && is_b64(h) && is_b64(p) && is_b64(s)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn settings() -> Settings {
        Settings {
            format: Format::new("kg", "live").expect("valid"),
            key_header: Some(HeaderName::from_static("x-api-key")),
        }
    }

    fn key(env: &str) -> String {
        settings().format.assemble(env, &"Q".repeat(format::RANDOM_LEN))
    }

    fn run(pairs: &[(&str, &str)]) -> Result<String, Rejection> {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        extract(&headers, &settings()).map(|p| p.expose().to_owned())
    }

    #[test]
    fn bearer_scheme_and_whitespace_are_tolerated() {
        let k = key("live");
        for v in [
            format!("Bearer {k}"),
            format!("bearer {k}"),
            format!("  BEARER \t{k}  "),
        ] {
            assert_eq!(run(&[("authorization", &v)]), Ok(k.clone()), "{v}");
        }
        assert_eq!(run(&[("x-api-key", &k)]), Ok(k.clone()));
    }

    #[test]
    fn each_offline_refusal_has_its_code() {
        let k = key("live");
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (vec![], "missing_api_key"),
            (
                vec![("authorization", "Basic dXNlcjpw".into())],
                "missing_api_key",
            ),
            (vec![("authorization", "Bearer".into())], "missing_api_key"),
            (
                vec![(
                    "authorization",
                    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln".into(),
                )],
                "not_an_api_key",
            ),
            (
                vec![("authorization", format!("Bearer {}", key("test")))],
                "wrong_environment",
            ),
            (
                vec![("authorization", format!("Bearer {}x", &k[..k.len() - 1]))],
                "malformed_api_key",
            ),
            (
                vec![("authorization", "Bearer sk_live_abc".into())],
                "malformed_api_key",
            ),
            (
                vec![
                    ("authorization", format!("Bearer {k}")),
                    ("authorization", format!("Bearer {k}")),
                ],
                "ambiguous_credentials",
            ),
            (
                vec![("authorization", format!("Bearer {k}")), ("x-api-key", k.clone())],
                "ambiguous_credentials",
            ),
        ];
        for (pairs, code) in cases {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (*a, b.as_str())).collect();
            assert_eq!(run(&pairs).map_err(|r| r.code()), Err(code), "{pairs:?}");
        }
    }
}
