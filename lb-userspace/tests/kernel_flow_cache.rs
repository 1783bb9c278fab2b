//! The per-CPU flow cache in front of CONNTRACK (issue 15): a flow's second packet fills
//! its slot, later packets are sent from it; a backend the agent removes is never used
//! from a slot, a conntrack flush (its generation bump) empties the cache, and a cached
//! flow's CONNTRACK entry is still refreshed once per refresh interval. The same for the
//! replies TC egress translates from cached reply entries, and masquerade (the egress path
//! of packets that are no reply) beside them. The test thread is pinned to one CPU, so that
//! every test run sees the same per-CPU slots. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::maps::{HashMap, MapData, PerCpuArray};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use kernel::masquerade_rows::{ENDPOINT_PORT, NODE_PORT, PORTS};
use kernel::*;
use lb_common::{
    Config, FlowCacheSlot, FlowKey, FlowValue, PROTO_UDP, Reason, backend_state::ACTIVE,
    flow_direction, frontend_flags, frontend_kind, hash::flow_cache_slot, map_names,
};
use packets::*;
use slicelb::dataplane::{
    DeletedFlows, FlowEndpoint, MapOp, MapWriter as _, Serving, StaleFlows,
    masquerade::snat_addresses,
};

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
const CLIENT_PORT: u16 = 40000;
const SERVICE_PORT: u16 = 53;

impl Family {
    fn client(self) -> &'static str {
        match self {
            Family::V4 => "198.18.0.1",
            Family::V6 => "2001:2::1",
        }
    }

    fn vip(self) -> &'static str {
        match self {
            Family::V4 => "198.18.100.10",
            Family::V6 => "2001:2::100:10",
        }
    }

    /// Two backends on port 5353: (id, address).
    fn backends(self) -> [(u32, &'static str); 2] {
        match self {
            Family::V4 => [(10, "198.18.1.1"), (11, "198.18.1.2")],
            Family::V6 => [(20, "2001:2:0:1::1"), (21, "2001:2:0:1::2")],
        }
    }

    fn service_id(self) -> u32 {
        match self {
            Family::V4 => 1,
            Family::V6 => 2,
        }
    }
}

/// The UDP ClusterIP of `family` with `backends` (ids of [`Family::backends`]), its table
/// at `offset`.
fn service(family: Family, backends: &[u32], offset: u32) -> Service {
    let backends: Vec<(u32, &str, u16, u8)> = family
        .backends()
        .into_iter()
        .filter(|(id, _)| backends.contains(id))
        .map(|(id, addr)| (id, addr, 5353, ACTIVE))
        .collect();
    Service::new(
        family.service_id(),
        family.vip(),
        SERVICE_PORT,
        PROTO_UDP,
        frontend_kind::CLUSTER_IP,
        0,
        &backends,
    )
    .at_offset(offset)
}

fn both_backends(family: Family) -> Service {
    let ids = family.backends().map(|(id, _)| id);
    service(family, &ids, family.service_id() * 512)
}

fn packet(family: Family) -> Vec<u8> {
    Spec::new(
        family.client(),
        CLIENT_PORT,
        family.vip(),
        SERVICE_PORT,
        L4::Udp,
    )
    .build()
}

fn flow_key(family: Family) -> FlowKey {
    udp_key((family.client(), CLIENT_PORT), (family.vip(), SERVICE_PORT))
}

/// The key of a UDP packet from `src` to `dst`.
fn udp_key(src: (&str, u16), dst: (&str, u16)) -> FlowKey {
    let (src_addr, family_tag) = addr16(src.0);
    let (dst_addr, _) = addr16(dst.0);
    FlowKey {
        src_addr,
        dst_addr,
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto: PROTO_UDP,
        family: family_tag,
        _pad: [0; 2],
    }
}

/// The backend's reply to the flow of [`packet`], as it leaves through TC egress.
fn reply(family: Family, backend: IpAddr) -> Vec<u8> {
    let mut reply = Spec::new(
        &backend.to_string(),
        5353,
        family.client(),
        CLIENT_PORT,
        L4::Udp,
    );
    reply.src_mac = NODE_MAC;
    reply.dst_mac = CLIENT_MAC;
    reply.build()
}

