//! Route table: method + path template → what the route requires. Also the path rule.
//!
//! Templates are `/`-separated literal segments, `{param}` (one segment), `*` (one
//! segment) and a final `**` (zero or more segments). Routes are tried in file order;
//! the first match wins. A path that two HTTP stacks could read differently is refused
//! before matching (see [`segments`]).

use std::borrow::Cow;

use http::Method;

use super::rejection::Rejection;

/// One template segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Any,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name (used in logs, restrictions and metrics).
    pub name: String,
    methods: Option<Vec<Method>>,
    segments: Vec<Segment>,
    tail: bool,
    /// Scopes the key must all hold.
    pub scopes: Vec<String>,
    org_segment: Option<usize>,
    /// No key needed.
    pub public: bool,
    /// Quota units charged per request.
    pub cost: u64,
    /// Index into the proxy's upstream list (0 = the default upstream).
    pub upstream: usize,
    /// What happens to a request without a keygate-shaped key.
    pub other_credentials: OtherCredentials,
    /// The query parameter that may carry the key.
    pub key_query_param: Option<String>,
    /// A Streamable HTTP MCP endpoint: each JSON-RPC message a keygate key sends is
    /// judged and charged (see [`crate::mcp`]), not the HTTP request. Requests
    /// passed through without a key (`other_credentials = "pass"`) are not judged.
    pub mcp: bool,
}

/// `other_credentials`: what a route does with a request that carries no
/// keygate-shaped key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtherCredentials {
    /// Refuse it (401): the route is for API keys only.
    #[default]
    Reject,
    /// Forward it with its credentials untouched to the API's own login, marked
    /// `X-Keygate-Auth-Method: none` and not charged.
    Pass,
}

/// What a route needs, as the config describes it.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Route name.
    pub name: String,
    /// Allowed methods; empty = any.
    pub methods: Vec<Method>,
    /// Path template.
    pub path: String,
    /// Required scopes.
    pub scopes: Vec<String>,
    /// Name of the `{param}` that must equal the key's org.
    pub org_param: Option<String>,
    /// No key needed.
    pub public: bool,
    /// Quota units per request.
    pub cost: u64,
    /// Upstream index.
    pub upstream: usize,
    /// What happens to a request without a keygate-shaped key.
    pub other_credentials: OtherCredentials,
    /// The query parameter that may carry the key.
    pub key_query_param: Option<String>,
    /// A Streamable HTTP MCP endpoint.
    pub mcp: bool,
}

impl Route {
    /// Compiles a route.
    ///
    /// # Errors
    /// A message naming what is wrong with the template or `org_param`.
    pub fn compile(spec: Spec) -> Result<Self, String> {
        let Some(rest) = spec.path.strip_prefix('/') else {
            return Err(format!("path `{}` must start with `/`", spec.path));
        };
        let mut segments = Vec::new();
        let mut tail = false;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            if tail {
                return Err("`**` may only be the last segment".into());
            }
            let segment = match *part {
                "**" if i + 1 == parts.len() => {
                    tail = true;
                    continue;
                }
                "**" => return Err("`**` may only be the last segment".into()),
                "*" => Segment::Any,
                "" => return Err(format!("path `{}` has an empty segment", spec.path)),
                p if p.starts_with('{') && p.ends_with('}') => {
                    let name = &p[1..p.len() - 1];
                    let valid =
                        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !valid {
                        return Err(format!("`{p}` is not a valid parameter name"));
                    }
                    if segments.contains(&Segment::Param(name.to_owned())) {
                        return Err(format!("parameter `{name}` appears twice"));
                    }
                    Segment::Param(name.to_owned())
                }
                p if p.contains(['{', '}', '*', '%', '\\']) || p == "." || p == ".." => {
                    return Err(format!(
                        "segment `{p}` is neither a literal nor `{{param}}`, `*` or `**`"
                    ));
                }
                p => Segment::Literal(p.to_owned()),
            };
            segments.push(segment);
        }
        let org_segment = match &spec.org_param {
            None => None,
            Some(param) => Some(
                segments
                    .iter()
                    .position(|s| *s == Segment::Param(param.clone()))
                    .ok_or_else(|| format!("org_param `{param}` is not a `{{param}}` of the path"))?,
            ),
        };
        if spec.public && (!spec.scopes.is_empty() || org_segment.is_some()) {
            return Err("a public route cannot require scopes or an org_param".into());
        }
        Ok(Self {
            name: spec.name,
            methods: (!spec.methods.is_empty()).then_some(spec.methods),
            segments,
            tail,
            scopes: spec.scopes,
            org_segment,
            public: spec.public,
            cost: spec.cost,
            upstream: spec.upstream,
            other_credentials: spec.other_credentials,
            key_query_param: spec.key_query_param,
            mcp: spec.mcp,
        })
    }

    /// The route used for unmatched paths under `unmatched = "authenticate"`.
    pub fn fallback() -> Self {
        Self {
            name: "unmatched".into(),
            methods: None,
            segments: Vec::new(),
            tail: true,
            scopes: Vec::new(),
            org_segment: None,
            public: false,
            cost: 1,
            upstream: 0,
            other_credentials: OtherCredentials::Reject,
            key_query_param: None,
            mcp: false,
        }
    }

    fn matches(&self, method: &Method, path: &[Cow<'_, str>]) -> bool {
        if let Some(methods) = &self.methods
            && !methods.contains(method)
        {
            return false;
        }
        let fixed = self.segments.len();
        let length_ok = if self.tail {
            path.len() >= fixed
        } else {
            path.len() == fixed
        };
        length_ok
            && self.segments.iter().zip(path).all(|(t, p)| match t {
                Segment::Literal(l) => l == p,
                Segment::Param(_) | Segment::Any => true,
            })
    }
}

