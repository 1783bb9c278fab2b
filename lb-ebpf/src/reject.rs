//! Answers for a frontend without a usable backend, built in place and sent back out of the
//! interface the packet came in on: a TCP RST for a SYN, ICMP / ICMPv6 port unreachable
//! (quoting the IP header(s) and the first 8 bytes of L4, as RFC 792 asks) for the rest.
//! Both carry full checksums computed here.

use crate::packet::{ETH_LEN, ICMP_LEN, IPV4_LEN, IPV6_LEN, Packet, TCP_LEN, VLAN_LEN};
use lb_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, Reason};

use crate::{
    csum,
    ctx::PacketCtx,
    parse::{MAX_L4_OFFSET, Parsed},
    verdict::Verdict,
};

const TTL: u8 = 64;
/// Longest quote: IP header(s) up to the L4 header, plus 8 bytes.
const MAX_QUOTE: usize = MAX_L4_OFFSET + 8;
/// Ethernet header with one VLAN tag: the most we copy back.
const ETH_VLAN_LEN: usize = ETH_LEN + VLAN_LEN;

/// Copies `N` bytes into the packet at `offset`.
#[inline(always)]
fn put<const N: usize>(packet: Packet, offset: usize, bytes: &[u8; N]) -> Result<(), ()> {
    packet.write(offset, *bytes).ok_or(())
}

