//! The node's own addresses, for NodePorts: part of the world a snapshot describes
//! ([`crate::model::NodeInfo`]).

use std::net::IpAddr;

/// The node's addresses NodePorts answer on: every local address (not loopback, not IPv6
/// link-local), or only those inside `cidrs` when any are given (`--nodeport-addresses`).
pub fn nodeport_addresses(cidrs: &[ipnet::IpNet]) -> std::io::Result<Vec<IpAddr>> {
    let mut addresses: Vec<IpAddr> = local_addresses()?
        .into_iter()
        .map(|(_, ip)| ip)
        .filter(|ip| !ip.is_loopback() && !is_ipv6_link_local(ip))
        .filter(|ip| cidrs.is_empty() || cidrs.iter().any(|net| net.contains(ip)))
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

/// The addresses of interface `iface` that can source traffic to other nodes (not
/// loopback, not IPv6 link-local), in the order the kernel lists them.
pub fn interface_addresses(iface: &str) -> std::io::Result<Vec<IpAddr>> {
    Ok(local_addresses()?
        .into_iter()
        .filter(|(name, ip)| name == iface && !ip.is_loopback() && !is_ipv6_link_local(ip))
        .map(|(_, ip)| ip)
        .collect())
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Every address on every interface of this network namespace, with the interface's name
/// (getifaddrs).
fn local_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|entry| {
            let address = entry.address?;
            let ip = address
                .as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))?;
            Some((entry.interface_name, ip))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodeport_addresses_skip_loopback_and_honour_cidrs() {
        let all = nodeport_addresses(&[]).expect("getifaddrs");
        assert!(all.iter().all(|ip| !ip.is_loopback()), "{all:?}");
        // A CIDR that holds nothing here leaves nothing.
        let none =
            nodeport_addresses(&["198.19.255.0/24".parse().expect("cidr")]).expect("getifaddrs");
        assert!(none.is_empty(), "{none:?}");
        // Every address of the unfiltered list is kept by a CIDR that covers it exactly.
        for ip in &all {
            let net = ipnet::IpNet::from(*ip);
            assert_eq!(nodeport_addresses(&[net]).expect("getifaddrs"), vec![*ip]);
        }
    }
}
