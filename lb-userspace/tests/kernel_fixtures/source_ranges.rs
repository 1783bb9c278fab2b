//! loadBalancerSourceRanges: clients outside the ranges are dropped; like kube-proxy
//! (whose KUBE-FW rules see a connection's first packet only), a range change leaves
//! established flows alone.

use super::*;

/// Service 8: a LoadBalancer IP with source ranges and one backend.
fn ranged_service() -> Service {
    Service::new(
        8,
        Family::V4.lb(),
        443,
        PROTO_TCP,
        frontend_kind::LOAD_BALANCER,
        frontend_flags::EXTERNAL | frontend_flags::SOURCE_RANGES,
        &[(80, "198.18.1.1", 8443, ACTIVE)],
    )
}

/// The /24 starting at `addr`, a source range of service 8.
fn range_24(addr: &str) -> (SourceRangeKey, u32) {
    let (addr, family) = addr16(addr);
    assert_eq!(family, lb_common::FAMILY_IPV4, "the ranges here are IPv4");
    let key = SourceRangeKey {
        service_id_be: 8u32.to_be_bytes(),
        family,
        addr,
        _pad: [0; 3],
    };
    (key, SourceRangeKey::prefix_len(24))
}

fn put_range(addr: &str) -> MapOp {
    let (key, prefix_len) = range_24(addr);
    MapOp::PutSourceRange { key, prefix_len }
}

/// The clients' range moves from 198.18.0.0/24 to 198.18.7.0/24.
fn narrowed() -> Vec<MapOp> {
    let (key, prefix_len) = range_24("198.18.0.0");
    vec![
        put_range("198.18.7.0"),
        MapOp::DeleteSourceRange { key, prefix_len },
    ]
}

/// A client inside 198.18.0.0/24 opening a connection.
fn allowed_syn() -> Spec {
    Spec::new(
        Family::V4.client(),
        44000,
        Family::V4.lb(),
        443,
        L4::Tcp(SYN),
    )
}

#[test]
fn a_client_inside_the_range_is_balanced() {
    check(Row {
        setup: Setup {
            services: vec![ranged_service()],
            ops: vec![put_range("198.18.0.0")],
            ..Setup::default()
        },
        program: Program::Xdp,
        input: allowed_syn().build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbNewFlow,
            out: Out::Packet(allowed_syn().to("198.18.1.1", 8443).build()),
            service: Some(ServiceDelta {
                id: 8,
                packets: 1,
                new_flows: 1,
            }),
        },
    });
}

#[test]
fn a_client_outside_the_range_is_dropped() {
    check(Row {
        setup: Setup {
            services: vec![ranged_service()],
            ops: vec![put_range("198.18.0.0")],
            ..Setup::default()
        },
        program: Program::Xdp,
        input: Spec::new("198.18.7.1", 44001, Family::V4.lb(), 443, L4::Tcp(SYN)).build(),
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropSourceRange,
            out: Out::Dropped,
            service: None,
        },
    });
}

#[test]
fn an_existing_flow_survives_a_source_range_change() {
    let established = Spec::new(
        Family::V4.client(),
        44000,
        Family::V4.lb(),
        443,
        L4::Tcp(ACK),
    );
    check(Row {
        setup: Setup {
            services: vec![ranged_service()],
            ops: vec![put_range("198.18.0.0")],
            warmup: vec![(Program::Xdp, allowed_syn().build())],
            changes: narrowed(),
            ..Setup::default()
        },
        program: Program::Xdp,
        input: established.build(),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::LbConntrack,
            out: Out::Packet(established.clone().to("198.18.1.1", 8443).build()),
            service: Some(ServiceDelta {
                id: 8,
                packets: 1,
                new_flows: 0,
            }),
        },
    });
}

#[test]
fn a_source_range_change_drops_the_clients_new_connections() {
    check(Row {
        setup: Setup {
            services: vec![ranged_service()],
            ops: vec![put_range("198.18.0.0")],
            warmup: vec![(Program::Xdp, allowed_syn().build())],
            changes: narrowed(),
            ..Setup::default()
        },
        program: Program::Xdp,
        input: Spec::new(
            Family::V4.client(),
            44002,
            Family::V4.lb(),
            443,
            L4::Tcp(SYN),
        )
        .build(),
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropSourceRange,
            out: Out::Dropped,
            service: None,
        },
    });
}
