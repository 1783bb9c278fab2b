//! Address and port rewrites with their checksum updates: DNAT on the forward path, SNAT
//! (reverse NAT) on replies.

use lb_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::{
    ctx::{L4Csum, PacketCtx, PortChange},
    parse::{Fragment, Parsed},
};

/// Which side of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// The L4 checksum field of a parsed packet, when it has one that covers addresses/ports.
#[inline(always)]
pub fn l4_csum(p: &Parsed) -> Option<L4Csum> {
    if p.fragment == Fragment::Later {
        return None;
    }
    match p.proto {
        PROTO_TCP => Some(L4Csum {
            offset: p.l4_off + 16,
            udp: false,
        }),
        PROTO_UDP => Some(L4Csum {
            offset: p.l4_off + 6,
            udp: true,
        }),
        // SCTP's CRC32c covers neither addresses nor (since we keep them) ports.
        _ => None,
    }
}

/// Rewrites one side's address and port. Ports are left alone for SCTP and for non-first
/// fragments (which have no L4 header).
#[inline(always)]
pub fn rewrite<C: PacketCtx>(
    ctx: &C,
    p: &Parsed,
    side: Side,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), ()> {
    let ipv6 = p.ipv6();
    let (addr_off, old_addr) = match (side, ipv6) {
        (Side::Source, false) => (p.l3_off + 12, &p.src),
        (Side::Destination, false) => (p.l3_off + 16, &p.dst),
        (Side::Source, true) => (p.l3_off + 8, &p.src),
        (Side::Destination, true) => (p.l3_off + 24, &p.dst),
    };
    let ip_csum = if ipv6 { None } else { Some(p.l3_off + 10) };
    let l4 = l4_csum(p);
    let port_change = if p.fragment != Fragment::Later && p.proto != PROTO_SCTP {
        let (offset, old) = match side {
            Side::Source => (p.l4_off, p.sport),
            Side::Destination => (p.l4_off + 2, p.dport),
        };
        (old != port).then_some(PortChange {
            offset,
            old,
            new: port,
        })
    } else {
        None
    };
    ctx.rewrite_addr_and_port(addr_off, old_addr, addr, ipv6, ip_csum, l4, port_change)
}