/// What unmatched paths get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// 404 `route_not_found`.
    Deny,
    /// Any valid key, no scopes, cost 1.
    Authenticate,
}

/// The compiled routes, in file order.
#[derive(Debug, Clone)]
pub struct Table {
    routes: Vec<Route>,
    unmatched: Unmatched,
    fallback: Route,
    mcp: bool,
}

/// A matched route and the org named in the path, if the route binds one.
#[derive(Debug)]
pub struct Matched<'t, 'p> {
    /// The route.
    pub route: &'t Route,
    /// The decoded path segment bound by `org_param`.
    pub org: Option<Cow<'p, str>>,
}

impl Table {
    /// A table of `routes` with the policy for unmatched paths.
    pub fn new(routes: Vec<Route>, unmatched: Unmatched) -> Self {
        Self {
            mcp: routes.iter().any(|r| r.mcp),
            routes,
            unmatched,
            fallback: Route::fallback(),
        }
    }

    /// Unmatched paths under `unmatched = "authenticate"` treat requests without a
    /// keygate key as `[proxy] other_credentials` says.
    #[must_use]
    pub fn with_other_credentials(mut self, other: OtherCredentials) -> Self {
        self.fallback.other_credentials = other;
        self
    }

    /// Whether any route is an MCP route.
    pub fn has_mcp(&self) -> bool {
        self.mcp
    }

    /// The routes, in match order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the first route matching `method` and the raw `path`.
    ///
    /// # Errors
    /// `invalid_path` for ambiguous paths, `route_not_found` when nothing matches and
    /// unmatched paths are denied.
    pub fn match_request<'t, 'p>(
        &'t self,
        method: &Method,
        path: &'p str,
    ) -> Result<Matched<'t, 'p>, Rejection> {
        let mut segs = segments(path)?;
        let route = self
            .routes
            .iter()
            .find(|r| r.matches(method, &segs))
            .or(match self.unmatched {
                Unmatched::Deny => None,
                Unmatched::Authenticate => Some(&self.fallback),
            })
            .ok_or(Rejection::RouteNotFound)?;
        let org = route
            .org_segment
            .filter(|&i| i < segs.len())
            .map(|i| segs.swap_remove(i));
        Ok(Matched { route, org })
    }
}

/// A path's decoded segments: up to 8 without an allocation (this runs on every
/// request; deeper paths spill to the heap).
pub type Segments<'p> = smallvec::SmallVec<[Cow<'p, str>; 8]>;

/// Splits a raw request path into decoded segments, refusing ambiguous paths.
///
/// Refused: `.`/`..` segments, empty segments (`//`; one trailing `/` is allowed and
/// ignored for matching), the same with `;params` after them (`..;x`, `;x`), a
/// backslash, control characters, invalid percent-encoding, and the encodings of
/// `/`, `\`, `.`, `%` and `;` (`%2F`, `%5C`, `%2E`, `%25`, `%3B`, any case).
///
/// # Errors
/// [`Rejection::InvalidPath`].
pub fn segments(path: &str) -> Result<Segments<'_>, Rejection> {
    let rest = path.strip_prefix('/').ok_or(Rejection::InvalidPath)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return if path.len() <= 1 {
            Ok(Segments::new())
        } else {
            Err(Rejection::InvalidPath)
        };
    }
    // Split and checked byte by byte in one pass: this runs on every request, and
    // `str::split` plus a search per rule cost more than the match itself.
    let mut segs = Segments::new();
    let mut start = 0;
    for (i, b) in rest.bytes().enumerate() {
        if b == b'/' {
            segs.push(decode_segment(&rest[start..i])?);
            start = i + 1;
        }
    }
    segs.push(decode_segment(&rest[start..])?);
    Ok(segs)
}