#[inline(always)]
fn sum_bytes<const N: usize>(acc: u32, bytes: &[u8; N]) -> u32 {
    let mut acc = acc;
    let mut i = 0;
    while i + 1 < N {
        acc += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    acc
}

/// Pseudo-header sum for an upper-layer checksum (the same words for IPv4 and IPv6).
#[inline(always)]
fn pseudo_sum(src: &[u8; 16], dst: &[u8; 16], ipv6: bool, proto: u8, len: usize) -> u32 {
    let acc = csum::sum_addr(0, src, ipv6);
    let acc = csum::sum_addr(acc, dst, ipv6);
    acc + u16::from_ne_bytes([0, proto]) as u32
        + u16::from_ne_bytes((len as u16).to_be_bytes()) as u32
}

/// An IP header from the service address back to the client.
#[inline(always)]
fn write_ip(packet: Packet, p: &Parsed, proto: u8, payload_len: usize) -> Result<(), ()> {
    if p.ipv6() {
        let mut h = [0u8; IPV6_LEN];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
        h[6] = proto;
        h[7] = TTL;
        h[8..24].copy_from_slice(&p.dst);
        h[24..40].copy_from_slice(&p.src);
        put(packet, p.l3_off, &h)
    } else {
        let mut h = [0u8; IPV4_LEN];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((IPV4_LEN + payload_len) as u16).to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = TTL;
        h[9] = proto;
        h[12..16].copy_from_slice(&p.dst[..4]);
        h[16..20].copy_from_slice(&p.src[..4]);
        let check = !csum::fold(sum_bytes(0, &h));
        h[10..12].copy_from_slice(&check.to_ne_bytes());
        put(packet, p.l3_off, &h)
    }
}

/// Ethernet (and VLAN tag) of the answer: the original with the MAC addresses swapped.
#[inline(always)]
fn swapped_eth(packet: Packet) -> Result<[u8; ETH_VLAN_LEN], ()> {
    let eth: [u8; ETH_VLAN_LEN] = packet.read(0).ok_or(())?;
    let mut out = eth;
    out[..6].copy_from_slice(&eth[6..12]);
    out[6..12].copy_from_slice(&eth[..6]);
    Ok(out)
}

#[inline(always)]
fn write_eth(packet: Packet, eth: &[u8; ETH_VLAN_LEN], l3_off: usize) -> Result<(), ()> {
    if l3_off == ETH_VLAN_LEN {
        put(packet, 0, eth)
    } else {
        let short: [u8; ETH_LEN] = [
            eth[0], eth[1], eth[2], eth[3], eth[4], eth[5], eth[6], eth[7], eth[8], eth[9],
            eth[10], eth[11], eth[12], eth[13],
        ];
        put(packet, 0, &short)
    }
}

/// Turns a TCP SYN into the RST|ACK that refuses it.
#[inline(always)]
pub fn tcp_reset<C: PacketCtx>(ctx: &C, p: &Parsed) -> Verdict {
    match build_tcp_reset(ctx, p) {
        Ok(()) => Verdict::bounce(Reason::RejectTcpReset),
        Err(()) => Verdict::drop(Reason::DropRejectFailed),
    }
}

// A separate BPF function: its own stack frame keeps each frame under the 512-byte limit.
#[inline(never)]
fn build_tcp_reset<C: PacketCtx>(ctx: &C, p: &Parsed) -> Result<(), ()> {
    let packet = ctx.packet();
    if p.l3_off != ETH_LEN && p.l3_off != ETH_VLAN_LEN {
        return Err(());
    }
    let eth = swapped_eth(packet)?;
    let tcp: [u8; TCP_LEN] = packet.read(p.l4_off).ok_or(())?;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let header_len = ((tcp[12] >> 4) as usize) * 4;
    let segment_len = p.ip_len.saturating_sub(p.l4_off - p.l3_off + header_len);
    // The SYN counts as one byte of sequence space.
    let ack = seq.wrapping_add(1).wrapping_add(segment_len as u32);

    let ip_hdr_len = if p.ipv6() { IPV6_LEN } else { IPV4_LEN };
    let mut rst = [0u8; TCP_LEN];
    rst[0..2].copy_from_slice(&p.dport.to_ne_bytes());
    rst[2..4].copy_from_slice(&p.sport.to_ne_bytes());
    rst[8..12].copy_from_slice(&ack.to_be_bytes());
    rst[12] = 5 << 4;
    rst[13] = 0x14; // RST | ACK
    let sum = pseudo_sum(&p.dst, &p.src, p.ipv6(), PROTO_TCP, TCP_LEN);
    let check = !csum::fold(sum_bytes(sum, &rst));
    rst[16..18].copy_from_slice(&check.to_ne_bytes());

    write_eth(packet, &eth, p.l3_off)?;
    write_ip(packet, p, PROTO_TCP, TCP_LEN)?;
    put(packet, p.l3_off + ip_hdr_len, &rst)?;
    ctx.truncate((p.l3_off + ip_hdr_len + TCP_LEN) as u32)
}

/// Turns the packet into an ICMP (v4: type 3 code 3; v6: type 1 code 4) port unreachable.
#[inline(always)]
pub fn port_unreachable<C: PacketCtx>(ctx: &C, p: &Parsed) -> Verdict {
    match build_port_unreachable(ctx, p) {
        Ok(()) => Verdict::bounce(Reason::RejectIcmpUnreachable),
        Err(()) => Verdict::drop(Reason::DropRejectFailed),
    }
}

// A separate BPF function: its own stack frame keeps each frame under the 512-byte limit.
#[inline(never)]
fn build_port_unreachable<C: PacketCtx>(ctx: &C, p: &Parsed) -> Result<(), ()> {
    let l3_off = p.l3_off;
    if l3_off != ETH_LEN && l3_off != ETH_VLAN_LEN {
        return Err(());
    }
    let quote_len = p.l4_off - l3_off + 8;
    if quote_len > MAX_QUOTE {
        return Err(());
    }
    let eth = swapped_eth(ctx.packet())?;
    let ipv6 = p.ipv6();
    let ip_hdr_len = if ipv6 { IPV6_LEN } else { IPV4_LEN };
    let room = ip_hdr_len + ICMP_LEN;
    ctx.grow_front(room as u32)?;
    // The original IP header now starts `room` bytes later: that is where the quote begins.
    let quote_off = l3_off + room;
    ctx.truncate((quote_off + quote_len) as u32)?;
    // After the resizes: the packet's bytes have moved.
    let packet = ctx.packet();

    write_eth(packet, &eth, l3_off)?;
    let (proto, icmp_type, icmp_code) = if ipv6 {
        (PROTO_ICMPV6, 1u8, 4u8)
    } else {
        (PROTO_ICMP, 3, 3)
    };
    write_ip(packet, p, proto, ICMP_LEN + quote_len)?;

    let mut icmp = [0u8; ICMP_LEN];
    icmp[0] = icmp_type;
    icmp[1] = icmp_code;
    let mut sum = if ipv6 {
        pseudo_sum(&p.dst, &p.src, true, PROTO_ICMPV6, ICMP_LEN + quote_len)
    } else {
        0
    };
    sum = sum_bytes(sum, &icmp);
    let mut i = 0;
    while i < MAX_QUOTE / 2 {
        if 2 * i >= quote_len {
            break;
        }
        let word: [u8; 2] = packet.read(quote_off + 2 * i).ok_or(())?;
        sum += u16::from_ne_bytes(word) as u32;
        i += 1;
    }
    let check = !csum::fold(sum);
    icmp[2..4].copy_from_slice(&check.to_ne_bytes());
    put(packet, l3_off + ip_hdr_len, &icmp)
}
