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

/// What a request presents as its credential.
#[derive(Debug)]
pub enum Presented<'h> {
    /// One keygate key that passed the offline checks.
    Key(Parsed<'h>),
    /// Nothing keygate-shaped: no credential, another scheme, a JWT, a token of
    /// another issuer. A route with `other_credentials = "reject"` refuses it with
    /// this rejection; one with `"pass"` forwards the request to the API's own login.
    Other(Rejection),
    /// A keygate-shaped credential that fails an offline check (shape, checksum,
    /// environment), anything but a key in the key query parameter, or two
    /// credentials: refused on every route, never passed through.
    Refused(Rejection),
}

/// Extracts and checks the one key in `headers`.
///
/// # Errors
/// The precise rejection: missing, ambiguous, not an API key, malformed, wrong environment.
pub fn extract<'h>(headers: &'h HeaderMap, settings: &Settings) -> Result<Parsed<'h>, Rejection> {
    match present(headers, None, settings) {
        Presented::Key(key) => Ok(key),
        Presented::Other(r) | Presented::Refused(r) => Err(r),
    }
}

/// Finds and checks the credential in `headers` and, when the route names a key query
/// parameter, in `query` as `(raw query, parameter name)`.
pub fn present<'h>(
    headers: &'h HeaderMap,
    query: Option<(&'h str, &str)>,
    settings: &Settings,
) -> Presented<'h> {
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
    let mut from_query = None;
    if let Some((query, name)) = query {
        for value in query_values(query, name) {
            count += 1;
            from_query = Some(value);
        }
    }
    if count > 1 {
        return Presented::Refused(Rejection::AmbiguousCredentials);
    }
    if let Some(token) = from_query {
        // The parameter exists for keygate keys only: whatever else it holds is refused.
        return match classify(token, &settings.format) {
            Ok(key) => Presented::Key(key),
            Err(r) => Presented::Refused(r),
        };
    }
    let Some((value, is_authorization)) = found else {
        return Presented::Other(Rejection::MissingApiKey { other_scheme: false });
    };
    let Ok(value) = value.to_str() else {
        return Presented::Other(Rejection::MalformedApiKey {
            reason: "the credential header holds bytes other than visible ASCII".into(),
        });
    };
    let token = if is_authorization {
        match bearer_token(value) {
            Ok(token) => token,
            Err(r) => return Presented::Other(r),
        }
    } else {
        value.trim()
    };
    if token.is_empty() {
        return Presented::Other(Rejection::MissingApiKey { other_scheme: false });
    }
    match classify(token, &settings.format) {
        Ok(key) => Presented::Key(key),
        Err(r) if looks_like_jwt(token) || !settings.format.is_ours(token) => Presented::Other(r),
        Err(r) => Presented::Refused(r),
    }
}

/// The raw values of parameter `name` in `query`; a name is compared after
/// percent-decoding (`api%5Fkey` is `api_key`), a value is returned as sent (a key
/// never needs encoding, so an encoded one fails the key check).
pub fn query_values<'q>(query: &'q str, name: &str) -> impl Iterator<Item = &'q str> {
    query.split('&').filter_map(move |pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        decodes_to(n, name).then_some(v)
    })
}

/// `query` without parameter `name` (every occurrence); `None` when nothing is left.
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !decodes_to(pair.split_once('=').map_or(*pair, |(n, _)| n), name))
        .collect();
    let kept = kept.join("&");
    (!kept.is_empty()).then_some(kept)
}

/// Whether `raw`, percent-decoded, is exactly `name`.
fn decodes_to(raw: &str, name: &str) -> bool {
    let (raw, name) = (raw.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < raw.len() {
        let byte = match raw[i] {
            b'%' if i + 2 < raw.len() => {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        i += 3;
                        b
                    }
                    None => return false,
                }
            }
            b => {
                i += 1;
                b
            }
        };
        if name.get(j) != Some(&byte) {
            return false;
        }
        j += 1;
    }
    j == name.len()
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
    // Every key is checked: most are not JWTs, and say so in three bytes.
    if !token.starts_with("eyJ") {
        return false;
    }
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

    #[test]
    fn query_parameters_are_found_by_decoded_name_and_stripped_everywhere() {
        let q = "a=1&api_key=K1&api%5Fkey=K2&api%5fkey=K3&api_keyx=no&xapi_key=no&api_key";
        let found: Vec<&str> = query_values(q, "api_key").collect();
        assert_eq!(found, ["K1", "K2", "K3", ""]);
        assert_eq!(
            strip_query_param(q, "api_key").as_deref(),
            Some("a=1&api_keyx=no&xapi_key=no")
        );
        assert_eq!(strip_query_param("api_key=K", "api_key"), None);
        assert_eq!(strip_query_param("b=2", "api_key").as_deref(), Some("b=2"));
        // A truncated or invalid escape never matches.
        assert_eq!(query_values("api%5=K&api%ZZkey=K&%", "api_key").count(), 0);
    }

    #[test]
    fn pass_routes_see_foreign_credentials_as_other_and_keygate_shaped_ones_as_refused() {
        let s = settings();
        let present_one = |name: &str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
            match present(&headers, None, &s) {
                Presented::Key(_) => "key",
                Presented::Other(_) => "other",
                Presented::Refused(_) => "refused",
            }
        };
        let k = key("live");
        let mut typo = k.clone();
        typo.pop();
        typo.push('!');
        assert_eq!(present_one("authorization", &format!("Bearer {k}")), "key");
        assert_eq!(
            present_one(
                "authorization",
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
            ),
            "other"
        );
        assert_eq!(present_one("authorization", "Bearer opaque"), "other");
        assert_eq!(present_one("authorization", "Basic dTpw"), "other");
        assert_eq!(present_one("x-api-key", "theirs"), "other");
        assert_eq!(present_one("authorization", &format!("Bearer {typo}")), "refused");
        assert_eq!(
            present_one("authorization", &format!("Bearer {}", key("test"))),
            "refused"
        );
        assert_eq!(present_one("authorization", "Bearer kg_live_short"), "refused");
        assert_eq!(present_one("x-api-key", &typo), "refused");
    }
}