fn decode_segment(raw: &str) -> Result<Cow<'_, str>, Rejection> {
    let bytes = raw.as_bytes();
    // Servlet containers (Tomcat, Jetty, Spring) drop `;params` from each segment
    // before resolving dot segments, so `..;x` would be `..` upstream.
    let mut params_at = None;
    let mut encoded = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(Rejection::InvalidPath),
            b';' if params_at.is_none() => params_at = Some(i),
            b'%' => encoded = true,
            _ if b.is_ascii_control() => return Err(Rejection::InvalidPath),
            _ => {}
        }
    }
    let before_params = &bytes[..params_at.unwrap_or(bytes.len())];
    if matches!(before_params, b"" | b"." | b"..") {
        return Err(Rejection::InvalidPath);
    }
    if !encoded {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(Rejection::InvalidPath)?;
            let hex = std::str::from_utf8(hex).map_err(|_| Rejection::InvalidPath)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| Rejection::InvalidPath)?;
            if matches!(b, b'/' | b'\\' | b'.' | b'%' | b';') || b.is_ascii_control() {
                return Err(Rejection::InvalidPath);
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| Rejection::InvalidPath)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, methods: &[&str], path: &str) -> Route {
        Route::compile(Spec {
            name: name.into(),
            methods: methods.iter().map(|m| m.parse().expect("method")).collect(),
            path: path.into(),
            org_param: path.contains("{org}").then(|| "org".into()),
            cost: 1,
            ..Spec::default()
        })
        .expect("compiles")
    }

    fn table(unmatched: Unmatched) -> Table {
        Table::new(
            vec![
                route("read", &["GET"], "/v1/orgs/{org}/items/**"),
                route("write", &["POST"], "/v1/orgs/{org}/items/*"),
                route("root", &[], "/"),
            ],
            unmatched,
        )
    }

    fn name(t: &Table, m: &str, p: &str) -> Result<String, Rejection> {
        t.match_request(&m.parse().expect("method"), p)
            .map(|m| m.route.name.clone())
    }

    #[test]
    fn first_matching_route_wins_and_binds_the_org() {
        let t = table(Unmatched::Deny);
        let m = t
            .match_request(&Method::GET, "/v1/orgs/acme/items/1/2")
            .expect("match");
        assert_eq!(m.route.name, "read");
        assert_eq!(m.org.as_deref(), Some("acme"));
        assert_eq!(name(&t, "GET", "/v1/orgs/acme/items"), Ok("read".into()));
        assert_eq!(name(&t, "POST", "/v1/orgs/acme/items/1"), Ok("write".into()));
        assert_eq!(
            name(&t, "POST", "/v1/orgs/acme/items/1/2"),
            Err(Rejection::RouteNotFound)
        );
        assert_eq!(name(&t, "DELETE", "/"), Ok("root".into()));
    }

    #[test]
    fn percent_encoded_segments_match_decoded() {
        let t = table(Unmatched::Deny);
        let m = t
            .match_request(&Method::GET, "/v1/orgs/ac%6De/items/1")
            .expect("match");
        assert_eq!(m.org.as_deref(), Some("acme"));
    }

    #[test]
    fn unmatched_paths_follow_the_policy() {
        assert_eq!(
            name(&table(Unmatched::Deny), "GET", "/nope"),
            Err(Rejection::RouteNotFound)
        );
        assert_eq!(
            name(&table(Unmatched::Authenticate), "GET", "/nope"),
            Ok("unmatched".into())
        );
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let t = table(Unmatched::Authenticate);
        for p in [
            "/v1/orgs/acme/../other/items",
            "/v1/./x",
            "/v1//x",
            "//",
            "/a\\b",
            "/v1/%2F",
            "/v1/%2f",
            "/v1/%2E%2E",
            "/v1/%2e",
            "/v1/%25",
            "/v1/%5c",
            "/v1/%zz",
            "/v1/%4",
            "/v1/%00",
            "/v1/%ff",
            "relative",
            "/a/.",
            "/a/..",
            "/v1/orgs/acme/items/..;/..;/beta/items/1",
            "/v1/..;x/y",
            "/v1/.;/y",
            "/v1/;x/y",
            "/v1/%3B",
            "/v1/a%3bb",
        ] {
            assert_eq!(name(&t, "GET", p), Err(Rejection::InvalidPath), "{p}");
        }
    }

    #[test]
    fn path_parameters_on_ordinary_segments_are_kept_and_matched_literally() {
        let t = table(Unmatched::Deny);
        // `acme;v=1` is not org `acme`: the key's org has to equal the whole segment.
        let matched = t
            .match_request(&Method::GET, "/v1/orgs/acme;v=1/items/1")
            .expect("an ordinary segment with parameters matches");
        assert_eq!(matched.org.as_deref(), Some("acme;v=1"));
    }

    #[test]
    fn one_trailing_slash_is_ignored_for_matching() {
        let t = table(Unmatched::Deny);
        assert_eq!(name(&t, "POST", "/v1/orgs/acme/items/1/"), Ok("write".into()));
        assert_eq!(name(&t, "GET", "/"), Ok("root".into()));
    }

    #[test]
    fn bad_templates_are_refused() {
        for p in [
            "v1", "/a/**/b", "/a//b", "/{}", "/{a-b}", "/a%2F", "/{x}/{x}", "/../a",
        ] {
            let spec = Spec {
                name: "r".into(),
                path: p.into(),
                ..Spec::default()
            };
            assert!(Route::compile(spec).is_err(), "{p}");
        }
        let spec = Spec {
            name: "r".into(),
            path: "/a/{id}".into(),
            org_param: Some("org".into()),
            ..Spec::default()
        };
        assert!(Route::compile(spec).is_err());
    }
}
