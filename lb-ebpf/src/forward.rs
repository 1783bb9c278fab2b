//! The forward path (XDP and TC ingress): a packet for a frontend goes to a backend.

use core::mem::MaybeUninit;

use lb_common::{
    FlowCacheSlot, FrontendKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, Reason, frontend_flags,
};

use crate::{
    counters::count_service,
    ctx::PacketCtx,
    flow_cache, fragments,
    icmp::{self, Direction},
    lookup::{self, Choice, ConntrackMiss, Frontend, FrontendRead},
    nat::{Side, rewrite},
    parse::{Fragment, Parsed, parse},
    reject, snat,
    verdict::{Action, Verdict},
};

#[inline(always)]
pub fn process<C: PacketCtx>(ctx: &C) -> Verdict {
    let mut slot = MaybeUninit::uninit();
    let p = match parse(ctx.packet(), ctx.wire_len(), true, &mut slot) {
        Ok(p) => p,
        Err(reason) => return Verdict::early(reason),
    };
    if p.fragment == Fragment::Later {
        return fragments::forward_later(ctx, p);
    }
    if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 {
        return icmp::translate_error(ctx, p, Direction::Ingress);
    }
    // A reply to a masqueraded flow (its destination is this node's address and a port of
    // the masquerade range): back to the client's address, before the frontend filter.
    if snat::may_be_reply(p)
        && let Some(verdict) = snat::unmasquerade_reply(ctx, p)
    {
        return verdict;
    }
    // Most packets that are not for a service stop here, after one inlined array read.
    if !maybe_frontend(p) {
        return Verdict::pass(Reason::PassNoFrontend);
    }
    // An established flow goes on by its conntrack entry alone, without FRONTENDS or the
    // source ranges (as kube-proxy: its NAT rules see a connection's first packet only).
    // The backend a packet was rewritten for, set by `follow_conntrack` or `balance` (a
    // u32 in this frame: every call chain starts here, so it must stay small).
    let mut rewritten_for = 0;
    let missed = match follow_conntrack(ctx, p, &mut rewritten_for) {
        Ok(verdict) => return send_on(ctx, p, verdict, rewritten_for),
        Err(missed) => missed,
    };
    // The exact lookup, for packets whose filter bit is set.
    let frontend = match frontend_of(p) {
        FrontendRead::Found(frontend) => frontend,
        FrontendRead::Missing => return Verdict::pass(Reason::PassNoFrontend),
        FrontendRead::Unsettled => return Verdict::drop(Reason::DropInternal),
    };
    if frontend.flags & frontend_flags::SOURCE_RANGES != 0
        && !lookup::source_allowed(p, frontend.service_id)
    {
        return Verdict::drop(Reason::DropSourceRange);
    }
    match balance(ctx, p, &frontend, missed, &mut rewritten_for) {
        Some(verdict) => send_on(ctx, p, verdict, rewritten_for),
        None => {
            if frontend.flags & frontend_flags::DROP_WHEN_EMPTY != 0 {
                Verdict::drop(Reason::DropNoLocalEndpoint)
            } else if p.proto == PROTO_TCP && lookup::is_syn(p) {
                reject::tcp_reset(ctx, p)
            } else {
                reject::port_unreachable(ctx, p)
            }
        }
    }
}

#[inline(always)]
fn maybe_frontend(p: &Parsed) -> bool {
    lookup::may_be_frontend(&p.dst, p.dport, p.proto, p.family)
}

/// The frontend the packet is addressed to, copied out of FRONTENDS.
// A separate BPF function: the key and the checked reads stay out of `process`'s frame.
#[inline(never)]
fn frontend_of(p: &Parsed) -> FrontendRead {
    let key = FrontendKey {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        family: p.family,
    };
    lookup::frontend(&key)
}

