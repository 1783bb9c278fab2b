//! Header parsing shared by every program: Ethernet (+ one 802.1Q tag), IPv4 (with options)
//! or IPv6 (hop-by-hop, routing, destination-options and fragment headers), then the first
//! bytes of TCP, UDP, SCTP or ICMP. Every offset is bounds-checked before use; anything
//! odd ends in a `Reason`.

use core::mem::MaybeUninit;

use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    ProtoCounter, Reason,
};

use crate::{counters::count_proto, ctx::ptr_at};

pub const ETH_LEN: usize = network_types::eth::EthHdr::LEN;
pub const VLAN_LEN: usize = network_types::vlan::VlanHdr::LEN;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

const IPV6_HDR_LEN: usize = network_types::ip::Ipv6Hdr::LEN;
const _: () = assert!(ETH_LEN == 14 && VLAN_LEN == 4 && IPV6_HDR_LEN == 40);
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
}

/// A bounds-checked pointer to `len` (a constant) bytes at `offset`.
#[inline(always)]
fn header<const LEN: usize>(data: usize, end: usize, offset: usize) -> Result<*const u8, Reason> {
    let p: *const [u8; LEN] = ptr_at(data, end, offset).ok_or(Reason::DropTruncated)?;
    Ok(p.cast())
}

/// Byte `i` of a checked header.
#[inline(always)]
fn u8_at(h: *const u8, i: usize) -> u8 {
    // SAFETY: callers index within the length `header` checked.
    unsafe { *h.add(i) }
}

/// Big-endian u16 at byte `i` of a checked header.
#[inline(always)]
fn be16(h: *const u8, i: usize) -> u16 {
    u16::from_be_bytes([u8_at(h, i), u8_at(h, i + 1)])
}

/// A u16 as it sits in the packet (network order kept), at byte `i` of a checked header.
#[inline(always)]
fn raw16(h: *const u8, i: usize) -> u16 {
    // SAFETY: callers index within the length `header` checked.
    unsafe { h.add(i).cast::<u16>().read_unaligned() }
}

/// `N` bytes at byte `i` of a checked header.
#[inline(always)]
fn bytes<const N: usize>(h: *const u8, i: usize) -> [u8; N] {
    // SAFETY: callers index within the length `header` checked.
    unsafe { h.add(i).cast::<[u8; N]>().read_unaligned() }
}

/// Parses Ethernet and the optional VLAN tag; returns (ethertype, l3 offset).
#[inline(always)]
fn parse_eth(data: usize, end: usize) -> Result<(u16, usize), Reason> {
    let eth = header::<14>(data, end, 0)?;
    let ethertype = be16(eth, 12);
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        let tag = header::<4>(data, end, ETH_LEN)?;
        return Ok((be16(tag, 2), ETH_LEN + VLAN_LEN));
    }
    Ok((ethertype, ETH_LEN))
}

