//! Who a client is, for every per-client limit (README "Security: auth and limits").
//!
//! A request's client is the socket's peer, unless that peer is one of `--trusted-proxies`: then
//! it is the right-most address in `X-Forwarded-For` / `Forwarded: for=` that is not itself a
//! trusted proxy (the hops to its right were written by proxies we trust; anything to its left
//! was written by the client and proves nothing). Headers from any other peer are ignored, so a
//! client cannot name itself. A header that cannot be read, or the two headers naming different
//! clients (a proxy sets one and passes the other through from the client), fall back to the
//! peer: never to an address the client chose.
//!
//! Limits count a [`ClientKey`], not an address: an IPv4 address, or an IPv6 /64 (one customer's
//! network; a host owns a whole /64 and would otherwise get a fresh limit per address), with an
//! IPv4-mapped IPv6 address counted as the IPv4 address it maps.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::extract::rejection::ExtensionRejection;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{HeaderMap, FORWARDED};
use axum::http::request::Parts;

use super::AppState;

/// One entry of `--trusted-proxies`: an address or a network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

fn mask4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(prefix)))
    })
}

fn mask6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    Ipv6Addr::from(if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix)))
    })
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `127.0.0.1`, `fd00::/8`, `::1`. Host bits are cleared (`10.1.2.3/8` is
    /// `10.0.0.0/8`); an IPv4-mapped IPv6 network is the IPv4 network it maps.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not an IP address or a network like 10.0.0.0/8 or fd00::/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().ok().filter(|&p| p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => {
                let v4 = v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED);
                Cidr {
                    net: IpAddr::V4(mask4(v4, prefix - 96)),
                    prefix: prefix - 96,
                }
            }
            IpAddr::V4(v4) => Cidr {
                net: IpAddr::V4(mask4(v4, prefix)),
                prefix,
            },
            IpAddr::V6(v6) => Cidr {
                net: IpAddr::V6(mask6(v6, prefix)),
                prefix,
            },
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// `--trusted-proxies`: the peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of [`Cidr`]s; empty (an unset variable) means none.
    fn from_str(s: &str) -> Result<TrustedProxies, String> {
        s.split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    pub fn new(nets: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn nets(&self) -> &[Cidr] {
        &self.0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client's address: the peer, or for a trusted peer the address its headers forward.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let xff = self.walk(forwarded_for_hops(headers));
        let fwd = self.walk(forwarded_hops(headers));
        match (xff, fwd) {
            (None, None) => peer,
            (Some(Some(client)), None) | (None, Some(Some(client))) => client,
            (Some(Some(a)), Some(Some(b))) if a == b => a,
            // Garbage in a header, or two headers that disagree: the peer, never a guess.
            _ => peer,
        }
    }

    /// The client key every per-client limit counts.
    pub fn client_key(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientKey {
        ClientKey::of(self.client_addr(peer.ip(), headers))
    }

    /// From the right: skip trusted hops; the first other one is the client. All trusted: the
    /// left-most. `None`: the header is absent; `Some(None)`: it is there but unusable.
    fn walk(&self, hops: Option<Vec<Option<IpAddr>>>) -> Option<Option<IpAddr>> {
        let hops = hops?;
        let mut leftmost = None;
        for hop in hops.into_iter().rev() {
            match hop {
                Some(ip) if self.contains(ip) => leftmost = Some(ip),
                Some(ip) => return Some(Some(ip)),
                None => return Some(None),
            }
        }
        Some(leftmost)
    }
}

/// What per-client limits count: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        ClientKey(match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6(mask6(v6, 64)),
        })
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The request's [`ClientKey`], as an extractor for per-client limits in handlers and middleware
/// (the streams' admission calls [`TrustedProxies::client_key`] directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client(pub ClientKey);

impl FromRequestParts<AppState> for Client {
    type Rejection = ExtensionRejection;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Client, ExtensionRejection> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state).await?;
        Ok(Client(state.trusted_proxies.client_key(peer, &parts.headers)))
    }
}