fn reply_key(family: Family, backend: IpAddr) -> FlowKey {
    udp_key((&backend.to_string(), 5353), (family.client(), CLIENT_PORT))
}

/// Pins the test thread to the CPU it runs on: test runs execute on the calling CPU, and
/// the flow cache is per CPU. Returns that CPU.
fn pin_to_this_cpu() -> usize {
    // SAFETY: no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        ok,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    cpu as usize
}

/// The flow's slot of the flow cache as `cpu` holds it, when it holds this flow's forward
/// entry and may be used (filled under the current generation, with time left).
fn cached(env: &Env, cpu: usize, key: &FlowKey) -> Option<FlowCacheSlot> {
    cached_entry(env, cpu, key, flow_direction::FORWARD)
}

/// The slot of `key` as `cpu` holds it, when it holds that key's entry of `direction` and
/// may be used.
fn cached_entry(env: &Env, cpu: usize, key: &FlowKey, direction: u8) -> Option<FlowCacheSlot> {
    let map = env.datapath.map(map_names::FLOW_CACHE).expect("FLOW_CACHE");
    let cache: PerCpuArray<&MapData, FlowCacheSlot> =
        PerCpuArray::try_from(map).expect("FLOW_CACHE is a per-CPU array");
    let index = flow_cache_slot(
        &key.src_addr,
        &key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    );
    let slot = cache.get(&index, 0).expect("reading FLOW_CACHE")[cpu];
    let generation = env
        .datapath
        .config()
        .expect("reading CONFIG")
        .flow_generation;
    (slot.key == *key
        && slot.direction == direction
        && slot.valid_until_jiffies != 0
        && slot.generation == generation)
        .then_some(slot)
}

fn conntrack_entry(env: &Env, key: &FlowKey) -> Option<FlowValue> {
    env.maps.conntrack_entry(key).expect("reading CONNTRACK")
}

/// Deletes every CONNTRACK entry behind the agent's back (no generation bump): a packet
/// still sent on as established can only have come from the flow cache.
fn forget_conntrack(env: &mut Env) {
    let map = env
        .datapath
        .map_mut(map_names::CONNTRACK)
        .expect("CONNTRACK");
    let mut conntrack: HashMap<&mut MapData, FlowKey, FlowValue> =
        HashMap::try_from(map).expect("CONNTRACK is a hash map");
    let keys: Vec<FlowKey> = conntrack.keys().map(|key| key.expect("key")).collect();
    for key in keys {
        conntrack.remove(&key).expect("deleting a CONNTRACK entry");
    }
}

/// Runs `packet` and returns the reason it was counted under and the UDP packet that came
/// out, as (source, destination).
fn run_udp(env: &Env, program: Program, packet: &[u8]) -> (Reason, SocketAddr, SocketAddr) {
    let before = env.reasons();
    let out = env.run(program, packet);
    let deltas = reason_deltas(&before, &env.reasons());
    let [(reason, 1)] = deltas[..] else {
        panic!("one reason per packet, got {deltas:?}");
    };
    let sliced = SlicedPacket::from_ethernet(&out.packet).expect("a parsable packet out");
    let (source, destination) = match sliced.net {
        Some(NetSlice::Ipv4(ipv4)) => (
            IpAddr::V4(ipv4.header().source_addr()),
            IpAddr::V4(ipv4.header().destination_addr()),
        ),
        Some(NetSlice::Ipv6(ipv6)) => (
            IpAddr::V6(ipv6.header().source_addr()),
            IpAddr::V6(ipv6.header().destination_addr()),
        ),
        other => panic!("not an IP packet out: {other:?}"),
    };
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("not a UDP packet out: {:02x?}", out.packet);
    };
    (
        reason,
        SocketAddr::new(source, udp.source_port()),
        SocketAddr::new(destination, udp.destination_port()),
    )
}

