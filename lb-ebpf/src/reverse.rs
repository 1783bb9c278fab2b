//! The reverse path (TC egress): replies from a backend leave with the frontend's address,
//! from this CPU's flow cache (`flow_cache`) or the flow's CONNTRACK reply entry.

use core::mem::MaybeUninit;

use lb_common::{FlowCacheSlot, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, Reason, flow_direction};

use crate::{
    ctx::PacketCtx,
    flow_cache::{self, CacheConfig},
    icmp::{self, Direction},
    lookup::{REFRESH_NS, TCP_RST, TCP_SYN, Target, flow_key, now_ns},
    maps::{CONNTRACK, HANDSHAKES},
    nat::{Side, rewrite},
    parse::{Fragment, Parsed, parse},
    snat,
    verdict::Verdict,
};

/// `ifindex`: the interface the packet leaves through (masqueraded flows take its address).
#[inline(always)]
pub fn process<C: PacketCtx>(ctx: &C, ifindex: u32) -> Verdict {
    let mut slot = MaybeUninit::uninit();
    let p = match parse(ctx.packet(), ctx.wire_len(), false, &mut slot) {
        Ok(p) => p,
        // Outgoing traffic we cannot parse is not ours to judge: never drop it here.
        Err(reason) => return Verdict::pass(reason_for_egress(reason)),
    };
    if p.fragment == Fragment::Later {
        return Verdict::pass(Reason::PassFragmentUnknown);
    }
    if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 {
        let verdict = icmp::translate_error(ctx, p, Direction::Egress);
        return Verdict::pass(reason_for_egress(verdict.reason));
    }
    match reply_nat(ctx, p) {
        Some(verdict) => verdict,
        // Not a reply: a masqueraded flow's packet leaving for another node's endpoint?
        None => snat::masquerade(ctx, p, ifindex),
    }
}

/// Reverse NAT for a packet of a REPLY flow; None when the packet is no such reply. A
/// reply whose entry this CPU's flow cache holds is rewritten from the slot: no CONNTRACK
/// lookup, no clock read, no BPF call (the cache lookup and the rewrite are inlined into
/// the entry point).
#[inline(always)]
fn reply_nat<C: PacketCtx>(ctx: &C, p: &Parsed) -> Option<Verdict> {
    // Read before CONNTRACK: a slot filled from an entry the agent deletes meanwhile
    // carries the generation from before its bump.
    let cache = flow_cache::config();
    match flow_cache::reply(p, cache) {
        Some(slot) => Some(translate(ctx, p, slot)),
        None => reply_nat_from_conntrack(ctx, p, cache),
    }
}

/// [`reply_nat`] from the flow's reply entry, which it refreshes and copies into this
/// CPU's flow cache slot for the rest of the entry's refresh interval.
// A separate BPF function: the 40-byte key stays off the entry point's frame, which keeps
// each call chain under 512 bytes.
#[inline(never)]
fn reply_nat_from_conntrack<C: PacketCtx>(
    ctx: &C,
    p: &Parsed,
    cache: CacheConfig,
) -> Option<Verdict> {
    let key = flow_key(p);
    let syn_ack = p.proto == PROTO_TCP && p.tcp_flags & TCP_SYN != 0;
    // A SYN-ACK answers the newest SYN of its reply tuple, whose entry HANDSHAKES holds:
    // CONNTRACK may still hold a closed flow with the same reply tuple (the client reused
    // its port for another frontend of the same backend), whose frontend is not the one
    // the client now waits for. Reply entries never expire, so that one would answer.
    let handshake = if syn_ack {
        HANDSHAKES.get_ptr_mut(&key)
    } else {
        None
    };
    let entry = match handshake.or_else(|| CONNTRACK.get_ptr_mut(&key)) {
        Some(entry) => entry,
        // A backend answers a flow in its handshake only with SYN-ACK (looked up above) or
        // RST: only those pay for the second lookup (and never fill a usable slot: the
        // cache skips them).
        None if p.proto == PROTO_TCP && p.tcp_flags & TCP_RST != 0 => {
            HANDSHAKES.get_ptr_mut(&key)?
        }
        None => return None,
    };
    // SAFETY: a map value pointer, valid until the program returns (see `Lookup`); a
    // racing update can only refresh the same flow.
    let flow = unsafe { &mut *entry };
    if flow.direction != flow_direction::REPLY {
        return None;
    }
    // Refreshed at most once a second, as on the forward path (the datapath never reads a
    // reply entry's time; it records when the flow last carried a reply): the slot serves
    // until the next refresh is due.
    let now = now_ns();
    let age = now.saturating_sub(flow.last_seen_ns);
    let cache_for_ns = if age >= REFRESH_NS {
        flow.last_seen_ns = now;
        REFRESH_NS
    } else {
        REFRESH_NS - age
    };
    let target = Target {
        backend_id: flow.backend_id,
        addr: flow.nat_addr,
        port: flow.nat_port,
    };
    let slot = flow_cache::fill(
        p,
        flow_direction::REPLY,
        &target,
        flow.service_id,
        cache_for_ns,
        cache,
    )?;
    Some(translate(ctx, p, slot))
}

/// The reply leaves from the frontend its flow was sent to (the slot's `nat_addr:nat_port`).
#[inline(always)]
fn translate<C: PacketCtx>(ctx: &C, p: &Parsed, slot: &FlowCacheSlot) -> Verdict {
    if rewrite(ctx, p, Side::Source, &slot.nat_addr, slot.nat_port).is_err() {
        return Verdict::drop(Reason::DropInternal);
    }
    Verdict::pass(Reason::ReplyTranslated)
}

/// Egress passes what it cannot parse (the stack built it); counted as unparsed.
#[inline(always)]
fn reason_for_egress(reason: Reason) -> Reason {
    match reason {
        Reason::DropTruncated | Reason::DropMalformed => Reason::PassUnparsedHeaders,
        other => other,
    }
}
