//! ICMP errors about balanced flows, translated so that the peer recognises its own
//! packet in the quote.

use super::*;

/// The node cannot forward the DNATed packet (MTU): the too-big error to the client quotes
/// client -> backend; the client must see client -> frontend.
#[test]
fn tc_egress_too_big_from_the_node_quotes_the_frontend() {
    check_both_families(|family| {
        let service = cluster_ip(family, PROTO_TCP);
        let packet = tcp(family, 46000, ACK).payload(&[0x11; 64]);
        let quote_len = family.ip_header_len() + 20 + 64;
        let too_big = |quoted: &Spec| {
            icmp_error(
                family.node(),
                family.client(),
                IcmpError::TooBig(1280),
                &quoted.build(),
                14,
                quote_len,
            )
        };
        Row {
            setup: Setup {
                services: vec![service.clone()],
                warmup: vec![(Program::Xdp, packet.build())],
                ..Setup::default()
            },
            program: Program::TcEgress,
            input: too_big(&dnat(&service, &packet)),
            expect: Expect {
                verdict: TCX_NEXT,
                reason: Reason::IcmpErrorTranslated,
                out: Out::Packet(too_big(&packet)),
                service: None,
            },
        }
    });
}

/// A backend answers port unreachable: the outer source and the quote both name the
/// frontend.
#[test]
fn tc_egress_port_unreachable_from_a_backend_comes_from_the_frontend() {
    let service = cluster_ip(Family::V4, PROTO_UDP);
    let packet = udp(Family::V4, 46001);
    let forwarded = dnat(&service, &packet);
    let input = icmp_error(
        &forwarded.dst.to_string(),
        Family::V4.client(),
        IcmpError::PortUnreachable,
        &forwarded.build(),
        14,
        28,
    );
    let expected = icmp_error(
        Family::V4.vip(),
        Family::V4.client(),
        IcmpError::PortUnreachable,
        &packet.build(),
        14,
        28,
    );
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, packet.build())],
            ..Setup::default()
        },
        program: Program::TcEgress,
        input,
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::IcmpErrorTranslated,
            out: Out::Packet(expected),
            service: None,
        },
    });
}

/// The client complains about a reply (frontend -> client): the backend must see its own
/// packet (backend -> client) and get the error.
#[test]
fn xdp_frag_needed_from_a_client_reaches_the_backend() {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    let packet = tcp(Family::V4, 46003, SYN);
    let backend = dnat(&service, &packet).dst.to_string();
    let reply_seen_by_client = Spec::new(
        Family::V4.vip(),
        80,
        Family::V4.client(),
        46003,
        L4::Tcp(SYN | ACK),
    )
    .payload(&[0x33; 40]);
    let reply_sent_by_backend = reply_seen_by_client.clone().from(&backend, 8080);
    let input = icmp_error(
        Family::V4.client(),
        Family::V4.vip(),
        IcmpError::TooBig(1300),
        &reply_seen_by_client.build(),
        14,
        20 + 20 + 40,
    );
    let expected = icmp_error(
        Family::V4.client(),
        &backend,
        IcmpError::TooBig(1300),
        &reply_sent_by_backend.build(),
        14,
        20 + 20 + 40,
    );
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, packet.build())],
            ..Setup::default()
        },
        program: Program::Xdp,
        input,
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::IcmpErrorTranslated,
            out: Out::Packet(expected),
            service: None,
        },
    });
}

#[test]
fn tc_ingress_ipv6_packet_too_big_from_a_client_reaches_the_backend() {
    let service = cluster_ip(Family::V6, PROTO_UDP);
    let packet = udp(Family::V6, 46004);
    let backend = dnat(&service, &packet).dst.to_string();
    let reply_seen =
        Spec::new(Family::V6.vip(), 80, Family::V6.client(), 46004, L4::Udp).payload(&[0x44; 30]);
    let reply_sent = reply_seen.clone().from(&backend, 8080);
    let input = icmp_error(
        Family::V6.client(),
        Family::V6.vip(),
        IcmpError::TooBig(1280),
        &reply_seen.build(),
        14,
        40 + 8 + 30,
    );
    let expected = icmp_error(
        Family::V6.client(),
        &backend,
        IcmpError::TooBig(1280),
        &reply_sent.build(),
        14,
        40 + 8 + 30,
    );
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, packet.build())],
            ..Setup::default()
        },
        program: Program::TcIngress,
        input,
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::IcmpErrorTranslated,
            out: Out::Packet(expected),
            service: None,
        },
    });
}

#[test]
fn icmp_error_about_no_balanced_flow_passes() {
    let node = Family::V4.node();
    let client = Family::V4.client();
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::Xdp,
        input: icmp_error(
            client,
            node,
            IcmpError::PortUnreachable,
            &Spec::new(node, 5000, client, 6000, L4::Udp).build(),
            14,
            28,
        ),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassNoFrontend,
            out: Out::Unchanged,
            service: None,
        },
    });
}
