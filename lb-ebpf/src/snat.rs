//! Masquerade (source NAT) of external traffic balanced to another node's endpoint
//! (`lb_common::masquerades` says which flows). Done in two stages, as netfilter does, so
//! that the stack routes both directions between them:
//!
//! ```text
//! forward  ingress: DNAT (CONNTRACK)   C:cp → F:fp   ⇒  C:cp → E:ep    [the stack routes it]
//!          egress:  SNAT (SNAT, OUT)   C:cp → E:ep   ⇒  N:np → E:ep
//! reply    ingress: un-SNAT (SNAT, IN) E:ep → N:np   ⇒  E:ep → C:cp    [the stack routes it]
//!          egress:  un-DNAT (CONNTRACK) E:ep → C:cp  ⇒  F:fp → C:cp
//! ```
//!
//! (C client, F frontend, E endpoint, N this node's address on the egress interface, np
//! the allocated port.) Rewriting the source at ingress instead would hand the stack a
//! packet from one of its own addresses, which it drops as a martian.
//!
//! - The forward path marks a new masqueraded flow with a pending OUT entry (no port yet):
//!   the egress interface, whose address the flow takes, is known only when the packet
//!   leaves. Its first packet out allocates the port.
//! - Ports: from `--masquerade-ports` (CONFIG), a random start and up to [`PORT_TRIES`]
//!   consecutive ports; a port is taken by inserting its IN entry with `BPF_NOEXIST`, so
//!   two flows never share a translated tuple (endpoint, node address, port, protocol),
//!   and a live mapping is never taken over. None free: the packet is dropped
//!   (`drop_masquerade_ports_exhausted`) and the next one tries again.
//! - SCTP keeps its source port (its CRC32c covers the ports, not the addresses): only the
//!   address is masqueraded, and a second client using the same source port towards the
//!   same endpoint is refused as ports exhausted.
//! - SNAT is a plain hash: a full table refuses new flows (`drop_masquerade_table_full`).
//!   The agent deletes expired entries (both directions of a flow together).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use lb_common::{FlowKey, PROTO_SCTP, PROTO_TCP, Reason, SnatValue, snat_direction, tcp_seen};

use crate::{
    ctx::PacketCtx,
    lookup::{REFRESH_NS, flow_key, is_syn, now_ns, tcp_seen_bits},
    maps::{CONFIG, SNAT, SNAT_ADDRESSES},
    nat::{Side, rewrite},
    parse::Parsed,
    verdict::Verdict,
};

/// Ports tried for a new masqueraded flow before it is refused.
const PORT_TRIES: u32 = 32;

/// `-EEXIST`: the key is taken.
const EEXIST: i32 = -17;

/// Whether the packet may be a reply to a masqueraded flow: masquerade is on and its
/// destination port is in the masquerade range (any port for SCTP, which keeps the
/// client's). Two compares after an inlined array read, for every packet of the forward
/// path.
#[inline(always)]
pub fn may_be_reply(p: &Parsed) -> bool {
    let Some(config) = CONFIG.get(0) else {
        return false;
    };
    if !config.masquerades() {
        return false;
    }
    if p.proto == PROTO_SCTP {
        return true;
    }
    let port = u16::from_be(p.dport);
    port >= config.masquerade_port_min && port <= config.masquerade_port_max
}

/// Refreshes an entry's time (at most once a second) and TCP bits (when they change), and
/// stamps its direction's first FIN.
#[inline(always)]
fn refresh(entry: &mut SnatValue, p: &Parsed) {
    let now = now_ns();
    let seen = if p.proto == PROTO_TCP {
        entry.tcp_flags_seen | tcp_seen_bits(p.tcp_flags)
    } else {
        entry.tcp_flags_seen
    };
    if seen & !entry.tcp_flags_seen & tcp_seen::FIN != 0 {
        entry.fin_at_us = fin_stamp();
    }
    if now.saturating_sub(entry.last_seen_ns) >= REFRESH_NS || seen != entry.tcp_flags_seen {
        entry.last_seen_ns = now;
        entry.tcp_flags_seen = seen;
    }
}

