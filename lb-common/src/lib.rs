//! One definition of every map key, value and constant that slicelb's kernel programs and
//! its agent share. Everything here is `#[repr(C)]` with explicit padding, and each type's
//! size is checked at compile time so that both sides agree byte for byte.
//!
//! Byte order: addresses and ports are stored in network byte order (as they appear in the
//! packet) so the datapath copies them without swapping; every other integer is host order.
//! IPv4 addresses sit in the first 4 bytes of a 16-byte address, the rest zero.
#![no_std]

pub mod bench;
pub mod counters;
pub mod hash;

pub use counters::{
    FastPathCounter, ProtoCounter, Reason, ReasonClass, ServiceCounters, SocketCounter,
};

/// Address family tags used in keys (not the kernel's AF_* numbers, which differ by size).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Added to a [`FrontendKey`]'s family: the short-circuit twin of an external frontend whose
/// external traffic policy is Local. Socket-level balancing (pods and the node itself) uses
/// it, with the service's Cluster endpoints, instead of the Local-only frontend: kube-proxy's
/// rule that traffic from inside the cluster to an external address of an
/// `externalTrafficPolicy: Local` service may go to any endpoint. Packets never carry it.
pub const FAMILY_SHORT_CIRCUIT: u8 = 0x80;

/// Added to an [`AffinityKey`]'s family when the client is named by its network namespace
/// (socket-level balancing: the source address is not known at `connect()`) instead of its
/// address.
pub const FAMILY_BY_NETNS: u8 = 0x40;

/// IP protocol numbers, as in the IP header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Map names as the kernel sees them (at most 15 bytes) and as they are pinned.
pub mod map_names {
    pub const FRONTENDS: &str = "FRONTENDS";
    /// Bitmap in front of FRONTENDS: a clear bit means "no frontend here" (see
    /// [`crate::frontend_filter`]).
    pub const FRONTEND_FILTER: &str = "FRONTEND_FILTER";
    pub const BACKENDS: &str = "BACKENDS";
    pub const SELECTION: &str = "SELECTION";
    /// The index of SELECTION: (table, backend) -> a slot of that table naming the backend,
    /// so that the datapath can tell whether a backend is in a frontend's table (its
    /// eligible set) without scanning it (see [`crate::TableMember`]).
    pub const TABLE_MEMBERS: &str = "TABLE_MEMBERS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const AFFINITY: &str = "AFFINITY";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const SOURCE_RANGES: &str = "SOURCE_RANGES";
    pub const REASON_STATS: &str = "REASON_STATS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const PROTO_STATS: &str = "PROTO_STATS";
    pub const CONFIG: &str = "CONFIG";
    /// Socket-level balancing, unconnected UDP: (socket, backend) -> the frontend the
    /// application sent to, so a reply received with `recvmsg()` comes from the service.
    pub const SOCK_REVERSE: &str = "SOCK_REVERSE";
    /// Socket-level balancing, connected sockets: socket -> the backend it was sent to and
    /// the frontend the application asked for (`getpeername()`, `recvmsg()`); deleted when
    /// the socket is released.
    pub const SOCK_CONNECTED: &str = "SOCK_CONNECTED";
    pub const SOCKET_STATS: &str = "SOCKET_STATS";
    pub const FAST_PATH_STATS: &str = "FAST_PATH_STATS";
    /// Userspace only: service id -> name, so the CLI and a restarted agent can name what
    /// the kernel holds. The datapath never reads it.
    pub const SERVICE_NAMES: &str = "SERVICE_NAMES";
    /// Masquerade (source NAT) of external traffic sent to another node's endpoint: both
    /// directions of each masqueraded flow. A plain hash, not an LRU: a live mapping is
    /// never evicted; the agent deletes expired ones.
    pub const SNAT: &str = "SNAT";
    /// TCP flows in their handshake: balanced on the client's SYN, not yet confirmed by the
    /// client's first packet after it. An LRU of their own, so that a SYN flood (spoofed
    /// SYNs never complete) evicts only its own kind, never an established flow of
    /// CONNTRACK; the client's first non-SYN packet moves the flow into CONNTRACK.
    pub const HANDSHAKES: &str = "HANDSHAKES";
    /// Interface index -> the addresses masqueraded flows leaving through it take.
    pub const SNAT_ADDRESSES: &str = "SNAT_ADDRESSES";
    /// The per-CPU flow cache in front of CONNTRACK ([`crate::FlowCacheSlot`]). Not pinned:
    /// a cache, which a new program starts empty.
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
    /// Not pinned (a new program starts with them empty): the devices the XDP fast path may
    /// send frames to (a DEVMAP_HASH by interface index, written by the agent), and the
    /// per-CPU next hop of each backend slot the fast path fills (`lb-ebpf/src/fast_path.rs`).
    pub const FAST_PATH_DEVICES: &str = "FAST_PATH_DEVICES";
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
}

