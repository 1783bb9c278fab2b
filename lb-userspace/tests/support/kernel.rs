//! Shared setup for the kernel tests: a loaded datapath with unpinned maps, written through
//! `AyaMaps` like the agent does, reset between cases.
#![allow(dead_code, reason = "each test file uses a different subset")]

use aya::maps::{Array, HashMap, LpmTrie, MapData};
use lb_common::{
    AffinityKey, AffinityValue, Backend, Config, FAMILY_IPV4, FAMILY_IPV6, FlowKey, FlowValue,
    FragmentKey, FragmentValue, FrontendKey, FrontendValue, ProtoCounter, Reason, ServiceCounters,
    SnatAddresses, SnatValue, SourceRangeKey, backend_state, map_names,
};
use slicelb::dataplane::{
    MapCapacity, MapOp, MapWriter,
    aya_maps::AyaMaps,
    loader::{Datapath, DatapathOptions},
    masquerade::PortRange,
    test_run::{self, RunOutput},
};
use std::net::IpAddr;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const TC_ACT_SHOT: u32 = 2;
/// `TCX_NEXT` (-1) as a test run returns it: the program passed the packet on.
pub const TCX_NEXT: u32 = u32::MAX;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Maglev table size used by every test service.
pub const TABLE_SIZE: u32 = 251;

/// The interface a TC program sees (`skb->ifindex`) in BPF_PROG_TEST_RUN: the kernel runs
/// it on an skb of the current network namespace's loopback device, whose index is always
/// 1, unless the run's context names another (ours never does).
pub const TEST_RUN_IFINDEX: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Xdp,
    TcIngress,
    TcEgress,
}

impl Program {
    pub fn name(self) -> &'static str {
        use lb_common::program_names::*;
        match self {
            Program::Xdp => XDP_INGRESS,
            Program::TcIngress => TC_INGRESS,
            Program::TcEgress => TC_EGRESS,
        }
    }
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel tests load BPF programs and need root: run them with sudo"
    );
}

pub fn addr16(addr: &str) -> ([u8; 16], u8) {
    match addr.parse::<IpAddr>().expect("address") {
        IpAddr::V4(a) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&a.octets());
            (out, FAMILY_IPV4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_IPV6),
    }
}

/// A test service: one frontend and its backends, with a simple round-robin table.
#[derive(Clone, Debug)]
pub struct Service {
    pub id: u32,
    pub frontend: FrontendKey,
    pub value: FrontendValue,
    pub backends: Vec<(u32, Backend)>,
    pub table: Vec<u32>,
}

impl Service {
    /// `backends`: (id, address, port, state).
    pub fn new(
        id: u32,
        addr: &str,
        port: u16,
        proto: u8,
        kind: u8,
        flags: u16,
        backends: &[(u32, &str, u16, u8)],
    ) -> Self {
        let (a, family) = addr16(addr);
        let frontend = FrontendKey {
            addr: a,
            port: port.to_be(),
            proto,
            family,
        };
        let backends: Vec<(u32, Backend)> = backends
            .iter()
            .map(|(bid, baddr, bport, state)| {
                let (b, bfamily) = addr16(baddr);
                (
                    *bid,
                    Backend {
                        addr: b,
                        port: bport.to_be(),
                        family: bfamily,
                        state: *state,
                        flags: 0,
                        _pad: [0; 3],
                    },
                )
            })
            .collect();
        let in_table: Vec<u32> = backends
            .iter()
            .filter(|(_, b)| b.state == backend_state::ACTIVE)
            .map(|(id, _)| *id)
            .collect();
        let table: Vec<u32> = if in_table.is_empty() {
            Vec::new()
        } else {
            (0..TABLE_SIZE as usize)
                .map(|i| in_table[i % in_table.len()])
                .collect()
        };
        let value = FrontendValue {
            service_id: id,
            table_offset: id * 512,
            table_size: table.len() as u32,
            affinity_timeout_secs: 10_800,
            backend_count: in_table.len() as u16,
            flags,
            kind,
            _pad: [0; 3],
        };
        Self {
            id,
            frontend,
            value,
            backends,
            table,
        }
    }

    /// The same service with `flags` (`backend_flags`, e.g. NODE_LOCAL) on every backend.
    pub fn backend_flags(mut self, flags: u8) -> Self {
        for (_, backend) in &mut self.backends {
            backend.flags = flags;
        }
        self
    }

    /// The same service with its table at another offset (a new table is written into
    /// free space, never over the one in use).
    pub fn at_offset(mut self, offset: u32) -> Self {
        self.value.table_offset = offset;
        self
    }

    /// The map operations the agent would write, in make-before-break order.
    pub fn ops(&self) -> Vec<MapOp> {
        let mut ops: Vec<MapOp> = self
            .backends
            .iter()
            .map(|(id, backend)| MapOp::PutBackend {
                id: *id,
                backend: *backend,
            })
            .collect();
        if !self.table.is_empty() {
            ops.push(MapOp::PutSelection {
                offset: self.value.table_offset,
                slots: self.table.as_slice().into(),
            });
            ops.push(MapOp::PutTableMembers {
                offset: self.value.table_offset,
                slots: self.table.as_slice().into(),
            });
        }
        ops.push(MapOp::PutFrontend {
            key: self.frontend,
            value: self.value,
        });
        ops.push(MapOp::PutServiceName {
            id: self.id,
            name: format!("test/svc-{}:p", self.id),
        });
        ops
    }