/// Rewrites a packet of an established flow for its backend (its id into `rewritten_for`):
/// from this CPU's flow cache (what
/// the flow's conntrack entry said a moment ago), else from the entry, which then fills the
/// cache; the miss otherwise. A cached flow reads its entry once per refresh interval (per
/// CPU), which refreshes it.
// A separate BPF function: its own stack frame keeps each call chain under 512 bytes
// (`process`'s frame and `balance`'s take all of it: inlined, the cache and the rewrite
// would need `process`'s frame to grow by about 120 bytes).
#[inline(never)]
fn follow_conntrack<C: PacketCtx>(
    ctx: &C,
    p: &Parsed,
    rewritten_for: &mut u32,
) -> Result<Verdict, ConntrackMiss> {
    // Read before CONNTRACK: a slot filled from an entry the agent deletes meanwhile
    // carries the generation from before its bump.
    let cache = flow_cache::config();
    let slot = match flow_cache::lookup(p, cache) {
        Some(slot) => slot,
        None => {
            let slot = lookup::established(p, cache)?;
            if p.fragment == Fragment::First {
                record_first_fragment(p, slot);
            }
            slot
        }
    };
    if rewrite(ctx, p, Side::Destination, &slot.nat_addr, slot.nat_port).is_err() {
        return Ok(Verdict::drop(Reason::DropInternal));
    }
    count_service(slot.service_id, p.frame_len(), false);
    *rewritten_for = slot.backend_id;
    Ok(Verdict::pass(Reason::LbConntrack))
}

/// Remembers where an established flow's first fragment went.
// A separate BPF function: its key and value stay off `follow_conntrack`'s frame.
#[inline(never)]
fn record_first_fragment(p: &Parsed, slot: &FlowCacheSlot) {
    let target = lookup::Target {
        backend_id: slot.backend_id,
        addr: slot.nat_addr,
        port: slot.nat_port,
    };
    fragments::record_first(p, &target, slot.service_id);
}

/// Chooses the backend of a new flow and rewrites the packet (the backend's id into
/// `rewritten_for`); None when the frontend has no
/// usable backend (the caller rejects, from its own frame: each frame stays small).
// A separate BPF function: its own stack frame keeps each call chain under 512 bytes.
#[inline(never)]
fn balance<C: PacketCtx>(
    ctx: &C,
    p: &Parsed,
    frontend: &Frontend,
    missed: ConntrackMiss,
    rewritten_for: &mut u32,
) -> Option<Verdict> {
    match lookup::choose(p, frontend, missed) {
        Choice::Chosen { target, reason } => {
            let rewritten = if C::REWRITE_NEW_FLOW_APART {
                rewrite_new_flow(ctx, p, &target)
            } else {
                rewrite(ctx, p, Side::Destination, &target.addr, target.port)
            };
            if rewritten.is_err() {
                return Some(Verdict::drop(Reason::DropInternal));
            }
            if p.fragment == Fragment::First {
                fragments::record_first(p, &target, frontend.service_id);
            }
            count_service(frontend.service_id, p.frame_len(), true);
            *rewritten_for = target.backend_id;
            Some(Verdict::pass(reason))
        }
        Choice::NoBackend => None,
        Choice::Failed(reason) => Some(Verdict::drop(reason)),
    }
}

/// A new flow's packet rewritten for its backend, where `PacketCtx::REWRITE_NEW_FLOW_APART`.
// A separate BPF function: the rewrite's temporaries stay off `balance`'s frame, whose
// choice (keys and values of the new flow's entries) is at the edge of the 512-byte limit;
// a call more on a new flow's first packet only.
#[inline(never)]
fn rewrite_new_flow<C: PacketCtx>(ctx: &C, p: &Parsed, target: &lookup::Target) -> Result<(), ()> {
    rewrite(ctx, p, Side::Destination, &target.addr, target.port)
}

/// A packet rewritten for backend `rewritten_for` (0: none, `verdict` stands) is sent on
/// directly where the context can (`fast_path`), else passed to the stack.
// Inlined into `process`: the fast path's frame then follows the entry point's, not those
// of `follow_conntrack` or `balance`.
#[inline(always)]
fn send_on<C: PacketCtx>(ctx: &C, p: &Parsed, verdict: Verdict, rewritten_for: u32) -> Verdict {
    if rewritten_for == 0 {
        return verdict;
    }
    match ctx.send_on(p, rewritten_for) {
        Action::Drop => Verdict::drop(Reason::DropInternal),
        action => Verdict::balanced(action, verdict.reason),
    }
}
