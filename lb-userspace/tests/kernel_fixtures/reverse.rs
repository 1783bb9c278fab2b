//! Reverse NAT on TC egress: a backend's reply leaves with the frontend's address.

use super::*;

/// What `service`'s backend sends back for `request` (a SYN becomes a SYN-ACK).
fn reply_to(service: &Service, request: &Spec) -> Spec {
    let forwarded = dnat(service, request);
    let mut reply = Spec::new(
        &forwarded.dst.to_string(),
        forwarded.dport,
        &request.src.to_string(),
        request.sport,
        request.l4,
    );
    reply.l4 = match request.l4 {
        L4::Tcp(_) => L4::Tcp(SYN | ACK),
        other => other,
    };
    reply.udp_no_checksum = request.udp_no_checksum;
    reply.src_mac = NODE_MAC;
    reply.dst_mac = CLIENT_MAC;
    reply
}

/// The reply as the client must see it: from the frontend it talked to.
fn from_frontend(reply: &Spec, request: &Spec) -> Vec<u8> {
    reply
        .clone()
        .from(&request.dst.to_string(), request.dport)
        .build()
}

#[test]
fn tc_egress_ipv4_tcp_reply_leaves_from_the_service_address() {
    let service = cluster_ip(Family::V4, PROTO_TCP);
    let request = tcp(Family::V4, 45000, SYN);
    let reply = reply_to(&service, &request);
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, request.build())],
            ..Setup::default()
        },
        program: Program::TcEgress,
        input: reply.build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::ReplyTranslated,
            out: Out::Packet(from_frontend(&reply, &request)),
            service: None,
        },
    });
}

#[test]
fn tc_egress_ipv6_udp_reply_leaves_from_the_service_address() {
    let service = cluster_ip(Family::V6, PROTO_UDP);
    let request = udp(Family::V6, 45001);
    let reply = reply_to(&service, &request);
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, request.build())],
            ..Setup::default()
        },
        program: Program::TcEgress,
        input: reply.build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::ReplyTranslated,
            out: Out::Packet(from_frontend(&reply, &request)),
            service: None,
        },
    });
}

#[test]
fn tc_egress_ipv4_udp_reply_without_checksum() {
    let service = cluster_ip(Family::V4, PROTO_UDP);
    let request = udp(Family::V4, 45002).udp_no_checksum();
    let reply = reply_to(&service, &request);
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, request.build())],
            ..Setup::default()
        },
        program: Program::TcEgress,
        input: reply.build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::ReplyTranslated,
            out: Out::Packet(from_frontend(&reply, &request)),
            service: None,
        },
    });
}

#[test]
fn tc_egress_traffic_of_no_balanced_flow_passes_untouched() {
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::TcEgress,
        input: Spec::new(
            "198.18.1.1",
            8080,
            Family::V4.client(),
            45003,
            L4::Tcp(SYN | ACK),
        )
        .build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::PassNoFrontend,
            out: Out::Unchanged,
            service: None,
        },
    });
}
