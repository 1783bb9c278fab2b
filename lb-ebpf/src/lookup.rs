//! Picking a backend: the flow's conntrack entry while it is alive and its backend still
//! exists ([`established`], looked up before the frontend), else for a new flow the
//! client's affinity backend while the frontend may still use it, else the frontend's
//! Maglev slot ([`choose`]). Also records the flow (forward and reply entries) and the
//! affinity.
//!
//! What a frontend may use (its eligible set: ready endpoints, or the terminating fallback,
//! after traffic policies and topology) is exactly the backends its selection table names;
//! [`slot_naming`] tells membership from a slot the caller remembers, else from
//! TABLE_MEMBERS, without scanning the table.

use aya_ebpf::{
    bindings::BPF_ANY, helpers::generated::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key,
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, FlowCacheSlot, FlowKey, FlowValue, FrontendKey,
    FrontendValue, PROTO_SCTP, PROTO_TCP, Reason, SourceRangeKey, TableMember, backend_state,
    flow_direction, frontend_filter, frontend_flags,
    hash::{flow_hash, frontend_filter_slot},
    tcp_seen,
};

use crate::{
    flow_cache::{self, CacheConfig},
    maps::{
        AFFINITY, BACKENDS, CONFIG, CONNTRACK, FRONTEND_FILTER, FRONTENDS, HANDSHAKES, Lookup as _,
        SELECTION, SOURCE_RANGES, TABLE_MEMBERS,
    },
    parse::Parsed,
};

/// TCP header flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Where a packet goes: the backend and the address/port written into it.
#[derive(Clone, Copy)]
pub struct Target {
    pub backend_id: u32,
    pub addr: [u8; 16],
    /// Network order. For SCTP this is the frontend port (ports are not rewritten).
    pub port: u16,
}

pub enum Choice {
    /// A new flow, recorded in CONNTRACK.
    Chosen {
        target: Target,
        reason: Reason,
    },
    /// The frontend has no usable backend (table_size == 0).
    NoBackend,
    Failed(Reason),
}

/// CLOCK_MONOTONIC_COARSE in ns (the time of the last tick: a memory read instead of a
/// clock read). Every `last_seen_ns` the datapath writes and compares comes from here, so
/// the ages it computes are exact to one tick, far below any timeout.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Longest time a live entry's `last_seen_ns` may lag its last packet. Writing the entry on
/// every packet would dirty its cache line on every CPU the flow's packets reach; refreshed
/// at most this often, an entry expires up to this much before its timeout instead.
pub const REFRESH_NS: u64 = 1_000_000_000;

/// How stale `last_seen_ns` may get before a packet rewrites it: [`REFRESH_NS`], or an
/// eighth of a shorter timeout, so that short timeouts keep their meaning.
#[inline(always)]
pub fn refresh_interval(timeout_ns: u64) -> u64 {
    let eighth = timeout_ns >> 3;
    if eighth < REFRESH_NS {
        eighth
    } else {
        REFRESH_NS
    }
}

/// Whether CONFIG sets a masquerade port range.
#[inline(always)]
fn masquerade_on() -> bool {
    CONFIG.get(0).is_some_and(|config| config.masquerades())
}

/// The flow timeout for a protocol and TCP state, from CONFIG.
#[inline(always)]
fn flow_timeout(proto: u8, seen: u8) -> u64 {
    CONFIG
        .get(0)
        .map_or(0, |config| config.flow_timeout_ns(proto, seen))
}

#[inline(always)]
pub fn tcp_seen_bits(flags: u8) -> u8 {
    let mut seen = 0;
    if flags & TCP_SYN != 0 {
        seen |= tcp_seen::SYN;
    }
    if flags & TCP_FIN != 0 {
        seen |= tcp_seen::FIN;
    }
    if flags & TCP_RST != 0 {
        seen |= tcp_seen::RST;
    }
    if flags & TCP_ACK != 0 && flags & TCP_SYN == 0 {
        seen |= tcp_seen::ESTABLISHED;
    }
    seen
}

