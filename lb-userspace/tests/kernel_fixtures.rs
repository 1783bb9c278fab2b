//! Packet fixtures through BPF_PROG_TEST_RUN: each row sets up the maps the way the agent
//! does (MapOps through `AyaMaps`), runs one packet through one program and checks the
//! verdict, the packet that came out (byte for byte against a packet built by etherparse,
//! and re-checked with etherparse's checksums), the reason counters and the service
//! counters. Needs root.
//!
//! Each row is a `#[test]` in its group's file (`kernel_fixtures/<group>.rs`), so
//! `cargo test --test kernel_fixtures -- <row>` runs one row. A row written for both address
//! families (`check_both_families`) runs once per family.
//!
//! Checksum states: every TC row that rewrites a packet runs a second time on an skb marked
//! CHECKSUM_COMPLETE (`BPF_F_TEST_SKB_CHECKSUM_COMPLETE`; the kernel fails the run if
//! `skb->csum` no longer matches). BPF_PROG_TEST_RUN cannot mark an skb CHECKSUM_PARTIAL
//! (the test-run context has no `ip_summed`), so partial (offloaded) checksums are covered
//! by the lab test (`lab_datapath.rs`: client offload on, TC ingress).

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

// The row groups, one file each under kernel_fixtures/: part of this test crate, not test
// targets of their own (cargo and `cargo xtask test` take tests/*.rs).
#[path = "kernel_fixtures/fast_path.rs"]
mod fast_path;
#[path = "kernel_fixtures/flows.rs"]
mod flows;
#[path = "kernel_fixtures/forward.rs"]
mod forward;
#[path = "kernel_fixtures/fragments.rs"]
mod fragments;
#[path = "kernel_fixtures/icmp.rs"]
mod icmp;
#[path = "kernel_fixtures/malformed.rs"]
mod malformed;
#[path = "kernel_fixtures/masquerade.rs"]
mod masquerade;
#[path = "kernel_fixtures/misses.rs"]
mod misses;
#[path = "kernel_fixtures/rejects.rs"]
mod rejects;
#[path = "kernel_fixtures/reverse.rs"]
mod reverse;
#[path = "kernel_fixtures/source_ranges.rs"]
mod source_ranges;

use kernel::*;
use lb_common::{
    Config, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason, ReasonClass, ServiceCounters, SourceRangeKey,
    backend_state::ACTIVE, frontend_flags, frontend_kind,
};
use packets::*;
use slicelb::dataplane::MapOp;

/// One fixture: the maps as the agent would leave them, one packet through one program,
/// and what must come of it.
struct Row {
    setup: Setup,
    program: Program,
    input: Vec<u8>,
    expect: Expect,
}

/// What is in place before the packet runs, in this order.
#[derive(Default)]
struct Setup {
    /// Installed as the agent writes them.
    services: Vec<Service>,
    /// More map operations (source ranges).
    ops: Vec<MapOp>,
    /// Packets run first (to create flows, affinity, fragment records), each through its
    /// program.
    warmup: Vec<(Program, Vec<u8>)>,
    /// Map changes made after the warmup.
    changes: Vec<MapOp>,
    /// Masquerade turned on (or explicitly off) before anything else; off when None.
    masquerade: Option<Masquerade>,
}

impl Setup {
    /// Just these services.
    fn services(services: Vec<Service>) -> Self {
        Self {
            services,
            ..Self::default()
        }
    }
}

struct Expect {
    /// The program's return code.
    verdict: u32,
    /// The one reason counter that goes up, by one.
    reason: Reason,
    out: Out,
    /// A service whose counters must change by this much (bytes: `packets` times the
    /// input's length).
    service: Option<ServiceDelta>,
}

/// What should come out.
#[derive(Clone, Debug)]
enum Out {
    Unchanged,
    /// This packet, whose checksums etherparse re-checks (those it can see).
    Packet(Vec<u8>),
    /// Dropped: the output bytes do not matter.
    Dropped,
}

