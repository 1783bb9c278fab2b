//! Packets that are not for a frontend, or not a protocol we balance: passed untouched.

use super::*;

#[test]
fn ipv4_tcp_to_another_port() {
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::Xdp,
        input: tcp(Family::V4, 40100, SYN).to(Family::V4.vip(), 81).build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassNoFrontend,
            out: Out::Unchanged,
            service: None,
        },
    });
}

#[test]
fn ipv4_udp_to_a_tcp_frontend() {
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::Xdp,
        input: udp(Family::V4, 40101).build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassNoFrontend,
            out: Out::Unchanged,
            service: None,
        },
    });
}

#[test]
fn ipv6_tcp_to_no_frontend() {
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::Xdp,
        input: tcp(Family::V6, 40102, SYN).build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassNoFrontend,
            out: Out::Unchanged,
            service: None,
        },
    });
}

#[test]
fn arp_is_not_ip() {
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    check(Row {
        setup: Setup::default(),
        program: Program::Xdp,
        input: arp,
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassNotIp,
            out: Out::Unchanged,
            service: None,
        },
    });
}

#[test]
fn icmp_echo_to_a_service_address() {
    let mut echo = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4([198, 18, 0, 1], [198, 18, 100, 1], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"ping")
        .expect("echo");
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::Xdp,
        input: echo,
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassOtherProtocol,
            out: Out::Unchanged,
            service: None,
        },
    });
}

#[test]
fn tc_ingress_ipv4_tcp_to_another_port() {
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::TcIngress,
        input: tcp(Family::V4, 40103, SYN)
            .to(Family::V4.vip(), 443)
            .build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::PassNoFrontend,
            out: Out::Unchanged,
            service: None,
        },
    });
}