/// Every `X-Forwarded-For` hop, left to right over all instances of the header; `None` for a hop
/// that is not an address (`unknown`, garbage). `None` overall without the header.
fn forwarded_for_hops(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut values = headers.get_all("x-forwarded-for").iter().peekable();
    values.peek()?;
    let mut hops = Vec::new();
    for value in values {
        match value.to_str() {
            Ok(value) => hops.extend(value.split(',').map(node)),
            Err(_) => hops.push(None),
        }
    }
    Some(hops)
}

/// Every `Forwarded` element's `for=` (RFC 7239), left to right over all instances; `None` for an
/// element without a usable `for`. `None` overall without the header.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut values = headers.get_all(FORWARDED).iter().peekable();
    values.peek()?;
    let mut hops = Vec::new();
    for value in values {
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in split_unquoted(value, b',') {
            let for_ = split_unquoted(element, b';').into_iter().find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then_some(value.trim())
            });
            hops.push(for_.and_then(|v| {
                let v = match v.strip_prefix('"') {
                    Some(quoted) => quoted.strip_suffix('"').filter(|q| !q.contains(['"', '\\']))?,
                    None => v,
                };
                node(v)
            }));
        }
    }
    Some(hops)
}

/// A node as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`. Anything else (`unknown`, `_hidden`, garbage) is `None`.
fn node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = s.parse::<SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(|v6| IpAddr::V6(v6).to_canonical())
}

