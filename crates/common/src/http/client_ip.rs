//! The client's IP address: the socket peer, or the `X-Forwarded-For` client when the peer is
//! a trusted proxy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use ipnet::IpNet;

use super::error::error_response;

/// The resolved client IP, put in request extensions by [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Which peers' `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<Vec<IpNet>>);

impl TrustedProxies {
    /// Trust these networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(Arc::new(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client IP for a request from `peer` with these headers: walking `X-Forwarded-For`
    /// from the right, the first hop that is not a trusted proxy. A header from an untrusted peer
    /// is ignored, so nobody can claim another address by sending it.
    ///
    /// A hop is an address, with or without a port (`203.0.113.7:4711`, `[2001:db8::7]:443`),
    /// as proxies write them. The walk stops at a hop that is none of those (`unknown`, a
    /// name, an empty entry): whatever stands to its left was written by someone no trusted
    /// proxy vouches for, so the client is then the last trusted hop, the proxy that could not
    /// name it. Skipping such a hop instead would let the client's own entry through.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Several header lines are one list, in order.
        'walk: for value in headers.get_all("x-forwarded-for").iter().rev() {
            // Hop by hop, so that bytes a client put on the left of a line (proxies append to
            // the client's own line) cannot make the proxy's entry on its right unreadable.
            for hop in value.as_bytes().rsplit(|b| *b == b',') {
                let Some(hop) = std::str::from_utf8(hop).ok().and_then(parse_hop) else {
                    break 'walk;
                };
                client = hop;
                if !self.trusts(hop) {
                    break 'walk;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an IP address, bare, bracketed (IPv6) or with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(canonical(ip))
}

/// The address a client is limited by: an IPv4 address as is, an IPv6 address by its /64,
/// since one subscriber usually holds a whole /64 and could otherwise rotate through it.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Request mapper: resolves [`ClientIp`] once per request and stores it in the extensions.
pub fn resolve<B>(
    trusted: &TrustedProxies,
    mut req: axum::http::Request<B>,
) -> axum::http::Request<B> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let ip = trusted.client_ip(peer, req.headers());
        req.extensions_mut().insert(ClientIp(ip));
    }
    req
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<ClientIp>().copied().ok_or_else(|| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Client address unavailable.",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_network(a), client_network(b));
        assert_ne!(client_network(a), client_network(other));
        assert_eq!(client_network(a).to_string(), "2001:db8:1:2::");
        let v4: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_network(v4), v4);
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(client_network(mapped), v4);
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_header_ignored() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(t.client_ip(peer, &xff("1.2.3.4")), peer);
    }

    #[test]
    fn trusted_chain_walked_from_the_right() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        // A client-supplied spoof on the left is not believed; the first untrusted hop is.
        let ip = t.client_ip(peer, &xff("6.6.6.6, 198.51.100.7, 10.1.1.1"));
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
        assert_eq!(t.client_ip(peer, &xff("garbage")), peer);
    }

    /// A proxy that writes its hop with a port, or as `unknown`, must not let the client's own
    /// entry to its left count: the walk reads the port forms, and stops at what it cannot read.
    #[test]
    fn a_hop_with_a_port_counts_and_an_unreadable_hop_stops_the_walk() {
        let t = TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap()]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (header, client) in [
            ("6.6.6.6, 198.51.100.30:4444", "198.51.100.30"),
            ("6.6.6.6, [2001:db8::5]:443", "2001:db8::5"),
            ("6.6.6.6, [2001:db8::5]", "2001:db8::5"),
            ("6.6.6.6, [::ffff:198.51.100.4]:80", "198.51.100.4"),
            // Unreadable: the client is the trusted proxy that wrote it.
            ("6.6.6.6, unknown", "127.0.0.1"),
            ("6.6.6.6, _hidden", "127.0.0.1"),
            ("6.6.6.6, ", "127.0.0.1"),
            ("6.6.6.6, 127.0.0.1, unknown", "127.0.0.1"),
            // Stops at the first unreadable hop even when trusted hops follow it.
            ("6.6.6.6, unknown, 127.0.0.1", "127.0.0.1"),
            ("198.51.100.9 , 127.0.0.1:8080", "198.51.100.9"),
        ] {
            assert_eq!(t.client_ip(peer, &xff(header)), ip(client), "{header}");
        }
        // Two header lines are one list; an unreadable right-most line stops the walk too.
        let mut two = HeaderMap::new();
        two.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        two.append("x-forwarded-for", "198.51.100.8".parse().unwrap());
        assert_eq!(t.client_ip(peer, &two), ip("198.51.100.8"));
        let mut opaque = HeaderMap::new();
        opaque.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        opaque.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        assert_eq!(t.client_ip(peer, &opaque), peer);
        // Bytes that are not text on the client's part of a line leave the proxy's hop readable.
        let mut appended = HeaderMap::new();
        appended.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"caf\xe9, 198.51.100.8").unwrap(),
        );
        assert_eq!(t.client_ip(peer, &appended), ip("198.51.100.8"));
    }

    #[test]
    fn mapped_v6_is_v4() {
        let t = TrustedProxies::default();
        let peer: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            t.client_ip(peer, &HeaderMap::new()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
