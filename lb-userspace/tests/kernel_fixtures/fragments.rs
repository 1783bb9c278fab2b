//! Fragments: the first is balanced like a whole packet; later ones follow it.

use super::*;

/// A UDP datagram to the ClusterIP, long enough to be cut in two.
fn datagram(family: Family, sport: u16) -> Spec {
    udp(family, sport).payload(&[0x55; 200])
}

/// The first (`first`) or the later fragment of `whole`, cut after 96 bytes of payload.
fn fragment(family: Family, whole: &[u8], first: bool) -> Vec<u8> {
    match family {
        Family::V4 => ipv4_fragment(whole, 14, 0x4242, 96, first),
        Family::V6 => ipv6_fragment(whole, 14, 0xabcdef, 96, first),
    }
}

#[test]
fn first_fragment_is_balanced() {
    check_both_families(|family| {
        let service = cluster_ip(family, PROTO_UDP);
        let packet = datagram(family, 47000);
        let natted = dnat(&service, &packet).build();
        Row {
            setup: Setup::services(vec![service.clone()]),
            program: Program::Xdp,
            input: fragment(family, &packet.build(), true),
            expect: Expect {
                verdict: XDP_PASS,
                reason: Reason::LbNewFlow,
                out: Out::Packet(fragment(family, &natted, true)),
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
fn ipv4_later_fragment_follows_its_first() {
    let service = cluster_ip(Family::V4, PROTO_UDP);
    let whole = datagram(Family::V4, 47000);
    let natted = dnat(&service, &whole).build();
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, fragment(Family::V4, &whole.build(), true))],
            ..Setup::default()
        },
        program: Program::Xdp,
        input: fragment(Family::V4, &whole.build(), false),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbFragment,
            out: Out::Packet(fragment(Family::V4, &natted, false)),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 0,
            }),
        },
    });
}

/// The flow already exists when the first fragment comes (it goes by conntrack, not as a
/// new flow): the later one still follows it.
#[test]
fn tc_ingress_ipv4_later_fragment_follows_its_first_which_went_by_conntrack() {
    let service = cluster_ip(Family::V4, PROTO_UDP);
    let whole = datagram(Family::V4, 47000);
    let natted = dnat(&service, &whole).build();
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![
                (Program::Xdp, whole.build()),
                (Program::Xdp, fragment(Family::V4, &whole.build(), true)),
            ],
            ..Setup::default()
        },
        program: Program::TcIngress,
        input: fragment(Family::V4, &whole.build(), false),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::LbFragment,
            out: Out::Packet(fragment(Family::V4, &natted, false)),
            service: Some(ServiceDelta {
                id: 1,
                packets: 1,
                new_flows: 0,
            }),
        },
    });
}

#[test]
fn ipv4_later_fragment_of_an_unknown_datagram_passes() {
    let whole = datagram(Family::V4, 47000);
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_UDP)]),
        program: Program::Xdp,
        input: fragment(Family::V4, &whole.build(), false),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassFragmentUnknown,
            out: Out::Unchanged,
            service: None,
        },
    });
}

#[test]
fn tc_ingress_ipv6_later_fragment_follows_its_first() {
    let service = cluster_ip(Family::V6, PROTO_UDP);
    let whole = datagram(Family::V6, 47001);
    let natted = dnat(&service, &whole).build();
    check(Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, fragment(Family::V6, &whole.build(), true))],
            ..Setup::default()
        },
        program: Program::TcIngress,
        input: fragment(Family::V6, &whole.build(), false),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::LbFragment,
            out: Out::Packet(fragment(Family::V6, &natted, false)),
            service: Some(ServiceDelta {
                id: 2,
                packets: 1,
                new_flows: 0,
            }),
        },
    });
}
