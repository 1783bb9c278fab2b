//! slicelb's kernel programs. The entry points are thin: each runs the shared logic for its
//! role, counts the reason, and turns the verdict into its program type's return code.
//!
//! The logic lives in the library (`lib.rs`), so that the bench programs (crate
//! `lb-lab-ebpf`) measure the same parser. Modules by role: `parse` (headers), `lookup` (conntrack, affinity, Maglev; flow records),
//! `nat` (address/port rewrites), `ctx` (what XDP and TC do differently: checksum updates,
//! resizing, sending back), `csum` (RFC 1624 arithmetic), `reject` (RST, port unreachable),
//! `icmp` (ICMP errors about balanced flows), `fragments`, `counters`, `forward` / `reverse`
//! (the two paths), `verdict`, `packet` (bounds-checked packet access and header lengths).
//!
//! Decisions worth knowing:
//! - Misses: FRONTEND_FILTER, a blocked Bloom filter (up to 2^17 u64 words, as many as the
//!   agent put in CONFIG for the frontends it programs; three bits of one word per frontend,
//!   from a two-multiply hash of address, port, protocol and family), sits in
//!   front of the FRONTENDS hash lookup. A bit clear means no frontend: the packet passes
//!   (`pass_no_frontend`) after one inlined array read, instead of a hash lookup whose bucket
//!   is cold for most destinations. The agent's writer sets a frontend's bits before
//!   inserting it and clears a bit after deleting the last frontend using it; bits all set
//!   only send the packet on to the exact lookup.
//! - Established flows first: after the frontend filter, the forward path looks up the
//!   flow's CONNTRACK forward entry before FRONTENDS. A live entry (its protocol's or TCP
//!   state's timeout not passed, not a new SYN after FIN/RST, its backend slot still holding
//!   the same address and port) sends the packet to its backend and counts it for the
//!   entry's service (`lb_conntrack`) without reading FRONTENDS or the source ranges; only a
//!   miss reads FRONTENDS and balances (without looking CONNTRACK up again). As with
//!   kube-proxy, whose nat rules (and the `loadBalancerSourceRanges` KUBE-FW chains) see a
//!   connection's first packet only, an established flow survives a source-range change or
//!   a change of its frontend's value. A deleted service's flows stop when its backends are
//!   deleted (the backend check). A flow to a deleted frontend whose backend stays (another
//!   frontend of the service port uses it, e.g. after a load-balancer IP is removed) stops
//!   when the filter bits of its destination clear (`pass_no_frontend`): at once, unless
//!   another frontend shares those bits; then it goes on until its entry expires or its
//!   backend goes.
//! - Flow cache (`flow_cache`): before CONNTRACK, a per-CPU array slot per flow and
//!   direction (full key and direction compared) sends an established flow's packet on, or
//!   (TC egress) gives a reply its frontend, timed in jiffies (`bpf_jiffies64` is inlined),
//!   valid for the rest of the entry's refresh interval, while (forward) its backend slot
//!   holds the same address and port, and while CONFIG's flow generation is the slot's.
//!   TCP SYN/FIN/RST and fragments read CONNTRACK, which refreshes the entry and fills the
//!   slot.
//! - FRONTENDS is read by copy, checked (`lookup::frontend`): the kernel recycles a hash
//!   element an update frees for the next update at once, so a value read in place while
//!   the agent writes could be another frontend's (its flags, its source ranges). A copy
//!   counts once a second lookup finds the same fields; a miss once a second lookup misses
//!   too (a lookup can miss while walking past a recycled element); a frontend that changes
//!   under three reads drops the packet (`drop_internal`).
//! - Checksums: XDP updates them in software (RFC 1624), which is right for full checksums
//!   only; TC uses `bpf_l3/l4_csum_replace` with `BPF_F_PSEUDO_HDR`, so partial (offloaded)
//!   checksums from local veths and `CHECKSUM_COMPLETE` sums stay right. Use TC ingress on
//!   interfaces that carry partial checksums.
//! - SCTP: only the address is rewritten; ports stay (the backend must listen on the
//!   service port). SCTP's CRC32c covers no pseudo-header, so an address change leaves it
//!   valid, while a port change would need a pass over the whole packet.
//! - Fragments: a first fragment is balanced like any packet and its backend recorded under
//!   (addresses, IP id, protocol) in FRAGMENTS; later fragments of that datagram get the
//!   same backend (address rewrite only, they carry no ports); a later fragment we have no
//!   record of (it overtook its first, or its datagram is not for us) is passed to the stack
//!   untouched (`pass_fragment_unknown`). Replies are not tracked per fragment: later
//!   fragments of a fragmented reply leave untranslated.
//! - ICMP errors are matched through the quoted packet's conntrack entry (IPv6 quotes must
//!   have the L4 header right after the IPv6 header).
//! - Rejects are built in place with full checksums and sent back out of the arrival
//!   interface (XDP_TX / `bpf_redirect`). On TC the skb keeps its checksum state: fine on
//!   veths (the receiver trusts partial checksums), not for hardware offload of the answer.
//!   A veth delivers native XDP_TX frames only when its peer runs an XDP program too.
//! - Socket level (`sock`): cgroup v2 hooks balance `connect()` and UDP `sendmsg()` of
//!   processes below the agent's cgroup root (pods and the node) from the same maps, once
//!   per connection, with no packet rewritten; `recvmsg()` and `getpeername()` show the
//!   service. See `sock.rs`.
//! - Masquerade (`snat`): external traffic with `externalTrafficPolicy: Cluster` balanced
//!   to another node's endpoint leaves with this node's address and a port of its own, so
//!   that the reply comes back through this node; in two stages around the stack (DNAT at
//!   ingress, SNAT at egress; un-SNAT at ingress, un-DNAT at egress). Everything else keeps
//!   the client's address.
//! - TC egress never drops: what it cannot parse leaves untouched (`pass_unparsed_headers`);
//!   egress packets of no balanced flow count as `pass_no_frontend`.
//! - TC passes with `TCX_NEXT` (the interface's next tcx program runs, then classic tc
//!   filters; the last one's pass lets the packet through), drops with `TC_ACT_SHOT`. Any
//!   other code would end the tcx walk: a CNI program attached after ours would never see
//!   the packets we pass.
//! - Stack: each call chain must stay under 512 bytes, so the rare paths (rejects, ICMP,
//!   fragments), the conntrack hit and the balancing itself are separate BPF functions.
#![no_std]
#![no_main]
#![expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya-ebpf's #[classifier] generates a safe extern fn that takes the raw skb pointer"
)]

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, tcx_action_base::TCX_NEXT, xdp_action},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
};
use lb_common::config_flags;
use lb_ebpf::{
    counters::count_reason,
    ctx::{Tc, Xdp},
    forward,
    maps::CONFIG,
    packet::Packet,
    reverse,
    sock::{self, Call, Side},
    verdict::{Action, Verdict},
};

