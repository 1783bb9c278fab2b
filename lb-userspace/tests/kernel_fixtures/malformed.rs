//! Truncated and malformed headers: dropped, except headers past the parser's reach, which
//! pass untouched.

use super::*;

#[test]
fn truncated_vlan_ethertype_without_a_tag() {
    let mut vlan_no_tag = tcp(Family::V4, 48000, SYN).build()[..14].to_vec();
    vlan_no_tag[12..14].copy_from_slice(&[0x81, 0x00]);
    check(Row {
        setup: Setup::default(),
        program: Program::Xdp,
        input: vlan_no_tag,
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropTruncated,
            out: Out::Dropped,
            service: None,
        },
    });
}

#[test]
fn truncated_ip_header() {
    check_both_families(|family| {
        let whole = tcp(family, 48000, SYN).build();
        Row {
            setup: Setup::default(),
            program: Program::Xdp,
            input: whole[..14 + family.ip_header_len() - 8].to_vec(),
            expect: Expect {
                verdict: XDP_DROP,
                reason: Reason::DropTruncated,
                out: Out::Dropped,
                service: None,
            },
        }
    });
}

/// The IP length agrees with the cut.
#[test]
fn truncated_tcp_header() {
    let mut cut = tcp(Family::V4, 48000, SYN).build()[..14 + 20 + 10].to_vec();
    cut[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut cut, 14);
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::Xdp,
        input: cut,
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropTruncated,
            out: Out::Dropped,
            service: None,
        },
    });
}

#[test]
fn malformed_ipv4_ihl_below_5() {
    let mut bad = tcp(Family::V4, 48000, SYN).build();
    bad[14] = 0x44;
    check(Row {
        setup: Setup::default(),
        program: Program::Xdp,
        input: bad,
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropMalformed,
            out: Out::Dropped,
            service: None,
        },
    });
}

/// IPv4 total length or IPv6 payload length longer than the frame.
#[test]
fn malformed_ip_length_beyond_the_packet() {
    check_both_families(|family| {
        let mut long = tcp(family, 48000, SYN).build();
        let (field, length) = match family {
            Family::V4 => (14 + 2, 1400u16),
            Family::V6 => (14 + 4, 2000u16),
        };
        long[field..field + 2].copy_from_slice(&length.to_be_bytes());
        Row {
            setup: Setup::default(),
            program: Program::Xdp,
            input: long,
            expect: Expect {
                verdict: XDP_DROP,
                reason: Reason::DropMalformed,
                out: Out::Dropped,
                service: None,
            },
        }
    });
}

#[test]
fn malformed_tcp_data_offset_below_5() {
    let mut doff = tcp(Family::V4, 48000, SYN).build();
    doff[14 + 20 + 12] = 0x40;
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::Xdp,
        input: doff,
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropMalformed,
            out: Out::Dropped,
            service: None,
        },
    });
}

/// The IPv6 payload length agrees with the cut.
#[test]
fn truncated_udp_header() {
    let mut cut = udp(Family::V6, 48001).build()[..14 + 40 + 4].to_vec();
    cut[18..20].copy_from_slice(&4u16.to_be_bytes());
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V6, PROTO_UDP)]),
        program: Program::Xdp,
        input: cut,
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropTruncated,
            out: Out::Dropped,
            service: None,
        },
    });
}

/// The SCTP common header cut after the ports (the IP length agrees with the cut).
#[test]
fn truncated_sctp_header() {
    let sctp = Spec::new(Family::V4.client(), 48002, Family::V4.vip(), 80, L4::Sctp);
    let mut cut = sctp.build()[..14 + 20 + 8].to_vec();
    cut[16..18].copy_from_slice(&28u16.to_be_bytes());
    fix_ipv4_checksum(&mut cut, 14);
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_SCTP)]),
        program: Program::Xdp,
        input: cut,
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropTruncated,
            out: Out::Dropped,
            service: None,
        },
    });
}

/// A UDP packet behind IPv6 hop-by-hop and destination options whose hop-by-hop header
/// claims `length` (in 8-byte units beyond the first 8).
fn with_hop_by_hop_length(length: u8) -> Vec<u8> {
    let mut packet = with_ipv6_extensions(udp(Family::V6, 48003).build(), 14);
    packet[14 + 40 + 1] = length;
    packet
}

#[test]
fn truncated_ipv6_extension_header_longer_than_the_packet() {
    check(Row {
        setup: Setup::default(),
        program: Program::Xdp,
        input: with_hop_by_hop_length(20),
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropTruncated,
            out: Out::Dropped,
            service: None,
        },
    });
}

#[test]
fn ipv6_extension_headers_beyond_the_parsers_reach_pass() {
    check(Row {
        setup: Setup::default(),
        program: Program::Xdp,
        input: with_hop_by_hop_length(200),
        expect: Expect {
            verdict: XDP_PASS,
            reason: Reason::PassUnparsedHeaders,
            out: Out::Unchanged,
            service: None,
        },
    });
}

#[test]
fn truncated_icmp_error_quoting_a_partial_ip_header() {
    let forwarded = Spec::new(Family::V4.client(), 48004, "198.18.1.1", 8080, L4::Tcp(ACK));
    let icmp = icmp_error(
        Family::V4.node(),
        Family::V4.client(),
        IcmpError::TooBig(1400),
        &forwarded.build(),
        14,
        12,
    );
    check(Row {
        setup: Setup::services(vec![cluster_ip(Family::V4, PROTO_TCP)]),
        program: Program::Xdp,
        input: icmp,
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropTruncated,
            out: Out::Dropped,
            service: None,
        },
    });
}

#[test]
fn truncated_ipv4_header_behind_a_vlan_tag() {
    let vlan = tcp(Family::V4, 48005, SYN).vlan(3).build();
    check(Row {
        setup: Setup::default(),
        program: Program::Xdp,
        input: vlan[..18 + 10].to_vec(),
        expect: Expect {
            verdict: XDP_DROP,
            reason: Reason::DropTruncated,
            out: Out::Dropped,
            service: None,
        },
    });
}
