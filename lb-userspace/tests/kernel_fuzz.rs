//! Random and mutated packets through the XDP and TC programs (BPF_PROG_TEST_RUN): the
//! programs never fail, every verdict is one the program type allows and matches the
//! counted reason, a packet that is not balanced, translated or rejected comes out exactly
//! as it went in, every rewritten packet whose input had valid checksums has valid ones
//! (checked by etherparse, not by the datapath's own arithmetic), and every class of reason
//! the program can give was given. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use kernel::*;
use lb_common::{PROTO_TCP, PROTO_UDP, Reason, ReasonClass, backend_state::ACTIVE, frontend_kind};
use packets::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Packets per program; the three programs together see well over 100 000.
const XDP_PACKETS: usize = 100_000;
const TC_PACKETS: usize = 50_000;

fn services() -> Vec<Service> {
    vec![
        Service::new(
            1,
            "198.18.100.1",
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            0,
            &[
                (10, "198.18.1.1", 8080, ACTIVE),
                (11, "198.18.1.2", 8080, ACTIVE),
            ],
        ),
        Service::new(
            2,
            "198.18.100.1",
            80,
            PROTO_UDP,
            frontend_kind::CLUSTER_IP,
            0,
            &[(12, "198.18.1.3", 8080, ACTIVE)],
        ),
        Service::new(
            3,
            "2001:2:0:100::1",
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            0,
            &[(20, "2001:2:0:1::1", 8080, ACTIVE)],
        ),
        Service::new(
            4,
            "2001:2:0:100::1",
            80,
            PROTO_UDP,
            frontend_kind::CLUSTER_IP,
            0,
            &[],
        ),
        Service::new(
            5,
            "198.18.100.2",
            53,
            PROTO_UDP,
            frontend_kind::CLUSTER_IP,
            0,
            &[],
        ),
    ]
}

/// Well-formed packets to mutate: for frontends, for nothing, replies, fragments, ICMP.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        Spec::new("198.18.0.1", 1000, "198.18.100.1", 80, L4::Tcp(SYN)).build(),
        Spec::new("198.18.0.1", 1001, "198.18.100.1", 80, L4::Tcp(ACK))
            .vlan(3)
            .build(),
        Spec::new("198.18.0.1", 1002, "198.18.100.1", 80, L4::Udp).build(),
        Spec::new("198.18.0.1", 1003, "198.18.100.1", 80, L4::Sctp).build(),
        Spec::new("198.18.0.1", 1004, "198.18.100.2", 53, L4::Udp).build(),
        Spec::new("2001:2::1", 1005, "2001:2:0:100::1", 80, L4::Tcp(SYN)).build(),
        Spec::new("2001:2::1", 1006, "2001:2:0:100::1", 80, L4::Udp).build(),
        Spec::new("198.18.0.1", 1007, "198.18.9.9", 80, L4::Tcp(SYN)).build(),
        Spec::new("198.18.1.1", 8080, "198.18.0.1", 1000, L4::Tcp(SYN | ACK)).build(),
        Spec::new("2001:2:0:1::1", 8080, "2001:2::1", 1005, L4::Tcp(SYN | ACK)).build(),
        with_ipv4_options(
            Spec::new("198.18.0.1", 1008, "198.18.100.1", 80, L4::Tcp(SYN)).build(),
            14,
        ),
        with_ipv6_extensions(
            Spec::new("2001:2::1", 1009, "2001:2:0:100::1", 80, L4::Udp).build(),
            14,
        ),
    ];
    let whole = Spec::new("198.18.0.1", 1010, "198.18.100.1", 80, L4::Udp)
        .payload(&[7; 200])
        .build();
    seeds.push(ipv4_fragment(&whole, 14, 9, 96, true));
    seeds.push(ipv4_fragment(&whole, 14, 9, 96, false));
    let whole6 = Spec::new("2001:2::1", 1011, "2001:2:0:100::1", 80, L4::Udp)
        .payload(&[8; 200])
        .build();
    seeds.push(ipv6_fragment(&whole6, 14, 9, 96, true));
    seeds.push(ipv6_fragment(&whole6, 14, 9, 96, false));
    let forwarded = Spec::new("198.18.0.1", 1000, "198.18.1.1", 8080, L4::Tcp(ACK)).build();
    seeds.push(icmp_error(
        "198.18.0.10",
        "198.18.0.1",
        IcmpError::TooBig(1400),
        &forwarded,
        14,
        60,
    ));
    let reply = Spec::new("198.18.100.1", 80, "198.18.0.1", 1000, L4::Tcp(ACK)).build();
    seeds.push(icmp_error(
        "198.18.0.1",
        "198.18.100.1",
        IcmpError::TooBig(1400),
        &reply,
        14,
        60,
    ));
    let forwarded6 = Spec::new("2001:2::1", 1005, "2001:2:0:1::1", 8080, L4::Tcp(ACK)).build();
    seeds.push(icmp_error(
        "2001:2::10",
        "2001:2::1",
        IcmpError::TooBig(1280),
        &forwarded6,
        14,
        80,
    ));
    seeds
}

