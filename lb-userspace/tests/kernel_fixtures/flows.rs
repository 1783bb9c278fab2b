//! Established flows (conntrack), terminating and deleted backends, session affinity.

use super::*;

/// The IPv4 ClusterIP of [`cluster_ip`] without one of its backends.
fn cluster_ip4_without(proto: u8, backend_id: u32) -> Service {
    let others: Vec<(u32, &str, u16, u8)> = [
        (10u32, "198.18.1.1"),
        (11, "198.18.1.2"),
        (12, "198.18.1.3"),
    ]
    .into_iter()
    .filter(|(id, _)| *id != backend_id)
    .map(|(id, a)| (id, a, 8080u16, ACTIVE))
    .collect();
    Service::new(
        1,
        Family::V4.vip(),
        80,
        proto,
        frontend_kind::CLUSTER_IP,
        0,
        &others,
    )
}

/// The backend (and its id) of `service` a flow's Maglev slot names.
fn picked(service: &Service, spec: &Spec) -> (u32, lb_common::Backend) {
    let backend = service.pick(
        &spec.src.to_string(),
        spec.sport,
        &spec.dst.to_string(),
        spec.dport,
        proto_of(spec.l4),
    );
    *service
        .backends
        .iter()
        .find(|(_, b)| *b == backend)
        .expect("picked backend")
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

/// The backend set changes (a new table without the flow's backend in it), but the
/// backend still exists: the flow stays on it.
#[test]
fn conntrack_keeps_the_flow_after_the_backend_set_changed() {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    let syn = tcp(Family::V4, 41000, SYN);
    let ack = tcp(Family::V4, 41000, ACK);
    let first = dnat(&service, &syn);
    let new_backend = Service::new(
        1,
        Family::V4.vip(),
        80,
        PROTO_TCP,
        frontend_kind::CLUSTER_IP,
        0,
        &[(13, "198.18.1.4", 8080, ACTIVE)],
    );
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, syn.build())],
            changes: new_backend.ops(),
            ..Setup::default()
        },
        program: Program::Xdp,
        input: ack.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbConntrack,
            out: Out::Packet(ack.clone().to(&first.dst.to_string(), 8080).build()),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 0,
            }),
        },
    });
}

/// A mid-connection TCP packet (no SYN) whose flow has no conntrack entry (a full table
/// evicted it) is balanced by its Maglev slot, and counted apart: the slot may name another
/// backend by now.
#[test]
fn a_packet_whose_flow_the_table_lost_is_counted_lost_and_follows_its_slot() {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    let ack = tcp(Family::V4, 41010, ACK);
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::Xdp,
        input: ack.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbConntrackLost,
            out: Out::Packet(dnat(&service, &ack).build()),
            service: Some(ServiceDelta {
                id: service.id,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

/// A row for the TCP flow from the client's port `sport` to [`cluster_ip`]'s IPv4 service:
/// its SYN chose a backend, which then turned terminating while the others are ready (it
/// stays, but leaves the table); then a packet of the flow with `flags` comes. `expect`
/// gets the service as it is then and the flow's backend.
fn after_its_backend_turned_terminating(
    sport: u16,
    flags: u8,
    expect: impl FnOnce(&Service, &lb_common::Backend) -> Expect,
) -> Row {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    let syn = tcp(Family::V4, sport, SYN);
    let (first_id, first) = picked(&service, &syn);
    let without = cluster_ip4_without(PROTO_TCP, first_id);
    let expect = expect(&without, &first);
    let mut changes = vec![MapOp::PutBackend {
        id: first_id,
        backend: lb_common::Backend {
            state: lb_common::backend_state::TERMINATING,
            ..first
        },
    }];
    changes.extend(without.ops());
    Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, syn.build())],
            changes,
            ..Setup::default()
        },
        program: Program::Xdp,
        input: tcp(Family::V4, sport, flags).build(),
        expect,
    }
}

#[test]
fn a_terminating_backend_keeps_its_flow() {
    let ack = tcp(Family::V4, 41001, ACK);
    check(after_its_backend_turned_terminating(
        41001,
        ACK,
        |_, first| Expect {
            verdict: XDP_PASS,
            reason: Reason::LbConntrack,
            out: Out::Packet(ack.clone().to(&backend_addr(first), 8080).build()),
            service: None,
        },
    ));
}

#[test]
fn a_flow_whose_backend_was_deleted_is_balanced_again() {
    let service = cluster_ip(Family::V4, PROTO_UDP);
    let packet = udp(Family::V4, 41002);
    let (first_id, _) = picked(&service, &packet);
    let without = cluster_ip4_without(PROTO_UDP, first_id);
    let mut changes = without.ops();
    changes.push(MapOp::DeleteBackend { id: first_id });
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, packet.build())],
            changes,
            ..Setup::default()
        },
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&without, &packet).build()),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