/// Runs `packet` and returns the reason it was counted under and the address it was sent
/// to.
fn send(env: &Env, program: Program, packet: &[u8]) -> (Reason, IpAddr) {
    let (reason, _, destination) = run_udp(env, program, packet);
    (reason, destination.ip())
}

/// Runs a reply through TC egress and returns the reason it was counted under and the
/// address it left from.
fn send_reply(env: &Env, packet: &[u8]) -> (Reason, IpAddr) {
    let (reason, source, _) = run_udp(env, Program::TcEgress, packet);
    (reason, source.ip())
}

/// The backend (id, address) a flow of `family` goes to with both backends in the table.
fn first_choice(family: Family, service: &Service) -> (u32, IpAddr) {
    let picked = service.pick(
        family.client(),
        CLIENT_PORT,
        family.vip(),
        SERVICE_PORT,
        PROTO_UDP,
    );
    let (id, _) = service
        .backends
        .iter()
        .find(|(_, backend)| *backend == picked)
        .expect("the picked backend is the service's");
    (*id, backend_addr(&picked).parse().expect("address"))
}

/// Sends the flow's first two packets: the first is balanced, the second is established and
/// fills this CPU's slot. Returns the backend (id, address).
fn establish_and_cache(
    env: &mut Env,
    cpu: usize,
    program: Program,
    family: Family,
    service: &Service,
) -> (u32, IpAddr) {
    let case = format!("{family:?} {program:?}");
    let (id, addr) = first_choice(family, service);
    let packet = packet(family);
    assert_eq!(
        send(env, program, &packet),
        (Reason::LbNewFlow, addr),
        "{case}: first packet"
    );
    assert_eq!(
        send(env, program, &packet),
        (Reason::LbConntrack, addr),
        "{case}: second packet"
    );
    let slot = cached(env, cpu, &flow_key(family))
        .unwrap_or_else(|| panic!("{case}: the established packet did not fill the cache"));
    assert_eq!(slot.backend_id, id, "{case}: cached backend");
    (id, addr)
}

#[test]
fn a_cached_flow_never_goes_to_a_removed_backend() {
    let cpu = pin_to_this_cpu();
    let mut env = Env::new();
    for program in [Program::Xdp, Program::TcIngress] {
        for family in FAMILIES {
            let case = format!("{family:?} {program:?}");
            let full = both_backends(family);
            env.install(&full);
            let (removed, removed_addr) =
                establish_and_cache(&mut env, cpu, program, family, &full);
            let packet = packet(family);
            // The cache alone sends it on: CONNTRACK no longer has the flow.
            forget_conntrack(&mut env);
            assert_eq!(
                send(&env, program, &packet),
                (Reason::LbConntrack, removed_addr),
                "{case}: served from the cache"
            );
            // The agent removes the backend: a table without it first, then its slot.
            let kept: Vec<u32> = family
                .backends()
                .map(|(id, _)| id)
                .into_iter()
                .filter(|id| *id != removed)
                .collect();
            let without = service(family, &kept, full.value.table_offset + 256);
            env.install(&without);
            env.apply(&[
                MapOp::DeleteTableMembers {
                    offset: full.value.table_offset,
                    slots: full.table.as_slice().into(),
                },
                MapOp::DeleteBackend { id: removed },
            ]);
            let (reason, sent_to) = send(&env, program, &packet);
            assert_ne!(sent_to, removed_addr, "{case}: sent to the removed backend");
            assert_eq!(reason, Reason::LbNewFlow, "{case}: balanced afresh");
            env.reset();
        }
    }
}

/// The agent's stale-UDP cleanup after backend `gone` of `family`'s service stopped serving
/// it: deletes its flows' CONNTRACK entries (both directions) and bumps the generation.
fn delete_flows_to(env: &mut Env, family: Family, gone: u32) -> DeletedFlows {
    let (serving_id, serving_addr) = family
        .backends()
        .into_iter()
        .find(|(id, _)| *id != gone)
        .expect("another backend");
    let (addr, family_tag) = addr16(serving_addr);
    let stale = StaleFlows {
        services: BTreeMap::from([(
            family.service_id(),
            Serving {
                endpoints: BTreeSet::from([FlowEndpoint {
                    addr,
                    port: 5353u16.to_be(),
                    family: family_tag,
                }]),
                backend_ids: BTreeSet::from([serving_id]),
            },
        )]),
    };
    env.maps
        .delete_stale_flows(&stale)
        .expect("deleting stale flows")
}

