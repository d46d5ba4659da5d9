//! Forward-auth: keygate as the authorizer another proxy asks before it forwards
//! (nginx `auth_request`, Traefik ForwardAuth, Envoy's HTTP ext_authz). The same
//! `auth::decide` as the reverse proxy judges the original request; nothing is
//! forwarded. The answer is 200 with the identity headers, or the usual refusal.
//!
//! Two styles, on the proxy listener:
//! - `/_keygate/auth` with the original request in `X-Original-Method` +
//!   `X-Original-URI` (nginx) or `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik);
//! - `/_keygate/auth/<original path>` with the original method (Envoy's
//!   `path_prefix`).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::Full;

use super::headers;
use crate::auth::Grant;

/// The forward-auth endpoint; paths under it are reserved.
pub const PATH: &str = "/_keygate/auth";

/// The request a forward-auth call asks about.
#[derive(Debug)]
pub(super) struct Asked {
    pub method: Method,
    pub uri: Uri,
}

const PAIRS: [(&str, &str); 2] = [
    ("x-original-method", "x-original-uri"),
    ("x-forwarded-method", "x-forwarded-uri"),
];

/// The original request when `uri` is the forward-auth endpoint; `None` for any
/// other request.
///
/// # Errors
/// A message for a forward-auth call that does not say clearly what it asks about:
/// no or repeated original-request headers, the two header styles disagreeing (a
/// client could otherwise smuggle its own pair past the asking proxy), an invalid
/// method, or a URI that is not a path.
pub(super) fn asked(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Option<Asked>, String> {
    let Some(rest) = uri.path().strip_prefix(PATH) else {
        return Ok(None);
    };
    if !rest.is_empty() {
        if !rest.starts_with('/') {
            return Ok(None); // `/_keygate/authx` is not ours
        }
        let original = match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        let uri = original
            .parse()
            .map_err(|_| format!("`{PATH}/…`: the original path is not a valid URI path"))?;
        return Ok(Some(Asked {
            method: method.clone(),
            uri,
        }));
    }
    let mut found: Option<(&str, &str, &str)> = None;
    for (method_header, uri_header) in PAIRS {
        let m = single(headers, method_header)?;
        let u = single(headers, uri_header)?;
        match (m, u) {
            (None, None) => continue,
            (Some(m), Some(u)) => {
                if let Some((_, fm, fu)) = found
                    && (fm != m || fu != u)
                {
                    return Err(format!(
                        "`{PATH}`: X-Original-* and X-Forwarded-* name different requests; send one pair"
                    ));
                }
                found = Some((method_header, m, u));
            }
            (None, Some(_)) => return Err(format!("`{PATH}`: {uri_header} needs {method_header}")),
            (Some(_), None) => return Err(format!("`{PATH}`: {method_header} needs {uri_header}")),
        }
    }
    let Some((method_header, m, u)) = found else {
        return Err(format!(
            "`{PATH}` judges the request named by X-Original-Method + X-Original-URI \
             (nginx) or X-Forwarded-Method + X-Forwarded-Uri (Traefik); neither was sent"
        ));
    };
    let method =
        Method::from_bytes(m.as_bytes()).map_err(|_| format!("`{PATH}`: {method_header} is not a method"))?;
    let uri: Uri = u
        .parse()
        .map_err(|_| format!("`{PATH}`: the original URI is not a path"))?;
    if uri.scheme().is_some() || !uri.path().starts_with('/') {
        return Err(format!(
            "`{PATH}`: the original URI must be a path like /v1/items?x=1"
        ));
    }
    Ok(Some(Asked { method, uri }))
}

/// The answer to an allowed forward-auth call: 200, empty, with the identity
/// headers the asking proxy copies upstream, the quota headers and the request id.
/// With signing on, the signature covers the asked-about method and URI.
pub(super) fn allow(
    grant: &Grant<'_>,
    settings: &super::Settings,
    asked: &Asked,
    request_id: &HeaderValue,
    now: DateTime<Utc>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    headers::insert_identity(h, &settings.identity, grant.key.as_deref());
    headers::prepare_response(h, grant.usage.as_ref(), request_id, now);
    settings.sign(&asked.method, &asked.uri, h, || now);
    resp
}

/// The one value of `name`, if present.
fn single<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, String> {
    let name = HeaderName::from_static(name);
    let mut values = headers.get_all(&name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("`{PATH}`: {name} is sent more than once"));
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| format!("`{PATH}`: {name} is not text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(uri: &str, headers: &[(&str, &str)]) -> Result<Option<(String, String)>, String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        asked(&Method::POST, &uri.parse().expect("uri"), &map)
            .map(|a| a.map(|a| (a.method.to_string(), a.uri.to_string())))
    }

    #[test]
    fn other_paths_are_not_forward_auth() {
        for uri in ["/", "/v1/items", "/_keygate/authx", "/_keygate"] {
            assert_eq!(ask(uri, &[]), Ok(None), "{uri}");
        }
    }

    #[test]
    fn each_style_names_the_original_request() {
        let nginx = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/v1/orgs/acme/items/1?a=b"),
        ];
        assert_eq!(
            ask("/_keygate/auth", &nginx),
            Ok(Some(("GET".into(), "/v1/orgs/acme/items/1?a=b".into())))
        );
        let traefik = [("x-forwarded-method", "DELETE"), ("x-forwarded-uri", "/v1/x")];
        assert_eq!(
            ask("/_keygate/auth", &traefik),
            Ok(Some(("DELETE".into(), "/v1/x".into())))
        );
        // Both styles agreeing is fine (nginx in front of Traefik, say).
        let both = [
            nginx[0],
            nginx[1],
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", nginx[1].1),
        ];
        assert!(ask("/_keygate/auth", &both).expect("agree").is_some());
        // Envoy: the path after the prefix, the request's own method and query.
        assert_eq!(
            ask("/_keygate/auth/v1/orgs/acme/items?page=2", &[]),
            Ok(Some(("POST".into(), "/v1/orgs/acme/items?page=2".into())))
        );
        assert_eq!(ask("/_keygate/auth/", &[]), Ok(Some(("POST".into(), "/".into()))));
    }

    #[test]
    fn unclear_questions_are_refused_with_a_reason() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "neither was sent"),
            (
                &[("x-original-uri", "/v1/x")],
                "x-original-uri needs x-original-method",
            ),
            (
                &[("x-forwarded-method", "GET")],
                "x-forwarded-method needs x-forwarded-uri",
            ),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/v1/public"),
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/v1/admin"),
                ],
                "name different requests",
            ),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-original-uri", "/b"),
                ],
                "more than once",
            ),
            (
                &[("x-original-method", "G E T"), ("x-original-uri", "/a")],
                "is not a method",
            ),
            (
                &[("x-original-method", "GET"), ("x-original-uri", "http://evil/a")],
                "must be a path",
            ),
            (
                &[("x-original-method", "GET"), ("x-original-uri", "*")],
                "must be a path",
            ),
        ];
        for (headers, reason) in cases {
            let err = ask("/_keygate/auth", headers).expect_err("refused");
            assert!(err.contains(reason), "{headers:?}: {err}");
        }
    }
}
