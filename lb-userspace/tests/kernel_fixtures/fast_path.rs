//! The XDP fast path (`lb-ebpf/src/fast_path.rs`): a balanced packet leaves from XDP with
//! the next hop's MACs and its TTL (hop limit) one lower, by XDP_TX when the next hop is on
//! the arrival device and by redirect otherwise; the stack forwards it in every case that
//! needs it. Each row runs in a network namespace of its own thread (gone with the thread,
//! also after a panic), whose routes and neighbours the FIB lookup sees: the test run's
//! context names the arrival device.
//!
//! ```text
//!  client ── fa (198.18.50.1, 2001:2:50::1)   neighbour .3 / ::3      allowed: XDP_TX
//!            fb (198.18.51.1, 2001:2:51::1)   neighbour .2 / ::2      allowed, MTU 1280: redirect
//!            fc (198.18.52.1, 2001:2:52::1)   neighbour .2 / ::2      not allowed
//! ```

use super::*;
use lb_common::FastPathCounter;
use slicelb::dataplane::test_run::{self, RunOutput};
use std::process::Command;

const XDP_REDIRECT: u32 = 4;
const FA_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x01];
const FB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x51, 0x01];
const FA_NEIGHBOUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x50, 0x03];
const FB_NEIGHBOUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x51, 0x02];
const FB_MTU: usize = 1280;

/// Where a backend of a row sits.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// A neighbour on the arrival device.
    Arrival,
    /// A neighbour on `fb`, a device the fast path may send to.
    Allowed,
    /// A neighbour on `fc`, which is not in FAST_PATH_DEVICES.
    NotAllowed,
    /// On `fb`'s subnet without a neighbour entry.
    NoNeighbour,
    /// The node's own address on `fb`.
    Local,
}

impl Place {
    /// How a packet to this place leaves when it goes directly: the verdict, and the MACs
    /// (source, destination) of its next hop.
    fn directly(self) -> (u32, [u8; 6], [u8; 6]) {
        match self {
            Place::Arrival => (XDP_TX, FA_MAC, FA_NEIGHBOUR_MAC),
            _ => (XDP_REDIRECT, FB_MAC, FB_NEIGHBOUR_MAC),
        }
    }

    fn addr(self, family: Family) -> &'static str {
        match (self, family) {
            (Place::Arrival, Family::V4) => "198.18.50.3",
            (Place::Allowed, Family::V4) => "198.18.51.2",
            (Place::NotAllowed, Family::V4) => "198.18.52.2",
            (Place::NoNeighbour, Family::V4) => "198.18.51.9",
            (Place::Local, Family::V4) => "198.18.51.1",
            (Place::Arrival, Family::V6) => "2001:2:50::3",
            (Place::Allowed, Family::V6) => "2001:2:51::2",
            (Place::NotAllowed, Family::V6) => "2001:2:52::2",
            (Place::NoNeighbour, Family::V6) => "2001:2:51::9",
            (Place::Local, Family::V6) => "2001:2:51::1",
        }
    }
}

fn ip(args: &str) {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("running ip");
    assert!(status.success(), "ip {args} failed");
}

