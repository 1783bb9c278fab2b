//! Forwarding without the kernel stack: after the forward path's rewrite, an XDP program
//! sends the packet straight to its backend's next hop (`XDP_TX` when that is the arrival
//! device, `bpf_redirect_map` into FAST_PATH_DEVICES otherwise), as a router would: the
//! TTL or hop limit goes down by one (with the IPv4 header checksum), the MACs are the
//! next hop's. The stack forwards it instead (the packet passes, as without the fast path)
//! whenever a router's work is needed or the frame could be lost:
//! - no usable next hop: no route, a local destination, forwarding off on the arrival
//!   device, no neighbour entry yet (the stack resolves it), or an egress device the agent
//!   did not put in FAST_PATH_DEVICES (e.g. a veth whose peer has no XDP program, which
//!   drops redirected frames);
//! - the datagram is longer than the egress MTU (the stack fragments it or sends the ICMP
//!   error), or its TTL / hop limit is 1 or less (the stack sends time exceeded);
//! - a VLAN tag (the next hop's frame would need its own), IPv4 options or IPv6 extension
//!   headers (a router processes them: record route, router alert), a fragment (the later
//!   fragments carry no ports and always go through the stack, which may hold them for
//!   reassembly waiting for the first);
//! - a frame not addressed to this node alone: a broadcast or multicast destination MAC,
//!   or, when the next hop is on the arrival device, a MAC other than that device's (the
//!   stack drops such frames as another host's; forwarded, every node on a flooding
//!   segment would send the backend a copy). A unicast frame for another host's MAC that
//!   arrives on a promiscuous device and leaves by redirect is not caught: the program
//!   does not know the arrival device's MAC;
//! - the flow may be masqueraded (masquerade on, backend on another node): its source NAT
//!   happens at TC egress of the outgoing device, which a redirected frame skips;
//! - CONFIG has `FAST_PATH_OFF`.
//!
//! The next hop is looked up with `bpf_fib_lookup` (about 150 ns) only off the per-packet
//! path: each CPU keeps it per backend slot and arrival device in NEXT_HOPS for
//! [`LIFETIME_JIFFIES`] and looks again after that, so a route or neighbour change reaches
//! the fast path within that time. The packet that triggers a look-up after expiry goes
//! through the stack: `bpf_fib_lookup` takes a stale neighbour entry as it is and never
//! probes it, while a packet the stack sends through it does (a next hop whose MAC moved
//! without a gratuitous ARP is found again). Unusable answers are kept as long, so that a
//! backend the fast path cannot reach costs one array read per packet, not a look-up.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action, xdp_md},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_jiffies64},
    programs::XdpContext,
};
use lb_common::{Backend, FastPathCounter, backend_flags, capacity, config_flags};

use crate::{
    counters::count_fast_path,
    csum,
    maps::{BACKENDS, CONFIG, FAST_PATH_DEVICES, FIB_PARAMS, NEXT_HOPS, NextHop},
    packet::{ETH_LEN, Packet},
    parse::{Fragment, Parsed},
    verdict::Action,
};

/// How long a looked-up next hop is used before it is looked up again: 256 jiffies, 1 s
/// at the usual HZ of 250 (0.26 s at 1000, 2.6 s at 100). `bpf_jiffies64` is inlined by
/// the verifier: reading the clock costs nothing.
pub const LIFETIME_JIFFIES: u64 = 256;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Sends the rewritten packet of a balanced flow to its backend's next hop, or says to pass
/// it to the stack. Returns `Bounce` for `XDP_TX`, `Redirect` once `bpf_redirect_map`
/// took the frame, `Pass` otherwise (the packet is then as the rewrite left it). Each
/// outcome is counted in FAST_PATH_STATS.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, p: &Parsed, backend_id: u32) -> Action {
    // Inlined: a node without the fast path pays no BPF call per balanced packet.
    if turned_off() {
        return to_stack(FastPathCounter::StackTurnedOff);
    }
    send(ctx, p, backend_id)
}

