//! Who the client is: the socket peer, or, when the peer is a proxy listed in
//! `[clients] trusted_proxies`, the address that proxy reported in `X-Forwarded-For`.
//!
//! The header is read from the right: each proxy appends the address it saw, so the
//! rightmost entry was written by the peer, the next one by the hop before it, and
//! so on. Entries written by trusted proxies are skipped; the first one that is not
//! a trusted proxy is the client. Anything left of it was written by the client
//! itself and is never believed. An entry that is not an address (`unknown`, bytes
//! that are not text) makes the client unknown: no address allowlist matches it.
//! With no trusted proxies (the default) the header is ignored entirely.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::HeaderValue;
use ipnet::IpNet;

/// The client address of a request from `peer` carrying `headers`; `None` when a
/// trusted proxy reported something that is not an address.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    // Later headers were appended later: walk them, and their entries, right to left.
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| entries(v).rev());
    for entry in entries {
        client = entry?;
        if !is_trusted(client, trusted) {
            break;
        }
    }
    Some(client)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The entries of one `X-Forwarded-For` value, split on its bytes (a byte that is
/// not text spoils only its own entry); `None` for one that is not an address.
fn entries(value: &HeaderValue) -> impl DoubleEndedIterator<Item = Option<IpAddr>> + '_ {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(|entry| std::str::from_utf8(entry).ok().and_then(|e| parse(e.trim())))
}

/// An address as proxies write them: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`,
/// and with a port, `192.0.2.1:4711` or `[2001:db8::1]:4711`.
fn parse(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|n| crate::keys::record::parse_network(n).expect("a network"))
            .collect()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                HeaderValue::from_str(v).expect("a header value"),
            );
        }
        h
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_trusted() {
        let h = headers(&["203.0.113.9"]);
        assert_eq!(resolve(ip("192.0.2.1"), &h, &[]), Some(ip("192.0.2.1")));
        assert_eq!(
            resolve(ip("192.0.2.1"), &h, &nets(&["10.0.0.0/8"])),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            resolve(ip("10.1.1.1"), &h, &nets(&["10.0.0.0/8"])),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right_and_a_spoofed_left_part_is_not_believed() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        // The client sent "1.2.3.4" itself; the edge proxy appended the real address.
        let h = headers(&["1.2.3.4, 198.51.100.7, 10.0.0.5"]);
        assert_eq!(resolve(ip("10.0.0.9"), &h, &trusted), Some(ip("198.51.100.7")));
        // The same over two header lines, and an IPv6 hop with a port.
        let h = headers(&["1.2.3.4", "198.51.100.7, [2001:db8::5]:443"]);
        assert_eq!(resolve(ip("10.0.0.9"), &h, &trusted), Some(ip("198.51.100.7")));
        // Every entry trusted: the leftmost trusted hop.
        let h = headers(&["10.0.0.7, 10.0.0.5"]);
        assert_eq!(resolve(ip("10.0.0.9"), &h, &trusted), Some(ip("10.0.0.7")));
        // No header: the peer.
        assert_eq!(
            resolve(ip("10.0.0.9"), &HeaderMap::new(), &trusted),
            Some(ip("10.0.0.9"))
        );
    }

    #[test]
    fn a_garbled_entry_makes_the_client_unknown_but_only_its_own_entry_is_spoilt() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&["198.51.100.7, unknown, 10.0.0.5"]);
        assert_eq!(resolve(ip("10.0.0.9"), &h, &trusted), None);
        let h = headers(&["198.51.100.7, not-an-ip"]);
        assert_eq!(resolve(ip("10.0.0.9"), &h, &trusted), None);
        // A byte that is not text in what the client sent, then the proxy's entry.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").expect("a header value"),
        );
        assert_eq!(resolve(ip("10.0.0.9"), &h, &trusted), Some(ip("198.51.100.7")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&["::ffff:198.51.100.7"]);
        assert_eq!(
            resolve(ip("::ffff:10.0.0.9"), &h, &trusted),
            Some(ip("198.51.100.7"))
        );
    }
}