/// Program names (the Rust function names in `lb-ebpf`).
pub mod program_names {
    /// XDP forward path: load-balance packets for frontends arriving on an interface.
    pub const XDP_INGRESS: &str = "slicelb_xdp";
    /// TC ingress forward path, for interfaces where XDP is off or wrong (partial checksums).
    pub const TC_INGRESS: &str = "slicelb_tc_ingress";
    /// TC egress reverse path: replies from backends leave with the service address.
    pub const TC_EGRESS: &str = "slicelb_tc_egress";
    /// Socket-level balancing (cgroup v2 hooks) for processes below the cgroup root:
    /// `connect()` and UDP `sendmsg()` go to a backend; `recvmsg()` and `getpeername()` show
    /// the frontend; socket release forgets the socket.
    pub const CONNECT4: &str = "slicelb_connect4";
    pub const CONNECT6: &str = "slicelb_connect6";
    pub const SENDMSG4: &str = "slicelb_sendmsg4";
    pub const SENDMSG6: &str = "slicelb_sendmsg6";
    pub const RECVMSG4: &str = "slicelb_recvmsg4";
    pub const RECVMSG6: &str = "slicelb_recvmsg6";
    pub const GETPEERNAME4: &str = "slicelb_getpeername4";
    pub const GETPEERNAME6: &str = "slicelb_getpeername6";
    pub const SOCK_RELEASE: &str = "slicelb_sock_release";
    /// Test-run only, never attached: writes `bpf_jiffies64()` and `bpf_ktime_get_ns()`
    /// (u64 each, host order) into the first 16 bytes of its packet, from which the agent
    /// measures the kernel's tick length (CONFIG's `ns_per_jiffy`).
    pub const CLOCK_PROBE: &str = "slicelb_clock_probe";
}

/// Default sizes; the agent may override them at load time (`EbpfLoader::map_max_entries`).
pub mod capacity {
    pub const FRONTENDS: u32 = 262_144;
    /// Backend ids are indexes into an array; id 0 is never used.
    pub const BACKENDS: u32 = 262_144;
    /// Total Maglev slots shared by all selection tables (4 bytes each: 64 MiB).
    pub const SELECTION_SLOTS: u32 = 16 * 1024 * 1024;
    /// (Selection table, backend) pairs: twice the backends, room for every backend to be
    /// in two tables (internal and external selections that differ) at once.
    pub const TABLE_MEMBERS: u32 = 2 * BACKENDS;
    pub const CONNTRACK: u32 = 524_288;
    pub const AFFINITY: u32 = 65_536;
    pub const FRAGMENTS: u32 = 8_192;
    pub const SOURCE_RANGES: u32 = 16_384;
    /// Service ids index the per-CPU service counters; id 0 is never used.
    pub const SERVICES: u32 = 131_072;
    pub const SERVICE_NAMES: u32 = SERVICES;
    /// (Unconnected UDP socket, backend) pairs whose replies are shown as from the service:
    /// an LRU of its own, so datagram churn never evicts a connected socket's entry.
    pub const SOCK_REVERSE: u32 = 262_144;
    /// Open connected sockets to a service per node (an LRU; deleted at socket release).
    pub const SOCK_CONNECTED: u32 = 262_144;
    /// TCP flows in their handshake (two entries each), a quarter of CONNTRACK.
    pub const HANDSHAKES: u32 = CONNTRACK / 4;
    /// SNAT entries (two per masqueraded flow: 65 536 flows).
    pub const SNAT: u32 = 131_072;
    /// Devices the XDP fast path may send to.
    pub const FAST_PATH_DEVICES: u32 = 64;
    /// Per-CPU next-hop slots, indexed by backend id modulo this power of two (a slot
    /// remembers its backend's address: two backends on one slot take turns filling it).
    pub const NEXT_HOPS: u32 = 8_192;
    /// Interfaces with masquerade addresses.
    pub const SNAT_ADDRESSES: u32 = 64;
    /// Slots of the flow cache, per CPU (80 bytes each: 320 KiB, within a core's L2); a
    /// power of two, indexed by the top bits of a one-multiply hash.
    pub const FLOW_CACHE_SLOTS_LOG2: u32 = 12;
    pub const FLOW_CACHE_SLOTS: u32 = 1 << FLOW_CACHE_SLOTS_LOG2;
}

