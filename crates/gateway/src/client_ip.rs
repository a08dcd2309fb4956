//! The client's address: the peer, or `X-Forwarded-For` when the peer is a trusted proxy.

use hyper::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// Walks `X-Forwarded-For` from the right, skipping trusted proxies: the first untrusted
/// address is the client. Headers from untrusted peers are ignored entirely, so a client
/// cannot pick its own identity.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().expect("header"));
        h
    }

    #[test]
    fn trusts_only_configured_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let proxy: IpAddr = "10.1.1.1".parse().expect("ip");
        let outsider: IpAddr = "192.0.2.9".parse().expect("ip");
        let h = headers("203.0.113.7, 10.2.2.2");
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.7".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_ip(outsider, &h, &trusted), outsider);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(client_ip(proxy, &headers("garbage"), &trusted), proxy);
    }
}
