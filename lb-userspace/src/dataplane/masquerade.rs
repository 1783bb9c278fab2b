//! Masquerade (source NAT) state the agent keeps: the port range and each interface's
//! addresses the datapath masquerades with, and the expiry of SNAT entries. The datapath
//! (`lb-ebpf/src/snat.rs`) inserts entries and never deletes them: SNAT is a plain hash, so
//! that a full table refuses new flows instead of evicting live ones, and the agent deletes
//! what has expired.

use std::{collections::HashMap, net::IpAddr, os::fd::BorrowedFd, time::Duration};

use lb_common::{Config, FlowKey, PROTO_TCP, SnatAddresses, SnatValue, snat_direction, tcp_seen};

/// `--masquerade-tcp-time-wait` default: how long a masqueraded TCP flow closed by FIN keeps
/// its port, as netfilter keeps a closed tuple (`nf_conntrack_tcp_timeout_time_wait`). The
/// endpoint may hold the tuple (node address and port → endpoint) for 60 s after it closed
/// (TIME_WAIT, or FIN_WAIT_2 while the client has not closed); a new flow given that tuple
/// sooner has its SYN answered with an ACK of the old connection, not a SYN-ACK.
pub const DEFAULT_TCP_TIME_WAIT: Duration = Duration::from_secs(120);

use super::batch;

/// `--masquerade-ports`: source ports of masqueraded flows, `min..=max`, host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// CONFIG's `(masquerade_port_min, masquerade_port_max)`; (0, 0) turns masquerade off.
    pub fn config_fields(range: Option<PortRange>) -> (u16, u16) {
        range.map_or((0, 0), |range| (range.min, range.max))
    }
}

/// The SNAT_ADDRESSES value of an interface with `addresses` (its own, in the kernel's
/// order): the first IPv4 and the first IPv6 address, as the kernel's own source address
/// selection would usually pick for traffic to another node on the same link.
pub fn snat_addresses(addresses: &[IpAddr]) -> SnatAddresses {
    let mut value = SnatAddresses::default();
    for address in addresses {
        match address {
            IpAddr::V4(v4) if value.has_ipv4 == 0 => {
                value.ipv4[..4].copy_from_slice(&v4.octets());
                value.has_ipv4 = 1;
            }
            IpAddr::V6(v6) if value.has_ipv6 == 0 => {
                value.ipv6 = v6.octets();
                value.has_ipv6 = 1;
            }
            _ => {}
        }
    }
    value
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of the datapath's `bpf_ktime_get_coarse_ns`,
/// which stamps every SNAT entry.
pub fn monotonic_coarse_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The SNAT entries to delete, outbound ones first: a flow's OUT entry goes before its IN
/// entry, so that its port is never free while a packet could still be translated to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub outbound: Vec<FlowKey>,
    pub inbound: Vec<FlowKey>,
}

impl Expired {
    /// Masqueraded flows whose entries expire (a flow counts once, whichever of its entries
    /// are left).
    pub fn flows(&self) -> usize {
        self.outbound.len().max(self.inbound.len())
    }
}

/// How a masqueraded flow ended, as far as the endpoint's hold on its tuple goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Open, reset, or closed by the client first: the endpoint keeps nothing once closed
    /// (the side that closes first keeps TIME_WAIT).
    EndpointHoldsNothing,
    /// The endpoint sent its FIN first (or with the client's), and no RST came: it may keep
    /// the tuple for its TIME_WAIT (60 s on Linux).
    EndpointClosedFirst,
}

impl Close {
    /// From the two directions' entries (the IN entry: the endpoint's packets).
    pub fn of(out: &SnatValue, inbound: &SnatValue) -> Self {
        let seen = out.tcp_flags_seen | inbound.tcp_flags_seen;
        let endpoint_fin = inbound.tcp_flags_seen & tcp_seen::FIN != 0;
        // Wrapping: the stamps are 32-bit microseconds, two FINs of one close are near.
        let endpoint_first = out.tcp_flags_seen & tcp_seen::FIN == 0
            || inbound.fin_at_us.wrapping_sub(out.fin_at_us) as i32 <= 0;
        if seen & tcp_seen::RST == 0 && endpoint_fin && endpoint_first {
            Close::EndpointClosedFirst
        } else {
            Close::EndpointHoldsNothing
        }
    }

