//! ICMP errors about balanced flows, translated so each side recognises its own packet.
//!
//! Egress (toward a client): the quoted packet is client -> backend (as the backend or the
//! node saw it, e.g. frag-needed / packet-too-big for a DNATed packet); it becomes
//! client -> frontend, and an outer source equal to the backend becomes the frontend.
//! Ingress (from a client): the quoted packet is frontend -> client (a reply after reverse
//! NAT); it becomes backend -> client and the outer destination becomes the backend.
//! Ingress, about a masqueraded packet (from the path to another node's endpoint): the
//! quoted packet is node address:port -> endpoint; it becomes client -> endpoint and the
//! outer destination the client, so that the stack routes the error to the client and
//! egress translates it on as an error about a balanced flow.
//!
//! Checksums are updated in software for both XDP and TC: ICMP is never checksum-offloaded,
//! and every change here is balanced by a checksum change inside the packet, so a
//! `CHECKSUM_COMPLETE` sum stays valid.

use crate::packet::{ICMP_LEN, IPV4_LEN, IPV6_LEN, Packet};
use lb_common::{
    FAMILY_IPV4, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason,
    flow_direction, snat_direction,
};

use crate::{
    csum,
    ctx::PacketCtx,
    maps::{CONNTRACK, HANDSHAKES, Lookup as _, SNAT},
    parse::Parsed,
    parse::ZERO_ADDR,
    verdict::Verdict,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

#[inline(always)]
fn is_error(p: &Parsed, icmp_type: u8) -> bool {
    if p.family == FAMILY_IPV4 {
        p.proto == PROTO_ICMP && matches!(icmp_type, 3 | 11 | 12)
    } else {
        p.proto == PROTO_ICMPV6 && matches!(icmp_type, 1..=4)
    }
}

/// Writes a 16-bit word and returns the checksum difference it caused.
#[inline(always)]
fn replace16(packet: Packet, offset: usize, new: u16) -> Option<u32> {
    let old = packet.replace(offset, new)?;
    Some(csum::diff16(0, old, new))
}

/// Writes an address and returns the checksum difference it caused.
#[inline(always)]
fn replace_addr(
    packet: Packet,
    offset: usize,
    old: &[u8; 16],
    new: &[u8; 16],
    ipv6: bool,
) -> Option<u32> {
    packet.write_addr(offset, new, ipv6)?;
    Some(csum::diff_addr(0, old, new, ipv6))
}

/// Translates an ICMP error about a balanced flow, or passes the packet untouched.
// Out of line: ICMP errors are rare, and their state stays off the packet path's frame.
#[inline(never)]
pub fn translate_error<C: PacketCtx>(ctx: &C, p: &Parsed, direction: Direction) -> Verdict {
    let Some(header) = ctx.packet().header::<ICMP_LEN>(p.l4_off) else {
        return Verdict::drop(Reason::DropTruncated);
    };
    if !is_error(p, header.u8::<0>()) {
        return Verdict::pass(Reason::PassOtherProtocol);
    }
    // Two separate BPF functions called one after the other (not nested): each call chain
    // stays under the 512-byte stack limit.
    let mut quoted = None;
    if let Err(reason) = find_quoted(ctx, p, direction, &mut quoted) {
        return Verdict::early(reason);
    }
    let Some(quoted) = &quoted else {
        return Verdict::pass(Reason::PassNoFrontend);
    };
    match rewrite_quoted(ctx, p, direction, quoted) {
        Ok(()) => Verdict::pass(Reason::IcmpErrorTranslated),
        Err(reason) => Verdict::early(reason),
    }
}

/// The quoted packet's side that names the balanced flow, and what it becomes.
struct Quoted {
    inner_l3: usize,
    inner_l4: usize,
    /// The quoted address and port to replace (egress: destination; ingress: source).
    old_addr: [u8; 16],
    new_addr: [u8; 16],
    old_port: u16,
    new_port: u16,
    proto: u8,
}

/// Fills `out` when the error is about a balanced flow (an out parameter: this is a BPF
/// function of its own, and a returned `Quoted` would not fit in a register).
#[inline(never)]
fn find_quoted<C: PacketCtx>(
    ctx: &C,
    p: &Parsed,
    direction: Direction,
    out: &mut Option<Quoted>,
) -> Result<(), Reason> {
    let packet = ctx.packet();
    let ipv6 = p.ipv6();
    let inner_l3 = p.l4_off + ICMP_LEN;
    // The quoted packet went one way; the conntrack entry that names its translation is
    // keyed the other way (reply entry on egress, forward entry on ingress), so the quoted
    // addresses and ports go into the key swapped.
    let mut key = FlowKey {
        src_addr: ZERO_ADDR,
        dst_addr: ZERO_ADDR,
        src_port: 0,
        dst_port: 0,
        proto: 0,
        family: p.family,
        _pad: [0, 0],
    };
    let inner_l4 = if ipv6 {
        let h = packet
            .header::<IPV6_LEN>(inner_l3)
            .ok_or(Reason::DropTruncated)?;
        key.proto = h.u8::<6>();
        key.dst_addr = h.bytes::<8, 16>();
        key.src_addr = h.bytes::<24, 16>();
        inner_l3 + IPV6_LEN
    } else {
        let h = packet
            .header::<IPV4_LEN>(inner_l3)
            .ok_or(Reason::DropTruncated)?;
        let version_ihl = h.u8::<0>();
        let header_len = ((version_ihl & 0x0f) as usize) * 4;
        if version_ihl >> 4 != 4 || header_len < IPV4_LEN {
            return Err(Reason::DropMalformed);
        }
        key.proto = h.u8::<9>();
        key.dst_addr[..4].copy_from_slice(&h.bytes::<12, 4>());
        key.src_addr[..4].copy_from_slice(&h.bytes::<16, 4>());
        inner_l3 + header_len
    };
    let proto = key.proto;
    if !matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        return Ok(());
    }
    let ports: [u8; 4] = packet.read(inner_l4).ok_or(Reason::DropTruncated)?;
    key.dst_port = u16::from_ne_bytes([ports[0], ports[1]]);
    key.src_port = u16::from_ne_bytes([ports[2], ports[3]]);
    let wanted = match direction {
        Direction::Egress => flow_direction::REPLY,
        Direction::Ingress => flow_direction::FORWARD,
    };
    let flow = match CONNTRACK.value(&key) {
        None if proto == PROTO_TCP => HANDSHAKES.value(&key),
        found => found,
    };
    let translation = match flow {
        Some(flow) if flow.direction == wanted => (flow.nat_addr, flow.nat_port),
        // On ingress, an error about a masqueraded packet (node address and port ->
        // endpoint, e.g. fragmentation needed on the way to the other node): its quote is
        // keyed like the flow's SNAT IN entry, which gives the client back.
        _ if direction == Direction::Ingress => match SNAT.value(&key) {
            Some(entry) if entry.direction == snat_direction::IN => (entry.addr, entry.port),
            _ => return Ok(()),
        },
        _ => return Ok(()),
    };
    let (old_addr, old_port) = match direction {
        Direction::Egress => (key.src_addr, key.src_port),
        Direction::Ingress => (key.dst_addr, key.dst_port),
    };
    *out = Some(Quoted {
        inner_l3,
        inner_l4,
        old_addr,
        new_addr: translation.0,
        old_port,
        new_port: translation.1,
        proto,
    });
    Ok(())
}

