//! Addresses and CIDRs read the way Kubernetes reads them: k8s.io/utils/net `ParseIPSloppy`
//! and `ParseCIDRSloppy`, which kube-proxy uses for every address of a Service or an
//! EndpointSlice. They are Go's parsers from before Go 1.17: a number may have leading zeros
//! and is still decimal (`198.018.100.063` is 198.18.100.63, `010.0.0.0/8` is 10.0.0.0/8),
//! because the API server accepted such values for years and they are still stored.
//!
//! Hand-written because Rust's parsers reject leading zeros by design (RFC 6943 strict form)
//! and no maintained crate reads them as Go did: the `cidr` crate's loose parser reads them
//! as octal, POSIX `inet_addr` style, which is a different address. Only the leading zeros are
//! relaxed here; everything else is left to the standard parsers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An IP address as `ParseIPSloppy` reads it; `None` where it gives nil. An IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`) is IPv4, as Go's `net.IP` makes no difference between the two.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip = match text.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if text.contains(':') => IpAddr::V6(parse_ipv6(text)?),
        Err(_) => IpAddr::V4(parse_ipv4(text)?),
    };
    Some(ip.to_canonical())
}

/// A network as `ParseCIDRSloppy` reads it, host bits kept (`IpNet::trunc` clears them);
/// `None` where it fails. The prefix length may have leading zeros too (`/025`).
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net);
    }
    let (addr, prefix_len) = text.split_once('/')?;
    let addr = if addr.contains(':') {
        IpAddr::V6(parse_ipv6(addr)?)
    } else {
        IpAddr::V4(parse_ipv4(addr)?)
    };
    IpNet::new(addr, decimal(prefix_len)?).ok()
}

/// A non-empty run of ASCII digits as a number, any leading zeros allowed (the standard
/// integer parser also takes a sign, which Go's does not).
fn decimal(text: &str) -> Option<u8> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Four decimal octets separated by dots, each with any number of leading zeros.
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        *octet = decimal(parts.next()?)?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// IPv6 with hex groups longer than four digits when the extra digits are leading zeros
/// (`0:0:0:0:000000:ffff:…`), and a dotted IPv4 tail with leading zeros
/// (`::ffff:127.001.002.003`): both rewritten to their plain form, then parsed as usual.
fn parse_ipv6(text: &str) -> Option<Ipv6Addr> {
    let mut plain = String::with_capacity(text.len());
    for (index, group) in text.split(':').enumerate() {
        if index > 0 {
            plain.push(':');
        }
        if group.contains('.') {
            plain.push_str(&parse_ipv4(group)?.to_string());
        } else if group.len() > 4 && group.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Still more than four digits after this: too large, and the parser says so.
            let digits = group.trim_start_matches('0');
            plain.push_str(if digits.is_empty() { "0" } else { digits });
        } else {
            plain.push_str(group);
        }
    }
    plain.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// k8s.io/utils/net's `parseIPTests` (internal/third_party/forked/golang/net/ip_test.go),
    /// with what `ParseIPSloppy` answers: `None` where it gives nil.
    #[test]
    fn addresses_read_as_parse_ip_sloppy() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.1.2", Some("127.0.1.2")),
            ("127.001.002.003", Some("127.1.2.3")),
            ("127.007.008.009", Some("127.7.8.9")),
            ("127.010.020.030", Some("127.10.20.30")),
            ("198.018.100.063", Some("198.18.100.63")),
            ("0000.0.0.0001", Some("0.0.0.1")),
            ("::ffff:127.1.2.3", Some("127.1.2.3")),
            ("::ffff:127.001.002.003", Some("127.1.2.3")),
            ("::ffff:127.010.020.030", Some("127.10.20.30")),
            ("::ffff:7f01:0203", Some("127.1.2.3")),
            ("0:0:0:0:0000:ffff:127.1.2.3", Some("127.1.2.3")),
            ("0:0:0:0:000000:ffff:127.1.2.3", Some("127.1.2.3")),
            ("0:0:0:0::ffff:127.1.2.3", Some("127.1.2.3")),
            ("2001:4860:0:2001::68", Some("2001:4860:0:2001::68")),
            (
                "2001:4860:0000:2001:0000:0000:0000:0068",
                Some("2001:4860:0:2001::68"),
            ),
            ("2001:2::000001", Some("2001:2::1")),
            ("-0.0.0.0", None),
            ("0.-1.0.0", None),
            ("0.0.-2.0", None),
            ("0.0.0.-3", None),
            ("+1.0.0.0", None),
            ("127.0.0.256", None),
            ("127.0.0.0256", None),
            ("1.2..4", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("abc", None),
            ("123:", None),
            ("fe80::1%lo0", None),
            ("fe80::1%911", None),
            ("", None),
            ("a1:a2:a3:a4::b1:b2:b3:b4", None),
            ("2001:2::0010000", None),
            ("::ffff:127.0.0.0256", None),
        ];
        for &(text, want) in cases {
            let want = want.map(|w| w.parse::<IpAddr>().expect("test address"));
            assert_eq!(parse_ip(text), want, "ParseIPSloppy({text:?})");
        }
    }

    /// k8s.io/utils/net's `parseCIDRTests`, and the prefix-length spellings of kube-proxy's
    /// `TestBadIPs`, with the network `ParseCIDRSloppy` answers (host bits cleared).
    #[test]
    fn networks_read_as_parse_cidr_sloppy() {
        let cases: &[(&str, Option<&str>)] = &[
            ("135.104.0.0/32", Some("135.104.0.0/32")),
            ("0.0.0.0/24", Some("0.0.0.0/24")),
            ("135.104.0.1/24", Some("135.104.0.0/24")),
            ("127.000.000.001/32", Some("127.0.0.1/32")),
            ("127.007.008.009/32", Some("127.7.8.9/32")),
            ("127.010.020.030/32", Some("127.10.20.30/32")),
            ("010.0.0.0/8", Some("10.0.0.0/8")),
            ("203.0.113.000/025", Some("203.0.113.0/25")),
            ("::1/128", Some("::1/128")),
            ("abcd:2345::/65", Some("abcd:2345::/65")),
            ("abcd:2345::/24", Some("abcd:2300::/24")),
            ("2001:DB8::1/48", Some("2001:db8::/48")),
            ("2001:2:0000000::/0048", Some("2001:2::/48")),
            ("192.168.1.1/255.255.255.0", None),
            ("192.168.1.1/35", None),
            ("2001:db8::1/129", None),
            ("2001:db8::1/-1", None),
            ("2001:db8::1/-0", None),
            ("-0.0.0.0/32", None),
            ("0.-1.0.0/32", None),
            ("0.0.0.0/-0", None),
            ("0.0.0.0/+8", None),
            ("0.0.0.0/", None),
            ("0.0.0.0", None),
            ("", None),
        ];
        for &(text, want) in cases {
            let want = want.map(|w| w.parse::<IpNet>().expect("test network"));
            assert_eq!(
                parse_cidr(text).map(|net| net.trunc()),
                want,
                "ParseCIDRSloppy({text:?})"
            );
        }
    }
}