/// Builds the devices of the module comment in the calling thread's (new) namespace.
fn build_network() {
    ip("link set lo up");
    for (name, mac, v4, v6) in [
        (
            "fa",
            "02:00:00:00:50:01",
            "198.18.50.1/24",
            "2001:2:50::1/64",
        ),
        (
            "fb",
            "02:00:00:00:51:01",
            "198.18.51.1/24",
            "2001:2:51::1/64",
        ),
        (
            "fc",
            "02:00:00:00:52:01",
            "198.18.52.1/24",
            "2001:2:52::1/64",
        ),
    ] {
        ip(&format!(
            "link add {name} address {mac} type veth peer name {name}-peer"
        ));
        ip(&format!("link set {name}-peer up"));
        ip(&format!("link set {name} up"));
        ip(&format!("addr add {v4} dev {name}"));
        ip(&format!("-6 addr add {v6} dev {name} nodad"));
    }
    ip(&format!("link set fb mtu {FB_MTU}"));
    for (addr, mac, dev) in [
        ("198.18.50.3", "02:00:00:00:50:03", "fa"),
        ("198.18.51.2", "02:00:00:00:51:02", "fb"),
        ("198.18.52.2", "02:00:00:00:52:02", "fc"),
        ("2001:2:50::3", "02:00:00:00:50:03", "fa"),
        ("2001:2:51::2", "02:00:00:00:51:02", "fb"),
        ("2001:2:52::2", "02:00:00:00:52:02", "fc"),
    ] {
        ip(&format!(
            "neigh replace {addr} lladdr {mac} dev {dev} nud permanent"
        ));
    }
    // Per namespace: /proc/sys/net follows the opening thread's namespace.
    for path in [
        "/proc/sys/net/ipv4/conf/all/forwarding",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        std::fs::write(path, "1").unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}

fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A datapath that may send to `fa` and `fb`, and the arrival device's index.
struct FastPathLab {
    env: Env,
    arrival: u32,
}

/// Runs `body` in a thread of its own, in a new network namespace holding the devices of
/// the module comment, with a datapath that may send to `fa` and `fb`.
fn in_lab(body: impl FnOnce(&mut FastPathLab) + Send) {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare on the calling thread only (a new namespace, no memory).
                let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(unshared, 0, "unshare(CLONE_NEWNET) failed: run as root");
                build_network();
                let mut env = Env::new();
                env.datapath
                    .set_fast_path(true, &[ifindex("fa"), ifindex("fb")])
                    .expect("letting the fast path use fa and fb");
                body(&mut FastPathLab {
                    env,
                    arrival: ifindex("fa"),
                });
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
}

/// A UDP service on port 80 of the family's ClusterIP with one backend at `place`.
fn service_at(family: Family, place: Place) -> Service {
    Service::new(
        1,
        family.vip(),
        80,
        PROTO_UDP,
        frontend_kind::CLUSTER_IP,
        0,
        &[(10, place.addr(family), 8080, ACTIVE)],
    )
}

/// A UDP packet from a client on `fa`, addressed to `fa`'s MAC.
fn packet(family: Family) -> Spec {
    let mut spec = udp(family, 40100);
    spec.dst_mac = FA_MAC;
    spec.src = match family {
        Family::V4 => "198.18.50.2",
        Family::V6 => "2001:2:50::2",
    }
    .parse()
    .expect("client address");
    spec
}

fn run_arriving(env: &Env, input: &[u8], arrival: u32) -> RunOutput {
    let name = Program::Xdp.name();
    test_run::run_xdp_arriving_on(env.datapath.xdp(name).expect("xdp"), name, input, arrival)
        .unwrap_or_else(|e| panic!("test run: {e}"))
}

/// Whether a row's packet goes directly or to the stack, and why (FAST_PATH_STATS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaves {
    Directly,
    ToTheStack(FastPathCounter),
}

const NO_NEXT_HOP: Leaves = Leaves::ToTheStack(FastPathCounter::StackNoNextHop);
const NOT_FOR_THIS_NODE: Leaves = Leaves::ToTheStack(FastPathCounter::StackNotForThisNode);

/// FAST_PATH_STATS summed over CPUs, in `FastPathCounter::ALL` order (the agent's reader).
fn fast_path_counts(env: &Env) -> Vec<u64> {
    env.maps
        .fast_path_counters()
        .expect("reading FAST_PATH_STATS")
        .into_iter()
        .map(|(_, count)| count)
        .collect()
}

/// One packet to a backend at `place`: with `Leaves::Directly`, the place's verdict and the
/// packet after DNAT with its next hop's MACs and one hop less; else XDP_PASS and the packet
/// after DNAT alone.
impl FastPathLab {
    fn check(&mut self, family: Family, spec: &Spec, place: Place, leaves: Leaves) {
        self.check_framed(family, spec, place, leaves, "", |frame| frame);
    }

    /// As `check`, with `frame` applied to the packet sent and to the one expected (IP
    /// options, a fragment); `what` names the row.
    fn check_framed(
        &mut self,
        family: Family,
        spec: &Spec,
        place: Place,
        leaves: Leaves,
        what: &str,
        frame: impl Fn(Vec<u8>) -> Vec<u8>,
    ) {
        self.env.reset();
        self.env.install(&service_at(family, place));
        check_row(
            &self.env,
            self.arrival,
            (family, spec, place, leaves),
            what,
            &frame,
        );
    }
}