/// True for a TCP SYN without ACK: the start of a connection.
#[inline(always)]
pub fn is_syn(p: &Parsed) -> bool {
    p.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// False when FRONTEND_FILTER says no frontend has this destination (the agent sets a
/// frontend's bits before inserting it and clears a bit after deleting the last frontend
/// using it). The filter's size in use is CONFIG's, read before the word: while the agent
/// resizes, the words hold the bits of both sizes until no program can still be using the
/// old one (`lb-userspace/src/dataplane/frontend_filter.rs`, `resize`).
#[inline(always)]
pub fn may_be_frontend(addr: &[u8; 16], port: u16, proto: u8, family: u8) -> bool {
    let configured = CONFIG
        .get(0)
        .map_or(0, |config| config.frontend_filter_words_log2);
    let words_log2 = frontend_filter::words_log2_in_use(configured);
    let (word, mask) = frontend_filter_slot(addr, port, proto, family, words_log2);
    // A filter smaller than the contract's (it never is) must not hide frontends.
    FRONTEND_FILTER
        .get(word)
        .is_none_or(|bits| bits & mask == mask)
}

/// What the datapath uses of a frontend, copied out of FRONTENDS by [`frontend`].
#[derive(Clone, Copy)]
pub struct Frontend {
    pub service_id: u32,
    pub table_offset: u32,
    pub table_size: u32,
    pub affinity_timeout_secs: u32,
    /// `frontend_flags` bits.
    pub flags: u16,
}

impl Frontend {
    #[inline(always)]
    fn copy_of(value: &FrontendValue) -> Self {
        Self {
            service_id: value.service_id,
            table_offset: value.table_offset,
            table_size: value.table_size,
            affinity_timeout_secs: value.affinity_timeout_secs,
            flags: value.flags,
        }
    }

    /// Whether `value` holds the fields of this copy.
    #[inline(always)]
    fn is_held_by(&self, value: &FrontendValue) -> bool {
        self.service_id == value.service_id
            && self.table_offset == value.table_offset
            && self.table_size == value.table_size
            && self.affinity_timeout_secs == value.affinity_timeout_secs
            && self.flags == value.flags
    }
}

/// What [`frontend`] found under a key.
pub enum FrontendRead {
    Found(Frontend),
    /// Two lookups in a row missed: no frontend.
    Missing,
    /// No copy held still, nor did two lookups in a row miss (FRONTENDS rewritten faster
    /// than the packet reads it).
    Unsettled,
}

/// Lookups of one frontend before [`frontend`] gives up.
const FRONTEND_READS: u32 = 3;

/// The frontend under `key`, copied and checked. The kernel hands the FRONTENDS element an
/// update or delete frees to the next update on that CPU at once (a preallocated hash from
/// its per-CPU spare, one without preallocation from bpf_mem_alloc's per-CPU free list), so
/// while the agent writes, the element a lookup returned can turn into another frontend's
/// before its fields are read, and a lookup walking past a recycled element can miss a key
/// that is there. So a copy counts once a second lookup finds the same fields under the key
/// (a reused element holds another key's), and a miss once the next lookup misses too.
#[inline(always)]
pub fn frontend(key: &FrontendKey) -> FrontendRead {
    let mut missed = false;
    for _ in 0..FRONTEND_READS {
        let Some(value) = FRONTENDS.value(key) else {
            if missed {
                return FrontendRead::Missing;
            }
            missed = true;
            continue;
        };
        missed = false;
        let copy = Frontend::copy_of(value);
        if FRONTENDS
            .value(key)
            .is_some_and(|again| copy.is_held_by(again))
        {
            return FrontendRead::Found(copy);
        }
    }
    FrontendRead::Unsettled
}

/// The backend with this id when its slot is in use.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    let backend = *BACKENDS.get(id)?;
    if backend.state == backend_state::EMPTY {
        return None;
    }
    Some(backend)
}

/// Whether backend slot `id` still holds the endpoint a flow of `proto` was sent to (its
/// address, and its port unless SCTP, whose port is the frontend's): false when the slot
/// is empty or was reused for another endpoint, i.e. the flow's backend is gone.
#[inline(always)]
pub fn backend_holds(id: u32, addr: &[u8; 16], port: u16, proto: u8) -> bool {
    BACKENDS.get(id).is_some_and(|backend| {
        backend.state != backend_state::EMPTY
            && backend.addr == *addr
            && (proto == PROTO_SCTP || backend.port == port)
    })
}

#[inline(always)]
pub fn flow_key(p: &Parsed) -> FlowKey {
    FlowKey {
        src_addr: p.src,
        dst_addr: p.dst,
        src_port: p.sport,
        dst_port: p.dport,
        proto: p.proto,
        family: p.family,
        _pad: [0, 0],
    }
}

