//! Packet fixtures through BPF_PROG_TEST_RUN: each row sets up the maps the way the agent
//! does (MapOps through `AyaMaps`), runs one packet through one program and checks the
//! verdict, the packet that came out (byte for byte against a packet built by etherparse,
//! and re-checked with etherparse's checksums), the reason counters and the service
//! counters. Needs root.
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

use kernel::*;
use lb_common::{
    Config, FAMILY_IPV4, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason, ServiceCounters, SourceRangeKey,
    backend_state::{ACTIVE, TERMINATING},
    frontend_flags, frontend_kind,
};
use packets::*;
use slicelb::dataplane::MapOp;

/// What should come out.
#[derive(Clone, Debug)]
enum Out {
    Unchanged,
    Packet(Vec<u8>),
    /// Dropped: the output bytes do not matter.
    Dropped,
}

struct Case {
    name: String,
    program: Program,
    services: Vec<Service>,
    extra_ops: Vec<MapOp>,
    config: Option<Config>,
    /// Packets run first (to create flows, affinity, fragment records), each with its
    /// program, followed by map changes made after them.
    warmup: Vec<(Program, Vec<u8>)>,
    changes: Vec<MapOp>,
    input: Vec<u8>,
    verdict: u32,
    out: Out,
    reason: Reason,
    /// Service id and expected (packets, new_flows) deltas.
    service: Option<(u32, u64, u64)>,
    /// Re-check the output's checksums with etherparse (off where it cannot see them:
    /// fragments, SCTP).
    checksums: bool,
}

impl Case {
    fn new(
        name: &str,
        program: Program,
        input: Vec<u8>,
        verdict: u32,
        out: Out,
        reason: Reason,
    ) -> Self {
        Self {
            name: name.to_string(),
            program,
            services: Vec::new(),
            extra_ops: Vec::new(),
            config: None,
            warmup: Vec::new(),
            changes: Vec::new(),
            input,
            verdict,
            out,
            reason,
            service: None,
            checksums: true,
        }
    }
    fn services(mut self, services: Vec<Service>) -> Self {
        self.services = services;
        self
    }
    fn ops(mut self, ops: Vec<MapOp>) -> Self {
        self.extra_ops = ops;
        self
    }
    fn warmup(mut self, packets: Vec<(Program, Vec<u8>)>) -> Self {
        self.warmup = packets;
        self
    }
    fn changes(mut self, ops: Vec<MapOp>) -> Self {
        self.changes = ops;
        self
    }
    fn service(mut self, id: u32, packets: u64, new_flows: u64) -> Self {
        self.service = Some((id, packets, new_flows));
        self
    }
    fn no_checksums(mut self) -> Self {
        self.checksums = false;
        self
    }
}

const CLIENT4: &str = "198.18.0.1";
const CLIENT6: &str = "2001:2::1";
const NODE4: &str = "198.18.0.10";
const NODE6: &str = "2001:2::10";
const VIP4: &str = "198.18.100.1";
const VIP6: &str = "2001:2:0:100::1";
const LB4: &str = "198.18.200.1";
const LB6: &str = "2001:2:0:200::1";

fn cluster_ip4(id: u32, proto: u8) -> Service {
    Service::new(
        id,
        VIP4,
        80,
        proto,
        frontend_kind::CLUSTER_IP,
        0,
        &[
            (10, "198.18.1.1", 8080, ACTIVE),
            (11, "198.18.1.2", 8080, ACTIVE),
            (12, "198.18.1.3", 8080, ACTIVE),
        ],
    )
}

fn cluster_ip6(id: u32, proto: u8) -> Service {
    Service::new(
        id,
        VIP6,
        80,
        proto,
        frontend_kind::CLUSTER_IP,
        0,
        &[
            (20, "2001:2:0:1::1", 8080, ACTIVE),
            (21, "2001:2:0:1::2", 8080, ACTIVE),
            (22, "2001:2:0:1::3", 8080, ACTIVE),
        ],
    )
}

fn empty_service(id: u32, addr: &str, proto: u8, flags: u16) -> Service {
    Service::new(id, addr, 80, proto, frontend_kind::CLUSTER_IP, flags, &[])
}