/// `SnatValue::fin_at_us` now: the fine clock (the coarse one ticks every few ms, and the two
/// FINs of a close are often closer), read on a flow's first FIN per direction only.
#[inline(always)]
fn fin_stamp() -> u32 {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Never 0, which means "no FIN yet".
    ((now >> 10) as u32).max(1)
}

/// Forward path, before anything else: a reply to a masqueraded flow gets the client back
/// as its destination. None when the packet is no such reply.
// A separate BPF function: its own stack frame keeps each call chain under 512 bytes.
#[inline(never)]
pub fn unmasquerade_reply<C: PacketCtx>(ctx: &C, p: &Parsed) -> Option<Verdict> {
    let entry = SNAT.get_ptr_mut(&flow_key(p))?;
    // SAFETY: a map value pointer, valid until the program returns (see `maps::Lookup`).
    // Entries are only ever replaced by the agent's expiry, which deletes them.
    let entry = unsafe { &mut *entry };
    if entry.direction != snat_direction::IN {
        return None;
    }
    refresh(entry, p);
    if rewrite(ctx, p, Side::Destination, &entry.addr, entry.port).is_err() {
        return Some(Verdict::drop(Reason::DropInternal));
    }
    Some(Verdict::pass(Reason::ReplyUnmasqueraded))
}

/// Forward path, new flow to `backend_addr:backend_port` that [`lb_common::masquerades`]:
/// records it as to be masqueraded (a pending OUT entry) unless its translated tuple
/// already is (a retransmitted SYN, a flow whose conntrack entry was lost). A SYN on the
/// client tuple of a flow that closed (FIN or RST) opens a new connection: it gets a new
/// port, as the endpoint may still hold the old one's tuple (TIME_WAIT); the old IN entry
/// expires on its own. Fails only when the SNAT table is full.
#[inline(always)]
pub fn mark_new_flow(p: &Parsed, backend_addr: &[u8; 16], backend_port: u16) -> Result<(), Reason> {
    let mut key = flow_key(p);
    key.dst_addr = *backend_addr;
    key.dst_port = backend_port;
    match SNAT.insert(&key, &pending(), BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(EEXIST) if is_syn(p) => {
            reopen_if_closed(&key);
            Ok(())
        }
        Err(EEXIST) => Ok(()),
        Err(_) => Err(Reason::DropMasqueradeTableFull),
    }
}

/// An OUT entry whose port the first packet leaving allocates.
#[inline(always)]
fn pending() -> SnatValue {
    SnatValue {
        addr: [0; 16],
        last_seen_ns: now_ns(),
        port: 0,
        direction: snat_direction::OUT,
        tcp_flags_seen: 0,
        fin_at_us: 0,
    }
}

/// A SYN on the client tuple `key` of an OUT entry whose client sent FIN or RST: the entry
/// becomes pending again, written in place.
// A separate BPF function, with no copy on its stack: `balance`'s frame is at the edge of
// the 512-byte limit. Only a SYN on a known tuple calls it.
#[inline(never)]
fn reopen_if_closed(key: &FlowKey) {
    let Some(entry) = SNAT.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value pointer, valid until the program returns (see `maps::Lookup`);
    // a packet of the same flow on another CPU may refresh it meanwhile, as before.
    let entry = unsafe { &mut *entry };
    if entry.direction == snat_direction::OUT
        && entry.tcp_flags_seen & (tcp_seen::FIN | tcp_seen::RST) != 0
    {
        entry.addr = [0; 16];
        entry.port = 0;
        entry.tcp_flags_seen = 0;
        entry.fin_at_us = 0;
        entry.last_seen_ns = now_ns();
    }
}

