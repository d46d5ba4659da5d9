//! Authorize: may this key use this route? Scopes (all of), org binding and the
//! key's own restrictions (read-only, route allowlist, client IP allowlist). Pure.

use std::net::IpAddr;

use http::Method;

use super::rejection::Rejection;
use super::route::Matched;
use crate::keys::CachedKey;

/// Checks `key` against the matched route, the method and the client's address.
///
/// # Errors
/// `insufficient_scope` (naming every missing scope), `org_mismatch` (also for keys
/// without an org on org-bound routes), `key_restricted` or `ip_not_allowed`.
pub fn check(
    key: &CachedKey,
    matched: &Matched<'_, '_>,
    method: &Method,
    client: Option<IpAddr>,
) -> Result<(), Rejection> {
    let route = matched.route;
    if !route.scopes.iter().all(|s| key.has_scope(s)) {
        let missing = route
            .scopes
            .iter()
            .filter(|s| !key.has_scope(s))
            .cloned()
            .collect();
        return Err(Rejection::InsufficientScope { missing });
    }
    if let Some(org) = &matched.org
        && key.org_id.as_deref() != Some(org.as_ref())
    {
        return Err(Rejection::OrgMismatch);
    }
    let restrictions = &key.restrictions;
    if restrictions.read_only && !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Err(Rejection::KeyRestricted {
            reason: "the key is read-only",
        });
    }
    if !restrictions.routes.is_empty() && !restrictions.routes.contains(&route.name) {
        return Err(Rejection::KeyRestricted {
            reason: "the key may not use this route",
        });
    }
    if !restrictions.allowed_ips.is_empty() && !client.is_some_and(|ip| restrictions.allows_ip(ip)) {
        return Err(Rejection::IpNotAllowed { ip: client });
    }
    Ok(())
}