/// The frontend is deleted while the flow's backend stays (another frontend of the
/// service port, e.g. its ClusterIP, still uses it). The conntrack entry would carry the
/// flow, but FRONTEND_FILTER, checked first, has cleared the deleted frontend's bits (no
/// other frontend shares them here): the flow stops at the filter.
#[test]
fn a_deleted_frontend_stops_its_flows_at_the_frontend_filter() {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    check(Row {
        setup: Setup {
            services: vec![service.clone()],
            warmup: vec![(Program::Xdp, tcp(Family::V4, 41003, SYN).build())],
            changes: vec![MapOp::DeleteFrontend {
                key: service.frontend,
            }],
            ..Setup::default()
        },
        program: Program::Xdp,
        input: tcp(Family::V4, 41003, ACK).build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassNoFrontend,
            out: Out::Unchanged,
            service: None,
        },
    });
}

/// After the flow started, its frontend is rewritten to another service with other
/// backends (a value FRONTENDS would send a new flow elsewhere with): the flow stays on its
/// backend and is counted for the service its conntrack entry names.
fn conntrack_hit_does_not_look_at_frontends(program: Program, verdict: u32) -> Row {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    let syn = tcp(Family::V4, 41004, SYN);
    let ack = tcp(Family::V4, 41004, ACK);
    let first = dnat(&service, &syn);
    let elsewhere = Service::new(
        3,
        Family::V4.vip(),
        80,
        PROTO_TCP,
        frontend_kind::CLUSTER_IP,
        0,
        &[(30, "198.18.3.1", 9090, ACTIVE)],
    );
    Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, syn.build())],
            changes: elsewhere.ops(),
            ..Setup::default()
        },
        program,
        input: ack.build(),
        expect: Expect {
            verdict,
            reason: Reason::LbConntrack,
            out: Out::Packet(ack.clone().to(&first.dst.to_string(), 8080).build()),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 0,
            }),
        },
    }
}

#[test]
fn xdp_conntrack_hit_does_not_look_at_frontends() {
    check(conntrack_hit_does_not_look_at_frontends(
        Program::Xdp,
        XDP_PASS,
    ));
}

#[test]
fn tc_ingress_conntrack_hit_does_not_look_at_frontends() {
    check(conntrack_hit_does_not_look_at_frontends(
        Program::TcIngress,
        TCX_NEXT,
    ));
}

#[test]
fn session_affinity_sends_a_new_flow_to_the_clients_backend() {
    let service = Service::new(
        6,
        Family::V4.vip(),
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
    let first = tcp(Family::V4, 42000, SYN);
    let second = tcp(
        Family::V4,
        port_with_other_backend(&service, &first, 42000),
        SYN,
    );
    let first_backend = dnat(&service, &first).dst.to_string();
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, first.build())],
            ..Setup::default()
        },
        program: Program::Xdp,
        input: second.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbAffinity,
            out: Out::Packet(second.clone().to(&first_backend, 8080).build()),
            service: Some(ServiceDelta {
                id: 6,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

/// A SYN sent again before the handshake completed (a retransmission) opens the connection
/// anew: its backend turned terminating and left the table while the others are ready, so
/// it goes to one of those instead of following its conntrack entry.
#[test]
fn a_retransmitted_syn_goes_only_to_a_backend_the_frontend_may_use_now() {
    let syn = tcp(Family::V4, 41005, SYN);
    check(after_its_backend_turned_terminating(
        41005,
        SYN,
        |without, _| Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(without, &syn).build()),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 1,
            }),
        },
    ));
}