/// TC egress, a packet that is no reply of a balanced flow: when it belongs to a
/// masqueraded flow, it leaves from this node's address on `ifindex` and the flow's port
/// (allocated by its first packet). Otherwise it passes untouched.
// A separate BPF function: its own stack frame keeps each call chain under 512 bytes.
#[inline(never)]
pub fn masquerade<C: PacketCtx>(ctx: &C, p: &Parsed, ifindex: u32) -> Verdict {
    let Some(config) = CONFIG.get(0) else {
        return Verdict::pass(Reason::PassNoFrontend);
    };
    if !config.masquerades() {
        return Verdict::pass(Reason::PassNoFrontend);
    }
    let key = flow_key(p);
    let Some(entry) = SNAT.get_ptr_mut(&key) else {
        return Verdict::pass(Reason::PassNoFrontend);
    };
    // SAFETY: a map value pointer, valid until the program returns (see `maps::Lookup`).
    let entry = unsafe { &mut *entry };
    if entry.direction != snat_direction::OUT {
        return Verdict::pass(Reason::PassNoFrontend);
    }
    refresh(entry, p);
    if entry.port == 0 {
        // Two CPUs may allocate for one flow at once: each takes a port of its own, the
        // later write wins here, and the other port's IN entry still leads its replies to
        // the client until the agent expires it.
        match allocate(
            p,
            ifindex,
            &key,
            config.masquerade_port_min,
            config.masquerade_port_max,
        ) {
            Ok((addr, port)) => {
                entry.addr = addr;
                entry.port = port;
            }
            Err(reason) => return Verdict::drop(reason),
        }
    }
    if rewrite(ctx, p, Side::Source, &entry.addr, entry.port).is_err() {
        return Verdict::drop(Reason::DropInternal);
    }
    Verdict::pass(Reason::LbMasqueraded)
}

/// Takes a source port for the flow `out_key` (client → endpoint) leaving through
/// `ifindex`: inserts its IN entry (endpoint → node address and port) with `BPF_NOEXIST`.
/// Returns the node address and the port (network order).
#[inline(always)]
fn allocate(
    p: &Parsed,
    ifindex: u32,
    out_key: &FlowKey,
    min: u16,
    max: u16,
) -> Result<([u8; 16], u16), Reason> {
    let Some(addrs) = SNAT_ADDRESSES.get_ptr(&ifindex) else {
        return Err(Reason::DropMasqueradeNoAddress);
    };
    // SAFETY: a map value pointer, valid until the program returns.
    let addrs = unsafe { &*addrs };
    let (has, addr) = if p.ipv6() {
        (addrs.has_ipv6, addrs.ipv6)
    } else {
        (addrs.has_ipv4, addrs.ipv4)
    };
    if has == 0 {
        return Err(Reason::DropMasqueradeNoAddress);
    }
    let mut in_key = out_key.masqueraded_reply(addr, out_key.src_port);
    let back_to_client = SnatValue {
        addr: out_key.src_addr,
        last_seen_ns: now_ns(),
        port: out_key.src_port,
        direction: snat_direction::IN,
        tcp_flags_seen: 0,
        fin_at_us: 0,
    };
    if p.proto == PROTO_SCTP {
        return match SNAT.insert(&in_key, &back_to_client, BPF_NOEXIST as u64) {
            Ok(()) => Ok((addr, out_key.src_port)),
            Err(EEXIST) => Err(Reason::DropMasqueradePortsExhausted),
            Err(_) => Err(Reason::DropMasqueradeTableFull),
        };
    }
    let count = (max - min) as u32 + 1;
    // SAFETY: helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % count;
    let tries = if count < PORT_TRIES {
        count
    } else {
        PORT_TRIES
    };
    for i in 0..PORT_TRIES {
        if i >= tries {
            break;
        }
        let port = (min as u32 + (start + i) % count) as u16;
        in_key.dst_port = port.to_be();
        match SNAT.insert(&in_key, &back_to_client, BPF_NOEXIST as u64) {
            Ok(()) => return Ok((addr, port.to_be())),
            Err(EEXIST) => continue,
            Err(_) => return Err(Reason::DropMasqueradeTableFull),
        }
    }
    Err(Reason::DropMasqueradePortsExhausted)
}