struct ServiceDelta {
    id: u32,
    packets: u64,
    new_flows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Family; 2] = [Family::V4, Family::V6];

    fn client(self) -> &'static str {
        match self {
            Family::V4 => "198.18.0.1",
            Family::V6 => "2001:2::1",
        }
    }

    fn node(self) -> &'static str {
        match self {
            Family::V4 => "198.18.0.10",
            Family::V6 => "2001:2::10",
        }
    }

    /// The ClusterIP of [`cluster_ip`].
    fn vip(self) -> &'static str {
        match self {
            Family::V4 => "198.18.100.1",
            Family::V6 => "2001:2:0:100::1",
        }
    }

    /// The LoadBalancer IP of [`load_balancer`].
    fn lb(self) -> &'static str {
        match self {
            Family::V4 => "198.18.200.1",
            Family::V6 => "2001:2:0:200::1",
        }
    }

    /// Length of the IP header of a packet without options or extension headers.
    fn ip_header_len(self) -> usize {
        match self {
            Family::V4 => 20,
            Family::V6 => 40,
        }
    }
}

/// Service 1 (IPv4) or 2 (IPv6): a ClusterIP on port 80 with three backends on 8080.
fn cluster_ip(family: Family, proto: u8) -> Service {
    let (id, backends) = match family {
        Family::V4 => (
            1,
            [
                (10, "198.18.1.1", 8080, ACTIVE),
                (11, "198.18.1.2", 8080, ACTIVE),
                (12, "198.18.1.3", 8080, ACTIVE),
            ],
        ),
        Family::V6 => (
            2,
            [
                (20, "2001:2:0:1::1", 8080, ACTIVE),
                (21, "2001:2:0:1::2", 8080, ACTIVE),
                (22, "2001:2:0:1::3", 8080, ACTIVE),
            ],
        ),
    };
    Service::new(
        id,
        family.vip(),
        80,
        proto,
        frontend_kind::CLUSTER_IP,
        0,
        &backends,
    )
}

/// Service 4 (IPv4) or 5 (IPv6): a LoadBalancer IP on port 443 with two backends on 8443.
fn load_balancer(family: Family, proto: u8) -> Service {
    let (id, backends) = match family {
        Family::V4 => (
            4,
            [
                (40, "198.18.1.1", 8443, ACTIVE),
                (41, "198.18.1.2", 8443, ACTIVE),
            ],
        ),
        Family::V6 => (
            5,
            [
                (50, "2001:2:0:1::1", 8443, ACTIVE),
                (51, "2001:2:0:1::2", 8443, ACTIVE),
            ],
        ),
    };
    Service::new(
        id,
        family.lb(),
        443,
        proto,
        frontend_kind::LOAD_BALANCER,
        frontend_flags::EXTERNAL,
        &backends,
    )
}

/// A TCP packet from the client to port 80 of the ClusterIP.
fn tcp(family: Family, sport: u16, flags: u8) -> Spec {
    Spec::new(family.client(), sport, family.vip(), 80, L4::Tcp(flags))
}

/// A UDP packet from the client to port 80 of the ClusterIP.
fn udp(family: Family, sport: u16) -> Spec {
    Spec::new(family.client(), sport, family.vip(), 80, L4::Udp)
}

fn proto_of(l4: L4) -> u8 {
    match l4 {
        L4::Tcp(_) => PROTO_TCP,
        L4::Udp => PROTO_UDP,
        L4::Sctp => PROTO_SCTP,
    }
}

/// Offset of the L4 header in `spec`'s packet.
fn l4_offset(spec: &Spec) -> usize {
    let family = if spec.src.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    spec.l3_offset() + family.ip_header_len()
}

/// The packet DNAT should produce for `spec` sent to `service`.
fn dnat(service: &Service, spec: &Spec) -> Spec {
    let proto = proto_of(spec.l4);
    let b = service.pick(
        &spec.src.to_string(),
        spec.sport,
        &spec.dst.to_string(),
        spec.dport,
        proto,
    );
    // SCTP keeps its ports (see lb-ebpf/src/lookup.rs).
    let port = if proto == PROTO_SCTP {
        spec.dport
    } else {
        u16::from_be(b.port)
    };
    spec.clone().to(&backend_addr(&b), port)
}

/// Runs one row in a freshly loaded datapath; panics saying what differed.
fn check(row: Row) {
    let mut env = Env::new();
    if let Err(message) = run(&mut env, &row) {
        panic!("{message}");
    }
}

/// Runs a row written for both address families; panics naming the family that failed.
fn check_both_families(row: impl Fn(Family) -> Row) {
    let mut env = Env::new();
    for family in Family::BOTH {
        if let Err(message) = run(&mut env, &row(family)) {
            panic!("{family:?}: {message}");
        }
    }
}

