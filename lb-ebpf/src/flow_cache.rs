//! The per-CPU flow cache in front of CONNTRACK, on both paths: an established flow's
//! packet finds its CONNTRACK entry's translation in a per-CPU array slot (an inlined
//! lookup) instead of a hash lookup with a 40-byte key, and reads the time from
//! `bpf_jiffies64` (inlined) instead of a clock helper. The forward path (XDP, TC ingress)
//! caches forward entries (the backend), the reverse path (TC egress) reply entries (the
//! frontend a reply leaves from); a slot records its entry's direction and serves only that
//! path. A slot is used only while
//! - it is younger than the entry's refresh interval (forward: `lookup::refresh_interval`;
//!   reply: `lookup::REFRESH_NS`): then a packet takes the slow path, which refreshes
//!   CONNTRACK's `last_seen_ns` and fills the slot again, so CONNTRACK's timestamps stay
//!   right and idle flows still expire;
//! - (forward) its backend slot in BACKENDS still holds the address and port (a removed
//!   backend is never used, as in `lookup::established`);
//! - CONFIG's `flow_generation` is the slot's (the agent bumps it after deleting CONNTRACK
//!   entries, and on every CONFIG write).
//!
//! TCP SYN, FIN and RST always take the slow path (on the forward path they change
//! `tcp_flags_seen`; on the reverse path a SYN-ACK or RST may belong to a flow still in
//! HANDSHAKES), and only an established hit whose TCP bits are final fills a forward slot
//! (see `lookup::established`). Fragments take the slow path too (a first fragment's
//! backend is recorded there).

use aya_ebpf::helpers::generated::bpf_jiffies64;
use lb_common::{FlowCacheSlot, PROTO_TCP, flow_direction, hash::flow_cache_slot};

use crate::{
    lookup::{TCP_FIN, TCP_RST, TCP_SYN, Target, backend_holds},
    maps::{CONFIG, FLOW_CACHE},
    parse::{Fragment, Parsed},
};

/// What the flow cache needs from CONFIG, read once per packet before CONNTRACK is.
#[derive(Clone, Copy)]
pub struct CacheConfig {
    pub generation: u32,
    /// 0: the agent has not measured the tick, no slot is used or filled.
    pub ns_per_jiffy: u32,
}

#[inline(always)]
pub fn config() -> CacheConfig {
    match CONFIG.get(0) {
        Some(config) => CacheConfig {
            generation: config.flow_generation,
            ns_per_jiffy: config.ns_per_jiffy,
        },
        None => CacheConfig {
            generation: 0,
            ns_per_jiffy: 0,
        },
    }
}

/// `bpf_jiffies64()`: the JIT inlines it (a load of `jiffies`).
#[inline(always)]
fn jiffies() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_jiffies64() }
}

/// Whether this packet may be served from the cache (and fill it): not a TCP packet that
/// changes the flow's state, not a fragment.
#[inline(always)]
fn cacheable_packet(p: &Parsed) -> bool {
    p.fragment == Fragment::Whole
        && (p.proto != PROTO_TCP || p.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0)
}

#[inline(always)]
fn slot_of(p: &Parsed) -> u32 {
    flow_cache_slot(&p.src, &p.dst, p.sport, p.dport, p.proto)
}

/// This CPU's slot holding the packet's flow's entry of `direction` (a `flow_direction`
/// value), when it may be used.
#[inline(always)]
fn usable(p: &Parsed, config: CacheConfig, direction: u8) -> Option<&'static FlowCacheSlot> {
    if config.ns_per_jiffy == 0 || !cacheable_packet(p) {
        return None;
    }
    let slot = FLOW_CACHE.get(slot_of(p))?;
    let key = &slot.key;
    if key.src_addr != p.src
        || key.dst_addr != p.dst
        || key.src_port != p.sport
        || key.dst_port != p.dport
        || key.proto != p.proto
        || key.family != p.family
        || slot.direction != direction
        || slot.generation != config.generation
        || jiffies() >= slot.valid_until_jiffies
    {
        return None;
    }
    Some(slot)
}

/// Forward path: this CPU's slot holding the packet's flow, when it may be used. The
/// caller reads the backend straight from it (copies would cost stack the forward path
/// does not have).
#[inline(always)]
pub fn lookup(p: &Parsed, config: CacheConfig) -> Option<&'static FlowCacheSlot> {
    let slot = usable(p, config, flow_direction::FORWARD)?;
    // A removed backend is never used.
    backend_holds(slot.backend_id, &slot.nat_addr, slot.nat_port, p.proto).then_some(slot)
}

/// Reverse path: this CPU's slot holding the reply entry of the packet's flow (the
/// frontend to answer from), when it may be used.
#[inline(always)]
pub fn reply(p: &Parsed, config: CacheConfig) -> Option<&'static FlowCacheSlot> {
    usable(p, config, flow_direction::REPLY)
}

/// Writes a flow's CONNTRACK entry of `direction` (its translation `target`, its service)
/// into this CPU's slot for it and returns the slot. Later packets may use it for
/// `cache_for_ns` (the rest of the entry's refresh interval; 0: only this packet uses it),
/// under the generation read before the CONNTRACK lookup: a flow the agent deleted since
/// is filled under the old generation.
#[inline(always)]
pub fn fill(
    p: &Parsed,
    direction: u8,
    target: &Target,
    service_id: u32,
    cache_for_ns: u64,
    config: CacheConfig,
) -> Option<&'static FlowCacheSlot> {
    let slot = FLOW_CACHE.get_ptr_mut(slot_of(p))?;
    // SAFETY: this CPU's slot; nothing else writes it while the program runs.
    let slot = unsafe { &mut *slot };
    // Field by field: a whole key would be built on the stack first.
    let key = &mut slot.key;
    key.src_addr = p.src;
    key.dst_addr = p.dst;
    key.src_port = p.sport;
    key.dst_port = p.dport;
    key.proto = p.proto;
    key.family = p.family;
    slot.nat_addr = target.addr;
    slot.nat_port = target.port;
    slot.backend_id = target.backend_id;
    slot.service_id = service_id;
    slot.direction = direction;
    slot.generation = config.generation;
    slot.valid_until_jiffies =
        if config.ns_per_jiffy == 0 || cache_for_ns == 0 || !cacheable_packet(p) {
            0
        } else {
            // Rounded down: the slot never outlives the refresh interval.
            jiffies() + cache_for_ns / config.ns_per_jiffy as u64
        };
    Some(slot)
}