fn proto_of(l4: L4) -> u8 {
    match l4 {
        L4::Tcp(_) => PROTO_TCP,
        L4::Udp => PROTO_UDP,
        L4::Sctp => PROTO_SCTP,
    }
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

/// A new flow to a service: rewritten to its Maglev backend.
fn hit(name: &str, program: Program, service: Service, spec: Spec) -> Case {
    let expected = dnat(&service, &spec).build();
    let verdict = if program == Program::Xdp {
        XDP_PASS
    } else {
        TC_ACT_PIPE
    };
    let id = service.id;
    Case::new(
        name,
        program,
        spec.build(),
        verdict,
        Out::Packet(expected),
        Reason::LbNewFlow,
    )
    .services(vec![service])
    .service(id, 1, 1)
}

fn miss(
    name: &str,
    program: Program,
    services: Vec<Service>,
    input: Vec<u8>,
    reason: Reason,
) -> Case {
    let verdict = if program == Program::Xdp {
        XDP_PASS
    } else {
        TC_ACT_PIPE
    };
    Case::new(name, program, input, verdict, Out::Unchanged, reason).services(services)
}

fn dropped(name: &str, services: Vec<Service>, input: Vec<u8>, reason: Reason) -> Case {
    Case::new(name, Program::Xdp, input, XDP_DROP, Out::Dropped, reason).services(services)
}

fn tcp4(sport: u16, flags: u8) -> Spec {
    Spec::new(CLIENT4, sport, VIP4, 80, L4::Tcp(flags))
}

fn tcp6(sport: u16, flags: u8) -> Spec {
    Spec::new(CLIENT6, sport, VIP6, 80, L4::Tcp(flags))
}

/// A client port whose Maglev pick differs from `other`'s.
fn port_with_other_backend(service: &Service, spec: &Spec, other: u16) -> u16 {
    let proto = proto_of(spec.l4);
    let (src, dst) = (spec.src.to_string(), spec.dst.to_string());
    let first = service.pick(&src, other, &dst, spec.dport, proto);
    (other + 1..other + 1000)
        .find(|p| service.pick(&src, *p, &dst, spec.dport, proto) != first)
        .expect("a port with another backend")
}

#[expect(
    clippy::vec_init_then_push,
    reason = "one row per statement reads like a table"
)]
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

    // --- Hits: IPv4 / IPv6 x TCP / UDP / SCTP, ClusterIP, NodePort, LoadBalancer. ---
    cases.push(hit(
        "ipv4 tcp syn to ClusterIP",
        Program::Xdp,
        cluster_ip4(1, PROTO_TCP),
        tcp4(40000, SYN),
    ));
    cases.push(hit(
        "ipv4 udp to ClusterIP",
        Program::Xdp,
        cluster_ip4(1, PROTO_UDP),
        Spec::new(CLIENT4, 40001, VIP4, 80, L4::Udp),
    ));
    cases.push(hit(
        "ipv4 udp without checksum keeps zero",
        Program::Xdp,
        cluster_ip4(1, PROTO_UDP),
        Spec::new(CLIENT4, 40002, VIP4, 80, L4::Udp).udp_no_checksum(),
    ));
    cases.push(
        hit(
            "ipv4 sctp to ClusterIP (address only)",
            Program::Xdp,
            cluster_ip4(1, PROTO_SCTP),
            Spec::new(CLIENT4, 40003, VIP4, 80, L4::Sctp),
        )
        .no_checksums(),
    );
    cases.push(hit(
        "ipv6 tcp syn to ClusterIP",
        Program::Xdp,
        cluster_ip6(2, PROTO_TCP),
        tcp6(40004, SYN),
    ));
    cases.push(hit(
        "ipv6 udp to ClusterIP",
        Program::Xdp,
        cluster_ip6(2, PROTO_UDP),
        Spec::new(CLIENT6, 40005, VIP6, 80, L4::Udp),
    ));
    cases.push(
        hit(
            "ipv6 sctp to ClusterIP (address only)",
            Program::Xdp,
            cluster_ip6(2, PROTO_SCTP),
            Spec::new(CLIENT6, 40006, VIP6, 80, L4::Sctp),
        )
        .no_checksums(),
    );
    let node_port = Service::new(
        3,
        NODE4,
        30080,
        PROTO_TCP,
        frontend_kind::NODE_PORT,
        frontend_flags::EXTERNAL,
        &[
            (30, "198.18.1.1", 8080, ACTIVE),
            (31, "198.18.1.2", 8080, ACTIVE),
        ],
    );
    cases.push(hit(
        "ipv4 tcp to NodePort",
        Program::Xdp,
        node_port.clone(),
        Spec::new(CLIENT4, 40007, NODE4, 30080, L4::Tcp(SYN)),
    ));
    let lb4 = Service::new(
        4,
        LB4,
        443,
        PROTO_TCP,
        frontend_kind::LOAD_BALANCER,
        frontend_flags::EXTERNAL,
        &[
            (40, "198.18.1.1", 8443, ACTIVE),
            (41, "198.18.1.2", 8443, ACTIVE),
        ],
    );
    cases.push(hit(
        "ipv4 tcp to LoadBalancer",
        Program::Xdp,
        lb4.clone(),
        Spec::new(CLIENT4, 40008, LB4, 443, L4::Tcp(SYN)),
    ));
    let lb6 = Service::new(
        5,
        LB6,
        443,
        PROTO_UDP,
        frontend_kind::LOAD_BALANCER,
        frontend_flags::EXTERNAL,
        &[
            (50, "2001:2:0:1::1", 8443, ACTIVE),
            (51, "2001:2:0:1::2", 8443, ACTIVE),
        ],
    );
    cases.push(hit(
        "ipv6 udp to LoadBalancer",
        Program::Xdp,
        lb6,
        Spec::new(CLIENT6, 40009, LB6, 443, L4::Udp),
    ));
    cases.push(hit(
        "ipv4 tcp with a VLAN tag",
        Program::Xdp,
        cluster_ip4(1, PROTO_TCP),
        tcp4(40010, SYN).vlan(100),
    ));
    cases.push(hit(
        "ipv6 udp with a VLAN tag",
        Program::Xdp,
        cluster_ip6(2, PROTO_UDP),
        Spec::new(CLIENT6, 40011, VIP6, 80, L4::Udp).vlan(7),
    ));
    {
        let service = cluster_ip4(1, PROTO_TCP);
        let spec = tcp4(40012, SYN);
        let input = with_ipv4_options(spec.build(), 14);
        let expected = with_ipv4_options(dnat(&service, &spec).build(), 14);
        cases.push(
            Case::new(
                "ipv4 tcp with IP options",
                Program::Xdp,
                input,
                XDP_PASS,
                Out::Packet(expected),
                Reason::LbNewFlow,
            )
            .services(vec![service])
            .service(1, 1, 1),
        );
    }
    {
        let service = cluster_ip6(2, PROTO_TCP);
        let spec = tcp6(40013, SYN);
        let input = with_ipv6_extensions(spec.build(), 14);
        let expected = with_ipv6_extensions(dnat(&service, &spec).build(), 14);
        cases.push(
            Case::new(
                "ipv6 tcp after hop-by-hop and destination options",
                Program::Xdp,
                input,
                XDP_PASS,
                Out::Packet(expected),
                Reason::LbNewFlow,
            )
            .services(vec![service])
            .service(2, 1, 1),
        );
    }
    cases.push(hit(
        "tc ingress ipv4 tcp",
        Program::TcIngress,
        cluster_ip4(1, PROTO_TCP),
        tcp4(40014, SYN),
    ));
    cases.push(hit(
        "tc ingress ipv6 udp",
        Program::TcIngress,
        cluster_ip6(2, PROTO_UDP),
        Spec::new(CLIENT6, 40015, VIP6, 80, L4::Udp),
    ));
    cases.push(hit(
        "tc ingress ipv4 udp without checksum",
        Program::TcIngress,
        cluster_ip4(1, PROTO_UDP),
        Spec::new(CLIENT4, 40016, VIP4, 80, L4::Udp).udp_no_checksum(),
    ));
    cases.push(hit(
        "tc ingress ipv6 tcp to LoadBalancer",
        Program::TcIngress,
        cluster_ip6(2, PROTO_TCP),
        tcp6(40017, SYN).payload(&[0x5a; 301]),
    ));

    // --- Misses and protocols we leave alone. ---
    cases.push(miss(
        "ipv4 tcp to another port",
        Program::Xdp,
        vec![cluster_ip4(1, PROTO_TCP)],
        Spec::new(CLIENT4, 40100, VIP4, 81, L4::Tcp(SYN)).build(),
        Reason::PassNoFrontend,
    ));
    cases.push(miss(
        "ipv4 udp to a tcp frontend",
        Program::Xdp,
        vec![cluster_ip4(1, PROTO_TCP)],
        Spec::new(CLIENT4, 40101, VIP4, 80, L4::Udp).build(),
        Reason::PassNoFrontend,
    ));
    cases.push(miss(
        "ipv6 tcp to no frontend",
        Program::Xdp,
        vec![cluster_ip4(1, PROTO_TCP)],
        tcp6(40102, SYN).build(),
        Reason::PassNoFrontend,
    ));
    {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0; 20]);
        cases.push(miss(
            "arp is not ip",
            Program::Xdp,
            vec![],
            arp,
            Reason::PassNotIp,
        ));
    }
    {
        let mut echo = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ipv4([198, 18, 0, 1], [198, 18, 100, 1], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut echo, b"ping")
            .expect("echo");
        cases.push(miss(
            "icmp echo to a service address",
            Program::Xdp,
            vec![cluster_ip4(1, PROTO_TCP)],
            echo,
            Reason::PassOtherProtocol,
        ));
    }
    cases.push(miss(
        "tc ingress miss",
        Program::TcIngress,
        vec![cluster_ip4(1, PROTO_TCP)],
        tcp4(40103, SYN).to(VIP4, 443).build(),
        Reason::PassNoFrontend,
    ));

    // --- Flows: conntrack, terminating backends, affinity. ---
    {
        let service = cluster_ip4(1, PROTO_TCP);
        let syn = tcp4(41000, SYN);
        let first = service.pick(CLIENT4, 41000, VIP4, 80, PROTO_TCP);
        // The backend set changes: a new table without... the flow's backend still exists.
        let new_backend = Service::new(
            1,
            VIP4,
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            0,
            &[(13, "198.18.1.4", 8080, ACTIVE)],
        );
        let ack = tcp4(41000, ACK);
        let expected = ack.clone().to(&backend_addr(&first), 8080).build();
        cases.push(
            Case::new(
                "conntrack keeps the flow after the backend set changed",
                Program::Xdp,
                ack.build(),
                XDP_PASS,
                Out::Packet(expected),
                Reason::LbConntrack,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, syn.build())])
            .changes(new_backend.ops())
            .service(1, 1, 0),
        );
    }
    {
        let service = cluster_ip4(1, PROTO_TCP);
        let syn = tcp4(41001, SYN);
        let first = service.pick(CLIENT4, 41001, VIP4, 80, PROTO_TCP);
        let (first_id, _) = *service
            .backends
            .iter()
            .find(|(_, b)| *b == first)
            .expect("picked backend");
        let mut terminating = first;
        terminating.state = TERMINATING;
        let others: Vec<(u32, &str, u16, u8)> = [
            (10u32, "198.18.1.1"),
            (11, "198.18.1.2"),
            (12, "198.18.1.3"),
        ]
        .into_iter()
        .filter(|(id, _)| *id != first_id)
        .map(|(id, a)| (id, a, 8080u16, ACTIVE))
        .collect();
        let without = Service::new(
            1,
            VIP4,
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            0,
            &others,
        );
        let mut changes = vec![MapOp::PutBackend {
            id: first_id,
            backend: terminating,
        }];
        changes.extend(without.ops());
        let ack = tcp4(41001, ACK);
        let expected = ack.clone().to(&backend_addr(&first), 8080).build();
        cases.push(
            Case::new(
                "a terminating backend keeps its flow",
                Program::Xdp,
                ack.build(),
                XDP_PASS,
                Out::Packet(expected),
                Reason::LbConntrack,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, syn.build())])
            .changes(changes),
        );
    }
    {
        let service = cluster_ip4(1, PROTO_UDP);
        let spec = Spec::new(CLIENT4, 41002, VIP4, 80, L4::Udp);
        let first = service.pick(CLIENT4, 41002, VIP4, 80, PROTO_UDP);
        let (first_id, _) = *service
            .backends
            .iter()
            .find(|(_, b)| *b == first)
            .expect("picked backend");
        let others: Vec<(u32, &str, u16, u8)> = [
            (10u32, "198.18.1.1"),
            (11, "198.18.1.2"),
            (12, "198.18.1.3"),
        ]
        .into_iter()
        .filter(|(id, _)| *id != first_id)
        .map(|(id, a)| (id, a, 8080u16, ACTIVE))
        .collect();
        let without = Service::new(
            1,
            VIP4,
            80,
            PROTO_UDP,
            frontend_kind::CLUSTER_IP,
            0,
            &others,
        );
        let mut changes = without.ops();
        changes.push(MapOp::DeleteBackend { id: first_id });
        let expected = dnat(&without, &spec).build();
        cases.push(
            Case::new(
                "a flow whose backend was deleted is balanced again",
                Program::Xdp,
                spec.build(),
                XDP_PASS,
                Out::Packet(expected),
                Reason::LbNewFlow,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, spec.build())])
            .changes(changes)
            .service(1, 1, 1),
        );
    }
    {
        // The frontend is deleted while the flow's backend stays (another frontend of the
        // service port, e.g. its ClusterIP, still uses it). The conntrack entry would carry
        // the flow, but FRONTEND_FILTER, checked first, has cleared the deleted frontend's
        // bits (no other frontend shares them here): the flow stops at the filter.
        let service = cluster_ip4(1, PROTO_TCP);
        let syn = tcp4(41003, SYN);
        let ack = tcp4(41003, ACK);
        cases.push(
            miss(
                "existing flow's frontend deleted but the backend kept: stops at the frontend filter",
                Program::Xdp,
                vec![service.clone()],
                ack.build(),
                Reason::PassNoFrontend,
            )
            .warmup(vec![(Program::Xdp, syn.build())])
            .changes(vec![MapOp::DeleteFrontend {
                key: service.frontend,
            }]),
        );
    }
    {
        // After the flow started, its frontend is rewritten to another service with other
        // backends (a value FRONTENDS would send a new flow elsewhere with): the flow stays
        // on its backend and is counted for the service its conntrack entry names.
        let service = cluster_ip4(1, PROTO_TCP);
        let syn = tcp4(41004, SYN);
        let first = service.pick(CLIENT4, 41004, VIP4, 80, PROTO_TCP);
        let elsewhere = Service::new(
            3,
            VIP4,
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            0,
            &[(30, "198.18.3.1", 9090, ACTIVE)],
        );
        let ack = tcp4(41004, ACK);
        let expected = ack.clone().to(&backend_addr(&first), 8080).build();
        for program in [Program::Xdp, Program::TcIngress] {
            let verdict = if program == Program::Xdp {
                XDP_PASS
            } else {
                TC_ACT_PIPE
            };
            cases.push(
                Case::new(
                    &format!("conntrack hit does not look at FRONTENDS ({program:?})"),
                    program,
                    ack.build(),
                    verdict,
                    Out::Packet(expected.clone()),
                    Reason::LbConntrack,
                )
                .services(vec![service.clone()])
                .warmup(vec![(Program::Xdp, syn.build())])
                .changes(elsewhere.ops())
                .service(1, 1, 0),
            );
        }
    }
    {
        let service = Service::new(
            6,
            VIP4,
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            frontend_flags::AFFINITY,
            &[
                (60, "198.18.1.1", 8080, ACTIVE),
                (61, "198.18.1.2", 8080, ACTIVE),
                (62, "198.18.1.3", 8080, ACTIVE),
            ],
        );
        let first_spec = tcp4(42000, SYN);
        let first = service.pick(CLIENT4, 42000, VIP4, 80, PROTO_TCP);
        let other_port = port_with_other_backend(&service, &first_spec, 42000);
        let second = tcp4(other_port, SYN);
        let expected = second.clone().to(&backend_addr(&first), 8080).build();
        cases.push(
            Case::new(
                "session affinity sends a new flow to the client's backend",
                Program::Xdp,
                second.build(),
                XDP_PASS,
                Out::Packet(expected),
                Reason::LbAffinity,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, first_spec.build())])
            .service(6, 1, 1),
        );
    }

    // --- No usable backend: reject or drop. ---
    for (name, spec, program, bounce) in [
        (
            "no backend: ipv4 tcp syn gets a RST",
            tcp4(43000, SYN),
            Program::Xdp,
            XDP_TX,
        ),
        (
            "no backend: ipv6 tcp syn gets a RST",
            tcp6(43001, SYN),
            Program::Xdp,
            XDP_TX,
        ),
        (
            "no backend: ipv4 tcp syn with payload and VLAN gets a RST",
            tcp4(43002, SYN).payload(b"fastopen").vlan(5),
            Program::Xdp,
            XDP_TX,
        ),
        (
            "tc: no backend: ipv4 tcp syn gets a RST",
            tcp4(43003, SYN),
            Program::TcIngress,
            TC_ACT_REDIRECT,
        ),
    ] {
        let addr = spec.dst.to_string();
        cases.push(
            Case::new(
                name,
                program,
                spec.build(),
                bounce,
                Out::Packet(tcp_reset_for(&spec)),
                Reason::RejectTcpReset,
            )
            .services(vec![empty_service(7, &addr, PROTO_TCP, 0)]),
        );
    }
    for (name, spec, program, bounce) in [
        (
            "no backend: ipv4 udp gets port unreachable",
            Spec::new(CLIENT4, 43100, VIP4, 80, L4::Udp),
            Program::Xdp,
            XDP_TX,
        ),
        (
            "no backend: ipv6 udp gets port unreachable",
            Spec::new(CLIENT6, 43101, VIP6, 80, L4::Udp),
            Program::Xdp,
            XDP_TX,
        ),
        (
            "no backend: ipv4 tcp ack gets port unreachable",
            tcp4(43102, ACK),
            Program::Xdp,
            XDP_TX,
        ),
        (
            "no backend: ipv4 sctp gets port unreachable",
            Spec::new(CLIENT4, 43103, VIP4, 80, L4::Sctp),
            Program::Xdp,
            XDP_TX,
        ),
        (
            "no backend: ipv6 udp with VLAN gets port unreachable",
            Spec::new(CLIENT6, 43104, VIP6, 80, L4::Udp).vlan(9),
            Program::Xdp,
            XDP_TX,
        ),
        (
            "tc: no backend: ipv6 udp gets port unreachable",
            Spec::new(CLIENT6, 43105, VIP6, 80, L4::Udp),
            Program::TcIngress,
            TC_ACT_REDIRECT,
        ),
    ] {
        let input = spec.build();
        let l4 = spec.l3_offset() + if spec.src.is_ipv4() { 20 } else { 40 };
        let expected = port_unreachable_for(&spec, &input, l4);
        let addr = spec.dst.to_string();
        cases.push(
            Case::new(
                name,
                program,
                input,
                bounce,
                Out::Packet(expected),
                Reason::RejectIcmpUnreachable,
            )
            .services(vec![empty_service(7, &addr, proto_of(spec.l4), 0)]),
        );
    }
    {
        // A UDP packet with options: the quote is the 24-byte header plus 8 bytes.
        let udp = Spec::new(CLIENT4, 43200, VIP4, 80, L4::Udp);
        let udp_input = with_ipv4_options(udp.build(), 14);
        let expected = port_unreachable_for(&udp, &udp_input, 38);
        cases.push(
            Case::new(
                "no backend: ipv4 udp with options quotes the whole header",
                Program::Xdp,
                udp_input,
                XDP_TX,
                Out::Packet(expected),
                Reason::RejectIcmpUnreachable,
            )
            .services(vec![empty_service(7, VIP4, PROTO_UDP, 0)]),
        );
    }
    cases.push(dropped(
        "no local endpoint: dropped silently",
        vec![empty_service(
            7,
            VIP4,
            PROTO_TCP,
            frontend_flags::DROP_WHEN_EMPTY | frontend_flags::TRAFFIC_POLICY_LOCAL,
        )],
        tcp4(43300, SYN).build(),
        Reason::DropNoLocalEndpoint,
    ));

    cases.push(dropped(
        "a table naming a backend of the other family is refused as internal",
        vec![Service::new(
            9,
            VIP4,
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            0,
            &[(90, "2001:2:0:1::9", 8080, ACTIVE)],
        )],
        tcp4(43400, SYN).build(),
        Reason::DropInternal,
    ));

    // --- loadBalancerSourceRanges. ---
    {
        let service = Service::new(
            8,
            LB4,
            443,
            PROTO_TCP,
            frontend_kind::LOAD_BALANCER,
            frontend_flags::EXTERNAL | frontend_flags::SOURCE_RANGES,
            &[(80, "198.18.1.1", 8443, ACTIVE)],
        );
        let (addr, family) = addr16("198.18.0.0");
        let range = MapOp::PutSourceRange {
            key: SourceRangeKey {
                service_id_be: 8u32.to_be_bytes(),
                family,
                addr,
                _pad: [0; 3],
            },
            prefix_len: SourceRangeKey::prefix_len(24),
        };
        assert_eq!(family, FAMILY_IPV4);
        let allowed = Spec::new(CLIENT4, 44000, LB4, 443, L4::Tcp(SYN));
        let expected = allowed.clone().to("198.18.1.1", 8443).build();
        cases.push(
            Case::new(
                "source range: a client inside the range is balanced",
                Program::Xdp,
                allowed.build(),
                XDP_PASS,
                Out::Packet(expected),
                Reason::LbNewFlow,
            )
            .services(vec![service.clone()])
            .ops(vec![range.clone()])
            .service(8, 1, 1),
        );
        let denied = Spec::new("198.18.7.1", 44001, LB4, 443, L4::Tcp(SYN));
        cases.push(
            dropped(
                "source range: a client outside the range is dropped",
                vec![service.clone()],
                denied.build(),
                Reason::DropSourceRange,
            )
            .ops(vec![range.clone()]),
        );
        // The range narrows to another /24 after the client's connection started: like
        // kube-proxy (whose KUBE-FW rules see a connection's first packet only), the
        // established flow goes on; its new connections are dropped.
        let (other_addr, _) = addr16("198.18.7.0");
        let narrowed = vec![
            MapOp::PutSourceRange {
                key: SourceRangeKey {
                    service_id_be: 8u32.to_be_bytes(),
                    family,
                    addr: other_addr,
                    _pad: [0; 3],
                },
                prefix_len: SourceRangeKey::prefix_len(24),
            },
            MapOp::DeleteSourceRange {
                key: match &range {
                    MapOp::PutSourceRange { key, .. } => *key,
                    _ => unreachable!("range is a PutSourceRange"),
                },
                prefix_len: SourceRangeKey::prefix_len(24),
            },
        ];
        let established = Spec::new(CLIENT4, 44000, LB4, 443, L4::Tcp(ACK));
        cases.push(
            Case::new(
                "existing flow survives a source-range change (as kube-proxy)",
                Program::Xdp,
                established.build(),
                XDP_PASS,
                Out::Packet(established.clone().to("198.18.1.1", 8443).build()),
                Reason::LbConntrack,
            )
            .services(vec![service.clone()])
            .ops(vec![range.clone()])
            .warmup(vec![(Program::Xdp, allowed.build())])
            .changes(narrowed.clone())
            .service(8, 1, 0),
        );
        cases.push(
            dropped(
                "source range change: the same client's new connection is dropped",
                vec![service],
                Spec::new(CLIENT4, 44002, LB4, 443, L4::Tcp(SYN)).build(),
                Reason::DropSourceRange,
            )
            .ops(vec![range])
            .warmup(vec![(Program::Xdp, allowed.build())])
            .changes(narrowed),
        );
    }

    // --- Reverse NAT on TC egress. ---
    for (name, service, spec) in [
        (
            "tc egress: ipv4 tcp reply leaves from the service address",
            cluster_ip4(1, PROTO_TCP),
            tcp4(45000, SYN),
        ),
        (
            "tc egress: ipv6 udp reply leaves from the service address",
            cluster_ip6(2, PROTO_UDP),
            Spec::new(CLIENT6, 45001, VIP6, 80, L4::Udp),
        ),
        (
            "tc egress: ipv4 udp reply without checksum",
            cluster_ip4(1, PROTO_UDP),
            Spec::new(CLIENT4, 45002, VIP4, 80, L4::Udp).udp_no_checksum(),
        ),
    ] {
        let forwarded = dnat(&service, &spec);
        let mut reply = Spec::new(
            &forwarded.dst.to_string(),
            forwarded.dport,
            &spec.src.to_string(),
            spec.sport,
            spec.l4,
        );
        reply.l4 = match spec.l4 {
            L4::Tcp(_) => L4::Tcp(SYN | ACK),
            other => other,
        };
        reply.udp_no_checksum = spec.udp_no_checksum;
        reply.src_mac = NODE_MAC;
        reply.dst_mac = CLIENT_MAC;
        let expected = reply
            .clone()
            .from(&spec.dst.to_string(), spec.dport)
            .build();
        cases.push(
            Case::new(
                name,
                Program::TcEgress,
                reply.build(),
                TC_ACT_PIPE,
                Out::Packet(expected),
                Reason::ReplyTranslated,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, spec.build())]),
        );
    }
    cases.push(miss(
        "tc egress: traffic of no balanced flow passes untouched",
        Program::TcEgress,
        vec![cluster_ip4(1, PROTO_TCP)],
        Spec::new("198.18.1.1", 8080, CLIENT4, 45003, L4::Tcp(SYN | ACK)).build(),
        Reason::PassNoFrontend,
    ));

    // --- ICMP errors about balanced flows. ---
    {
        // The node cannot forward the DNATed packet (MTU): frag-needed to the client quotes
        // client -> backend; the client must see client -> frontend.
        let service = cluster_ip4(1, PROTO_TCP);
        let spec = tcp4(46000, ACK).payload(&[0x11; 64]);
        let forwarded = dnat(&service, &spec).build();
        let original = spec.build();
        let input = icmp_error(
            NODE4,
            CLIENT4,
            IcmpError::TooBig(1400),
            &forwarded,
            14,
            20 + 20 + 64,
        );
        let expected = icmp_error(
            NODE4,
            CLIENT4,
            IcmpError::TooBig(1400),
            &original,
            14,
            20 + 20 + 64,
        );
        cases.push(
            Case::new(
                "tc egress: frag-needed from the node quotes the frontend",
                Program::TcEgress,
                input,
                TC_ACT_PIPE,
                Out::Packet(expected),
                Reason::IcmpErrorTranslated,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, spec.build())]),
        );
    }
    {
        // A backend answers port unreachable: outer source and quote both name the frontend.
        let service = cluster_ip4(1, PROTO_UDP);
        let spec = Spec::new(CLIENT4, 46001, VIP4, 80, L4::Udp);
        let forwarded_spec = dnat(&service, &spec);
        let backend = forwarded_spec.dst.to_string();
        let input = icmp_error(
            &backend,
            CLIENT4,
            IcmpError::PortUnreachable,
            &forwarded_spec.build(),
            14,
            28,
        );
        let expected = icmp_error(
            VIP4,
            CLIENT4,
            IcmpError::PortUnreachable,
            &spec.build(),
            14,
            28,
        );
        cases.push(
            Case::new(
                "tc egress: port unreachable from a backend comes from the frontend",
                Program::TcEgress,
                input,
                TC_ACT_PIPE,
                Out::Packet(expected),
                Reason::IcmpErrorTranslated,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, spec.build())]),
        );
    }
    {
        let service = cluster_ip6(2, PROTO_TCP);
        let spec = tcp6(46002, ACK).payload(&[0x22; 100]);
        let forwarded = dnat(&service, &spec).build();
        let input = icmp_error(
            NODE6,
            CLIENT6,
            IcmpError::TooBig(1280),
            &forwarded,
            14,
            40 + 20 + 100,
        );
        let expected = icmp_error(
            NODE6,
            CLIENT6,
            IcmpError::TooBig(1280),
            &spec.build(),
            14,
            40 + 20 + 100,
        );
        cases.push(
            Case::new(
                "tc egress: ipv6 packet-too-big quotes the frontend",
                Program::TcEgress,
                input,
                TC_ACT_PIPE,
                Out::Packet(expected),
                Reason::IcmpErrorTranslated,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, spec.build())]),
        );
    }
    {
        // The client complains about a reply (frontend -> client): the backend must see its
        // own packet (backend -> client) and get the error.
        let service = cluster_ip4(1, PROTO_TCP);
        let spec = tcp4(46003, SYN);
        let backend_spec = dnat(&service, &spec);
        let backend = backend_spec.dst.to_string();
        let reply_seen_by_client =
            Spec::new(VIP4, 80, CLIENT4, 46003, L4::Tcp(SYN | ACK)).payload(&[0x33; 40]);
        let reply_sent_by_backend = reply_seen_by_client.clone().from(&backend, 8080);
        let input = icmp_error(
            CLIENT4,
            VIP4,
            IcmpError::TooBig(1300),
            &reply_seen_by_client.build(),
            14,
            20 + 20 + 40,
        );
        let expected = icmp_error(
            CLIENT4,
            &backend,
            IcmpError::TooBig(1300),
            &reply_sent_by_backend.build(),
            14,
            20 + 20 + 40,
        );
        cases.push(
            Case::new(
                "xdp: frag-needed from a client reaches the backend",
                Program::Xdp,
                input,
                XDP_PASS,
                Out::Packet(expected),
                Reason::IcmpErrorTranslated,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, spec.build())]),
        );
    }
    {
        let service = cluster_ip6(2, PROTO_UDP);
        let spec = Spec::new(CLIENT6, 46004, VIP6, 80, L4::Udp);
        let backend_spec = dnat(&service, &spec);
        let backend = backend_spec.dst.to_string();
        let reply_seen = Spec::new(VIP6, 80, CLIENT6, 46004, L4::Udp).payload(&[0x44; 30]);
        let reply_sent = reply_seen.clone().from(&backend, 8080);
        let input = icmp_error(
            CLIENT6,
            VIP6,
            IcmpError::TooBig(1280),
            &reply_seen.build(),
            14,
            40 + 8 + 30,
        );
        let expected = icmp_error(
            CLIENT6,
            &backend,
            IcmpError::TooBig(1280),
            &reply_sent.build(),
            14,
            40 + 8 + 30,
        );
        cases.push(
            Case::new(
                "tc ingress: ipv6 packet-too-big from a client reaches the backend",
                Program::TcIngress,
                input,
                TC_ACT_PIPE,
                Out::Packet(expected),
                Reason::IcmpErrorTranslated,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, spec.build())]),
        );
    }
    cases.push(miss(
        "icmp error about no balanced flow passes",
        Program::Xdp,
        vec![cluster_ip4(1, PROTO_TCP)],
        icmp_error(
            CLIENT4,
            NODE4,
            IcmpError::PortUnreachable,
            &Spec::new(NODE4, 5000, CLIENT4, 6000, L4::Udp).build(),
            14,
            28,
        ),
        Reason::PassNoFrontend,
    ));

    // --- Fragments. ---
    {
        let service = cluster_ip4(1, PROTO_UDP);
        let spec = Spec::new(CLIENT4, 47000, VIP4, 80, L4::Udp).payload(&[0x55; 200]);
        let whole = spec.build();
        let natted = dnat(&service, &spec).build();
        let first = ipv4_fragment(&whole, 14, 0x4242, 96, true);
        let later = ipv4_fragment(&whole, 14, 0x4242, 96, false);
        cases.push(
            Case::new(
                "ipv4 first fragment is balanced",
                Program::Xdp,
                first.clone(),
                XDP_PASS,
                Out::Packet(ipv4_fragment(&natted, 14, 0x4242, 96, true)),
                Reason::LbNewFlow,
            )
            .services(vec![service.clone()])
            .service(1, 1, 1),
        );
        cases.push(
            Case::new(
                "ipv4 later fragment follows its first",
                Program::Xdp,
                later.clone(),
                XDP_PASS,
                Out::Packet(ipv4_fragment(&natted, 14, 0x4242, 96, false)),
                Reason::LbFragment,
            )
            .services(vec![service.clone()])
            .warmup(vec![(Program::Xdp, first.clone())])
            .service(1, 1, 0),
        );
        cases.push(
            Case::new(
                "ipv4 later fragment follows its first, which went by conntrack",
                Program::TcIngress,
                later.clone(),
                TC_ACT_PIPE,
                Out::Packet(ipv4_fragment(&natted, 14, 0x4242, 96, false)),
                Reason::LbFragment,
            )
            .services(vec![service.clone()])
            .warmup(vec![(Program::Xdp, whole.clone()), (Program::Xdp, first)])
            .service(1, 1, 0),
        );
        cases.push(miss(
            "ipv4 later fragment of an unknown datagram passes",
            Program::Xdp,
            vec![service],
            later,
            Reason::PassFragmentUnknown,
        ));
    }
    {
        let service = cluster_ip6(2, PROTO_UDP);
        let spec = Spec::new(CLIENT6, 47001, VIP6, 80, L4::Udp).payload(&[0x66; 200]);
        let whole = spec.build();
        let natted = dnat(&service, &spec).build();
        let first = ipv6_fragment(&whole, 14, 0xabcdef, 96, true);
        let later = ipv6_fragment(&whole, 14, 0xabcdef, 96, false);
        cases.push(
            Case::new(
                "ipv6 first fragment is balanced",
                Program::Xdp,
                first.clone(),
                XDP_PASS,
                Out::Packet(ipv6_fragment(&natted, 14, 0xabcdef, 96, true)),
                Reason::LbNewFlow,
            )
            .services(vec![service.clone()])
            .service(2, 1, 1),
        );
        cases.push(
            Case::new(
                "ipv6 later fragment follows its first",
                Program::TcIngress,
                later.clone(),
                TC_ACT_PIPE,
                Out::Packet(ipv6_fragment(&natted, 14, 0xabcdef, 96, false)),
                Reason::LbFragment,
            )
            .services(vec![service])
            .warmup(vec![(Program::Xdp, first)])
            .service(2, 1, 0),
        );
    }

    // --- Truncated and malformed headers. ---
    let whole4 = tcp4(48000, SYN).build();
    let whole6 = Spec::new(CLIENT6, 48001, VIP6, 80, L4::Udp).build();
    let mut vlan_no_tag = whole4[..14].to_vec();
    vlan_no_tag[12..14].copy_from_slice(&[0x81, 0x00]);
    cases.push(dropped(
        "truncated: VLAN ethertype without a tag",
        vec![],
        vlan_no_tag,
        Reason::DropTruncated,
    ));
    cases.push(dropped(
        "truncated: ipv4 header cut",
        vec![],
        whole4[..14 + 12].to_vec(),
        Reason::DropTruncated,
    ));
    {
        let mut cut = whole4[..14 + 20 + 10].to_vec();
        cut[16..18].copy_from_slice(&30u16.to_be_bytes());
        fix_ipv4_checksum(&mut cut, 14);
        cases.push(dropped(
            "truncated: tcp header cut",
            vec![cluster_ip4(1, PROTO_TCP)],
            cut,
            Reason::DropTruncated,
        ));
    }
    {
        let mut bad = whole4.clone();
        bad[14] = 0x44;
        cases.push(dropped(
            "malformed: ipv4 IHL below 5",
            vec![],
            bad,
            Reason::DropMalformed,
        ));
        let mut long = whole4.clone();
        long[16..18].copy_from_slice(&1400u16.to_be_bytes());
        cases.push(dropped(
            "malformed: ipv4 total length beyond the packet",
            vec![],
            long,
            Reason::DropMalformed,
        ));
        let mut doff = whole4.clone();
        doff[14 + 20 + 12] = 0x40;
        cases.push(dropped(
            "malformed: tcp data offset below 5",
            vec![cluster_ip4(1, PROTO_TCP)],
            doff,
            Reason::DropMalformed,
        ));
    }
    cases.push(dropped(
        "truncated: ipv6 header cut",
        vec![],
        whole6[..14 + 30].to_vec(),
        Reason::DropTruncated,
    ));
    {
        let mut long = whole6.clone();
        long[18..20].copy_from_slice(&2000u16.to_be_bytes());
        cases.push(dropped(
            "malformed: ipv6 payload length beyond the packet",
            vec![],
            long,
            Reason::DropMalformed,
        ));
        let mut cut = whole6[..14 + 40 + 4].to_vec();
        cut[18..20].copy_from_slice(&4u16.to_be_bytes());
        cases.push(dropped(
            "truncated: udp header cut",
            vec![cluster_ip6(2, PROTO_UDP)],
            cut,
            Reason::DropTruncated,
        ));
    }
    {
        // SCTP common header cut after the ports (IP length consistent with the cut).
        let sctp = Spec::new(CLIENT4, 48002, VIP4, 80, L4::Sctp).build();
        let mut cut = sctp[..14 + 20 + 8].to_vec();
        cut[16..18].copy_from_slice(&28u16.to_be_bytes());
        fix_ipv4_checksum(&mut cut, 14);
        cases.push(dropped(
            "truncated: sctp header cut",
            vec![cluster_ip4(1, PROTO_SCTP)],
            cut,
            Reason::DropTruncated,
        ));
        // An IPv6 hop-by-hop header whose length runs past the packet: dropped as
        // truncated; one that runs past the parser's reach is passed untouched.
        let mut ext =
            with_ipv6_extensions(Spec::new(CLIENT6, 48003, VIP6, 80, L4::Udp).build(), 14);
        ext[14 + 40 + 1] = 20;
        cases.push(dropped(
            "truncated: ipv6 extension header longer than the packet",
            vec![],
            ext.clone(),
            Reason::DropTruncated,
        ));
        ext[14 + 40 + 1] = 200;
        cases.push(miss(
            "ipv6 extension headers beyond the parser's reach pass",
            Program::Xdp,
            vec![],
            ext,
            Reason::PassUnparsedHeaders,
        ));
        // An ICMP error cut inside its quoted IP header.
        let forwarded = Spec::new(CLIENT4, 48004, "198.18.1.1", 8080, L4::Tcp(ACK)).build();
        let icmp = icmp_error(NODE4, CLIENT4, IcmpError::TooBig(1400), &forwarded, 14, 12);
        cases.push(dropped(
            "truncated: icmp error quoting a partial IP header",
            vec![cluster_ip4(1, PROTO_TCP)],
            icmp,
            Reason::DropTruncated,
        ));
        // A frame cut inside the VLAN tag's ethertype.
        let vlan = tcp4(48005, SYN).vlan(3).build();
        cases.push(dropped(
            "truncated: ipv4 header behind a VLAN tag cut",
            vec![],
            vlan[..18 + 10].to_vec(),
            Reason::DropTruncated,
        ));
    }
    cases
}