#[test]
fn a_conntrack_flush_empties_the_cache() {
    let cpu = pin_to_this_cpu();
    let mut env = Env::new();
    for family in FAMILIES {
        let full = both_backends(family);
        env.install(&full);
        let (flushed, flushed_addr) =
            establish_and_cache(&mut env, cpu, Program::Xdp, family, &full);
        // (Its BACKENDS slot and the table are left as they are, so only the generation
        // keeps the cache from sending the flow on.)
        let deleted = delete_flows_to(&mut env, family, flushed);
        assert_eq!(deleted.conntrack, 2, "{family:?}: both entries of the flow");
        assert!(
            cached(&env, cpu, &flow_key(family)).is_none(),
            "{family:?}: the slot outlived the generation bump"
        );
        let (reason, _) = send(&env, Program::Xdp, &packet(family));
        assert_eq!(
            reason,
            Reason::LbNewFlow,
            "{family:?}: after the flush the flow (sent to {flushed_addr}) is balanced afresh"
        );
        env.reset();
    }
}

#[test]
fn a_cached_flows_conntrack_entry_is_still_refreshed() {
    const TIMEOUT: Duration = Duration::from_millis(800);
    const REFRESH: Duration = Duration::from_millis(100);
    let cpu = pin_to_this_cpu();
    let mut env = Env::new();
    for family in FAMILIES {
        env.set_config(Config {
            udp_timeout_ns: TIMEOUT.as_nanos() as u64,
            ..Config::default()
        });
        let full = both_backends(family);
        env.install(&full);
        let (_, addr) = establish_and_cache(&mut env, cpu, Program::Xdp, family, &full);
        // Packets for 1.5 timeouts: the flow lives on as long as its packets come.
        let packet = packet(family);
        check_refreshed_over(
            &env,
            &format!("{family:?}, timeout {TIMEOUT:?}"),
            &flow_key(family),
            (Duration::from_millis(1200), REFRESH),
            (Reason::LbConntrack, addr),
            |env| send(env, Program::Xdp, &packet),
        );
        env.reset();
    }
}

/// Runs a packet of a cached flow every 50 ms for `span` (`send` runs one and returns its
/// reason and address, which must be `expected`), then checks that CONNTRACK's entry under
/// `key` was refreshed at most `refresh` (plus a tick and a gap) before the last of them.
fn check_refreshed_over(
    env: &Env,
    case: &str,
    key: &FlowKey,
    (span, refresh): (Duration, Duration),
    expected: (Reason, IpAddr),
    send: impl Fn(&Env) -> (Reason, IpAddr),
) {
    const GAP: Duration = Duration::from_millis(50);
    let first_seen = conntrack_entry(env, key)
        .expect("the flow's entry")
        .last_seen_ns;
    for round in 0..span.as_millis() / GAP.as_millis() {
        std::thread::sleep(GAP);
        assert_eq!(send(env), expected, "{case}: packet {round}, {GAP:?} apart");
    }
    let last_seen = conntrack_entry(env, key)
        .expect("the flow's entry")
        .last_seen_ns;
    let refreshed_after = Duration::from_nanos(last_seen.saturating_sub(first_seen));
    assert!(
        refreshed_after >= span - refresh - GAP * 2,
        "{case}: last_seen_ns moved by {refreshed_after:?} over {span:?} of packets"
    );
}