/// One run of `spec` (through `frame`) against the installed service: the verdict, the
/// packet and the one FAST_PATH_STATS count `leaves` says.
fn check_row(
    env: &Env,
    arrival: u32,
    (family, spec, place, leaves): (Family, &Spec, Place, Leaves),
    what: &str,
    frame: &dyn Fn(Vec<u8>) -> Vec<u8>,
) {
    let counts_before = fast_path_counts(env);
    let out = run_arriving(env, &frame(spec.build()), arrival);
    let case = format!(
        "{family:?} to {place:?} {what}(ttl {}, {leaves:?})",
        spec.ttl
    );
    let mut expected = spec.clone().to(place.addr(family), 8080);
    let (verdict, counted) = match leaves {
        Leaves::Directly => {
            let (verdict, src_mac, dst_mac) = place.directly();
            expected.ttl -= 1;
            expected.src_mac = src_mac;
            expected.dst_mac = dst_mac;
            let sent = if verdict == XDP_TX {
                FastPathCounter::Transmitted
            } else {
                FastPathCounter::Redirected
            };
            (verdict, sent)
        }
        Leaves::ToTheStack(why) => (XDP_PASS, why),
    };
    assert_eq!(out.verdict, verdict, "{case}: verdict");
    assert_eq!(out.packet, frame(expected.build()), "{case}: packet out");
    let mut counts_expected = counts_before;
    counts_expected[counted as usize] += 1;
    let named = |counts: Vec<u64>| -> Vec<(&str, u64)> {
        FastPathCounter::ALL
            .iter()
            .map(|c| c.name())
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    assert_eq!(
        named(fast_path_counts(env)),
        named(counts_expected),
        "{case}: FAST_PATH_STATS"
    );
    verify_checksums(&out.packet).unwrap_or_else(|e| panic!("{case}: {e}"));
}

#[test]
fn to_a_neighbour_on_another_allowed_device_or_the_arrival_device_leaves_one_hop_less() {
    in_lab(|lab| {
        for family in Family::BOTH {
            for place in [Place::Allowed, Place::Arrival] {
                lab.check(family, &packet(family), place, Leaves::Directly);
            }
        }
    });
}

#[test]
fn the_stack_forwards_what_needs_a_router_or_cannot_leave_from_xdp() {
    in_lab(|lab| {
        for family in Family::BOTH {
            // No neighbour yet (the stack resolves it), a device not allowed, the node's own
            // address.
            for place in [Place::NoNeighbour, Place::NotAllowed, Place::Local] {
                lab.check(family, &packet(family), place, NO_NEXT_HOP);
            }
            // TTL (hop limit) 1: the stack sends time exceeded.
            let mut last_hop = packet(family);
            last_hop.ttl = 1;
            let ttl = Leaves::ToTheStack(FastPathCounter::StackTtlExpiring);
            lab.check(family, &last_hop, Place::Allowed, ttl);
            // One byte longer than fb's MTU: the stack fragments or sends packet too big.
            let header = family.ip_header_len() + 8;
            let too_big = packet(family).payload(&vec![0xab; FB_MTU - header + 1]);
            let too_big_why = Leaves::ToTheStack(FastPathCounter::StackTooBig);
            lab.check(family, &too_big, Place::Allowed, too_big_why);
            // Exactly the MTU still goes directly.
            let fits = packet(family).payload(&vec![0xcd; FB_MTU - header]);
            lab.check(family, &fits, Place::Allowed, Leaves::Directly);
            // A broadcast frame: the stack would not forward it, nor may the fast path.
            let mut broadcast = packet(family);
            broadcast.dst_mac = [0xff; 6];
            lab.check(family, &broadcast, Place::Allowed, NOT_FOR_THIS_NODE);
            // For another host's MAC, with the next hop on the arrival device: that host's
            // to forward.
            let mut other_host = packet(family);
            other_host.dst_mac = NODE_MAC;
            lab.check(family, &other_host, Place::Arrival, NOT_FOR_THIS_NODE);
            // IP options or extension headers, and a fragment: a router's work.
            let options: fn(Vec<u8>) -> Vec<u8> = match family {
                Family::V4 => |frame| with_ipv4_options(frame, 14),
                Family::V6 => |frame| with_ipv6_extensions(frame, 14),
            };
            let first_fragment: fn(Vec<u8>) -> Vec<u8> = match family {
                Family::V4 => |frame| ipv4_fragment(&frame, 14, 0x4242, 8, true),
                Family::V6 => |frame| ipv6_fragment(&frame, 14, 0xabcdef, 8, true),
            };
            let long = packet(family).payload(&[0x55; 64]);
            for (what, frame) in [
                ("with options ", options),
                ("first fragment ", first_fragment),
            ] {
                lab.check_framed(
                    family,
                    &long,
                    Place::Allowed,
                    Leaves::ToTheStack(FastPathCounter::StackNotPlain),
                    what,
                    frame,
                );
            }
        }
    });
}

/// The packet that finds its next hop expired goes through the stack (which probes a stale
/// neighbour; `bpf_fib_lookup` does not); the next one goes directly again.
#[test]
fn a_next_hop_looked_up_again_after_expiry_sends_that_packet_through_the_stack() {
    in_lab(|lab| {
        // Per-CPU slots: every run on one CPU.
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(0).expect("cpu 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
            .expect("pinning the test thread to cpu 0");
        for family in Family::BOTH {
            let spec = packet(family);
            lab.check(family, &spec, Place::Allowed, Leaves::Directly);
            expire_next_hops(&mut lab.env);
            let refresh = Leaves::ToTheStack(FastPathCounter::StackRefresh);
            let row = (family, &spec, Place::Allowed, refresh);
            check_row(&lab.env, lab.arrival, row, "expired ", &|frame| frame);
            let row = (family, &spec, Place::Allowed, Leaves::Directly);
            check_row(&lab.env, lab.arrival, row, "looked up again ", &|frame| {
                frame
            });
        }
    });
}

/// Makes every filled NEXT_HOPS slot of every CPU expired (`expires_jiffies` 0).
fn expire_next_hops(env: &mut Env) {
    // NextHop (lb-ebpf/src/maps.rs) as bytes: the 16-byte address, then `expires_jiffies`.
    type NextHop = [u8; 48];
    let map = env.datapath.map_mut("NEXT_HOPS").expect("NEXT_HOPS");
    let mut hops: aya::maps::PerCpuArray<_, NextHop> =
        aya::maps::PerCpuArray::try_from(map).expect("NEXT_HOPS is a per-CPU array");
    for index in 0..hops.len() {
        let values = hops.get(&index, 0).expect("reading NEXT_HOPS");
        if values.iter().all(|hop| hop[..16] == [0; 16]) {
            continue;
        }
        let expired: Vec<NextHop> = values
            .iter()
            .map(|hop| {
                let mut hop = *hop;
                hop[16..24].fill(0);
                hop
            })
            .collect();
        let expired = aya::maps::PerCpuValues::try_from(expired).expect("one value per CPU");
        hops.set(index, expired, 0).expect("writing NEXT_HOPS");
    }
}

#[test]
fn turned_off_or_a_flow_that_may_be_masqueraded_goes_to_the_stack() {
    in_lab(|lab| {
        let (env, arrival) = (&mut lab.env, lab.arrival);
        for family in Family::BOTH {
            env.reset();
            env.datapath
                .set_fast_path(false, &[])
                .expect("turning the fast path off");
            env.install(&service_at(family, Place::Allowed));
            let spec = packet(family);
            let to_backend = spec.clone().to(Place::Allowed.addr(family), 8080);
            let out = run_arriving(env, &spec.build(), arrival);
            assert_eq!(out.verdict, XDP_PASS, "{family:?}: fast path off");
            assert_eq!(out.packet, to_backend.build());

            // Masquerade on and the backend on another node (no NODE_LOCAL): its source NAT
            // is done at TC egress, which a redirected frame would skip.
            env.reset();
            env.set_masquerade(&Masquerade {
                ports: Some(slicelb::dataplane::masquerade::PortRange {
                    min: 61000,
                    max: 61100,
                }),
                addresses: lb_common::SnatAddresses::default(),
            });
            env.install(&service_at(family, Place::Allowed));
            let out = run_arriving(env, &spec.build(), arrival);
            assert_eq!(out.verdict, XDP_PASS, "{family:?}: masquerade on");
            assert_eq!(out.packet, to_backend.build());
        }
    });
}
