//! New flows to a frontend: rewritten to the backend its Maglev slot names, over every
//! protocol, frontend kind and header layout we balance, on XDP and on TC ingress.

use super::*;

#[test]
fn tcp_syn_to_cluster_ip() {
    check_both_families(|family| {
        let service = cluster_ip(family, PROTO_TCP);
        let packet = tcp(family, 40000, SYN);
        Row {
            setup: Setup::services(vec![service.clone()]),
            program: Program::Xdp,
            input: packet.build(),
            expect: Expect {
                verdict: XDP_PASS,
                reason: Reason::LbNewFlow,
                out: Out::Packet(dnat(&service, &packet).build()),
                service: Some(ServiceDelta {
                    id: service.id,
                    packets: 1,
                    new_flows: 1,
                }),
            },
        }
    });
}

#[test]
fn udp_to_cluster_ip() {
    check_both_families(|family| {
        let service = cluster_ip(family, PROTO_UDP);
        let packet = udp(family, 40001);
        Row {
            setup: Setup::services(vec![service.clone()]),
            program: Program::Xdp,
            input: packet.build(),
            expect: Expect {
                verdict: XDP_PASS,
                reason: Reason::LbNewFlow,
                out: Out::Packet(dnat(&service, &packet).build()),
                service: Some(ServiceDelta {
                    id: service.id,
                    packets: 1,
                    new_flows: 1,
                }),
            },
        }
    });
}

#[test]
fn ipv4_udp_without_checksum_keeps_zero() {
    let service = cluster_ip(Family::V4, PROTO_UDP);
    let packet = udp(Family::V4, 40002).udp_no_checksum();
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&service, &packet).build()),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

/// SCTP keeps its ports: only the address is rewritten.
#[test]
fn sctp_to_cluster_ip_rewrites_the_address_only() {
    check_both_families(|family| {
        let service = cluster_ip(family, PROTO_SCTP);
        let packet = Spec::new(family.client(), 40003, family.vip(), 80, L4::Sctp);
        Row {
            setup: Setup::services(vec![service.clone()]),
            program: Program::Xdp,
            input: packet.build(),
            expect: Expect {
                verdict: XDP_PASS,
                reason: Reason::LbNewFlow,
                out: Out::Packet(dnat(&service, &packet).build()),
                service: Some(ServiceDelta {
                    id: service.id,
                    packets: 1,
                    new_flows: 1,
                }),
            },
        }
    });
}

#[test]
fn ipv4_tcp_to_node_port() {
    let node_port = Service::new(
        3,
        Family::V4.node(),
        30080,
        PROTO_TCP,
        frontend_kind::NODE_PORT,
        frontend_flags::EXTERNAL,
        &[
            (30, "198.18.1.1", 8080, ACTIVE),
            (31, "198.18.1.2", 8080, ACTIVE),
        ],
    );
    let packet = Spec::new(
        Family::V4.client(),
        40007,
        Family::V4.node(),
        30080,
        L4::Tcp(SYN),
    );
    check(Row {
        setup: Setup::services(vec![node_port.clone()]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&node_port, &packet).build()),
            service: Some(ServiceDelta {
                id: 3,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn ipv4_tcp_to_load_balancer() {
    let service = load_balancer(Family::V4, PROTO_TCP);
    let packet = Spec::new(
        Family::V4.client(),
        40008,
        Family::V4.lb(),
        443,
        L4::Tcp(SYN),
    );
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&service, &packet).build()),
            service: Some(ServiceDelta {
                id: 4,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn ipv6_udp_to_load_balancer() {
    let service = load_balancer(Family::V6, PROTO_UDP);
    let packet = Spec::new(Family::V6.client(), 40009, Family::V6.lb(), 443, L4::Udp);
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&service, &packet).build()),
            service: Some(ServiceDelta {
                id: 5,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn ipv4_tcp_with_a_vlan_tag() {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    let packet = tcp(Family::V4, 40010, SYN).vlan(100);
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&service, &packet).build()),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn ipv6_udp_with_a_vlan_tag() {
    let service = cluster_ip(Family::V6, PROTO_UDP);
    let packet = udp(Family::V6, 40011).vlan(7);
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&service, &packet).build()),
            service: Some(ServiceDelta {
                id: 2,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn ipv4_tcp_with_ip_options() {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    let packet = tcp(Family::V4, 40012, SYN);
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::Xdp,
        input: with_ipv4_options(packet.build(), 14),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(with_ipv4_options(dnat(&service, &packet).build(), 14)),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn ipv6_tcp_after_hop_by_hop_and_destination_options() {
    let service = cluster_ip(Family::V6, PROTO_TCP);
    let packet = tcp(Family::V6, 40013, SYN);
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::Xdp,
        input: with_ipv6_extensions(packet.build(), 14),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(with_ipv6_extensions(dnat(&service, &packet).build(), 14)),
            service: Some(ServiceDelta {
                id: 2,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

/// With an odd-length payload, so the checksum update covers a trailing odd byte.
#[test]
fn tc_ingress_tcp_syn_to_cluster_ip() {
    check_both_families(|family| {
        let service = cluster_ip(family, PROTO_TCP);
        let packet = tcp(family, 40014, SYN).payload(&[0x5a; 301]);
        Row {
            setup: Setup::services(vec![service.clone()]),
            program: Program::TcIngress,
            input: packet.build(),
            expect: Expect {
                verdict: TCX_NEXT,
                reason: Reason::LbNewFlow,
                out: Out::Packet(dnat(&service, &packet).build()),
                service: Some(ServiceDelta {
                    id: service.id,
                    packets: 1,
                    new_flows: 1,
                }),
            },
        }
    });
}

#[test]
fn tc_ingress_ipv6_udp_to_cluster_ip() {
    let service = cluster_ip(Family::V6, PROTO_UDP);
    let packet = udp(Family::V6, 40015);
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::TcIngress,
        input: packet.build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&service, &packet).build()),
            service: Some(ServiceDelta {
                id: 2,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn tc_ingress_ipv4_udp_without_checksum() {
    let service = cluster_ip(Family::V4, PROTO_UDP);
    let packet = udp(Family::V4, 40016).udp_no_checksum();
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::TcIngress,
        input: packet.build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&service, &packet).build()),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn tc_ingress_ipv6_tcp_to_load_balancer() {
    let service = load_balancer(Family::V6, PROTO_TCP);
    let packet = Spec::new(
        Family::V6.client(),
        40017,
        Family::V6.lb(),
        443,
        L4::Tcp(SYN),
    )
    .payload(&[0x5a; 301]);
    check(Row {
        setup: Setup::services(vec![service.clone()]),
        program: Program::TcIngress,
        input: packet.build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::LbNewFlow,
            out: Out::Packet(dnat(&service, &packet).build()),
            service: Some(ServiceDelta {
                id: 5,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}