/// Balances the flow of [`packet`] through XDP and sends the backend's reply through TC
/// egress twice: the first reads the reply entry and fills this CPU's slot, the second is
/// translated from it. Returns the backend (id, address).
fn establish_and_cache_reply(
    env: &mut Env,
    cpu: usize,
    family: Family,
    service: &Service,
) -> (u32, IpAddr) {
    let (id, addr) = first_choice(family, service);
    assert_eq!(
        send(env, Program::Xdp, &packet(family)),
        (Reason::LbNewFlow, addr),
        "{family:?}: first packet"
    );
    let vip: IpAddr = family.vip().parse().expect("address");
    for round in ["first", "second"] {
        assert_eq!(
            send_reply(env, &reply(family, addr)),
            (Reason::ReplyTranslated, vip),
            "{family:?}: {round} reply"
        );
    }
    let slot = cached_entry(env, cpu, &reply_key(family, addr), flow_direction::REPLY)
        .unwrap_or_else(|| panic!("{family:?}: the reply did not fill the cache"));
    assert_eq!(
        slot.nat_addr,
        addr16(family.vip()).0,
        "{family:?}: cached frontend"
    );
    (id, addr)
}

/// Runs `check` for each family on a flow whose reply this CPU's cache holds (the test
/// thread pinned), with the backend (id, address); the maps are emptied after each.
fn with_cached_reply(check: impl Fn(&mut Env, Family, (u32, IpAddr))) {
    let cpu = pin_to_this_cpu();
    let mut env = Env::new();
    for family in FAMILIES {
        let full = both_backends(family);
        env.install(&full);
        let backend = establish_and_cache_reply(&mut env, cpu, family, &full);
        check(&mut env, family, backend);
        env.reset();
    }
}

#[test]
fn a_cached_reply_is_translated_without_its_conntrack_entry() {
    with_cached_reply(|env, family, (_, addr)| {
        // Behind the agent's back (no generation bump): only the cache can translate it.
        forget_conntrack(env);
        assert_eq!(
            send_reply(env, &reply(family, addr)),
            (
                Reason::ReplyTranslated,
                family.vip().parse().expect("address")
            ),
            "{family:?}: served from the cache"
        );
    });
}

#[test]
fn a_cached_reply_is_not_translated_after_the_agent_deletes_its_flow() {
    with_cached_reply(|env, family, (id, addr)| {
        let deleted = delete_flows_to(env, family, id);
        assert_eq!(deleted.conntrack, 2, "{family:?}: both entries of the flow");
        // As without the cache: no reply entry, so the reply leaves as the backend sent it.
        assert_eq!(
            send_reply(env, &reply(family, addr)),
            (Reason::PassNoFrontend, addr),
            "{family:?}: a reply of the deleted flow"
        );
    });
}

#[test]
fn a_cached_replys_conntrack_entry_is_still_refreshed() {
    /// Replies refresh their entry at most this often (`lookup::REFRESH_NS`).
    const REFRESH: Duration = Duration::from_secs(1);
    with_cached_reply(|env, family, (_, addr)| {
        let reply = reply(family, addr);
        check_refreshed_over(
            env,
            &format!("{family:?} replies"),
            &reply_key(family, addr),
            (Duration::from_millis(1500), REFRESH),
            (
                Reason::ReplyTranslated,
                family.vip().parse().expect("address"),
            ),
            |env| send_reply(env, &reply),
        );
    });
}

/// A NodePort with external traffic policy Cluster and one endpoint on another node, whose
/// external flows are masqueraded (as in kernel_fixtures' masquerade rows).
struct MasqueradedService {
    node: &'static str,
    endpoint: &'static str,
}

impl MasqueradedService {
    fn of(family: Family) -> Self {
        match family {
            Family::V4 => Self {
                node: "198.18.10.10",
                endpoint: "198.18.20.1",
            },
            Family::V6 => Self {
                node: "2001:2:0:10::10",
                endpoint: "2001:2:0:20::1",
            },
        }
    }

    fn service(&self, family: Family) -> Service {
        let (id, backend_id) = match family {
            Family::V4 => (17, 170),
            Family::V6 => (18, 180),
        };
        Service::new(
            id,
            self.node,
            NODE_PORT,
            PROTO_UDP,
            frontend_kind::NODE_PORT,
            frontend_flags::EXTERNAL,
            &[(backend_id, self.endpoint, ENDPOINT_PORT, ACTIVE)],
        )
    }
}