fn set_up(env: &mut Env, setup: &Setup) {
    env.reset();
    if let Some(masquerade) = &setup.masquerade {
        env.set_masquerade(masquerade);
    }
    for service in &setup.services {
        env.install(service);
    }
    env.apply(&setup.ops);
    for (program, packet) in &setup.warmup {
        env.run(*program, packet);
    }
    env.apply(&setup.changes);
}

fn run(env: &mut Env, row: &Row) -> Result<(), String> {
    let expect = &row.expect;
    set_up(env, &row.setup);
    let before = env.reasons();
    let service_before = expect.service.as_ref().map(|s| env.service(s.id));
    let out = env.run(row.program, &row.input);
    let after = env.reasons();

    if out.verdict != expect.verdict {
        return Err(format!(
            "verdict {} (expected {})",
            out.verdict, expect.verdict
        ));
    }
    let deltas = reason_deltas(&before, &after);
    if deltas != vec![(expect.reason, 1)] {
        return Err(format!(
            "reason counters changed by {deltas:?} (expected {:?} +1)",
            expect.reason
        ));
    }
    match &expect.out {
        Out::Unchanged => {
            if out.packet != row.input {
                return Err(format!(
                    "packet changed:\n in  {:02x?}\n out {:02x?}",
                    row.input, out.packet
                ));
            }
        }
        Out::Packet(expected) => {
            if out.packet != *expected {
                return Err(format!(
                    "packet differs:\n got      {:02x?}\n expected {:02x?}",
                    out.packet, expected
                ));
            }
            verify_checksums(&out.packet).map_err(|e| format!("checksum: {e}"))?;
        }
        Out::Dropped => {}
    }
    if let (Some(counted), Some(before)) = (&expect.service, service_before) {
        let after = env.service(counted.id);
        let delta = ServiceCounters {
            packets: after.packets - before.packets,
            bytes: after.bytes - before.bytes,
            new_flows: after.new_flows - before.new_flows,
            socket_translations: after.socket_translations - before.socket_translations,
        };
        let expected = ServiceCounters {
            packets: counted.packets,
            bytes: counted.packets * row.input.len() as u64,
            new_flows: counted.new_flows,
            // The packet path never counts socket-level translations.
            socket_translations: 0,
        };
        if delta != expected {
            return Err(format!(
                "service {} counters changed by {delta:?}, expected {expected:?}",
                counted.id
            ));
        }
    }
    check_checksum_complete(env, row, &out.packet)
}

/// TC rows that rewrite a packet run again on an skb marked CHECKSUM_COMPLETE: the kernel
/// fails the run (EBADMSG) if the rewrite left `skb->csum` stale, and the output must be
/// the same. Rejects are left out: they rebuild the whole packet, which goes back out of
/// the interface (where CHECKSUM_COMPLETE is not used).
fn check_checksum_complete(env: &mut Env, row: &Row, expected: &[u8]) -> Result<(), String> {
    let rewrites = match row.expect.reason.class() {
        ReasonClass::Lb | ReasonClass::Reply | ReasonClass::Icmp => true,
        ReasonClass::Pass | ReasonClass::Reject | ReasonClass::Drop => false,
    };
    if !matches!(row.program, Program::TcIngress | Program::TcEgress) || !rewrites {
        return Ok(());
    }
    // Same map state as the first run.
    set_up(env, &row.setup);
    let out = env
        .run_checksum_complete(row.program, &row.input)
        .map_err(|e| format!("with CHECKSUM_COMPLETE: {e}"))?;
    if out.packet != expected {
        return Err(format!(
            "with CHECKSUM_COMPLETE the packet differs:\n got      {:02x?}\n expected {expected:02x?}",
            out.packet
        ));
    }
    Ok(())
}
/// Foundation: one crafted TCP packet through the parse path counts ipv4 and tcp (no
/// frontend is programmed, so nothing but the parsing touches it).
#[test]
fn parse_path_counts_protocols() {
    let env = Env::new();
    let before = env.protocols();
    let out = env.run(Program::Xdp, &tcp(Family::V4, 49000, SYN).build());
    assert_eq!(out.verdict, XDP_PASS, "with no frontend the packet passes");
    let after = env.protocols();
    let deltas: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|((_, b), (_, a))| a != b)
        .map(|((p, b), (_, a))| (p.name(), a - b))
        .collect();
    assert_eq!(
        deltas,
        vec![("ipv4", 1), ("tcp", 1)],
        "protocol counters for one IPv4 TCP packet"
    );
}