/// FRONTEND_FILTER: a blocked Bloom filter of the frontends, u64 words; each frontend sets
/// [`frontend_filter::BITS`] bits of one word (see [`crate::hash::frontend_filter_slot`]).
///
/// Invariant the writer keeps (make-before-break): the bits of every frontend in FRONTENDS
/// are set before the frontend is inserted, and a bit is cleared only after the last
/// frontend using it is deleted. A packet whose bits are not all set has no frontend: one
/// inlined array read instead of a hash lookup.
///
/// Sized by the agent: the map has [`frontend_filter::WORDS`] entries, of which the first
/// `1 << log2` are in use, `log2` being CONFIG's `frontend_filter_words_log2` (see
/// [`frontend_filter::words_log2_in_use`]). The agent picks the smallest power of two with
/// at least [`frontend_filter::BITS_PER_FRONTEND`] bits per frontend it programs: a few
/// KiB that stay in L1 at small scales, 1 MiB (0.1% of misses passing) at 200 000
/// frontends, where a fixed 2^15 words with two bits let 3.4% through to two cold hash
/// lookups.
pub mod frontend_filter {
    /// The largest size in use, and the map's entries.
    pub const WORDS_LOG2_MAX: u32 = 17;
    /// Entries of the u64 array.
    pub const WORDS: u32 = 1 << WORDS_LOG2_MAX;
    /// The smallest size the agent picks (512 bytes).
    pub const WORDS_LOG2_MIN: u32 = 6;
    /// The size CONFIG's zero stands for (a CONFIG written before the field existed, or
    /// by a loader before the agent sized the filter): the fixed size of layout version 2.
    pub const WORDS_LOG2_UNSET: u32 = 15;
    /// Bits each frontend sets.
    pub const BITS: u32 = 3;
    /// Filter bits the agent provides per frontend, at least: with three bits per frontend
    /// fewer than 0.2% of misses pass (32 to 64 bits, by the power of two).
    pub const BITS_PER_FRONTEND: u32 = 32;

    /// The size in use (log2 of the words) for CONFIG's `frontend_filter_words_log2`: zero
    /// is [`WORDS_LOG2_UNSET`], anything larger than the map is the map.
    #[inline(always)]
    pub const fn words_log2_in_use(config_value: u32) -> u32 {
        match config_value {
            0 => WORDS_LOG2_UNSET,
            log2 if log2 > WORDS_LOG2_MAX => WORDS_LOG2_MAX,
            log2 => log2,
        }
    }
}

/// Maglev table sizes: primes just under a power of two, so the selection array can be
/// carved into power-of-two blocks with almost no waste. A table holds at least 100 slots
/// per backend (so removing one backend moves at most ~1% more flows than the minimum).
pub const MAGLEV_SIZES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// The smallest Maglev size with at least 100 slots per backend (the largest size when
/// even that is not enough).
pub const fn maglev_size_for(backends: u32) -> u32 {
    let wanted = backends.saturating_mul(100);
    let mut i = 0;
    while i < MAGLEV_SIZES.len() {
        if MAGLEV_SIZES[i] >= wanted {
            return MAGLEV_SIZES[i];
        }
        i += 1;
    }
    MAGLEV_SIZES[MAGLEV_SIZES.len() - 1]
}

/// Key of the FRONTENDS hash map: one entry per (address, port, protocol).
///
/// Scope (internal / external, for traffic policies) is in the value, not the key: Kubernetes
/// never gives two services the same (address, port, protocol), so one lookup decides both,
/// and a packet that misses pays for exactly one hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// Network byte order.
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    /// FAMILY_IPV4 or FAMILY_IPV6, plus [`FAMILY_SHORT_CIRCUIT`] on a short-circuit twin.
    pub family: u8,
}

impl FrontendKey {
    /// FAMILY_IPV4 or FAMILY_IPV6, without the short-circuit bit.
    pub const fn ip_family(&self) -> u8 {
        self.family & !FAMILY_SHORT_CIRCUIT
    }

    /// The short-circuit twin of an external Local frontend (see [`FAMILY_SHORT_CIRCUIT`]).
    pub const fn is_short_circuit(&self) -> bool {
        self.family & FAMILY_SHORT_CIRCUIT != 0
    }
}

/// What kind of frontend this is, kept in `FrontendValue::kind` for the CLI and counters.
pub mod frontend_kind {
    pub const CLUSTER_IP: u8 = 1;
    pub const NODE_PORT: u8 = 2;
    pub const LOAD_BALANCER: u8 = 3;
    pub const EXTERNAL_IP: u8 = 4;
}

/// Bits of `FrontendValue::flags`.
pub mod frontend_flags {
    /// External scope (NodePort, LoadBalancer, external IP): external traffic policy applies.
    pub const EXTERNAL: u16 = 1 << 0;
    /// `sessionAffinity: ClientIP`: consult and refresh the AFFINITY map.
    pub const AFFINITY: u16 = 1 << 1;
    /// The traffic policy for this frontend's scope is Local.
    pub const TRAFFIC_POLICY_LOCAL: u16 = 1 << 2;
    /// No usable backend but the service has endpoints elsewhere (a Local policy): drop
    /// silently, as kube-proxy does, instead of rejecting.
    pub const DROP_WHEN_EMPTY: u16 = 1 << 4;
    /// Only sources in SOURCE_RANGES for this service may use this frontend
    /// (`loadBalancerSourceRanges`, on load-balancer frontends only).
    pub const SOURCE_RANGES: u16 = 1 << 3;
}