#[test]
fn masquerade_still_works_beside_cached_flows_and_replies() {
    let cpu = pin_to_this_cpu();
    let mut env = Env::new();
    let nodes: Vec<IpAddr> = FAMILIES
        .iter()
        .map(|family| {
            MasqueradedService::of(*family)
                .node
                .parse()
                .expect("address")
        })
        .collect();
    for family in FAMILIES {
        env.set_masquerade(&Masquerade {
            ports: Some(PORTS),
            addresses: snat_addresses(&nodes),
        });
        let masqueraded = MasqueradedService::of(family);
        env.install(&masqueraded.service(family));
        let node: IpAddr = masqueraded.node.parse().expect("address");
        let endpoint = SocketAddr::new(
            masqueraded.endpoint.parse().expect("address"),
            ENDPOINT_PORT,
        );
        let client = SocketAddr::new(family.client().parse().expect("address"), CLIENT_PORT);
        let request = Spec::new(
            family.client(),
            CLIENT_PORT,
            masqueraded.node,
            NODE_PORT,
            L4::Udp,
        );
        let forwarded = request
            .clone()
            .to(masqueraded.endpoint, ENDPOINT_PORT)
            .build();
        // The first packet is balanced, the second fills this CPU's forward slot (its key
        // is the request's).
        for expected in [Reason::LbNewFlow, Reason::LbConntrack] {
            assert_eq!(
                run_udp(&env, Program::Xdp, &request.build()),
                (expected, client, endpoint),
                "{family:?}: the client's packet through XDP"
            );
        }
        assert!(
            cached(
                &env,
                cpu,
                &udp_key(
                    (family.client(), CLIENT_PORT),
                    (masqueraded.node, NODE_PORT)
                )
            )
            .is_some(),
            "{family:?}: the client's second packet did not fill the cache"
        );
        // The None branch of the reverse path: every packet of the flow leaves masqueraded,
        // with the port its first took.
        let mut port = None;
        for round in 0..3 {
            let (reason, source, destination) = run_udp(&env, Program::TcEgress, &forwarded);
            assert_eq!(
                (reason, source.ip(), destination),
                (Reason::LbMasqueraded, node, endpoint),
                "{family:?}: forwarded packet {round} through TC egress"
            );
            assert!(
                port.is_none_or(|port| port == source.port()),
                "{family:?}: forwarded packet {round} left from port {}, not {port:?}",
                source.port()
            );
            port = Some(source.port());
        }
        let port = port.expect("a masqueraded port");
        // A packet with the forward slot's key leaving untranslated is no reply: the slot
        // (the backend's address) must not be used for it.
        assert_eq!(
            run_udp(&env, Program::TcEgress, &request.build()),
            (
                Reason::PassNoFrontend,
                client,
                SocketAddr::new(node, NODE_PORT)
            ),
            "{family:?}: the client's packet through TC egress"
        );
        // The endpoint's answer: given back to the client at ingress, then from the
        // frontend at egress, the second time from the cache.
        let mut answer = Spec::new(
            masqueraded.endpoint,
            ENDPOINT_PORT,
            masqueraded.node,
            port,
            L4::Udp,
        );
        answer.src_mac = NODE_MAC;
        answer.dst_mac = CLIENT_MAC;
        assert_eq!(
            run_udp(&env, Program::Xdp, &answer.build()),
            (Reason::ReplyUnmasqueraded, endpoint, client),
            "{family:?}: the endpoint's answer through XDP"
        );
        let to_client = answer.to(family.client(), CLIENT_PORT).build();
        for round in ["first", "second"] {
            assert_eq!(
                run_udp(&env, Program::TcEgress, &to_client),
                (
                    Reason::ReplyTranslated,
                    SocketAddr::new(node, NODE_PORT),
                    client
                ),
                "{family:?}: {round} answer through TC egress"
            );
        }
        let reply_key = udp_key(
            (masqueraded.endpoint, ENDPOINT_PORT),
            (family.client(), CLIENT_PORT),
        );
        assert!(
            cached_entry(&env, cpu, &reply_key, flow_direction::REPLY).is_some(),
            "{family:?}: the answer did not fill the cache"
        );
        env.reset();
    }
}