/// Per-packet log records are written only while CONFIG has DEBUG_LOG.
#[test]
fn debug_log_only_when_enabled() {
    let mut env = Env::new();
    let mut ring: aya::maps::RingBuf<aya::maps::MapData> = env
        .datapath
        .ebpf_mut()
        .take_map("AYA_LOGS")
        .expect("the object has aya-log's ring buffer")
        .try_into()
        .expect("AYA_LOGS is a ring buffer");
    let packet = tcp(Family::V4, 49100, SYN).build();
    env.run(Program::Xdp, &packet);
    assert!(ring.next().is_none(), "a log record without DEBUG_LOG");
    env.set_config(Config {
        flags: lb_common::config_flags::DEBUG_LOG,
        ..Config::default()
    });
    env.run(Program::Xdp, &packet);
    assert!(ring.next().is_some(), "no log record with DEBUG_LOG set");
    env.set_config(Config::default());
}

/// `AyaMaps` reads back what it wrote (frontends, backends, the selection tables frontends
/// point at, names, source ranges), and a full map is an error naming it that loses
/// nothing already written.
#[test]
fn map_writer_reads_back_and_reports_full_maps() {
    use slicelb::dataplane::{AppliedState, DataplaneError, MapCapacity, MapWriter as _};

    let mut env = Env::with_capacity(MapCapacity {
        frontends: 4,
        ..test_capacity()
    });
    let v4 = cluster_ip(Family::V4, PROTO_TCP);
    let v6 = cluster_ip(Family::V6, PROTO_UDP);
    let (range_addr, family) = addr16("198.18.0.0");
    let range = (
        SourceRangeKey {
            service_id_be: 1u32.to_be_bytes(),
            family,
            addr: range_addr,
            _pad: [0; 3],
        },
        SourceRangeKey::prefix_len(16),
    );
    env.install(&v4);
    env.install(&v6);
    env.apply(&[MapOp::PutSourceRange {
        key: range.0,
        prefix_len: range.1,
    }]);

    let mut expected = AppliedState::default();
    for service in [&v4, &v6] {
        expected.frontends.insert(service.frontend, service.value);
        expected.backends.extend(service.backends.iter().copied());
        expected
            .selection
            .insert(service.value.table_offset, service.table.as_slice().into());
        expected.table_members.insert(
            service.value.table_offset,
            service.value.backend_count.into(),
        );
        expected
            .service_names
            .insert(service.id, format!("test/svc-{}:p", service.id));
    }
    expected.source_ranges.insert(range);
    let state = env.maps.read().expect("reading the maps back");
    assert_eq!(state, expected, "read() must return what apply() wrote");

    // FRONTENDS holds 4: the fifth frontend is refused by name, the first four stay.
    let extra: Vec<MapOp> = (3..=5)
        .map(|id| {
            let service = Service::new(
                id,
                &format!("198.18.100.{id}"),
                80,
                PROTO_TCP,
                frontend_kind::CLUSTER_IP,
                0,
                &[],
            );
            MapOp::PutFrontend {
                key: service.frontend,
                value: service.value,
            }
        })
        .collect();
    match env.maps.apply(&extra) {
        Err(
            error @ DataplaneError::EntryRefused {
                map: "FRONTENDS",
                capacity: 4,
                ..
            },
        ) => {
            assert_eq!(error.kind(), "map_full", "{error}");
            assert!(
                error
                    .to_string()
                    .contains("frontend 198.18.100.5:80/TCP of service id 5 was not written"),
                "the error names the full map and the frontend refused: {error}"
            );
        }
        other => panic!("a fifth frontend in a 4-entry map: {other:?}"),
    }
    assert_eq!(
        env.maps.read().expect("read").frontends.len(),
        4,
        "frontends written before the full one stay"
    );

    let capacity = test_capacity();
    let too_far = MapOp::PutSelection {
        offset: capacity.selection_slots - 10,
        slots: vec![10; 20].into(),
    };
    assert!(
        matches!(
            env.maps.apply(&[too_far]),
            Err(DataplaneError::MapFull {
                map: "SELECTION",
                ..
            })
        ),
        "a table past the end of SELECTION is refused"
    );
    let backend = MapOp::PutBackend {
        id: capacity.backends,
        backend: v4.backends[0].1,
    };
    assert!(
        matches!(
            env.maps.apply(&[backend]),
            Err(DataplaneError::MapFull {
                map: "BACKENDS",
                ..
            })
        ),
        "a backend id past the end of BACKENDS is refused"
    );
}
