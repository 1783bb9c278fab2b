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
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned; ifa_addr may be null.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family tells its real type.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            // SAFETY: ifa_name is a NUL-terminated string for every entry.
            let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }
                .to_string_lossy()
                .into_owned();
            if family == libc::AF_INET {
                // SAFETY: AF_INET means a sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                addresses.push((
                    name,
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                addresses.push((name, IpAddr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addresses)
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