    /// An IN entry without its OUT entry: the endpoint's FIN alone decides.
    fn of_inbound(inbound: &SnatValue) -> Self {
        if inbound.tcp_flags_seen & (tcp_seen::FIN | tcp_seen::RST) == tcp_seen::FIN {
            Close::EndpointClosedFirst
        } else {
            Close::EndpointHoldsNothing
        }
    }
}

/// How long a masqueraded flow of `proto` keeps its entries without packets: the
/// datapath's timeout for its protocol and TCP state, and for a TCP flow the endpoint closed
/// first at least `tcp_time_wait_ns` (its port stays taken while the endpoint may hold the
/// tuple).
pub fn flow_timeout_ns(
    config: &Config,
    tcp_time_wait_ns: u64,
    proto: u8,
    seen: u8,
    close: Close,
) -> u64 {
    let timeout = config.flow_timeout_ns(proto, seen);
    if proto == PROTO_TCP && close == Close::EndpointClosedFirst {
        timeout.max(tcp_time_wait_ns)
    } else {
        timeout
    }
}

/// Which entries of SNAT have expired at `now_ns`: a flow's two entries expire together,
/// when neither direction carried a packet for its [`flow_timeout_ns`], as a conntrack
/// entry would. An IN entry no OUT entry leads to (a port two CPUs took for one flow at
/// once, or the rest of a flow half deleted by a crash) expires on its own.
pub fn expired(
    entries: &[(FlowKey, SnatValue)],
    config: &Config,
    tcp_time_wait_ns: u64,
    now_ns: u64,
) -> Expired {
    let by_key: HashMap<FlowKey, SnatValue> = entries.iter().copied().collect();
    let idle_for = |last_seen_ns: u64, proto: u8, seen: u8, close: Close| {
        now_ns.saturating_sub(last_seen_ns)
            >= flow_timeout_ns(config, tcp_time_wait_ns, proto, seen, close)
    };
    let mut expired = Expired::default();
    let mut partnered = std::collections::HashSet::new();
    for (key, out) in entries {
        if out.direction != snat_direction::OUT {
            continue;
        }
        let (mut last_seen, mut seen) = (out.last_seen_ns, out.tcp_flags_seen);
        let mut close = Close::EndpointHoldsNothing;
        let partner = (out.port != 0)
            .then(|| key.masqueraded_reply(out.addr, out.port))
            .and_then(|in_key| Some(in_key).zip(by_key.get(&in_key)))
            .filter(|(_, inbound)| inbound.addr == key.src_addr && inbound.port == key.src_port);
        if let Some((in_key, inbound)) = partner {
            partnered.insert(in_key);
            last_seen = last_seen.max(inbound.last_seen_ns);
            seen |= inbound.tcp_flags_seen;
            close = Close::of(out, inbound);
        }
        if idle_for(last_seen, key.proto, seen, close) {
            expired.outbound.push(*key);
            if let Some((in_key, _)) = partner {
                expired.inbound.push(in_key);
            }
        }
    }
    for (key, inbound) in entries {
        if inbound.direction == snat_direction::IN
            && !partnered.contains(key)
            && idle_for(
                inbound.last_seen_ns,
                key.proto,
                inbound.tcp_flags_seen,
                Close::of_inbound(inbound),
            )
        {
            expired.inbound.push(*key);
        }
    }
    expired
}