/// [`xdp`] with the fast path on.
// A separate BPF function: the next-hop handling stays off the callers' frames.
#[inline(never)]
fn send(ctx: &XdpContext, p: &Parsed, backend_id: u32) -> Action {
    // The backend's address from BACKENDS: the one the packet was just rewritten to (the
    // forward path checked or chose this entry).
    let Some(backend) = BACKENDS.get(backend_id) else {
        return to_stack(FastPathCounter::StackNoNextHop);
    };
    if let Err(why) = allowed_for(backend) {
        return to_stack(why);
    }
    if !plain_datagram(p) {
        return to_stack(FastPathCounter::StackNotPlain);
    }
    let packet = Packet::xdp(ctx);
    let Some(dst_mac) = packet.read::<[u8; 6]>(0) else {
        return to_stack(FastPathCounter::StackNotPlain);
    };
    // The lowest bit of the destination MAC's first byte marks broadcast and multicast.
    if dst_mac[0] & 1 != 0 {
        return to_stack(FastPathCounter::StackNotForThisNode);
    }
    let arrival = ctx.ingress_ifindex() as u32;
    let Some(hop) = NEXT_HOPS.get_ptr_mut(backend_id & (capacity::NEXT_HOPS - 1)) else {
        return to_stack(FastPathCounter::StackNoNextHop);
    };
    // SAFETY: this CPU's slot of a per-CPU array; nothing else writes it while we run.
    let hop = unsafe { &mut *hop };
    // SAFETY: an inlined helper without arguments.
    let now = unsafe { bpf_jiffies64() };
    if hop.addr != backend.addr || hop.arrival_ifindex != arrival {
        look_up(ctx.ctx, p, &backend.addr, hop, now);
    } else if now >= hop.expires_jiffies {
        look_up(ctx.ctx, p, &backend.addr, hop, now);
        // This one goes through the stack, which refreshes the neighbour (module comment).
        return to_stack(FastPathCounter::StackRefresh);
    }
    if hop.usable == 0 {
        return to_stack(FastPathCounter::StackNoNextHop);
    }
    if p.ip_len > usize::from(hop.mtu) {
        return to_stack(FastPathCounter::StackTooBig);
    }
    let ipv6 = p.ipv6();
    // IPv4 TTL at byte 8, IPv6 hop limit at byte 7.
    let ttl_offset = if ipv6 { p.l3_off + 7 } else { p.l3_off + 8 };
    let Some(ttl) = packet.read::<u8>(ttl_offset) else {
        return to_stack(FastPathCounter::StackNotPlain);
    };
    if ttl <= 1 {
        return to_stack(FastPathCounter::StackTtlExpiring);
    }
    let (action, sent) = if hop.ifindex == arrival {
        // The arrival device's own MAC is the next hop's source MAC: a frame for another
        // host's MAC is that host's to forward.
        if dst_mac != hop.smac {
            return to_stack(FastPathCounter::StackNotForThisNode);
        }
        // The device was in FAST_PATH_DEVICES at the look-up; one taken out since is still
        // used until the slot expires (at most LIFETIME_JIFFIES), as a redirect checks the
        // map on every packet but XDP_TX needs no map.
        (Action::Bounce, FastPathCounter::Transmitted)
    } else {
        // Before any change to the frame: if the device has left FAST_PATH_DEVICES since the
        // lookup, the packet still goes to the stack untouched.
        match FAST_PATH_DEVICES.redirect(hop.ifindex, u64::from(xdp_action::XDP_PASS)) {
            Ok(_) => (Action::Redirect, FastPathCounter::Redirected),
            Err(_) => return to_stack(FastPathCounter::StackNoNextHop),
        }
    };
    if decrement_ttl(packet, p, ttl).is_none() || set_macs(packet, hop).is_none() {
        count_fast_path(FastPathCounter::Failed);
        return Action::Drop;
    }
    count_fast_path(sent);
    action
}

/// The packet goes through the stack, for the reason `why` (counted).
#[inline(always)]
fn to_stack(why: FastPathCounter) -> Action {
    count_fast_path(why);
    Action::Pass
}

/// A whole datagram with a plain IP header (no VLAN tag, no IPv4 options, no IPv6
/// extension header): nothing in it needs a router's attention beyond the TTL.
#[inline(always)]
fn plain_datagram(p: &Parsed) -> bool {
    let plain_header = if p.ipv6() { 40 } else { 20 };
    p.l3_off == ETH_LEN && p.l4_off == ETH_LEN + plain_header && p.fragment == Fragment::Whole
}