/// `s` split at `sep` outside double-quoted strings (RFC 7239 values may be quoted).
fn split_unquoted(s: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.200.0.1")));
        assert!(net.contains(ip("::ffff:10.0.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        let v6: Cidr = " fd00::/8 ".parse().unwrap();
        assert!(v6.contains(ip("fdff::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!("::1".parse::<Cidr>().unwrap().contains(ip("::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        let mapped: Cidr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(mapped.contains(ip("127.0.0.1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "localhost",
            "10.0.0/8",
            "1.2.3.4/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff:1:2:3"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(ClientKey::of(ip("::ffff:192.0.2.1")), ClientKey::of(ip("192.0.2.1")));
        assert_ne!(ClientKey::of(ip("192.0.2.1")), ClientKey::of(ip("192.0.2.2")));
        assert_eq!(ClientKey::of(ip("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[("x-forwarded-for", "203.0.113.7"), ("forwarded", "for=203.0.113.7")]);
        assert_eq!(
            TrustedProxies::default().client_addr(ip("127.0.0.1"), &h),
            ip("127.0.0.1")
        );
        assert_eq!(
            trusted(&["10.0.0.0/8"]).client_addr(ip("127.0.0.1"), &h),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_for_hop_is_the_client() {
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        let at = |pairs: &[(&'static str, &str)]| t.client_addr(peer, &headers(pairs));
        assert_eq!(at(&[("x-forwarded-for", "203.0.113.7")]), ip("203.0.113.7"));
        assert_eq!(
            at(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")]),
            ip("203.0.113.7")
        );
        assert_eq!(
            at(&[
                ("x-forwarded-for", "garbage, 6.6.6.6"),
                ("x-forwarded-for", "203.0.113.7 ,10.1.1.1")
            ]),
            ip("203.0.113.7")
        );
        assert_eq!(at(&[("x-forwarded-for", "10.0.0.9, 10.0.0.2")]), ip("10.0.0.9"));
        assert_eq!(at(&[("x-forwarded-for", "203.0.113.7:5555")]), ip("203.0.113.7"));
        assert_eq!(at(&[("x-forwarded-for", "[2001:db8::1]:80")]), ip("2001:db8::1"));
        assert_eq!(at(&[("x-forwarded-for", "::ffff:203.0.113.7")]), ip("203.0.113.7"));
        // A hop a trusted proxy wrote that is not an address: the peer, not a guess.
        assert_eq!(at(&[("x-forwarded-for", "203.0.113.7, unknown")]), peer);
        assert_eq!(at(&[("x-forwarded-for", "")]), peer);
        assert_eq!(at(&[]), peer);
    }

    #[test]
    fn forwarded_for_is_read_with_quotes_brackets_and_ports() {
        let t = trusted(&["127.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        let at = |v: &str| t.client_addr(peer, &headers(&[("forwarded", v)]));
        assert_eq!(at("for=192.0.2.60;proto=http;by=203.0.113.43"), ip("192.0.2.60"));
        assert_eq!(at(r#"For="[2001:db8:cafe::17]:4711""#), ip("2001:db8:cafe::17"));
        assert_eq!(at(r#"for="[2001:db8:cafe::17]""#), ip("2001:db8:cafe::17"));
        assert_eq!(at(r#"for="192.0.2.43:47011", for=127.0.0.2"#), ip("192.0.2.43"));
        assert_eq!(at(r#"for=6.6.6.6;by="a,b", for=198.51.100.17"#), ip("198.51.100.17"));
        assert_eq!(at("for=unknown"), peer);
        assert_eq!(at("for=_hidden, for=198.51.100.17"), ip("198.51.100.17"));
        assert_eq!(at("proto=https"), peer);
        assert_eq!(at(r#"for="[2001:db8::1"#), peer);
    }

    #[test]
    fn two_headers_that_disagree_mean_the_peer() {
        let t = trusted(&["127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let both =
            |xff: &str, fwd: &str| t.client_addr(peer, &headers(&[("x-forwarded-for", xff), ("forwarded", fwd)]));
        assert_eq!(both("203.0.113.7", "for=203.0.113.7"), ip("203.0.113.7"));
        assert_eq!(both("203.0.113.7", "for=6.6.6.6"), peer);
    }

    /// Header values made of the pieces the parsers look for, in any order, and random bytes.
    fn garbage() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("for=".to_owned()),
            Just("For=\"[".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
            Just(";".to_owned()),
            Just(":".to_owned()),
            Just("=".to_owned()),
            Just("::".to_owned()),
            Just("127.0.0.1".to_owned()),
            Just("2001:db8::1".to_owned()),
            Just("::ffff:1.2.3.4".to_owned()),
            Just("unknown".to_owned()),
            "[ -~]{0,6}",
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn garbage_headers_never_panic_and_never_matter_from_an_untrusted_peer(
            xff in garbage(),
            fwd in garbage(),
            a in any::<[u8; 4]>(),
        ) {
            let (Ok(xff), Ok(fwd)) = (HeaderValue::from_str(&xff), HeaderValue::from_str(&fwd)) else {
                return Ok(());
            };
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", xff);
            h.insert(FORWARDED, fwd);
            let t = trusted(&["127.0.0.1", "::1"]);
            let _ = t.client_addr(ip("127.0.0.1"), &h);
            let _ = t.client_addr(ip("::1"), &h);
            let peer = IpAddr::from(a);
            if peer != ip("127.0.0.1") {
                prop_assert_eq!(t.client_addr(peer, &h), peer);
            }
        }

        #[test]
        fn forwarded_chains_of_addresses_resolve_to_the_rightmost_untrusted(
            hops in proptest::collection::vec(any::<[u8; 4]>(), 1..6),
            proxies in 0usize..3,
        ) {
            let t = trusted(&["10.0.0.0/8"]);
            let mut chain: Vec<String> = hops.iter().map(|h| {
                let mut h = *h;
                if h[0] == 10 { h[0] = 11 }
                Ipv4Addr::from(h).to_string()
            }).collect();
            let client: IpAddr = chain.last().unwrap().parse().unwrap();
            chain.extend((0..proxies).map(|i| format!("10.0.0.{i}")));
            let h = headers(&[("x-forwarded-for", &chain.join(", "))]);
            prop_assert_eq!(t.client_addr(ip("10.9.9.9"), &h), client);
        }
    }
}
