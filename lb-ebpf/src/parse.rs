//! Header parsing shared by every program: Ethernet (+ one 802.1Q tag), IPv4 (with options)
//! or IPv6 (hop-by-hop, routing, destination-options and fragment headers), then the first
//! bytes of TCP, UDP, SCTP or ICMP. Every offset is bounds-checked before use; anything
//! odd ends in a `Reason`.

use core::mem::MaybeUninit;

use crate::packet::{
    ETH_LEN, Header, ICMP_LEN, IPV4_LEN, IPV6_LEN, Packet, SCTP_LEN, TCP_LEN, UDP_LEN, VLAN_LEN,
};
use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    ProtoCounter, Reason,
};

use crate::counters::count_proto;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DEST_OPTS: u8 = 60;
/// IPv6 extension headers we walk before giving up (PassUnparsedHeaders).
const MAX_EXT_HEADERS: usize = 4;
/// Furthest L4 offset we accept; keeps every offset small for the verifier.
pub const MAX_L4_OFFSET: usize = 256;

/// An all-zero address, written out element by element: a `[0; 16]` repeat expression
/// becomes a call to aya's byte-at-a-time `memset`, this becomes two stores.
pub const ZERO_ADDR: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Where a packet sits among the fragments of its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// Offset 0 with more fragments: carries the L4 header.
    First,
    /// Offset > 0: no L4 header.
    Later,
}

/// The fields of a parsed packet. Addresses and ports are as in the packet (network order).
#[derive(Clone, Copy)]
pub struct Parsed {
    /// Offset of the IP header (14, or 18 with a VLAN tag).
    pub l3_off: usize,
    /// Offset of the L4 header (meaningless for `Fragment::Later`).
    pub l4_off: usize,
    pub family: u8,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub fragment: Fragment,
    /// IPv4 identification or IPv6 fragment identification (host order).
    pub frag_id: u32,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// Length of the IP datagram from the IP header on (per its length fields).
    pub ip_len: usize,
}

impl Parsed {
    #[inline(always)]
    pub fn ipv6(&self) -> bool {
        self.family == FAMILY_IPV6
    }

    /// The frame's length up to the end of its IP datagram, for the byte counters: from the
    /// parsed lengths, instead of a helper call (`bpf_xdp_get_buff_len`).
    #[inline(always)]
    pub fn frame_len(&self) -> u32 {
        (self.l3_off + self.ip_len) as u32
    }
}

/// The `N` header bytes at `offset`, or `DropTruncated`.
#[inline(always)]
fn header<const N: usize>(packet: Packet, offset: usize) -> Result<Header<N>, Reason> {
    packet.header(offset).ok_or(Reason::DropTruncated)
}

/// Parses Ethernet and the optional VLAN tag; returns (ethertype, l3 offset).
#[inline(always)]
fn parse_eth(packet: Packet) -> Result<(u16, usize), Reason> {
    let eth = header::<ETH_LEN>(packet, 0)?;
    let ethertype = eth.be16::<12>();
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        let tag = header::<VLAN_LEN>(packet, ETH_LEN)?;
        return Ok((tag.be16::<2>(), ETH_LEN + VLAN_LEN));
    }
    Ok((ethertype, ETH_LEN))
}

/// Does the packet hold `len` bytes? `wire_len` is the packet's full length when the
/// program sees only its linear head (TC: `skb->len`; the rest may sit in fragments, as in
/// GSO packets from local sockets), or 0 when `packet` is the whole packet (XDP).
#[inline(always)]
fn within(packet: Packet, wire_len: usize, len: usize) -> bool {
    if wire_len == 0 {
        packet.holds(len)
    } else {
        len <= wire_len
    }
}

/// An IPv4 address in the first 4 bytes of a 16-byte one, built in registers (an array
/// literal with zeros would become a byte-at-a-time `memset` call).
#[inline(always)]
fn v4_in_16(addr: [u8; 4]) -> [u8; 16] {
    (u32::from_ne_bytes(addr) as u128).to_le_bytes()
}

/// Parses a packet up to the L4 ports into `slot` and hands out the result (the slot is
/// written whole once the IP header is known: zero-initialising the struct first costs a
/// `memset` byte loop per packet). `count` adds to PROTO_STATS (off for the reverse path,
/// so each packet is counted once). `wire_len`: see [`within`].
#[inline(always)]
pub fn parse(
    packet: Packet,
    wire_len: usize,
    count: bool,
    slot: &mut MaybeUninit<Parsed>,
) -> Result<&mut Parsed, Reason> {
    let (ethertype, l3_off) = parse_eth(packet)?;
    let p = match ethertype {
        ETHERTYPE_IPV4 => {
            if count {
                count_proto(ProtoCounter::Ipv4);
            }
            parse_ipv4(packet, wire_len, l3_off, slot)?
        }
        ETHERTYPE_IPV6 => {
            if count {
                count_proto(ProtoCounter::Ipv6);
            }
            parse_ipv6(packet, wire_len, l3_off, slot)?
        }
        _ => {
            if count {
                count_proto(ProtoCounter::NonIp);
            }
            return Err(Reason::PassNotIp);
        }
    };
    if count {
        count_proto(match p.proto {
            PROTO_TCP => ProtoCounter::Tcp,
            PROTO_UDP => ProtoCounter::Udp,
            PROTO_SCTP => ProtoCounter::Sctp,
            PROTO_ICMP | PROTO_ICMPV6 => ProtoCounter::Icmp,
            _ => ProtoCounter::OtherL4,
        });
    }
    if p.fragment != Fragment::Later {
        parse_l4(packet, p)?;
    }
    Ok(p)
}