/// `loadBalancerSourceRanges`: is the packet's source inside one of the service's ranges?
#[inline(always)]
pub fn source_allowed(p: &Parsed, service_id: u32) -> bool {
    let key = Key::new(
        SourceRangeKey::LOOKUP_PREFIX_LEN,
        SourceRangeKey {
            service_id_be: service_id.to_be_bytes(),
            family: p.family,
            addr: p.src,
            _pad: [0, 0, 0],
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// Proof that the packet's flow has no live conntrack entry: [`choose`] takes it, so that
/// the forward path looks CONNTRACK up once, before FRONTENDS.
pub struct ConntrackMiss(());

/// The flow's live conntrack forward entry, refreshing it (its time only when it is older
/// than the refresh interval, its TCP bits only when they change). Alive means: a forward
/// entry, younger than its protocol's (and TCP state's) timeout, not a new SYN after
/// FIN/RST, and its backend slot still holds the address and port the flow was sent to.
/// Returns the flow's slot of this CPU's flow cache, filled from the entry (where it goes,
/// the service it was balanced for): usable by later packets (under `cache`, read before
/// the lookup) for the rest of the entry's refresh interval when its TCP bits are final,
/// else by this packet only. (The slot, not a copy: the caller's frame has no room.)
#[inline(always)]
pub fn established(
    p: &Parsed,
    cache: CacheConfig,
) -> Result<&'static FlowCacheSlot, ConntrackMiss> {
    let miss = ConntrackMiss(());
    let key = flow_key(p);
    // A TCP flow not in CONNTRACK may still be in its handshake.
    let (entry, in_handshake) = match CONNTRACK.get_ptr_mut(&key) {
        Some(entry) => (entry, false),
        None if p.proto == PROTO_TCP => match HANDSHAKES.get_ptr_mut(&key) {
            Some(entry) => (entry, true),
            None => return Err(miss),
        },
        None => return Err(miss),
    };
    // SAFETY: a map value pointer, valid until the program returns (see `Lookup`); racing
    // writers can only make us pick a stale backend. Fields are read one by one: copying
    // the whole entry costs stack and loads.
    let entry = unsafe { &mut *entry };
    let (direction, last_seen, seen) = (entry.direction, entry.last_seen_ns, entry.tcp_flags_seen);
    if direction != flow_direction::FORWARD {
        return Err(miss);
    }
    let now = now_ns();
    // Saturating: an entry stamped by the finer `bpf_ktime_get_ns` (an older datapath over
    // the same pinned maps) may lie up to a tick ahead; it must not wrap into "expired".
    let age = now.saturating_sub(last_seen);
    let timeout = flow_timeout(p.proto, seen);
    // ">=": a zero timeout keeps no flow, even within one tick of the coarse clock.
    if age >= timeout {
        return Err(miss);
    }
    // A SYN opens a connection: after FIN/RST its ports are reused for a new one, and before
    // the handshake completed it is the opening SYN again (retransmitted). Both are chosen
    // afresh, so that a new connection only goes to a backend the frontend may use now;
    // Maglev and affinity give the same backend again while it still may.
    if is_syn(p)
        && (seen & (tcp_seen::FIN | tcp_seen::RST) != 0 || seen & tcp_seen::ESTABLISHED == 0)
    {
        return Err(miss);
    }
    let (backend_id, service_id, nat_addr, nat_port) = (
        entry.backend_id,
        entry.service_id,
        entry.nat_addr,
        entry.nat_port,
    );
    if !backend_holds(backend_id, &nat_addr, nat_port, p.proto) {
        return Err(miss);
    }
    let updated_seen = if p.proto == PROTO_TCP {
        seen | tcp_seen_bits(p.tcp_flags)
    } else {
        seen
    };
    let refresh = refresh_interval(timeout);
    let refreshed = age >= refresh || updated_seen != seen;
    if refreshed {
        entry.last_seen_ns = now;
        entry.tcp_flags_seen = updated_seen;
    }
    // TCP bits are final once established and neither FIN nor RST is seen: later packets
    // without SYN, FIN or RST (the only ones the cache serves) leave them as they are.
    let final_bits = p.proto != PROTO_TCP
        || updated_seen & (tcp_seen::ESTABLISHED | tcp_seen::FIN | tcp_seen::RST)
            == tcp_seen::ESTABLISHED;
    let cache_for_ns = match (in_handshake, final_bits, refreshed) {
        (false, true, true) => refresh,
        // Not refreshed: age < refresh.
        (false, true, false) => refresh - age,
        _ => 0,
    };
    if in_handshake {
        // The client answered the handshake (a SYN went back to `choose` above): the flow
        // is established. If CONNTRACK cannot take it, it goes on from HANDSHAKES.
        let _ = confirm_handshake(p, entry);
    }
    let target = Target {
        backend_id,
        addr: nat_addr,
        port: nat_port,
    };
    flow_cache::fill(
        p,
        flow_direction::FORWARD,
        &target,
        service_id,
        cache_for_ns,
        cache,
    )
    .ok_or(miss)
}

/// Moves a flow out of HANDSHAKES into CONNTRACK (its reply entry first, as `choose`
/// writes them): `entry` is its forward entry in HANDSHAKES, refreshed by this packet. Its
/// HANDSHAKES entries are left for the LRU: they say the same.
// A separate BPF function: its keys and values stay off the forward path's frame.
#[inline(never)]
fn confirm_handshake(p: &Parsed, entry: &FlowValue) -> Result<(), ()> {
    // One key and one value, rewritten in place: the stack is small.
    let mut value = *entry;
    let mut key = flow_key(p);
    key.src_addr = value.nat_addr;
    key.dst_addr = p.src;
    key.src_port = value.nat_port;
    key.dst_port = p.sport;
    value.nat_addr = p.dst;
    value.nat_port = p.dport;
    value.direction = flow_direction::REPLY;
    CONNTRACK
        .insert(&key, &value, BPF_ANY as u64)
        .map_err(|_| ())?;
    key.src_addr = p.src;
    key.dst_addr = p.dst;
    key.src_port = p.sport;
    key.dst_port = p.dport;
    CONNTRACK
        .insert(&key, entry, BPF_ANY as u64)
        .map_err(|_| ())
}

/// Records one entry of a new flow: a TCP flow opened by a SYN in HANDSHAKES until the
/// client's next packet confirms it, anything else in CONNTRACK.
#[inline(always)]
fn record_new_flow(opening_syn: bool, key: &FlowKey, value: &FlowValue) -> Result<(), ()> {
    let result = if opening_syn {
        HANDSHAKES.insert(key, value, BPF_ANY as u64)
    } else {
        CONNTRACK.insert(key, value, BPF_ANY as u64)
    };
    result.map_err(|_| ())
}

/// A backend of a frontend's selection table: its id, its entry, and a slot (counted from
/// the table's start) that names it.
#[derive(Clone, Copy)]
pub struct Pick {
    pub id: u32,
    pub backend: Backend,
    pub slot: u32,
}

#[inline(always)]
fn target_of(p: &Parsed, pick: &Pick) -> Target {
    // SCTP keeps its ports: its CRC32c covers them, and updating it would cost a pass over
    // the whole packet.
    let port = if p.proto == PROTO_SCTP {
        p.dport
    } else {
        pick.backend.port
    };
    Target {
        backend_id: pick.id,
        addr: pick.backend.addr,
        port,
    }
}

/// Whether slot `slot` of the frontend's selection table names backend `id` (one inlined
/// array read).
#[inline(always)]
fn slot_names(frontend: &Frontend, slot: u32, id: u32) -> bool {
    slot < frontend.table_size
        && SELECTION
            .get(frontend.table_offset + slot)
            .is_some_and(|named| *named == id)
}

/// A slot of the frontend's selection table that names backend `id`, when the table holds
/// it: when the backend is in the frontend's eligible set. `hint`, a slot that named it
/// before, answers with one array read while the table is unchanged; otherwise
/// TABLE_MEMBERS gives a slot, trusted only if it names `id` in this very table.
#[inline(always)]
fn slot_naming(frontend: &Frontend, id: u32, hint: u32) -> Option<u32> {
    if slot_names(frontend, hint, id) {
        return Some(hint);
    }
    let member = TableMember {
        table_offset: frontend.table_offset,
        backend_id: id,
    };
    let slot = *TABLE_MEMBERS.value(&member)?;
    slot_names(frontend, slot, id).then_some(slot)
}

/// Backend `id`, named by `slot`, when its entry is in use and of the frontend's `family`.
#[inline(always)]
fn pick(id: u32, slot: u32, family: u8) -> Option<Pick> {
    let backend = backend(id)?;
    // An IPv4 frontend never sends to an IPv6 backend (the agent does not write that).
    if backend.family != family {
        return None;
    }
    Some(Pick { id, backend, slot })
}

/// The client's affinity backend under `key` for `frontend`: its entry is younger than the
/// frontend's timeout and its backend is still in the frontend's selection table. As with
/// kube-proxy, affinity only chooses among the endpoints the frontend may use now: a
/// backend that turned terminating while others are ready, or that a traffic policy or
/// topology leaves out of this frontend, is not followed (the caller chooses afresh and
/// re-pins). Shared by the packet path and socket-level balancing.
#[inline(always)]
pub fn affinity_backend(
    key: &AffinityKey,
    frontend: &Frontend,
    family: u8,
    now: u64,
) -> Option<Pick> {
    let entry = AFFINITY.value(key)?;
    let (id, hint, last_seen) = (entry.backend_id, entry.slot, entry.last_seen_ns);
    // Saturating, as for conntrack: a time from another clock must not read as expired.
    if now.saturating_sub(last_seen) > frontend.affinity_timeout_secs as u64 * 1_000_000_000 {
        return None;
    }
    let slot = slot_naming(frontend, id, hint)?;
    pick(id, slot, family)
}

/// The backend in slot `hash % table_size` of the frontend's selection table, when it is in
/// use and of the frontend's `family`. Shared by the packet path (a flow hash) and
/// socket-level balancing (a random number).
#[inline(always)]
pub fn table_backend(frontend: &Frontend, hash: u32, family: u8) -> Option<Pick> {
    let slot = hash % frontend.table_size;
    let id = *SELECTION.get(frontend.table_offset + slot)?;
    pick(id, slot, family)
}

/// The affinity entry that pins the client to `pick`.
#[inline(always)]
pub fn affinity_value(pick: &Pick, now: u64) -> AffinityValue {
    AffinityValue {
        backend_id: pick.id,
        slot: pick.slot,
        last_seen_ns: now,
    }
}

/// Chooses the backend for a new flow (its conntrack lookup missed) to `frontend` and
/// records the flow.
#[inline(always)]
pub fn choose(p: &Parsed, frontend: &Frontend, _missed: ConntrackMiss) -> Choice {
    let now = now_ns();
    if frontend.table_size == 0 {
        return Choice::NoBackend;
    }
    let affinity = frontend.flags & frontend_flags::AFFINITY != 0;
    let affinity_key = AffinityKey {
        client_addr: p.src,
        service_id: frontend.service_id,
        family: p.family,
        _pad: [0, 0, 0],
    };
    let sticky = if affinity {
        affinity_backend(&affinity_key, frontend, p.family, now)
    } else {
        None
    };
    let (chosen, reason) = match sticky {
        Some(pick) => (pick, Reason::LbAffinity),
        None => {
            let hash = flow_hash(&p.src, &p.dst, p.sport, p.dport, p.proto);
            match table_backend(frontend, hash, p.family) {
                Some(pick) => (pick, Reason::LbNewFlow),
                // The table names a backend slot that is empty: the agent's ordering broke.
                None => return Choice::Failed(Reason::DropInternal),
            }
        }
    };
    if affinity {
        // An LRU insert only fails under memory pressure; the flow still goes through.
        let _ = AFFINITY.insert(&affinity_key, &affinity_value(&chosen, now), BPF_ANY as u64);
    }
    // Only on this (new-flow) path: a TCP packet without SYN had a flow, which the table
    // lost; counted apart, as it reaches its backend only while the choice still names it.
    let reason = if p.proto == PROTO_TCP && p.tcp_flags & TCP_SYN == 0 {
        Reason::LbConntrackLost
    } else {
        reason
    };
    let target = target_of(p, &chosen);
    // Before the conntrack entries: a flow the SNAT table cannot take leaves nothing behind.
    if masquerade_on()
        && lb_common::masquerades(frontend.flags, chosen.backend.flags)
        && let Err(reason) = crate::snat::mark_new_flow(p, &target.addr, target.port)
    {
        return Choice::Failed(reason);
    }
    let seen = if p.proto == PROTO_TCP {
        tcp_seen_bits(p.tcp_flags)
    } else {
        0
    };
    // One key, rewritten in place for each use: the stack is small. The reply entry first
    // (once the forward entry exists, replies must find theirs).
    let mut key = flow_key(p);
    key.src_addr = target.addr;
    key.dst_addr = p.src;
    key.src_port = target.port;
    key.dst_port = p.sport;
    let mut value = FlowValue {
        backend_id: target.backend_id,
        service_id: frontend.service_id,
        last_seen_ns: now,
        nat_addr: p.dst,
        nat_port: p.dport,
        direction: flow_direction::REPLY,
        tcp_flags_seen: seen,
        _pad: [0, 0, 0, 0],
    };
    // A SYN's flow waits in HANDSHAKES for the client's next packet: a flood of SYNs that
    // never complete (spoofed) cannot evict established flows from CONNTRACK.
    let opening_syn = is_syn(p);
    if record_new_flow(opening_syn, &key, &value).is_err() {
        return Choice::Failed(Reason::DropInternal);
    }
    key = flow_key(p);
    value.nat_addr = target.addr;
    value.nat_port = target.port;
    value.direction = flow_direction::FORWARD;
    if record_new_flow(opening_syn, &key, &value).is_err() {
        return Choice::Failed(Reason::DropInternal);
    }
    Choice::Chosen { target, reason }
}
