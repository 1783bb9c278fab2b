//! A frontend with no usable backend: TCP SYNs get a RST, everything else an ICMP port
//! unreachable, and a Local traffic policy drops silently.

use super::*;

/// Service 7 at `addr`, port 80, without backends.
fn without_backends(addr: &str, proto: u8, flags: u16) -> Service {
    Service::new(7, addr, 80, proto, frontend_kind::CLUSTER_IP, flags, &[])
}

#[test]
fn no_backend_tcp_syn_gets_a_rst() {
    check_both_families(|family| {
        let syn = tcp(family, 43000, SYN);
        Row {
            setup: Setup::services(vec![without_backends(family.vip(), PROTO_TCP, 0)]),
            program: Program::Xdp,
            input: syn.build(),
            expect: Expect {
                verdict: XDP_TX,
                reason: Reason::RejectTcpReset,
                out: Out::Packet(tcp_reset_for(&syn)),
                service: None,
            },
        }
    });
}

#[test]
fn no_backend_ipv4_tcp_syn_with_payload_and_vlan_gets_a_rst() {
    let syn = tcp(Family::V4, 43002, SYN).payload(b"fastopen").vlan(5);
    check(Row {
        setup: Setup::services(vec![without_backends(Family::V4.vip(), PROTO_TCP, 0)]),
        program: Program::Xdp,
        input: syn.build(),
        expect: Expect {
            verdict: XDP_TX,
            reason: Reason::RejectTcpReset,
            out: Out::Packet(tcp_reset_for(&syn)),
            service: None,
        },
    });
}

#[test]
fn tc_ingress_no_backend_ipv4_tcp_syn_gets_a_rst() {
    let syn = tcp(Family::V4, 43003, SYN);
    check(Row {
        setup: Setup::services(vec![without_backends(Family::V4.vip(), PROTO_TCP, 0)]),
        program: Program::TcIngress,
        input: syn.build(),
        expect: Expect {
            verdict: TC_ACT_REDIRECT,
            reason: Reason::RejectTcpReset,
            out: Out::Packet(tcp_reset_for(&syn)),
            service: None,
        },
    });
}

#[test]
fn no_backend_udp_gets_port_unreachable() {
    check_both_families(|family| {
        let packet = udp(family, 43100);
        Row {
            setup: Setup::services(vec![without_backends(family.vip(), PROTO_UDP, 0)]),
            program: Program::Xdp,
            input: packet.build(),
            expect: Expect {
                verdict: XDP_TX,
                reason: Reason::RejectIcmpUnreachable,
                out: Out::Packet(port_unreachable_for(
                    &packet,
                    &packet.build(),
                    l4_offset(&packet),
                )),
                service: None,
            },
        }
    });
}

#[test]
fn no_backend_ipv4_tcp_ack_gets_port_unreachable() {
    let packet = tcp(Family::V4, 43102, ACK);
    check(Row {
        setup: Setup::services(vec![without_backends(Family::V4.vip(), PROTO_TCP, 0)]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_TX,
            reason: Reason::RejectIcmpUnreachable,
            out: Out::Packet(port_unreachable_for(
                &packet,
                &packet.build(),
                l4_offset(&packet),
            )),
            service: None,
        },
    });
}

#[test]
fn no_backend_ipv4_sctp_gets_port_unreachable() {
    let packet = Spec::new(Family::V4.client(), 43103, Family::V4.vip(), 80, L4::Sctp);
    check(Row {
        setup: Setup::services(vec![without_backends(Family::V4.vip(), PROTO_SCTP, 0)]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_TX,
            reason: Reason::RejectIcmpUnreachable,
            out: Out::Packet(port_unreachable_for(
                &packet,
                &packet.build(),
                l4_offset(&packet),
            )),
            service: None,
        },
    });
}

#[test]
fn no_backend_ipv6_udp_with_vlan_gets_port_unreachable() {
    let packet = udp(Family::V6, 43104).vlan(9);
    check(Row {
        setup: Setup::services(vec![without_backends(Family::V6.vip(), PROTO_UDP, 0)]),
        program: Program::Xdp,
        input: packet.build(),
        expect: Expect {
            verdict: XDP_TX,
            reason: Reason::RejectIcmpUnreachable,
            out: Out::Packet(port_unreachable_for(
                &packet,
                &packet.build(),
                l4_offset(&packet),
            )),
            service: None,
        },
    });
}

#[test]
fn tc_ingress_no_backend_ipv6_udp_gets_port_unreachable() {
    let packet = udp(Family::V6, 43105);
    check(Row {
        setup: Setup::services(vec![without_backends(Family::V6.vip(), PROTO_UDP, 0)]),
        program: Program::TcIngress,
        input: packet.build(),
        expect: Expect {
            verdict: TC_ACT_REDIRECT,
            reason: Reason::RejectIcmpUnreachable,
            out: Out::Packet(port_unreachable_for(
                &packet,
                &packet.build(),
                l4_offset(&packet),
            )),
            service: None,
        },
    });
}

/// A UDP packet with IP options: the quote is the 24-byte IP header plus 8 bytes.
#[test]
fn no_backend_ipv4_udp_with_options_quotes_the_whole_header() {
    let packet = udp(Family::V4, 43200);
    let input = with_ipv4_options(packet.build(), 14);
    check(Row {
        setup: Setup::services(vec![without_backends(Family::V4.vip(), PROTO_UDP, 0)]),
        program: Program::Xdp,
        input: input.clone(),
        expect: Expect {
            verdict: XDP_TX,
            reason: Reason::RejectIcmpUnreachable,
            out: Out::Packet(port_unreachable_for(&packet, &input, 14 + 24)),
            service: None,
        },
    });
}

#[test]
fn no_local_endpoint_is_dropped_silently() {
    let local_only = frontend_flags::DROP_WHEN_EMPTY | frontend_flags::TRAFFIC_POLICY_LOCAL;
    check(Row {
        setup: Setup::services(vec![without_backends(
            Family::V4.vip(),
            PROTO_TCP,
            local_only,
        )]),
        program: Program::Xdp,
        input: tcp(Family::V4, 43300, SYN).build(),
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropNoLocalEndpoint,
            out: Out::Dropped,
            service: None,
        },
    });
}

#[test]
fn a_table_naming_a_backend_of_the_other_family_is_refused_as_internal() {
    let mixed = Service::new(
        9,
        Family::V4.vip(),
        80,
        PROTO_TCP,
        frontend_kind::CLUSTER_IP,
        0,
        &[(90, "2001:2:0:1::9", 8080, ACTIVE)],
    );
    check(Row {
        setup: Setup::services(vec![mixed]),
        program: Program::Xdp,
        input: tcp(Family::V4, 43400, SYN).build(),
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropInternal,
            out: Out::Dropped,
            service: None,
        },
    });
}