    /// The backend the Maglev slot of a flow names.
    pub fn pick(&self, src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> Backend {
        let (s, _) = addr16(src);
        let (d, _) = addr16(dst);
        let hash = lb_common::hash::flow_hash(&s, &d, sport.to_be(), dport.to_be(), proto);
        let id = self.table[(hash % self.table.len() as u32) as usize];
        self.backends
            .iter()
            .find(|(bid, _)| *bid == id)
            .expect("backend in table")
            .1
    }
}

pub fn backend_addr(b: &Backend) -> String {
    if b.family == FAMILY_IPV4 {
        std::net::Ipv4Addr::new(b.addr[0], b.addr[1], b.addr[2], b.addr[3]).to_string()
    } else {
        std::net::Ipv6Addr::from(b.addr).to_string()
    }
}

/// Masquerade as the agent turns it on (`Datapath::set_masquerade`), for the interface test
/// runs see.
/// The masquerade rows' NodePort frontend: its port, its endpoint's port (on another node),
/// and the `--masquerade-ports` of most rows: a hundred ports, so that a port outside the
/// range or not the flow's shows.
pub mod masquerade_rows {
    use super::PortRange;

    pub const NODE_PORT: u16 = 30080;
    pub const ENDPOINT_PORT: u16 = 8080;
    pub const PORTS: PortRange = PortRange {
        min: 61000,
        max: 61099,
    };
}

#[derive(Clone, Copy, Debug)]
pub struct Masquerade {
    /// `--masquerade-ports`; None: off.
    pub ports: Option<PortRange>,
    /// The addresses of [`TEST_RUN_IFINDEX`].
    pub addresses: SnatAddresses,
}

pub struct Env {
    pub datapath: Datapath,
    pub maps: AyaMaps,
    /// Backend ids and selection ranges written since the last reset.
    touched_backends: Vec<u32>,
    touched_selection: Vec<(u32, usize)>,
}

/// Small maps: tests load quickly and never need more.
pub fn test_capacity() -> MapCapacity {
    MapCapacity {
        frontends: 131_072,
        backends: 1024,
        selection_slots: 64 * 1024,
        table_members: 4096,
        conntrack: 4096,
        handshakes: 1024,
        affinity: 1024,
        fragments: 1024,
        socket_flows: 1024,
        snat: 1024,
        source_ranges: 1024,
        services: 1024,
    }
}

impl Env {
    pub fn new() -> Self {
        Self::with_capacity(test_capacity())
    }

    pub fn with_capacity(capacity: MapCapacity) -> Self {
        require_root();
        let options = DatapathOptions {
            capacity,
            config: Config::default(),
            overwrite_config: true,
        };
        let datapath = Datapath::load_unpinned(&options).expect("loading the datapath (unpinned)");
        let maps = AyaMaps::from_datapath(&datapath).expect("opening the maps");
        Self {
            datapath,
            maps,
            touched_backends: Vec::new(),
            touched_selection: Vec::new(),
        }
    }

    pub fn apply(&mut self, ops: &[MapOp]) {
        for op in ops {
            match op {
                MapOp::PutBackend { id, .. } => self.touched_backends.push(*id),
                MapOp::PutSelection { offset, slots } => {
                    self.touched_selection.push((*offset, slots.len()))
                }
                _ => {}
            }
        }
        self.maps.apply(ops).expect("applying map operations");
    }

    pub fn install(&mut self, service: &Service) {
        self.apply(&service.ops());
    }

    pub fn set_config(&mut self, config: Config) {
        self.datapath.write_config(&config).expect("writing CONFIG");
    }

    /// Masquerade on (or off) as the agent sets it, with `masquerade.addresses` for the
    /// interface a TC test run sees ([`TEST_RUN_IFINDEX`]).
    pub fn set_masquerade(&mut self, masquerade: &Masquerade) {
        self.datapath
            .set_masquerade(
                masquerade.ports,
                &[(TEST_RUN_IFINDEX, masquerade.addresses)],
            )
            .expect("turning masquerade on");
    }

    /// Every entry of SNAT (masquerade state).
    pub fn snat_entries(&self) -> Vec<(FlowKey, SnatValue)> {
        let snat: HashMap<&MapData, FlowKey, SnatValue> =
            HashMap::try_from(self.datapath.map(map_names::SNAT).expect("SNAT")).expect("SNAT");
        snat.iter()
            .map(|entry| entry.expect("SNAT entry"))
            .collect()
    }