/// The client's backend stays in the frontend's table when a backend joins, but the table
/// is a new one at another offset (the slot the affinity entry remembers may name another
/// backend there): the next new flow still goes to the client's backend, as kube-proxy
/// keeps affinity as long as the endpoint may be used.
#[test]
fn session_affinity_survives_a_new_table_that_still_holds_the_backend() {
    let backends = [
        (60, "198.18.1.1", 8080, ACTIVE),
        (61, "198.18.1.2", 8080, ACTIVE),
        (62, "198.18.1.3", 8080, ACTIVE),
    ];
    let affinity = |backends: &[(u32, &str, u16, u8)]| {
        Service::new(
            6,
            Family::V4.vip(),
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            frontend_flags::AFFINITY,
            backends,
        )
    };
    let service = affinity(&backends);
    let mut joined = backends.to_vec();
    joined.push((63, "198.18.1.4", 8080, ACTIVE));
    let rebuilt = affinity(&joined).at_offset(20 * 512);
    let src = Family::V4.client();
    let pick = |service: &Service, port| service.pick(src, port, Family::V4.vip(), 80, PROTO_TCP);
    // A first flow whose slot (the one the affinity entry remembers) names another backend
    // in the new table: the entry's slot no longer proves membership there.
    let first_port = (42100..43000)
        .find(|p| pick(&service, *p) != pick(&rebuilt, *p))
        .expect("a slot the new table gives to another backend");
    let first = tcp(Family::V4, first_port, SYN);
    let first_backend = dnat(&service, &first).dst.to_string();
    // A port whose slot in the new table names another backend: only affinity sends it back.
    let sport = (first_port + 1..first_port + 1000)
        .find(|p| backend_addr(&pick(&rebuilt, *p)) != first_backend)
        .expect("a port the new table sends elsewhere");
    let second = tcp(Family::V4, sport, SYN);
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, first.build())],
            changes: rebuilt.ops(),
            ..Setup::default()
        },
        program: Program::Xdp,
        input: second.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbAffinity,
            out: Out::Packet(second.clone().to(&first_backend, 8080).build()),
            service: None,
        },
    });
}

/// Entries of the flow map `name` (CONNTRACK or HANDSHAKES).
fn flow_entries(env: &Env, name: &'static str) -> Vec<(lb_common::FlowKey, lb_common::FlowValue)> {
    let map: aya::maps::HashMap<&aya::maps::MapData, lb_common::FlowKey, lb_common::FlowValue> =
        aya::maps::HashMap::try_from(env.datapath.map(name).expect(name)).expect(name);
    map.iter().map(|entry| entry.expect("an entry")).collect()
}

/// A SYN's flow waits in HANDSHAKES, not in CONNTRACK (a spoofed-SYN flood evicts only its
/// own kind): the backend's SYN-ACK is translated from there, and the client's ACK moves
/// the flow into CONNTRACK, where later packets find it.
#[test]
fn a_syns_flow_waits_in_handshakes_until_the_clients_ack_moves_it_to_conntrack() {
    let mut env = Env::new();
    for family in Family::BOTH {
        env.reset();
        let service = cluster_ip(family, PROTO_TCP);
        env.install(&service);
        let syn = tcp(family, 41100, SYN);
        let out = env.run(Program::Xdp, &syn.build());
        assert_eq!(out.verdict, XDP_PASS, "{family:?}: the SYN is balanced");
        assert!(
            flow_entries(&env, lb_common::map_names::CONNTRACK).is_empty(),
            "{family:?}: a SYN writes nothing into CONNTRACK"
        );
        assert_eq!(
            flow_entries(&env, lb_common::map_names::HANDSHAKES).len(),
            2,
            "{family:?}"
        );

        // The backend's SYN-ACK leaves from the frontend, translated from HANDSHAKES.
        let forwarded = dnat(&service, &syn);
        let mut syn_ack = Spec::new(
            &forwarded.dst.to_string(),
            forwarded.dport,
            &syn.src.to_string(),
            syn.sport,
            L4::Tcp(SYN | ACK),
        );
        syn_ack.src_mac = NODE_MAC;
        syn_ack.dst_mac = CLIENT_MAC;
        let before = env.reasons();
        let reply = env.run(Program::TcEgress, &syn_ack.build());
        assert_eq!(
            reason_deltas(&before, &env.reasons()),
            vec![(Reason::ReplyTranslated, 1)],
            "{family:?}: the SYN-ACK"
        );
        assert_eq!(
            reply.packet,
            syn_ack
                .clone()
                .from(&syn.dst.to_string(), syn.dport)
                .build(),
            "{family:?}: the SYN-ACK comes from the frontend"
        );

        // The client's ACK: an established flow, now in CONNTRACK (both directions).
        let ack = tcp(family, 41100, ACK);
        let before = env.reasons();
        let out = env.run(Program::Xdp, &ack.build());
        assert_eq!(
            reason_deltas(&before, &env.reasons()),
            vec![(Reason::LbConntrack, 1)],
            "{family:?}: the ACK follows the handshake's flow"
        );
        assert_eq!(out.packet, dnat(&service, &ack).build(), "{family:?}");
        let conntrack = flow_entries(&env, lb_common::map_names::CONNTRACK);
        assert_eq!(conntrack.len(), 2, "{family:?}: forward and reply entries");
        assert!(
            conntrack
                .iter()
                .any(|(_, v)| v.direction == lb_common::flow_direction::REPLY
                    && v.tcp_flags_seen & lb_common::tcp_seen::ESTABLISHED != 0),
            "{family:?}: the reply entry carries the flow's state"
        );
    }
}