/// Value of the FRONTENDS map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendValue {
    /// Index into SERVICE_STATS and key part of AFFINITY / SOURCE_RANGES; starts at 1.
    pub service_id: u32,
    /// First slot of this frontend's Maglev table in SELECTION.
    pub table_offset: u32,
    /// Number of slots (a MAGLEV_SIZES prime); 0 means no usable backend: reject.
    pub table_size: u32,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`; used when `AFFINITY` is set.
    pub affinity_timeout_secs: u32,
    /// Distinct backends in the table (for the CLI; the datapath does not need it).
    pub backend_count: u16,
    /// `frontend_flags` bits.
    pub flags: u16,
    /// `frontend_kind` value.
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// `Backend::state` values.
pub mod backend_state {
    /// Unused slot of the BACKENDS array.
    pub const EMPTY: u8 = 0;
    /// Ready: takes new flows.
    pub const ACTIVE: u8 = 1;
    /// Terminating (or serving but not ready): keeps existing flows; takes new ones only
    /// when it is in a selection table because nothing better exists.
    pub const TERMINATING: u8 = 2;
}

/// Bits of `Backend::flags`.
pub mod backend_flags {
    /// The endpoint runs on this node.
    pub const NODE_LOCAL: u8 = 1 << 0;
}

/// Value of the BACKENDS array, indexed by backend id (ids start at 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Network byte order.
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    /// `backend_state` value.
    pub state: u8,
    /// `backend_flags` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// Key of the CONNTRACK LRU map: a flow as seen on the wire in one direction.
///
/// Each load-balanced flow has two entries: the forward one (client -> frontend) and the
/// reply one (backend -> client), so both directions are found with one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network byte order.
    pub src_addr: [u8; 16],
    /// Network byte order.
    pub dst_addr: [u8; 16],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key a masqueraded flow's replies arrive with: this key's endpoint (its
    /// destination) answering the node's `node_addr:node_port`. One definition for the
    /// datapath, which takes the port by inserting this key, and the agent's expiry, which
    /// deletes it with the flow.
    #[inline(always)]
    pub const fn masqueraded_reply(&self, node_addr: [u8; 16], node_port: u16) -> FlowKey {
        FlowKey {
            src_addr: self.dst_addr,
            dst_addr: node_addr,
            src_port: self.dst_port,
            dst_port: node_port,
            proto: self.proto,
            family: self.family,
            _pad: [0, 0],
        }
    }
}

/// `FlowValue::direction` values.
pub mod flow_direction {
    /// Key is client -> frontend; `nat_addr:nat_port` is the backend to send to.
    pub const FORWARD: u8 = 1;
    /// Key is backend -> client; `nat_addr:nat_port` is the frontend to answer from.
    pub const REPLY: u8 = 2;
}

/// Bits of `FlowValue::tcp_flags_seen`: enough TCP state to expire closed flows early.
pub mod tcp_seen {
    pub const SYN: u8 = 1 << 0;
    pub const FIN: u8 = 1 << 1;
    pub const RST: u8 = 1 << 2;
    pub const ESTABLISHED: u8 = 1 << 3;
}

/// Value of the CONNTRACK map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowValue {
    /// Backend chosen for this flow (forward entries); the same id on the reply entry.
    pub backend_id: u32,
    pub service_id: u32,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE) of the last packet, refreshed at
    /// most once a second (or an eighth of a shorter timeout) to spare a write per packet.
    pub last_seen_ns: u64,
    /// Network byte order. Forward: backend address. Reply: frontend address.
    pub nat_addr: [u8; 16],
    /// Network byte order. Forward: backend port. Reply: frontend port.
    pub nat_port: u16,
    /// `flow_direction` value.
    pub direction: u8,
    /// `tcp_seen` bits.
    pub tcp_flags_seen: u8,
    pub _pad: [u8; 4],
}

/// One slot of the per-CPU flow cache (FLOW_CACHE, not pinned: a new program starts with
/// an empty one), in front of CONNTRACK on both paths: what a packet of an established flow
/// needs, copied from the CONNTRACK entry under `key` (a forward entry on the forward path,
/// a reply entry on TC egress; `direction` says which). Used only while `generation` is
/// CONFIG's `flow_generation`, `jiffies < valid_until_jiffies` (the entry's refresh
/// interval, after which a packet refreshes the CONNTRACK entry) and, for a forward entry,
/// the backend slot still holds `nat_addr`/`nat_port`. All zero: empty (never valid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowCacheSlot {
    pub key: FlowKey,
    /// Network byte order: the entry's `nat_addr` (forward: the backend's address; reply:
    /// the frontend's).
    pub nat_addr: [u8; 16],
    pub backend_id: u32,
    pub service_id: u32,
    /// `bpf_jiffies64()` up to which the slot may be used.
    pub valid_until_jiffies: u64,
    /// CONFIG's `flow_generation` read before the CONNTRACK lookup that filled the slot.
    pub generation: u32,
    /// Network byte order: the entry's `nat_port` (forward: the backend's port, for SCTP
    /// the frontend's; reply: the frontend's).
    pub nat_port: u16,
    /// The entry's `flow_direction`: a slot serves only its own path.
    pub direction: u8,
    pub _pad: u8,
}

/// Key of the AFFINITY LRU map (`sessionAffinity: ClientIP`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    /// Network byte order; with [`FAMILY_BY_NETNS`], the client's network namespace cookie
    /// (8 bytes, host order) and zeros.
    pub client_addr: [u8; 16],
    pub service_id: u32,
    /// The frontend's FAMILY_IPV4 or FAMILY_IPV6, plus [`FAMILY_BY_NETNS`] for sockets.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of the AFFINITY map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// A slot (from the table's start) of the selection table that named `backend_id` when
    /// the entry was written: while that table stays, one array read proves the backend is
    /// still in it (an entry written before this field existed holds 0, which only costs a
    /// [`TableMember`] lookup).
    pub slot: u32,
    pub last_seen_ns: u64,
}

/// Key of TABLE_MEMBERS: a backend of the selection table that starts at `table_offset`.
/// The value (u32) is a slot, counted from the table's start, that names the backend.
///
/// The agent writes a table's members after the table and before any frontend points at
/// it, and deletes them once no frontend does. The datapath trusts an entry only when the
/// slot it gives still names the backend in the frontend's table, so a stale entry never
/// makes a backend eligible.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableMember {
    pub table_offset: u32,
    pub backend_id: u32,
}

/// Key of the FRAGMENTS LRU map: the fragments of one datagram share it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Network byte order.
    pub src_addr: [u8; 16],
    /// Network byte order.
    pub dst_addr: [u8; 16],
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits), host order.
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of the FRAGMENTS map: where the first fragment went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentValue {
    pub backend_id: u32,
    pub service_id: u32,
}

/// Key of SOCK_REVERSE: an unconnected UDP socket (its cookie) and a backend it sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockReverseKey {
    pub cookie: u64,
    /// Network byte order.
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

impl SockReverseKey {
    pub const fn new(cookie: u64, addr: [u8; 16], port: u16, family: u8) -> Self {
        Self {
            cookie,
            addr,
            port,
            family,
            _pad: [0; 5],
        }
    }
}

/// Value of SOCK_REVERSE: the frontend the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockReverseValue {
    /// Network byte order.
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub service_id: u32,
}

/// Value of SOCK_CONNECTED (keyed by socket cookie): where a connected socket was sent and
/// what the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockConnection {
    /// Network byte order.
    pub backend_addr: [u8; 16],
    /// Network byte order.
    pub backend_port: u16,
    pub _pad: [u8; 6],
    pub frontend: SockReverseValue,
}

/// Key data of the SOURCE_RANGES LPM trie (`loadBalancerSourceRanges`); the kernel's LPM
/// key is a u32 prefix length followed by this. The prefix always covers the service id and
/// the family (40 bits), so a range's prefix length is `40 + CIDR bits` (see
/// [`SourceRangeKey::prefix_len`]); a lookup uses the full `40 + 128`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    /// Big-endian service id, so that the trie matches it as a prefix.
    pub service_id_be: [u8; 4],
    /// Keeps IPv4 and IPv6 ranges apart.
    pub family: u8,
    /// Network byte order.
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}

impl SourceRangeKey {
    /// Bits of the key before the address: service id and family.
    pub const HEADER_BITS: u32 = 40;
    /// Prefix length for a CIDR of `cidr_bits` bits.
    pub const fn prefix_len(cidr_bits: u8) -> u32 {
        Self::HEADER_BITS + cidr_bits as u32
    }
    /// Prefix length of a lookup for one address.
    pub const LOOKUP_PREFIX_LEN: u32 = Self::HEADER_BITS + 128;
}

/// Value of SERVICE_NAMES: `namespace/name:port-name` (or `:port-number` when unnamed),
/// UTF-8, `len` bytes used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    pub len: u16,
    pub bytes: [u8; 254],
}

impl ServiceName {
    /// Names longer than 254 bytes (impossible for valid Kubernetes names) are cut.
    pub fn new(name: &str) -> Self {
        let mut bytes = [0u8; 254];
        let len = name.len().min(bytes.len());
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self {
            len: len as u16,
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(self.bytes.len());
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("<invalid utf-8>")
    }
}

/// The single CONFIG array entry: tunables the datapath reads on every new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub tcp_established_timeout_ns: u64,
    /// SYN seen but no reply yet, or FIN/RST seen.
    pub tcp_transient_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// Other protocols (SCTP).
    pub other_timeout_ns: u64,
    /// Bits of `config_flags`.
    pub flags: u32,
    /// Source ports of masqueraded flows, `masquerade_port_min..=masquerade_port_max` (host
    /// order); both 0: no masquerade. (These took the place of 4 bytes of padding, so a
    /// CONFIG pinned before them reads as "no masquerade".)
    pub masquerade_port_min: u16,
    pub masquerade_port_max: u16,
    /// Nanoseconds per kernel tick (1e9 / HZ), measured by the agent: the flow cache times
    /// its slots in jiffies (`bpf_jiffies64`, inlined by the JIT, where a clock read is a
    /// helper call). 0: unknown, the flow cache stays off.
    pub ns_per_jiffy: u32,
    /// Bumped by the agent whenever it deletes CONNTRACK entries or rewrites CONFIG: a flow
    /// cache slot filled under another generation is not used.
    pub flow_generation: u32,
    /// FRONTEND_FILTER's words in use, log2 ([`frontend_filter::words_log2_in_use`]: 0 is
    /// 2^15). Owned by the filter's writer: every other CONFIG writer keeps the pinned value.
    pub frontend_filter_words_log2: u32,
    pub _pad: u32,
}

pub mod config_flags {
    /// Emit aya-log lines per packet (debugging only).
    pub const DEBUG_LOG: u32 = 1 << 0;
    /// Balanced packets go up the stack to be forwarded, never straight out of XDP (the
    /// agent's `--fast-path=false`). Clear (the default, and in a CONFIG pinned before this
    /// bit): the forward path sends them out itself where it can (`lb-ebpf/src/fast_path.rs`).
    pub const FAST_PATH_OFF: u32 = 1 << 1;
}

const SECOND_NS: u64 = 1_000_000_000;

impl Config {
    /// How long a flow of `proto` lives without packets, given the `tcp_seen` bits of its
    /// packets: TCP after FIN or RST, or before the handshake completed, is transient. One
    /// definition for the datapath (conntrack) and the agent (masquerade table expiry).
    #[inline(always)]
    pub const fn flow_timeout_ns(&self, proto: u8, tcp_seen_bits: u8) -> u64 {
        match proto {
            PROTO_TCP => {
                if tcp_seen_bits & (tcp_seen::FIN | tcp_seen::RST) != 0
                    || tcp_seen_bits & tcp_seen::ESTABLISHED == 0
                {
                    self.tcp_transient_timeout_ns
                } else {
                    self.tcp_established_timeout_ns
                }
            }
            PROTO_UDP => self.udp_timeout_ns,
            _ => self.other_timeout_ns,
        }
    }

    /// Whether masquerade is on (a port range is set).
    #[inline(always)]
    pub const fn masquerades(&self) -> bool {
        self.masquerade_port_min != 0 && self.masquerade_port_min <= self.masquerade_port_max
    }
}

impl Default for Config {
    /// kube-proxy's and Cilium's spirit: TCP established 6 h, transient 10 s, UDP 60 s.
    fn default() -> Self {
        Self {
            tcp_established_timeout_ns: 6 * 3600 * SECOND_NS,
            tcp_transient_timeout_ns: 10 * SECOND_NS,
            udp_timeout_ns: 60 * SECOND_NS,
            other_timeout_ns: 60 * SECOND_NS,
            flags: 0,
            masquerade_port_min: 0,
            masquerade_port_max: 0,
            ns_per_jiffy: 0,
            flow_generation: 0,
            frontend_filter_words_log2: 0,
            _pad: 0,
        }
    }
}

/// `SnatValue::direction` values.
pub mod snat_direction {
    /// Key: client -> endpoint (after DNAT, as the packet leaves this node). `addr:port` is
    /// the source to write: this node's address and the allocated port; port 0 while the
    /// port is not allocated yet (the flow was balanced, its first packet has not left).
    pub const OUT: u8 = 1;
    /// Key: endpoint -> node address and allocated port (a reply as it arrives). `addr:port`
    /// is the client to give the packet back to.
    pub const IN: u8 = 2;
}

/// Value of the SNAT map (key: [`FlowKey`], as the packet is on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatValue {
    /// Network byte order.
    pub addr: [u8; 16],
    /// Same clock as `FlowValue::last_seen_ns`, refreshed as rarely.
    pub last_seen_ns: u64,
    /// Network byte order.
    pub port: u16,
    /// `snat_direction` value.
    pub direction: u8,
    /// `tcp_seen` bits of the packets in this entry's direction.
    pub tcp_flags_seen: u8,
    /// When this direction first sent a FIN: `bpf_ktime_get_ns() >> 10` (about µs),
    /// truncated to 32 bits; 0: no FIN yet. Only compared with the other direction's, to
    /// tell which side closed first (it keeps the tuple in TIME_WAIT).
    pub fin_at_us: u32,
}

/// Value of SNAT_ADDRESSES (key: interface index): the source addresses of masqueraded
/// flows leaving through the interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnatAddresses {
    /// IPv4-mapped layout: the address in the first 4 bytes, as everywhere (network order).
    pub ipv4: [u8; 16],
    pub ipv6: [u8; 16],
    pub has_ipv4: u8,
    pub has_ipv6: u8,
    pub _pad: [u8; 6],
}

/// Whether a new flow is masqueraded: it came from outside to an external frontend
/// (NodePort, load-balancer IP, external IP) with `externalTrafficPolicy: Cluster`, and
/// was balanced to an endpoint on another node, whose reply would otherwise go straight to
/// the client from the pod's address. As Cilium, not as kube-proxy: traffic to a local
/// endpoint keeps the client's address (the reply comes back through this node anyway).
/// Cluster IPs are not masqueraded: pods and the node reach them at socket level.
/// The datapath's decision; one definition, which the tests' table checks.
pub const fn masquerades(frontend_flags: u16, backend_flags: u8) -> bool {
    frontend_flags & frontend_flags::EXTERNAL != 0
        && frontend_flags & frontend_flags::TRAFFIC_POLICY_LOCAL == 0
        && backend_flags & backend_flags::NODE_LOCAL == 0
}

/// Version of the layout of the pinned maps' keys and values, pinned beside them (the
/// one-entry array `maps/LAYOUT`; maps pinned without it are version 0, the layout of
/// version 1). Bump it whenever a key or value of [`MAP_LAYOUTS`] changes (size, field order
/// or meaning), and give the previous version a converter in
/// `lb-userspace/src/dataplane/migrate.rs`: an agent that finds another version pinned
/// rebuilds the maps and carries their entries over, so that flows survive the upgrade.
///
/// - 2: CONFIG grew (`ns_per_jiffy`, `flow_generation`).
/// - 3: CONFIG grew (`frontend_filter_words_log2`); FRONTEND_FILTER has 2^17 words (its
///   size in use in CONFIG) and three bits per frontend by a new hash: recomputed from
///   FRONTENDS, not carried.
pub const LAYOUT_VERSION: u32 = 3;

/// Key and value of a pinned map, as this build writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    /// Where in the value the entry's last use is (`bpf_ktime_get_coarse_ns`, a u64), for
    /// flow maps: moved into a smaller map, the most recently used entries are kept.
    pub last_seen_offset: Option<usize>,
}

const fn layout<K, V>(name: &'static str, last_seen_offset: Option<usize>) -> MapLayout {
    MapLayout {
        name,
        key_size: core::mem::size_of::<K>(),
        value_size: core::mem::size_of::<V>(),
        last_seen_offset,
    }
}

/// The layout of every pinned map (per-CPU maps: one CPU's value).
pub const MAP_LAYOUTS: [MapLayout; 21] = [
    layout::<FrontendKey, FrontendValue>(map_names::FRONTENDS, None),
    layout::<u32, u64>(map_names::FRONTEND_FILTER, None),
    layout::<u32, Backend>(map_names::BACKENDS, None),
    layout::<u32, u32>(map_names::SELECTION, None),
    layout::<TableMember, u32>(map_names::TABLE_MEMBERS, None),
    layout::<FlowKey, FlowValue>(
        map_names::CONNTRACK,
        Some(core::mem::offset_of!(FlowValue, last_seen_ns)),
    ),
    layout::<AffinityKey, AffinityValue>(
        map_names::AFFINITY,
        Some(core::mem::offset_of!(AffinityValue, last_seen_ns)),
    ),
    layout::<FragmentKey, FragmentValue>(map_names::FRAGMENTS, None),
    // The kernel's LPM key: a u32 prefix length, then the key data.
    layout::<(u32, SourceRangeKey), u8>(map_names::SOURCE_RANGES, None),
    layout::<u32, u64>(map_names::REASON_STATS, None),
    layout::<u32, ServiceCounters>(map_names::SERVICE_STATS, None),
    layout::<u32, u64>(map_names::PROTO_STATS, None),
    layout::<u32, Config>(map_names::CONFIG, None),
    layout::<u32, ServiceName>(map_names::SERVICE_NAMES, None),
    layout::<SockReverseKey, SockReverseValue>(map_names::SOCK_REVERSE, None),
    layout::<u64, SockConnection>(map_names::SOCK_CONNECTED, None),
    layout::<u32, u64>(map_names::SOCKET_STATS, None),
    layout::<FlowKey, SnatValue>(
        map_names::SNAT,
        Some(core::mem::offset_of!(SnatValue, last_seen_ns)),
    ),
    layout::<u32, SnatAddresses>(map_names::SNAT_ADDRESSES, None),
    layout::<FlowKey, FlowValue>(
        map_names::HANDSHAKES,
        Some(core::mem::offset_of!(FlowValue, last_seen_ns)),
    ),
    layout::<u32, u64>(map_names::FAST_PATH_STATS, None),
];

/// The layout of the pinned map `name`, if it is one.
pub fn map_layout(name: &str) -> Option<&'static MapLayout> {
    MAP_LAYOUTS.iter().find(|layout| layout.name == name)
}

const _: () = {
    assert!(core::mem::size_of::<SnatValue>() == 32);
    assert!(core::mem::size_of::<SnatAddresses>() == 40);
    assert!(core::mem::size_of::<FrontendKey>() == 20);
    assert!(core::mem::size_of::<FrontendValue>() == 24);
    assert!(core::mem::size_of::<Backend>() == 24);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowValue>() == 40);
    assert!(core::mem::size_of::<AffinityKey>() == 24);
    assert!(core::mem::size_of::<AffinityValue>() == 16);
    assert!(core::mem::size_of::<TableMember>() == 8);
    assert!(core::mem::size_of::<FragmentKey>() == 40);
    assert!(core::mem::size_of::<FragmentValue>() == 8);
    assert!(core::mem::size_of::<SourceRangeKey>() == 24);
    assert!(core::mem::size_of::<Config>() == 56);
    assert!(core::mem::size_of::<FlowCacheSlot>() == 80);
    assert!(core::mem::size_of::<ServiceName>() == 256);
    assert!(core::mem::size_of::<ServiceCounters>() == 32);
    assert!(core::mem::size_of::<SockReverseKey>() == 32);
    assert!(core::mem::size_of::<SockReverseValue>() == 24);
    assert!(core::mem::size_of::<SockConnection>() == 48);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], has explicit padding and only integer fields,
    // so any bit pattern is valid.
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for FrontendValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for TableMember {}
    unsafe impl aya::Pod for FragmentKey {}
    unsafe impl aya::Pod for FragmentValue {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for FlowCacheSlot {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for SockReverseKey {}
    unsafe impl aya::Pod for SockReverseValue {}
    unsafe impl aya::Pod for SockConnection {}
    unsafe impl aya::Pod for SnatValue {}
    unsafe impl aya::Pod for SnatAddresses {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_size_gives_at_least_100_slots_per_backend() {
        assert_eq!(maglev_size_for(0), 251);
        assert_eq!(maglev_size_for(1), 251);
        assert_eq!(maglev_size_for(3), 509);
        assert_eq!(maglev_size_for(10), 1021);
        assert_eq!(maglev_size_for(100), 16381);
        assert_eq!(maglev_size_for(1311), 131071);
        assert_eq!(maglev_size_for(5000), 131071, "capped at the largest size");
    }

    /// Fails when a pinned map's key or value changes size without a new LAYOUT_VERSION:
    /// bump it, add the converter from the previous version (lb-userspace's
    /// `dataplane/migrate.rs`), then write the new sizes here.
    #[test]
    fn layout_version_names_the_pinned_sizes() {
        let sizes: [(&str, usize, usize); 21] = [
            ("FRONTENDS", 20, 24),
            ("FRONTEND_FILTER", 4, 8),
            ("BACKENDS", 4, 24),
            ("SELECTION", 4, 4),
            ("TABLE_MEMBERS", 8, 4),
            ("CONNTRACK", 40, 40),
            ("AFFINITY", 24, 16),
            ("FRAGMENTS", 40, 8),
            ("SOURCE_RANGES", 28, 1),
            ("REASON_STATS", 4, 8),
            ("SERVICE_STATS", 4, 32),
            ("PROTO_STATS", 4, 8),
            ("CONFIG", 4, 56),
            ("SERVICE_NAMES", 4, 256),
            ("SOCK_REVERSE", 32, 24),
            ("SOCK_CONNECTED", 8, 48),
            ("SOCKET_STATS", 4, 8),
            ("SNAT", 40, 32),
            ("SNAT_ADDRESSES", 4, 40),
            ("HANDSHAKES", 40, 40),
            ("FAST_PATH_STATS", 4, 8),
        ];
        let pinned: [(&str, usize, usize); 21] =
            MAP_LAYOUTS.map(|layout| (layout.name, layout.key_size, layout.value_size));
        assert_eq!(
            (LAYOUT_VERSION, pinned),
            (3, sizes),
            "a pinned map's layout changed: bump LAYOUT_VERSION and add a converter"
        );
        assert_eq!(
            map_layout("CONNTRACK").and_then(|layout| layout.last_seen_offset),
            Some(8)
        );
    }

    #[test]
    fn maglev_sizes_fit_power_of_two_blocks() {
        for size in MAGLEV_SIZES {
            let block = size.next_power_of_two();
            assert!(
                (block - size) * 50 <= block,
                "{size} wastes {} of {block} slots",
                block - size
            );
        }
    }
}
