//! The client's address behind a reverse proxy: `X-Forwarded-For` or `Forwarded` (RFC 7239),
//! believed only when the connection comes from a proxy named by `--trusted-proxies`.
//!
//! The header is read from the right: each trusted proxy appends the address it got the
//! request from, so the first address from the right that is not a trusted proxy is the
//! client; anything a client wrote itself sits to the left of it and is never reached. An
//! entry that is not an address (`unknown`, an obfuscated name, garbage) stops the walk at the
//! last trusted hop. Only one header is read (`--proxy-header`): a proxy that maintains one of
//! them passes the other through as the client sent it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hyper::HeaderMap;

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits cleared).
    addr: IpAddr,
    /// Prefix length in bits.
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected an address or a network like 10.0.0.0/8, not {s:?}");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Ok(Self { addr, prefix })
    }
}

/// The `--trusted-proxies` list: addresses or networks, comma-separated; empty entries (an
/// empty variable) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl std::str::FromStr for TrustedProxies {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// Which header a trusted proxy writes the client's address to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, `HAProxy`, Caddy, Traefik).
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The client's address: `peer`, or, when `peer` is a trusted proxy, the last address in
/// `header` that is not one.
#[must_use]
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[Cidr],
    header: ProxyHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let name = match header {
        ProxyHeader::XForwardedFor => "x-forwarded-for",
        ProxyHeader::Forwarded => "forwarded",
    };
    // Several header lines read as one list, in order.
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    for value in headers.get_all(name) {
        let text = String::from_utf8_lossy(value.as_bytes());
        hops.extend(match header {
            ProxyHeader::XForwardedFor => parse_x_forwarded_for(&text),
            ProxyHeader::Forwarded => parse_forwarded(&text),
        });
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Some(ip) = hop else { break };
        client = ip.to_canonical();
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// The entries of an `X-Forwarded-For` value, in order: an address (a port or IPv6 brackets
/// allowed), or `None` for anything else.
#[must_use]
pub fn parse_x_forwarded_for(value: &str) -> Vec<Option<IpAddr>> {
    value.split(',').map(|e| node(e.trim())).collect()
}

/// The `for=` address of each element of a `Forwarded` value, in order (`None` for an element
/// without one, or one that is not an address: `unknown`, `_hidden`). Quoted strings may hold
/// commas, semicolons and escapes.
#[must_use]
pub fn parse_forwarded(value: &str) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    let mut element_for: Option<Option<IpAddr>> = None;
    let mut pair = String::new();
    let mut quoted = false;
    let mut chars = value.chars();
    let end_pair = |pair: &mut String, element_for: &mut Option<Option<IpAddr>>| {
        if let Some((name, v)) = pair.split_once('=')
            && name.trim().eq_ignore_ascii_case("for")
            && element_for.is_none()
        {
            *element_for = Some(node(v.trim()));
        }
        pair.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    pair.push(next);
                }
            }
            ';' if !quoted => end_pair(&mut pair, &mut element_for),
            ',' if !quoted => {
                end_pair(&mut pair, &mut element_for);
                out.push(element_for.take().flatten());
            }
            c => pair.push(c),
        }
    }
    end_pair(&mut pair, &mut element_for);
    out.push(element_for.take().flatten());
    out
}

/// One node: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_parsing_and_membership() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert!(c.contains(ip("10.200.0.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/-1",
            "/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_shapes() {
        let cases = [
            ("1.2.3.4", Some("1.2.3.4")),
            ("1.2.3.4:80", Some("1.2.3.4")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:4711", Some("2001:db8::1")),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
            ("1.2.3.4.5", None),
        ];
        for (text, want) in cases {
            assert_eq!(node(text), want.map(ip), "{text:?}");
        }
    }

    #[test]
    fn forwarded_elements_with_quotes_and_other_pairs() {
        let got = parse_forwarded(
            r#"for=192.0.2.43, For="[2001:db8:cafe::17]:4711";proto=http, by=x;for=unknown, host="a,b;c";for=198.51.100.17, for="\"x"#,
        );
        assert_eq!(
            got,
            [
                Some(ip("192.0.2.43")),
                Some(ip("2001:db8:cafe::17")),
                None,
                Some(ip("198.51.100.17")),
                None
            ]
        );
    }

    #[test]
    fn the_client_is_the_last_untrusted_hop_from_a_trusted_peer_only() {
        let trusted = cidrs(&["127.0.0.1", "10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        h.insert("forwarded", HeaderValue::from_static("for=7.7.7.7"));
        let x = ProxyHeader::XForwardedFor;
        // A trusted peer: the spoofed 6.6.6.6 on the left is never reached.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, x),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted, x),
            ip("203.0.113.9")
        );
        // Another header than the configured one is ignored.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted, ProxyHeader::Forwarded),
            ip("7.7.7.7")
        );
        // Regression (issue 16): from an untrusted peer the headers mean nothing.
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted, x), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &[], x), ip("192.0.2.1"));
        // Garbage stops the walk at the last trusted hop.
        let mut g = HeaderMap::new();
        g.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, junk, 10.0.0.3"),
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &g, &trusted, x), ip("10.0.0.3"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted, x),
            ip("127.0.0.1")
        );
    }
}
