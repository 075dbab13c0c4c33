//! The scan service's request parsers: the tag-id pattern, the `X-API-Key` plausibility check
//! and hash, the client IP behind `X-Forwarded-For`, and the `X-Request-ID` sanity check.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::http::TrustedProxies;
use common::http::request_id::is_sane;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use scan_service::api_keys::{MAX_KEY_LEN, hash_key, is_plausible};
use scan_service::tags::is_valid_tag_id;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    tag_id: &'a [u8],
    api_key: &'a [u8],
    request_id: &'a [u8],
    peer: Ip,
    trusted: Vec<(Ip, u8)>,
    forwarded_for: Vec<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Ip {
    fn addr(self) -> IpAddr {
        match self {
            Self::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
            Self::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let tag_id = String::from_utf8_lossy(input.tag_id);
    let valid = is_valid_tag_id(&tag_id);
    // The factory issues and checks tag ids with its own function: they must agree.
    assert_eq!(valid, factory_service::catalog::tag_id::is_valid(&tag_id));
    if valid {
        assert!((16..=64).contains(&tag_id.len()));
    }

    if is_plausible(input.api_key) {
        assert!(input.api_key.len() <= MAX_KEY_LEN);
        // The scan path hashes the key as text: a plausible key is always UTF-8.
        let key = std::str::from_utf8(input.api_key);
        assert!(key.is_ok(), "a plausible key is not UTF-8");
        if let Ok(key) = key {
            let _ = hash_key(key);
        }
    }

    if is_sane(input.request_id) {
        // A kept id is echoed in a response header, so it must be a valid header value.
        assert!(
            HeaderValue::from_bytes(input.request_id).is_ok(),
            "a kept request id is not a valid header value"
        );
    }

    let nets: Vec<IpNet> = input
        .trusted
        .iter()
        .take(8)
        .filter_map(|&(ip, len)| IpNet::new(ip.addr(), len).ok())
        .collect();
    let trusted = TrustedProxies::new(nets);
    let mut headers = HeaderMap::new();
    for value in input.forwarded_for.iter().take(8) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append("x-forwarded-for", value);
        }
    }
    let peer = input.peer.addr();
    let client = trusted.client_ip(peer, &headers);
    if headers.is_empty() {
        // Nothing forwarded: the peer itself (IPv4-mapped IPv6 shown as IPv4).
        let canonical = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        assert_eq!(client, canonical);
    }
});