/// Offsets where a length or type field lives in common layouts (Ethernet type, IPv4
/// IHL/length/flags, IPv6 length/next header, L4 data offset).
const HOT_OFFSETS: [usize; 12] = [12, 13, 14, 16, 17, 20, 23, 18, 19, 20, 46, 54];

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut packet = seed.to_vec();
    match rng.random_range(0..6) {
        0 => {
            let len = rng.random_range(14..=packet.len());
            packet.truncate(len);
        }
        1 => {
            for _ in 0..rng.random_range(1..=8) {
                let i = rng.random_range(0..packet.len());
                packet[i] ^= 1 << rng.random_range(0..8);
            }
        }
        2 => {
            let i = HOT_OFFSETS[rng.random_range(0..HOT_OFFSETS.len())];
            if i < packet.len() {
                packet[i] = rng.random();
            }
        }
        3 => {
            let extra = rng.random_range(1..64);
            packet.extend((0..extra).map(|_| rng.random::<u8>()));
        }
        4 => {
            // Random bytes behind a valid Ethernet type.
            let len = rng.random_range(14..200);
            packet = (0..len).map(|_| rng.random()).collect();
            let ethertype: [u8; 2] = match rng.random_range(0..3) {
                0 => [0x08, 0x00],
                1 => [0x86, 0xdd],
                _ => [0x81, 0x00],
            };
            packet[12..14].copy_from_slice(&ethertype);
            if len > 14 && ethertype == [0x08, 0x00] {
                packet[14] = 0x40 | (packet[14] & 0x0f);
            }
        }
        _ => {
            for _ in 0..rng.random_range(1..4) {
                let i = rng
                    .random_range(14..packet.len().max(15))
                    .min(packet.len() - 1);
                packet[i] = rng.random();
            }
        }
    }
    packet
}

/// An skb test run of an IPv4/IPv6 frame too short for its IP header.
fn refused_by_skb_test_run(program: Program, packet: &[u8]) -> bool {
    let tc = matches!(program, Program::TcIngress | Program::TcEgress);
    let ip_header = match packet.get(12..14) {
        Some([0x08, 0x00]) => 20,
        Some([0x86, 0xdd]) => 40,
        _ => return false,
    };
    tc && packet.len() < 14 + ip_header
}

fn allowed_verdicts(program: Program) -> [u32; 3] {
    match program {
        Program::TcIngress | Program::TcEgress => [TCX_NEXT, TC_ACT_SHOT, TC_ACT_REDIRECT],
        _ => [XDP_PASS, XDP_DROP, XDP_TX],
    }
}

/// The verdict a reason implies for a program type.
fn verdict_for(program: Program, reason: Reason) -> u32 {
    let tc = matches!(program, Program::TcIngress | Program::TcEgress);
    match (reason.class(), tc) {
        (ReasonClass::Drop, false) => XDP_DROP,
        (ReasonClass::Drop, true) => TC_ACT_SHOT,
        (ReasonClass::Reject, false) => XDP_TX,
        (ReasonClass::Reject, true) => TC_ACT_REDIRECT,
        (ReasonClass::Pass | ReasonClass::Lb | ReasonClass::Reply | ReasonClass::Icmp, false) => {
            XDP_PASS
        }
        (ReasonClass::Pass | ReasonClass::Lb | ReasonClass::Reply | ReasonClass::Icmp, true) => {
            TCX_NEXT
        }
    }
}

/// The reason classes a program gives (what the fuzzing must reach): the forward programs
/// pass, balance, translate ICMP errors, reject and drop; egress passes, translates replies
/// and ICMP errors, and never drops.
fn classes_of(program: Program) -> &'static [ReasonClass] {
    match program {
        Program::Xdp | Program::TcIngress => &[
            ReasonClass::Pass,
            ReasonClass::Lb,
            ReasonClass::Icmp,
            ReasonClass::Reject,
            ReasonClass::Drop,
        ],
        Program::TcEgress => &[ReasonClass::Pass, ReasonClass::Reply, ReasonClass::Icmp],
    }
}

/// Whether the packet must be exactly what came in after a reason of this class.
fn leaves_packet_alone(reason: Reason) -> bool {
    match reason.class() {
        ReasonClass::Pass | ReasonClass::Drop => true,
        ReasonClass::Lb | ReasonClass::Reply | ReasonClass::Icmp | ReasonClass::Reject => false,
    }
}