#[inline(always)]
fn parse_ipv4(
    packet: Packet,
    wire_len: usize,
    l3: usize,
    slot: &mut MaybeUninit<Parsed>,
) -> Result<&mut Parsed, Reason> {
    let h = header::<IPV4_LEN>(packet, l3)?;
    let version_ihl = h.u8::<0>();
    if version_ihl >> 4 != 4 {
        return Err(Reason::DropMalformed);
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < IPV4_LEN {
        return Err(Reason::DropMalformed);
    }
    let total_len = h.be16::<2>() as usize;
    if total_len < header_len || !within(packet, wire_len, l3 + total_len) {
        return Err(Reason::DropMalformed);
    }
    let frag = h.be16::<6>();
    let fragment = if frag & 0x1fff != 0 {
        Fragment::Later
    } else if frag & 0x2000 != 0 {
        Fragment::First
    } else {
        Fragment::Whole
    };
    Ok(slot.write(Parsed {
        l3_off: l3,
        l4_off: l3 + header_len,
        family: FAMILY_IPV4,
        proto: h.u8::<9>(),
        src: v4_in_16(h.bytes::<12, 4>()),
        dst: v4_in_16(h.bytes::<16, 4>()),
        sport: 0,
        dport: 0,
        fragment,
        frag_id: h.be16::<4>() as u32,
        tcp_flags: 0,
        ip_len: total_len,
    }))
}

#[inline(always)]
fn parse_ipv6(
    packet: Packet,
    wire_len: usize,
    l3: usize,
    slot: &mut MaybeUninit<Parsed>,
) -> Result<&mut Parsed, Reason> {
    let h = header::<IPV6_LEN>(packet, l3)?;
    if h.u8::<0>() >> 4 != 6 {
        return Err(Reason::DropMalformed);
    }
    let payload_len = h.be16::<4>() as usize;
    if !within(packet, wire_len, l3 + IPV6_LEN + payload_len) {
        return Err(Reason::DropMalformed);
    }
    let ip_len = payload_len + IPV6_LEN;
    let mut fragment = Fragment::Whole;
    let mut frag_id = 0;
    let mut next = h.u8::<6>();
    let mut off = l3 + IPV6_LEN;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match next {
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS => {
                let ext = header::<2>(packet, off)?;
                next = ext.u8::<0>();
                off += (ext.u8::<1>() as usize + 1) * 8;
            }
            NEXT_FRAGMENT => {
                let ext = header::<8>(packet, off)?;
                next = ext.u8::<0>();
                let frag = ext.be16::<2>();
                frag_id = u32::from_be_bytes(ext.bytes::<4, 4>());
                fragment = if frag & 0xfff8 != 0 {
                    Fragment::Later
                } else if frag & 1 != 0 {
                    Fragment::First
                } else {
                    Fragment::Whole
                };
                off += 8;
            }
            _ => break,
        }
        if off > MAX_L4_OFFSET {
            return Err(Reason::PassUnparsedHeaders);
        }
        i += 1;
    }
    if matches!(
        next,
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS | NEXT_FRAGMENT
    ) {
        return Err(Reason::PassUnparsedHeaders);
    }
    if off - l3 > ip_len {
        return Err(Reason::DropMalformed);
    }
    Ok(slot.write(Parsed {
        l3_off: l3,
        l4_off: off,
        family: FAMILY_IPV6,
        proto: next,
        src: h.bytes::<8, 16>(),
        dst: h.bytes::<24, 16>(),
        sport: 0,
        dport: 0,
        fragment,
        frag_id,
        tcp_flags: 0,
        ip_len,
    }))
}

#[inline(always)]
fn parse_l4(packet: Packet, p: &mut Parsed) -> Result<(), Reason> {
    let off = p.l4_off;
    if off > MAX_L4_OFFSET {
        return Err(Reason::PassUnparsedHeaders);
    }
    match p.proto {
        PROTO_TCP => {
            let tcp = header::<TCP_LEN>(packet, off)?;
            if (tcp.u8::<12>() >> 4) < 5 {
                return Err(Reason::DropMalformed);
            }
            p.sport = tcp.raw16::<0>();
            p.dport = tcp.raw16::<2>();
            p.tcp_flags = tcp.u8::<13>();
        }
        PROTO_UDP => {
            let udp = header::<UDP_LEN>(packet, off)?;
            p.sport = udp.raw16::<0>();
            p.dport = udp.raw16::<2>();
        }
        PROTO_SCTP => {
            let sctp = header::<SCTP_LEN>(packet, off)?;
            p.sport = sctp.raw16::<0>();
            p.dport = sctp.raw16::<2>();
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            header::<ICMP_LEN>(packet, off)?;
        }
        _ => return Err(Reason::PassOtherProtocol),
    }
    Ok(())
}