    /// Empties every map (counters excepted: tests compare deltas).
    pub fn reset(&mut self) {
        fn clear_hash<K: aya::Pod, V: aya::Pod>(map: &mut aya::maps::Map, name: &str) {
            let mut hash: HashMap<&mut MapData, K, V> =
                HashMap::try_from(map).unwrap_or_else(|e| panic!("{name}: {e}"));
            let keys: Vec<K> = hash.keys().map(|k| k.expect("key")).collect();
            for key in keys {
                hash.remove(&key)
                    .unwrap_or_else(|e| panic!("clearing {name}: {e}"));
            }
        }
        let dp = &mut self.datapath;
        clear_hash::<FrontendKey, FrontendValue>(
            dp.map_mut(map_names::FRONTENDS).unwrap(),
            "FRONTENDS",
        );
        clear_hash::<FlowKey, FlowValue>(dp.map_mut(map_names::CONNTRACK).unwrap(), "CONNTRACK");
        clear_hash::<FlowKey, FlowValue>(dp.map_mut(map_names::HANDSHAKES).unwrap(), "HANDSHAKES");
        clear_hash::<lb_common::TableMember, u32>(
            dp.map_mut(map_names::TABLE_MEMBERS).unwrap(),
            "TABLE_MEMBERS",
        );
        clear_hash::<AffinityKey, AffinityValue>(
            dp.map_mut(map_names::AFFINITY).unwrap(),
            "AFFINITY",
        );
        clear_hash::<FragmentKey, FragmentValue>(
            dp.map_mut(map_names::FRAGMENTS).unwrap(),
            "FRAGMENTS",
        );
        clear_hash::<FlowKey, SnatValue>(dp.map_mut(map_names::SNAT).unwrap(), "SNAT");
        clear_hash::<u32, SnatAddresses>(
            dp.map_mut(map_names::SNAT_ADDRESSES).unwrap(),
            "SNAT_ADDRESSES",
        );
        clear_hash::<u32, lb_common::ServiceName>(
            dp.map_mut(map_names::SERVICE_NAMES).unwrap(),
            "SERVICE_NAMES",
        );
        {
            let mut trie: LpmTrie<&mut MapData, SourceRangeKey, u8> =
                LpmTrie::try_from(dp.map_mut(map_names::SOURCE_RANGES).unwrap())
                    .expect("SOURCE_RANGES");
            let keys: Vec<_> = trie.keys().map(|k| k.expect("key")).collect();
            for key in keys {
                trie.remove(&key).expect("clearing SOURCE_RANGES");
            }
        }
        {
            let mut backends: Array<&mut MapData, Backend> =
                Array::try_from(dp.map_mut(map_names::BACKENDS).unwrap()).expect("BACKENDS");
            for id in self.touched_backends.drain(..) {
                backends
                    .set(id, &Backend::default(), 0)
                    .expect("clearing BACKENDS");
            }
        }
        {
            let mut selection: Array<&mut MapData, u32> =
                Array::try_from(dp.map_mut(map_names::SELECTION).unwrap()).expect("SELECTION");
            for (offset, len) in self.touched_selection.drain(..) {
                for slot in offset..offset + len as u32 {
                    selection.set(slot, &0, 0).expect("clearing SELECTION");
                }
            }
        }
        self.set_config(Config::default());
    }

    pub fn run(&self, program: Program, packet: &[u8]) -> RunOutput {
        self.try_run(program, packet).unwrap_or_else(|e| {
            panic!(
                "test run of {}: {e:?} for packet {packet:02x?}",
                program.name()
            )
        })
    }

    pub fn try_run(
        &self,
        program: Program,
        packet: &[u8],
    ) -> Result<RunOutput, test_run::TestRunError> {
        let name = program.name();
        match program {
            Program::TcIngress | Program::TcEgress => {
                test_run::run(self.datapath.tc(name).expect("tc program"), name, packet)
            }
            _ => test_run::run(self.datapath.xdp(name).expect("xdp program"), name, packet),
        }
    }

    /// A TC program run on an skb marked CHECKSUM_COMPLETE (the kernel checks `skb->csum`
    /// against the packet afterwards).
    pub fn run_checksum_complete(
        &self,
        program: Program,
        packet: &[u8],
    ) -> Result<RunOutput, test_run::TestRunError> {
        let name = program.name();
        test_run::run_checksum_complete(self.datapath.tc(name).expect("tc program"), name, packet)
    }

    pub fn reasons(&self) -> Vec<(Reason, u64)> {
        self.maps.reasons().expect("reading REASON_STATS")
    }

    pub fn protocols(&self) -> Vec<(ProtoCounter, u64)> {
        self.maps.protocols().expect("reading PROTO_STATS")
    }

    pub fn service(&self, id: u32) -> ServiceCounters {
        self.maps
            .service_counters(id)
            .expect("reading SERVICE_STATS")
    }
}

/// Which reasons changed between two snapshots, and by how much.
pub fn reason_deltas(before: &[(Reason, u64)], after: &[(Reason, u64)]) -> Vec<(Reason, u64)> {
    before
        .iter()
        .zip(after)
        .filter(|((_, b), (_, a))| a != b)
        .map(|((reason, b), (_, a))| (*reason, a - b))
        .collect()
}