/// Does the packet hold `len` bytes? `wire_len` is the packet's full length when the
/// program sees only its linear head (TC: `skb->len`; the rest may sit in fragments, as in
/// GSO packets from local sockets), or 0 when `end` is the end of the whole packet (XDP).
/// XDP compares pointers, never lengths derived from the end pointer (the verifier refuses
/// arithmetic on it).
#[inline(always)]
fn within(data: usize, end: usize, wire_len: usize, len: usize) -> bool {
    if wire_len == 0 {
        data + len <= end
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

/// Parses a packet up to the L4 ports into `out` (an out parameter, written whole once the
/// IP header is known: zero-initialising the struct first costs a `memset` byte loop per
/// packet). On `Ok`, `out` is initialised. `count` adds to PROTO_STATS (off for the reverse
/// path, so each packet is counted once). `wire_len`: see [`within`].
#[inline(always)]
pub fn parse(
    data: usize,
    end: usize,
    wire_len: usize,
    count: bool,
    out: &mut MaybeUninit<Parsed>,
) -> Result<(), Reason> {
    let (ethertype, l3_off) = parse_eth(data, end)?;
    match ethertype {
        ETHERTYPE_IPV4 => {
            if count {
                count_proto(ProtoCounter::Ipv4);
            }
            parse_ipv4(data, end, wire_len, l3_off, out)?;
        }
        ETHERTYPE_IPV6 => {
            if count {
                count_proto(ProtoCounter::Ipv6);
            }
            parse_ipv6(data, end, wire_len, l3_off, out)?;
        }
        _ => {
            if count {
                count_proto(ProtoCounter::NonIp);
            }
            return Err(Reason::PassNotIp);
        }
    }
    // SAFETY: both IP parsers write the whole struct before returning Ok.
    let p = unsafe { out.assume_init_mut() };
    if count {
        count_proto(match p.proto {
            PROTO_TCP => ProtoCounter::Tcp,
            PROTO_UDP => ProtoCounter::Udp,
            PROTO_SCTP => ProtoCounter::Sctp,
            PROTO_ICMP | PROTO_ICMPV6 => ProtoCounter::Icmp,
            _ => ProtoCounter::OtherL4,
        });
    }
    if p.fragment == Fragment::Later {
        return Ok(());
    }
    parse_l4(data, end, p)
}

#[inline(always)]
fn parse_ipv4(
    data: usize,
    end: usize,
    wire_len: usize,
    l3: usize,
    out: &mut MaybeUninit<Parsed>,
) -> Result<(), Reason> {
    let h = header::<20>(data, end, l3)?;
    let version_ihl = u8_at(h, 0);
    if version_ihl >> 4 != 4 {
        return Err(Reason::DropMalformed);
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < 20 {
        return Err(Reason::DropMalformed);
    }
    let total_len = be16(h, 2) as usize;
    if total_len < header_len || !within(data, end, wire_len, l3 + total_len) {
        return Err(Reason::DropMalformed);
    }
    let frag = be16(h, 6);
    let fragment = if frag & 0x1fff != 0 {
        Fragment::Later
    } else if frag & 0x2000 != 0 {
        Fragment::First
    } else {
        Fragment::Whole
    };
    out.write(Parsed {
        l3_off: l3,
        l4_off: l3 + header_len,
        family: FAMILY_IPV4,
        proto: u8_at(h, 9),
        src: v4_in_16(bytes(h, 12)),
        dst: v4_in_16(bytes(h, 16)),
        sport: 0,
        dport: 0,
        fragment,
        frag_id: be16(h, 4) as u32,
        tcp_flags: 0,
        ip_len: total_len,
    });
    Ok(())
}

#[inline(always)]
fn parse_ipv6(
    data: usize,
    end: usize,
    wire_len: usize,
    l3: usize,
    out: &mut MaybeUninit<Parsed>,
) -> Result<(), Reason> {
    let h = header::<40>(data, end, l3)?;
    if u8_at(h, 0) >> 4 != 6 {
        return Err(Reason::DropMalformed);
    }
    let payload_len = be16(h, 4) as usize;
    if !within(data, end, wire_len, l3 + IPV6_HDR_LEN + payload_len) {
        return Err(Reason::DropMalformed);
    }
    let ip_len = payload_len + IPV6_HDR_LEN;
    let mut fragment = Fragment::Whole;
    let mut frag_id = 0;
    let mut next = u8_at(h, 6);
    let mut off = l3 + IPV6_HDR_LEN;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match next {
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS => {
                let ext = header::<2>(data, end, off)?;
                next = u8_at(ext, 0);
                off += (u8_at(ext, 1) as usize + 1) * 8;
            }
            NEXT_FRAGMENT => {
                let ext = header::<8>(data, end, off)?;
                next = u8_at(ext, 0);
                let frag = be16(ext, 2);
                frag_id = u32::from_be_bytes(bytes(ext, 4));
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
    out.write(Parsed {
        l3_off: l3,
        l4_off: off,
        family: FAMILY_IPV6,
        proto: next,
        src: bytes(h, 8),
        dst: bytes(h, 24),
        sport: 0,
        dport: 0,
        fragment,
        frag_id,
        tcp_flags: 0,
        ip_len,
    });
    Ok(())
}

#[inline(always)]
fn parse_l4(data: usize, end: usize, p: &mut Parsed) -> Result<(), Reason> {
    let off = p.l4_off;
    if off > MAX_L4_OFFSET {
        return Err(Reason::PassUnparsedHeaders);
    }
    match p.proto {
        PROTO_TCP => {
            let tcp = header::<20>(data, end, off)?;
            if (u8_at(tcp, 12) >> 4) < 5 {
                return Err(Reason::DropMalformed);
            }
            p.sport = raw16(tcp, 0);
            p.dport = raw16(tcp, 2);
            p.tcp_flags = u8_at(tcp, 13);
        }
        PROTO_UDP => {
            let udp = header::<8>(data, end, off)?;
            p.sport = raw16(udp, 0);
            p.dport = raw16(udp, 2);
        }
        PROTO_SCTP => {
            let sctp = header::<12>(data, end, off)?;
            p.sport = raw16(sctp, 0);
            p.dport = raw16(sctp, 2);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            header::<8>(data, end, off)?;
        }
        _ => return Err(Reason::PassOtherProtocol),
    }
    Ok(())
}
