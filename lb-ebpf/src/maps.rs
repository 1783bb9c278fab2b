//! Every map the programs use, typed with the lb-common contract. Sizes are the defaults;
//! the loader overrides them at load time.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, Config, FastPathCounter, FlowCacheSlot, FlowKey,
    FlowValue, FragmentKey, FragmentValue, FrontendKey, FrontendValue, ProtoCounter, Reason,
    ServiceCounters, ServiceName, SnatAddresses, SnatValue, SockConnection, SockReverseKey,
    SockReverseValue, SocketCounter, SourceRangeKey, TableMember, capacity, frontend_filter,
};

#[map(name = "FRONTENDS")]
pub static FRONTENDS: HashMap<FrontendKey, FrontendValue> =
    HashMap::with_max_entries(capacity::FRONTENDS, 0);

/// Bits in front of FRONTENDS (`lb_common::frontend_filter`): clear means no frontend.
#[map(name = "FRONTEND_FILTER")]
pub static FRONTEND_FILTER: Array<u64> = Array::with_max_entries(frontend_filter::WORDS, 0);

/// Indexed by backend id; id 0 and deleted backends have `state == EMPTY`.
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(capacity::BACKENDS, 0);

/// Backend ids; a frontend's Maglev table is `[table_offset, table_offset + table_size)`.
/// Memory-mappable: the agent copies whole tables into it instead of one syscall element each.
#[map(name = "SELECTION")]
pub static SELECTION: Array<u32> =
    Array::with_max_entries(capacity::SELECTION_SLOTS, BPF_F_MMAPABLE);

/// (table, backend) -> a slot of the table naming the backend: whether a backend is in a
/// frontend's table without scanning it. Written by the agent only; not preallocated, as
/// most of it is never used.
#[map(name = "TABLE_MEMBERS")]
pub static TABLE_MEMBERS: HashMap<TableMember, u32> =
    HashMap::with_max_entries(capacity::TABLE_MEMBERS, BPF_F_NO_PREALLOC);

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

/// TCP flows between the client's SYN and its next packet (`lb_common::map_names::HANDSHAKES`).
#[map(name = "HANDSHAKES")]
pub static HANDSHAKES: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(capacity::HANDSHAKES, 0);

#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(capacity::AFFINITY, 0);

#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentValue> =
    LruHashMap::with_max_entries(capacity::FRAGMENTS, 0);

/// Value: 1 for "allowed"; only the presence of a matching prefix matters.
#[map(name = "SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(capacity::SOURCE_RANGES, 0);

#[map(name = "REASON_STATS")]
pub static REASON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map(name = "PROTO_STATS")]
pub static PROTO_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProtoCounter::COUNT, 0);

#[map(name = "SERVICE_STATS")]
pub static SERVICE_STATS: PerCpuArray<ServiceCounters> =
    PerCpuArray::with_max_entries(capacity::SERVICES, 0);

#[map(name = "SOCK_REVERSE")]
pub static SOCK_REVERSE: LruHashMap<SockReverseKey, SockReverseValue> =
    LruHashMap::with_max_entries(capacity::SOCK_REVERSE, 0);

#[map(name = "SOCK_CONNECTED")]
pub static SOCK_CONNECTED: LruHashMap<u64, SockConnection> =
    LruHashMap::with_max_entries(capacity::SOCK_CONNECTED, 0);

#[map(name = "SOCKET_STATS")]
pub static SOCKET_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SocketCounter::COUNT, 0);

#[map(name = "FAST_PATH_STATS")]
pub static FAST_PATH_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(FastPathCounter::COUNT, 0);

/// Masquerade: both directions of each masqueraded flow (`lb_common::snat_direction`). A
/// plain hash: a full table refuses new flows instead of evicting live ones.
#[map(name = "SNAT")]
pub static SNAT: HashMap<FlowKey, SnatValue> = HashMap::with_max_entries(capacity::SNAT, 0);

/// Interface index -> the addresses masqueraded flows leaving through it take.
#[map(name = "SNAT_ADDRESSES")]
pub static SNAT_ADDRESSES: HashMap<u32, SnatAddresses> =
    HashMap::with_max_entries(capacity::SNAT_ADDRESSES, 0);

/// Per CPU: established flows' backends in front of CONNTRACK (`crate::flow_cache`).
#[map(name = "FLOW_CACHE")]
pub static FLOW_CACHE: PerCpuArray<FlowCacheSlot> =
    PerCpuArray::with_max_entries(capacity::FLOW_CACHE_SLOTS, 0);

/// Interface index -> itself: the devices the XDP fast path may send frames to (the agent
/// puts in only devices that take them). Not pinned.
#[map(name = "FAST_PATH_DEVICES")]
pub static FAST_PATH_DEVICES: DevMapHash =
    DevMapHash::with_max_entries(capacity::FAST_PATH_DEVICES, 0);

/// Where the fast path last found a backend's next hop (`fast_path.rs`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    /// The backend address this slot was filled for (slots are shared by backend ids).
    pub addr: [u8; 16],
    /// `bpf_jiffies64` after which the next hop is looked up again.
    pub expires_jiffies: u64,
    /// Egress device.
    pub ifindex: u32,
    /// Largest IP datagram the egress device takes.
    pub mtu: u16,
    /// 1: the packet may leave through `ifindex` with these MACs; 0: to the stack.
    pub usable: u8,
    pub _pad: u8,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The device the packet that filled the slot arrived on: the FIB's answer (forwarding
    /// on, `iif` policy rules) holds for packets arriving there only.
    pub arrival_ifindex: u32,
}

/// Per CPU, indexed by backend id modulo its size: a cache the fast path fills itself.
/// Not pinned (a new program starts with it empty).
#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(capacity::NEXT_HOPS, 0);

/// Scratch space for `bpf_fib_lookup`'s parameters (off the stack). Not pinned.
#[map(name = "FIB_PARAMS")]
pub static FIB_PARAMS: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Userspace only (names for the CLI); defined here so it is created and pinned with the rest.
#[map(name = "SERVICE_NAMES")]
pub static SERVICE_NAMES: HashMap<u32, ServiceName> =
    HashMap::with_max_entries(capacity::SERVICE_NAMES, 0);

/// Hash-map lookups that borrow the value instead of copying it (a copy costs stack and
/// loads). The value's memory stays a map element until the program returns (RCU), but not
/// the key's: an update or delete of the key frees its element, and the kernel hands it to
/// the next update on that CPU at once (a preallocated hash from its per-CPU spare, an LRU
/// from its free lists, a hash without preallocation from bpf_mem_alloc's per-CPU free
/// list). From then on the borrowed value may hold another key's value, or be half written;
/// a lookup walking past such an element may even miss its own key. So read through a
/// borrowed value only what a later check catches or what may be wrong without harm;
/// FRONTENDS is read through `lookup::frontend`, which copies and checks.
pub trait Lookup<K, V> {
    /// The value under `key`.
    fn value(&self, key: &K) -> Option<&V>;
}

impl<K, V> Lookup<K, V> for HashMap<K, V> {
    #[inline(always)]
    fn value(&self, key: &K) -> Option<&V> {
        let value = self.get_ptr(key)?;
        // SAFETY: a map value pointer, valid until the program returns (see `Lookup`).
        Some(unsafe { &*value })
    }
}

impl<K, V> Lookup<K, V> for LruHashMap<K, V> {
    #[inline(always)]
    fn value(&self, key: &K) -> Option<&V> {
        let value = self.get_ptr(key)?;
        // SAFETY: a map value pointer, valid until the program returns (see `Lookup`).
        Some(unsafe { &*value })
    }
}