fn fuzz(program: Program, count: usize, seed: u64) {
    let mut env = Env::new();
    for service in services() {
        env.install(&service);
    }
    // Replies and ICMP errors need flows: run the forward seeds once.
    for packet in seeds() {
        env.run(Program::Xdp, &packet);
    }
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = std::collections::BTreeMap::new();
    // Rewritten packets whose checksums were checked, by reason class.
    let mut checked = std::collections::BTreeMap::new();
    let mut refused = 0;
    for n in 0..count {
        let packet = if n % 10 == 0 {
            seeds[n / 10 % seeds.len()].clone()
        } else {
            let base = rng.random_range(0..seeds.len());
            mutate(&mut rng, &seeds[base])
        };
        let before = env.reasons();
        let out = match env.try_run(program, &packet) {
            Ok(out) => out,
            Err(error) if refused_by_skb_test_run(program, &packet) => {
                // The kernel's skb test harness refuses an IP packet shorter than its IP
                // header before the program runs (EINVAL); on a real interface the stack
                // drops such frames before TC.
                assert_eq!(
                    env.reasons(),
                    before,
                    "{program:?} packet #{n}: refused input ran the program ({error:?})"
                );
                refused += 1;
                continue;
            }
            Err(error) => {
                panic!("{program:?} packet #{n}: test run failed: {error:?} for {packet:02x?}")
            }
        };
        let deltas = reason_deltas(&before, &env.reasons());
        let [(reason, 1)] = deltas[..] else {
            panic!(
                "{program:?} packet #{n} changed the reason counters by {deltas:?}: {packet:02x?}"
            );
        };
        assert!(
            allowed_verdicts(program).contains(&out.verdict),
            "{program:?} packet #{n}: verdict {} not allowed: {packet:02x?}",
            out.verdict
        );
        assert_eq!(
            out.verdict,
            verdict_for(program, reason),
            "{program:?} packet #{n}: verdict {} does not match reason {reason:?}: {packet:02x?}",
            out.verdict
        );
        assert!(
            !(program == Program::TcEgress && out.verdict == TC_ACT_SHOT),
            "TC egress dropped packet #{n} ({reason:?}): outgoing traffic must never be dropped: {packet:02x?}"
        );
        // By the reason, whose verdict was checked above (TC_ACT_SHOT and XDP_PASS are both
        // 2: comparing verdicts across program types would mistake a pass for a drop).
        let dropped = reason.class() == ReasonClass::Drop;
        if leaves_packet_alone(reason) && !dropped {
            assert_eq!(
                out.packet, packet,
                "{program:?} packet #{n} ({reason:?}) was changed"
            );
        }
        // A rewrite updates checksums incrementally: a wrong one stays wrong, so only packets
        // that came in right must go out right.
        if !leaves_packet_alone(reason) && !dropped && verify_checksums(&packet).is_ok() {
            if let Err(error) = verify_checksums(&out.packet) {
                panic!(
                    "{program:?} packet #{n} ({reason:?}) went out with a bad checksum: {error}\n in: {packet:02x?}\nout: {:02x?}",
                    out.packet
                );
            }
            *checked.entry(reason.class()).or_insert(0u64) += 1;
        }
        *seen.entry(reason).or_insert(0u64) += 1;
    }
    println!(
        "{program:?}: {count} packets ({refused} refused by the test harness), reasons {seen:?}"
    );
    assert!(
        refused < count / 10,
        "{program:?}: the harness refused {refused} of {count} packets"
    );
    let classes: std::collections::BTreeSet<ReasonClass> =
        seen.keys().map(|reason| reason.class()).collect();
    let expected: std::collections::BTreeSet<ReasonClass> =
        classes_of(program).iter().copied().collect();
    assert_eq!(
        classes, expected,
        "{program:?}: the reason classes given (reasons {seen:?}) are not all it can give"
    );
    for class in expected {
        let rewrites = !matches!(class, ReasonClass::Pass | ReasonClass::Drop);
        assert!(
            !rewrites || checked.contains_key(&class),
            "{program:?}: no {class:?} packet with valid input checksums had its output checked ({checked:?})"
        );
    }
}

#[test]
fn fuzz_xdp_forward() {
    fuzz(Program::Xdp, XDP_PACKETS, 1);
}

#[test]
fn fuzz_tc_ingress() {
    fuzz(Program::TcIngress, TC_PACKETS, 2);
}

#[test]
fn fuzz_tc_egress() {
    fuzz(Program::TcEgress, TC_PACKETS, 3);
}