/// Rewrites the quoted packet and the outer header, with every checksum.
#[inline(never)]
fn rewrite_quoted<C: PacketCtx>(
    ctx: &C,
    p: &Parsed,
    direction: Direction,
    q: &Quoted,
) -> Result<(), Reason> {
    let packet = ctx.packet();
    let ipv6 = p.ipv6();
    let (inner_l3, inner_l4, proto) = (q.inner_l3, q.inner_l4, q.proto);
    // Egress rewrites the quoted destination (backend -> frontend); ingress the quoted
    // source (frontend -> backend).
    let (inner_addr_off, port_off) = match (direction, ipv6) {
        (Direction::Egress, false) => (inner_l3 + 16, inner_l4 + 2),
        (Direction::Egress, true) => (inner_l3 + 24, inner_l4 + 2),
        (Direction::Ingress, false) => (inner_l3 + 12, inner_l4),
        (Direction::Ingress, true) => (inner_l3 + 8, inner_l4),
    };
    let addr_diff = csum::diff_addr(0, &q.old_addr, &q.new_addr, ipv6);
    let port_diff = if proto == PROTO_SCTP {
        0
    } else {
        csum::diff16(0, q.old_port, q.new_port)
    };

    // Changes inside the ICMP payload, summed for the ICMP checksum.
    let mut icmp_diff = replace_addr(packet, inner_addr_off, &q.old_addr, &q.new_addr, ipv6)
        .ok_or(Reason::DropTruncated)?;
    if proto != PROTO_SCTP {
        icmp_diff += replace16(packet, port_off, q.new_port).ok_or(Reason::DropTruncated)?;
    }
    if !ipv6 {
        let offset = inner_l3 + 10;
        let old: u16 = packet.read(offset).ok_or(Reason::DropTruncated)?;
        let new = csum::apply(old, addr_diff);
        icmp_diff += replace16(packet, offset, new).ok_or(Reason::DropTruncated)?;
    }
    // The quoted L4 checksum, when the quote is long enough to hold it.
    let l4_csum_off = match proto {
        PROTO_TCP => Some(inner_l4 + 16),
        PROTO_UDP => Some(inner_l4 + 6),
        _ => None,
    };
    if let Some(offset) = l4_csum_off
        && let Some(old) = packet.read::<u16>(offset)
        && !(proto == PROTO_UDP && old == 0)
    {
        let new = csum::apply(old, addr_diff + port_diff);
        icmp_diff += replace16(packet, offset, new).ok_or(Reason::DropTruncated)?;
    }

    // The outer address that names the translated side.
    let (outer_off, outer_old) = match (direction, ipv6) {
        (Direction::Egress, false) => (p.l3_off + 12, &p.src),
        (Direction::Egress, true) => (p.l3_off + 8, &p.src),
        (Direction::Ingress, false) => (p.l3_off + 16, &p.dst),
        (Direction::Ingress, true) => (p.l3_off + 24, &p.dst),
    };
    if *outer_old == q.old_addr {
        let outer_diff = replace_addr(packet, outer_off, outer_old, &q.new_addr, ipv6)
            .ok_or(Reason::DropTruncated)?;
        if ipv6 {
            // ICMPv6's checksum covers the pseudo-header.
            icmp_diff += outer_diff;
        } else {
            let offset = p.l3_off + 10;
            let old: u16 = packet.read(offset).ok_or(Reason::DropTruncated)?;
            replace16(packet, offset, csum::apply(old, outer_diff)).ok_or(Reason::DropTruncated)?;
        }
    }
    let offset = p.l4_off + 2;
    let old: u16 = packet.read(offset).ok_or(Reason::DropTruncated)?;
    replace16(packet, offset, csum::apply(old, icmp_diff)).ok_or(Reason::DropTruncated)?;
    Ok(())
}
