//! The reverse path (TC egress): replies from a backend leave with the frontend's address.

use core::mem::MaybeUninit;

use lb_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, Reason, flow_direction};

use crate::{
    ctx::PacketCtx,
    icmp::{self, Direction},
    lookup::{REFRESH_NS, TCP_RST, TCP_SYN, flow_key, now_ns},
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

/// Reverse NAT for a packet of a REPLY flow; None when the packet is no such reply.
// A separate BPF function: its own stack frame keeps each call chain under 512 bytes.
#[inline(never)]
fn reply_nat<C: PacketCtx>(ctx: &C, p: &Parsed) -> Option<Verdict> {
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
        // A backend answers a flow in its handshake only with SYN-ACK or RST: only those
        // pay for the second lookup.
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
    // reply entry's time; it records when the flow last carried a reply).
    let now = now_ns();
    if now.saturating_sub(flow.last_seen_ns) >= REFRESH_NS {
        flow.last_seen_ns = now;
    }
    if rewrite(ctx, p, Side::Source, &flow.nat_addr, flow.nat_port).is_err() {
        return Some(Verdict::drop(Reason::DropInternal));
    }
    Some(Verdict::pass(Reason::ReplyTranslated))
}

/// Egress passes what it cannot parse (the stack built it); counted as unparsed.
#[inline(always)]
fn reason_for_egress(reason: Reason) -> Reason {
    match reason {
        Reason::DropTruncated | Reason::DropMalformed => Reason::PassUnparsedHeaders,
        other => other,
    }
}