/// Per-packet log lines only when the agent sets `DEBUG_LOG` in CONFIG (one array read).
#[inline(always)]
fn debug_log<C: EbpfContext>(ctx: &C, program: &'static str, verdict: Verdict) {
    let enabled = CONFIG
        .get(0)
        .is_some_and(|config| config.flags & config_flags::DEBUG_LOG != 0);
    if enabled {
        log_verdict(ctx, program, verdict.reason as u32);
    }
}

// Out of line: the logging code and its buffers stay off the packet path's stack frame.
#[inline(never)]
fn log_verdict<C: EbpfContext>(ctx: &C, program: &'static str, reason: u32) {
    aya_log_ebpf::debug!(ctx, "{}: reason {}", program, reason);
}

/// Bytes TC makes directly readable before parsing (headers of any packet we handle).
const TC_PULL_LEN: u32 = 384;

#[inline(always)]
fn xdp_action(verdict: Verdict) -> u32 {
    count_reason(verdict.reason);
    match verdict.action {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
        Action::Bounce => xdp_action::XDP_TX,
        Action::Redirect => xdp_action::XDP_REDIRECT,
    }
}

#[inline(always)]
fn tc_action(tc: &Tc, verdict: Verdict) -> i32 {
    count_reason(verdict.reason);
    match verdict.action {
        Action::Pass => TCX_NEXT,
        Action::Drop => TC_ACT_SHOT,
        Action::Bounce => tc.redirect_back(),
        Action::Redirect => TC_ACT_REDIRECT,
    }
}

/// Forward path on XDP.
#[xdp]
pub fn slicelb_xdp(ctx: XdpContext) -> u32 {
    let verdict = forward::process(&Xdp(&ctx));
    debug_log(&ctx, "xdp", verdict);
    xdp_action(verdict)
}

/// Forward path on TC ingress (kernel checksum helpers: partial checksums stay right).
#[classifier]
pub fn slicelb_tc_ingress(ctx: TcContext) -> i32 {
    let tc = Tc(&ctx);
    tc.pull(TC_PULL_LEN);
    let verdict = forward::process(&tc);
    debug_log(&ctx, "tc_ingress", verdict);
    tc_action(&tc, verdict)
}

/// Never attached: the agent test-runs it to read the kernel's tick (`bpf_jiffies64`) and
/// monotonic clock side by side, and from two such readings the tick length
/// (`lb_common::program_names::CLOCK_PROBE`).
#[xdp]
pub fn slicelb_clock_probe(ctx: XdpContext) -> u32 {
    // SAFETY: helpers without arguments.
    let (jiffies, now) = unsafe { (bpf_jiffies64(), bpf_ktime_get_ns()) };
    let packet = Packet::xdp(&ctx);
    match packet.write(0, jiffies).and_then(|()| packet.write(8, now)) {
        Some(()) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_ABORTED,
    }
}

/// Reverse path on TC egress: replies leave with the frontend's address.
#[classifier]
pub fn slicelb_tc_egress(ctx: TcContext) -> i32 {
    let tc = Tc(&ctx);
    tc.pull(TC_PULL_LEN);
    let verdict = reverse::process(&tc, tc.ifindex());
    debug_log(&ctx, "tc_egress", verdict);
    tc_action(&tc, verdict)
}

/// Socket level: `connect()` to an IPv4 frontend goes to a backend.
#[cgroup_sock_addr(connect4)]
pub fn slicelb_connect4(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx, Side::V4, Call::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn slicelb_connect6(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx, Side::V6, Call::Connect)
}

/// Socket level: an unconnected UDP datagram to a frontend goes to a backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn slicelb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx, Side::V4, Call::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn slicelb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx, Side::V6, Call::Sendmsg)
}

/// Socket level: a datagram from a backend is received as from the frontend.
#[cgroup_sock_addr(recvmsg4)]
pub fn slicelb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::show_reply_source(&ctx, Side::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn slicelb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::show_reply_source(&ctx, Side::V6)
}

/// Socket level: `getpeername()` shows the frontend, not the backend.
#[cgroup_sock_addr(getpeername4)]
pub fn slicelb_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::show_peer(&ctx, Side::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn slicelb_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::show_peer(&ctx, Side::V6)
}

/// Socket level: a closed connected socket's entry goes with it.
#[cgroup_sock(sock_release)]
pub fn slicelb_sock_release(ctx: SockContext) -> i32 {
    sock::forget(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