/// Deletes the expired entries of the SNAT map `fd` (one walk, then one batch delete per
/// direction, outbound first). Returns what it deleted.
pub fn expire(
    fd: BorrowedFd<'_>,
    config: &Config,
    tcp_time_wait_ns: u64,
    now_ns: u64,
) -> std::io::Result<Expired> {
    let entries = batch::entries::<FlowKey, SnatValue>(fd)?;
    let doomed = expired(&entries, config, tcp_time_wait_ns, now_ns);
    batch::delete_entries(fd, &doomed.outbound)?;
    batch::delete_entries(fd, &doomed.inbound)?;
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{FAMILY_IPV4, PROTO_UDP};

    const SECOND: u64 = 1_000_000_000;
    const TIME_WAIT: u64 = 120 * SECOND;

    fn v4(last: u8) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[198, 18, 0, last]);
        addr
    }

    /// A masqueraded flow: client .2:40000 → endpoint .21:8080, as node .10:61000.
    fn flow(proto: u8, out_seen: u64, in_seen: u64, tcp: u8) -> Vec<(FlowKey, SnatValue)> {
        let out_key = FlowKey {
            src_addr: v4(2),
            dst_addr: v4(21),
            src_port: 40000u16.to_be(),
            dst_port: 8080u16.to_be(),
            proto,
            family: FAMILY_IPV4,
            _pad: [0, 0],
        };
        let out = SnatValue {
            addr: v4(10),
            last_seen_ns: out_seen,
            port: 61000u16.to_be(),
            direction: snat_direction::OUT,
            tcp_flags_seen: tcp,
            fin_at_us: 0,
        };
        let inbound = SnatValue {
            addr: v4(2),
            last_seen_ns: in_seen,
            port: 40000u16.to_be(),
            direction: snat_direction::IN,
            tcp_flags_seen: tcp,
            fin_at_us: 0,
        };
        vec![
            (out_key, out),
            (out_key.masqueraded_reply(out.addr, out.port), inbound),
        ]
    }

    #[test]
    fn a_flow_expires_only_when_both_directions_are_idle_past_the_timeout() {
        let config = Config::default();
        let udp = config.udp_timeout_ns;
        let now = 1000 * SECOND;
        // Replies kept coming: the flow lives although nothing left for a while.
        let entries = flow(PROTO_UDP, now - udp - SECOND, now - SECOND, 0);
        assert_eq!(
            expired(&entries, &config, TIME_WAIT, now),
            Expired::default()
        );
        let entries = flow(PROTO_UDP, now - udp, now - udp - 5 * SECOND, 0);
        let doomed = expired(&entries, &config, TIME_WAIT, now);
        assert_eq!(doomed.outbound, vec![entries[0].0]);
        assert_eq!(doomed.inbound, vec![entries[1].0]);
        assert_eq!(doomed.flows(), 1);
    }

    #[test]
    fn tcp_timeouts_follow_the_state_either_direction_saw() {
        let config = Config::default();
        let now = 100_000 * SECOND;
        let idle = 20 * SECOND;
        let established = flow(PROTO_TCP, now - idle, now - idle, tcp_seen::ESTABLISHED);
        assert!(
            expired(&established, &config, TIME_WAIT, now)
                .outbound
                .is_empty()
        );
        // A reset flow: transient, whichever direction saw the RST.
        let mut reset = established.clone();
        reset[1].1.tcp_flags_seen |= tcp_seen::RST | tcp_seen::FIN;
        assert_eq!(expired(&reset, &config, TIME_WAIT, now).flows(), 1);
    }

    #[test]
    fn a_flow_closed_by_fin_keeps_its_port_for_the_time_wait() {
        let config = Config::default();
        let now = 100_000 * SECOND;
        // The endpoint closed (FIN on the IN entry only): it may hold the tuple for 60 s, so
        // the port stays taken well past the transient timeout.
        let mut closing = flow(PROTO_TCP, 0, 0, tcp_seen::ESTABLISHED);
        closing[1].1.tcp_flags_seen |= tcp_seen::FIN;
        closing[1].1.fin_at_us = 5_000;
        let idle = |entries: &mut Vec<(FlowKey, SnatValue)>, for_ns: u64| {
            for (_, value) in entries.iter_mut() {
                value.last_seen_ns = now - for_ns;
            }
        };
        idle(&mut closing, config.tcp_transient_timeout_ns + 50 * SECOND);
        assert_eq!(
            expired(&closing, &config, TIME_WAIT, now),
            Expired::default()
        );
        idle(&mut closing, TIME_WAIT);
        assert_eq!(expired(&closing, &config, TIME_WAIT, now).flows(), 1);
        // A time-wait shorter than the transient timeout shortens nothing.
        idle(&mut closing, config.tcp_transient_timeout_ns - SECOND);
        assert_eq!(expired(&closing, &config, SECOND, now), Expired::default());
    }

    #[test]
    fn only_the_side_that_closed_first_keeps_the_port_past_the_transient_timeout() {
        let config = Config::default();
        let now = 100_000 * SECOND;
        let past_transient = config.tcp_transient_timeout_ns + SECOND;
        // Both sides sent FIN; `out_fin` and `in_fin` are when (0: that side did not).
        let closed = |out_fin: u32, in_fin: u32| {
            let mut entries = flow(
                PROTO_TCP,
                now - past_transient,
                now - past_transient,
                tcp_seen::ESTABLISHED,
            );
            for ((_, value), at) in entries.iter_mut().zip([out_fin, in_fin]) {
                if at != 0 {
                    value.tcp_flags_seen |= tcp_seen::FIN;
                    value.fin_at_us = at;
                }
            }
            expired(&entries, &config, TIME_WAIT, now).flows()
        };
        assert_eq!(closed(1_000, 1_200), 1, "the client closed first: freed");
        assert_eq!(closed(1_200, 1_000), 0, "the endpoint closed first: held");
        assert_eq!(closed(1_000, 1_000), 0, "at once: both may hold it");
        assert_eq!(closed(0, 1_000), 0, "only the endpoint closed: held");
        assert_eq!(closed(1_000, 0), 1, "only the client closed: freed");
        // Across the 32-bit wrap: the endpoint's FIN came 100 µs after the client's.
        assert_eq!(closed(u32::MAX - 50, 50), 1, "client first across the wrap");
        assert_eq!(
            closed(50, u32::MAX - 50),
            0,
            "endpoint first across the wrap"
        );
    }

    #[test]
    fn pending_and_orphaned_entries_expire_on_their_own() {
        let config = Config::default();
        let now = 1000 * SECOND;
        let mut entries = flow(PROTO_UDP, now - 2 * config.udp_timeout_ns, 0, 0);
        // Pending: no port yet, so no IN entry of its own; the IN entry is an orphan.
        entries[0].1.port = 0;
        entries[1].1.last_seen_ns = now - SECOND;
        let doomed = expired(&entries, &config, TIME_WAIT, now);
        assert_eq!(doomed.outbound, vec![entries[0].0]);
        assert!(
            doomed.inbound.is_empty(),
            "the orphan was used a second ago"
        );
        entries[1].1.last_seen_ns = now - config.udp_timeout_ns;
        assert_eq!(
            expired(&entries, &config, TIME_WAIT, now).inbound,
            vec![entries[1].0]
        );
    }

    #[test]
    fn an_interface_masquerades_with_its_first_address_of_each_family() {
        let addresses: Vec<IpAddr> = ["198.18.10.10", "2001:2:0:10::10", "198.18.10.99"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        let value = snat_addresses(&addresses);
        assert_eq!((value.has_ipv4, value.has_ipv6), (1, 1));
        assert_eq!(&value.ipv4[..4], &[198, 18, 10, 10]);
        assert_eq!(
            value.ipv6,
            "2001:2:0:10::10"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets()
        );
        assert_eq!(snat_addresses(&[]).has_ipv4, 0);
    }
}