#[test]
fn packet_fixtures() {
    let mut env = Env::new();
    let cases = cases();
    assert!(
        cases.len() >= 40,
        "the fixture table has {} rows",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(message) = run_case(&mut env, case) {
            failures.push(format!("{}: {message}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn run_case(env: &mut Env, case: &Case) -> Result<(), String> {
    env.reset();
    for service in &case.services {
        env.install(service);
    }
    env.apply(&case.extra_ops);
    if let Some(config) = case.config {
        env.set_config(config);
    }
    for (program, packet) in &case.warmup {
        env.run(*program, packet);
    }
    env.apply(&case.changes);
    let before = env.reasons();
    let service_before = case.service.map(|(id, _, _)| env.service(id));
    let out = env.run(case.program, &case.input);
    let after = env.reasons();

    if out.verdict != case.verdict {
        return Err(format!(
            "verdict {} (expected {})",
            out.verdict, case.verdict
        ));
    }
    let deltas = reason_deltas(&before, &after);
    if deltas != vec![(case.reason, 1)] {
        return Err(format!(
            "reason counters changed by {deltas:?} (expected {:?} +1)",
            case.reason
        ));
    }
    match &case.out {
        Out::Unchanged => {
            if out.packet != case.input {
                return Err(format!(
                    "packet changed:\n in  {:02x?}\n out {:02x?}",
                    case.input, out.packet
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
            if case.checksums {
                verify_checksums(&out.packet).map_err(|e| format!("checksum: {e}"))?;
            }
        }
        Out::Dropped => {}
    }
    if let (Some((id, packets, new_flows)), Some(before)) = (case.service, service_before) {
        let after = env.service(id);
        let delta = ServiceCounters {
            packets: after.packets - before.packets,
            bytes: after.bytes - before.bytes,
            new_flows: after.new_flows - before.new_flows,
        };
        let expected = ServiceCounters {
            packets,
            bytes: packets * case.input.len() as u64,
            new_flows,
        };
        if delta != expected {
            return Err(format!(
                "service {id} counters changed by {delta:?}, expected {expected:?}"
            ));
        }
    }
    check_checksum_complete(env, case, &out.packet)
}

/// TC rows that rewrite a packet run again on an skb marked CHECKSUM_COMPLETE: the kernel
/// fails the run (EBADMSG) if the rewrite left `skb->csum` stale, and the output must be
/// the same. Rejects are left out: they rebuild the whole packet, which goes back out of
/// the interface (where CHECKSUM_COMPLETE is not used).
fn check_checksum_complete(env: &mut Env, case: &Case, expected: &[u8]) -> Result<(), String> {
    let rewrites = matches!(
        case.reason,
        Reason::LbNewFlow
            | Reason::LbConntrack
            | Reason::LbAffinity
            | Reason::LbFragment
            | Reason::ReplyTranslated
            | Reason::IcmpErrorTranslated
    );
    if !matches!(case.program, Program::TcIngress | Program::TcEgress) || !rewrites {
        return Ok(());
    }
    // Same map state as the first run: replay the setup.
    env.reset();
    for service in &case.services {
        env.install(service);
    }
    env.apply(&case.extra_ops);
    for (program, packet) in &case.warmup {
        env.run(*program, packet);
    }
    env.apply(&case.changes);
    let out = env
        .run_checksum_complete(case.program, &case.input)
        .map_err(|e| format!("with CHECKSUM_COMPLETE: {e}"))?;
    if out.packet != expected {
        return Err(format!(
            "with CHECKSUM_COMPLETE the packet differs:\n got      {:02x?}\n expected {expected:02x?}",
            out.packet
        ));
    }
    Ok(())
}

/// Foundation: one crafted TCP packet through the parse path counts ipv4 and tcp.
#[test]
fn parse_path_counts_protocols() {
    let env = Env::new();
    let before = env.protocols();
    let out = env.run(Program::XdpParseOnly, &tcp4(49000, SYN).build());
    assert_eq!(out.verdict, XDP_PASS, "parse-only passes everything");
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
    let packet = tcp4(49100, SYN).build();
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
    let v4 = cluster_ip4(1, PROTO_TCP);
    let v6 = cluster_ip6(2, PROTO_UDP);
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
        Err(DataplaneError::MapFull { map, capacity }) => {
            assert_eq!(
                (map, capacity),
                ("FRONTENDS", 4),
                "the error names the full map"
            )
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
