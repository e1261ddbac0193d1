//! Invariant: the forwarded-header parsers never panic on any header bytes, and the client
//! address they lead to is one someone could vouch for:
//! - `parse_x_forwarded_for` gives one entry per comma-separated element.
//! - `client_ip` from a peer that is not a trusted proxy is that peer, whatever the headers.
//! - from a trusted peer it is the peer or an address that the header lists.
//!
//! The first byte picks the header (`X-Forwarded-For` or `Forwarded`) and whether the peer
//! is trusted; the rest is the header value.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use forge::http::forwarded::{
    Cidr, ProxyHeader, client_ip, parse_forwarded, parse_x_forwarded_for,
};
use hyper::HeaderMap;
use hyper::header::HeaderValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let xff = parse_x_forwarded_for(&text);
    assert_eq!(xff.len(), text.matches(',').count() + 1);
    let fwd = parse_forwarded(&text);
    assert!(!fwd.is_empty());

    let Ok(value) = HeaderValue::from_bytes(rest) else {
        return;
    };
    let (name, header, listed) = if pick & 1 == 0 {
        ("x-forwarded-for", ProxyHeader::XForwardedFor, xff)
    } else {
        ("forwarded", ProxyHeader::Forwarded, fwd)
    };
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let proxies: Vec<Cidr> = if pick & 2 == 0 {
        vec!["127.0.0.0/8".parse().expect("a CIDR")]
    } else {
        vec!["10.0.0.0/8".parse().expect("a CIDR")]
    };
    let client = client_ip(peer, &headers, &proxies, header);
    if pick & 2 == 0 {
        assert!(
            client == peer
                || listed
                    .iter()
                    .flatten()
                    .any(|ip| ip.to_canonical() == client),
            "{client} is neither the peer nor listed in {text:?}"
        );
    } else {
        assert_eq!(
            client, peer,
            "an untrusted peer's header was believed: {text:?}"
        );
    }
});