/// Whether the fast path is off (CONFIG's `FAST_PATH_OFF`, or no CONFIG).
#[inline(always)]
fn turned_off() -> bool {
    CONFIG
        .get(0)
        .is_none_or(|config| config.flags & config_flags::FAST_PATH_OFF != 0)
}

/// Whether the flow may leave without the stack (the fast path being on): it is not one
/// that may be masqueraded (masquerade on and a backend on another node); else why not.
#[inline(always)]
fn allowed_for(backend: &Backend) -> Result<(), FastPathCounter> {
    let Some(config) = CONFIG.get(0) else {
        return Err(FastPathCounter::StackTurnedOff);
    };
    if config.masquerades() && backend.flags & backend_flags::NODE_LOCAL == 0 {
        return Err(FastPathCounter::StackMasquerade);
    }
    Ok(())
}

/// TTL (IPv4, with the header checksum) or hop limit (IPv6) minus one.
#[inline(always)]
fn decrement_ttl(packet: Packet, p: &Parsed, ttl: u8) -> Option<()> {
    if p.ipv6() {
        return packet.write(p.l3_off + 7, ttl - 1);
    }
    // The TTL is the first byte of the 16-bit word at 8 (TTL, protocol).
    let old: u16 = packet.read(p.l3_off + 8)?;
    let new = u16::from_ne_bytes([ttl - 1, p.proto]);
    packet.write(p.l3_off + 8, new)?;
    let old_csum: u16 = packet.read(p.l3_off + 10)?;
    packet.write(
        p.l3_off + 10,
        csum::apply(old_csum, csum::diff16(0, old, new)),
    )
}

#[inline(always)]
fn set_macs(packet: Packet, hop: &NextHop) -> Option<()> {
    packet.write(0, hop.dmac)?;
    packet.write(6, hop.smac)
}

/// Fills `hop` for the backend at `addr` from the kernel's FIB and neighbour table, as the stack would
/// route the packet arriving on this device (`bpf_fib_lookup` checks that forwarding is on
/// there). Usable only when the answer has a neighbour and its device may take frames.
// A separate BPF function, its 64-byte parameter block in a per-CPU scratch map: the
// forward path's call chains stay under 512 bytes of stack.
#[inline(never)]
fn look_up(ctx: *mut xdp_md, p: &Parsed, addr: &[u8; 16], hop: &mut NextHop, now: u64) {
    hop.addr = *addr;
    hop.arrival_ifindex = arrival_ifindex(ctx);
    hop.expires_jiffies = now + LIFETIME_JIFFIES;
    hop.usable = 0;
    let Some(params) = FIB_PARAMS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; a plain C struct, all zeroes is its empty value.
    let params = unsafe {
        params.write_bytes(0, 1);
        &mut *params
    };
    params.l4_protocol = p.proto;
    params.ifindex = hop.arrival_ifindex;
    let (src, dst) = (&p.src, addr);
    if p.ipv6() {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = words(dst);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    }
    // SAFETY: helper call with our context and a parameter block of the size we pass.
    let found = unsafe {
        fib_lookup(
            ctx.cast(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if found != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return;
    }
    let egress = params.ifindex;
    if FAST_PATH_DEVICES.get_ifindex(egress).is_none() {
        return;
    }
    // SAFETY: on success the kernel wrote the MACs and the egress MTU into these unions.
    unsafe {
        hop.mtu = params.__bindgen_anon_1.mtu_result;
        hop.smac = params.__bindgen_anon_6.__bindgen_anon_2.smac;
        hop.dmac = params.__bindgen_anon_6.__bindgen_anon_2.dmac;
    }
    hop.ifindex = egress;
    hop.usable = 1;
}

#[inline(always)]
fn arrival_ifindex(ctx: *mut xdp_md) -> u32 {
    // SAFETY: reading the context the kernel handed us.
    unsafe { (*ctx).ingress_ifindex }
}

/// An IPv6 address as the four words of `bpf_fib_lookup` (network order kept).
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}
