//! Fragments. A first fragment carries the ports, so it is balanced like any packet and its
//! backend is recorded under (addresses, IP id, protocol). A later fragment has no ports:
//! if its datagram was recorded it goes to the same backend (destination address rewritten,
//! no L4 change), otherwise it is handed to the stack untouched (PassFragmentUnknown) —
//! e.g. when it overtook its first fragment.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{FragmentKey, FragmentValue, Reason};

use crate::{
    counters::count_service,
    ctx::PacketCtx,
    lookup::{Target, backend},
    maps::{FRAGMENTS, Lookup as _},
    nat::{Side, rewrite},
    parse::Parsed,
    verdict::Verdict,
};

#[inline(always)]
fn key(p: &Parsed) -> FragmentKey {
    FragmentKey {
        src_addr: p.src,
        dst_addr: p.dst,
        id: p.frag_id,
        proto: p.proto,
        family: p.family,
        _pad: [0, 0],
    }
}

/// Remembers where a first fragment went.
#[inline(always)]
pub fn record_first(p: &Parsed, target: &Target, service_id: u32) {
    let value = FragmentValue {
        backend_id: target.backend_id,
        service_id,
    };
    // An LRU insert only fails under memory pressure; the later fragments then pass.
    let _ = FRAGMENTS.insert(&key(p), &value, BPF_ANY as u64);
}

/// Sends a later fragment where its first fragment went.
// A separate BPF function: its own stack frame keeps each frame under the 512-byte limit.
#[inline(never)]
pub fn forward_later<C: PacketCtx>(ctx: &C, p: &Parsed) -> Verdict {
    let Some(&FragmentValue {
        backend_id,
        service_id,
    }) = FRAGMENTS.value(&key(p))
    else {
        return Verdict::pass(Reason::PassFragmentUnknown);
    };
    let Some(backend) = backend(backend_id) else {
        return Verdict::pass(Reason::PassFragmentUnknown);
    };
    if rewrite(ctx, p, Side::Destination, &backend.addr, 0).is_err() {
        return Verdict::drop(Reason::DropInternal);
    }
    count_service(service_id, p.frame_len(), false);
    Verdict::pass(Reason::LbFragment)
}
