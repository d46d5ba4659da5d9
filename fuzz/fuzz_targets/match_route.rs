//! Route templates and request paths: compiling any template and matching any path
//! never panics; a matched org parameter is one plain segment of the path; a path
//! the rule refuses is never matched.
#![no_main]

use http::Method;
use keygate::auth::route::{self, Route, Spec, Table, Unmatched};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // "template\npath": the template compiles against fixed ones, the path is matched.
    let (template, path) = text.split_once('\n').unwrap_or(("/v1/orgs/{org}/items/**", text));
    let mut routes = vec![];
    for (i, t) in [template, "/v1/orgs/{org}/items/**", "/v1/*/public"].into_iter().enumerate() {
        let spec = Spec {
            name: format!("r{i}"),
            path: t.to_owned(),
            org_param: t.contains("{org}").then(|| "org".to_owned()),
            cost: 1,
            ..Spec::default()
        };
        if let Ok(r) = Route::compile(spec) {
            routes.push(r);
        }
    }
    let table = Table::new(routes, Unmatched::Deny);
    let refused = route::segments(path).is_err();
    if let Ok(matched) = table.match_request(&Method::GET, path) {
        assert!(!refused, "an ambiguous path must never match: {path:?}");
        if let Some(org) = matched.org {
            assert!(!org.is_empty() && !org.contains('/'), "org {org:?} from {path:?}");
        }
    }
});
