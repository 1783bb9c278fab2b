//! Syncs that take endpoints away from a UDP service port delete its flows to them (kube-proxy's
//! `CleanStaleEntries` and its `TestCleanStaleEntries` / `TestServiceWithoutEndpoints`), in
//! the in-memory maps: which entries go, and which syncs look at the flows at all.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb_common::{
    AffinityKey, AffinityValue, FAMILY_BY_NETNS, FAMILY_IPV4, FlowKey, FlowValue, PROTO_TCP,
    PROTO_UDP, flow_direction,
};
use serde_json::json;

use super::reconcile::{Reconciler, tests::small_capacity};
use crate::{
    dataplane::memory::MemoryMaps,
    diff::encode::encode_addr,
    model::{ModelConfig, Snapshot},
};

const DNS_IP: [u8; 4] = [198, 18, 100, 53];
const ENDPOINT_PORT: u16 = 5353;

/// One endpoint of the lab's `dns` Service: backend `k` at 198.18.k.2 and its conditions.
#[derive(Clone, Copy)]
struct Endpoint {
    k: u8,
    ready: bool,
    serving: bool,
}

fn up(k: u8) -> Endpoint {
    Endpoint {
        k,
        ready: true,
        serving: true,
    }
}

fn not_serving(k: u8) -> Endpoint {
    Endpoint {
        k,
        ready: false,
        serving: false,
    }
}

/// kube-dns's shape: one Service, a UDP and a TCP port 53, both to port 5353 of the same
/// endpoints (so each endpoint is one backend shared by both ports).
fn dns_snapshot(endpoints: &[Endpoint]) -> Snapshot {
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "dns", "namespace": "kube-system"},
        "spec": {
            "clusterIP": "198.18.100.53",
            "ports": [
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": ENDPOINT_PORT},
                {"name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": ENDPOINT_PORT},
            ],
        },
    }))
    .expect("service");
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|e| {
            json!({
                "addresses": [format!("198.18.{}.2", e.k)],
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": false},
            })
        })
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {
            "name": "dns-ipv4",
            "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": "dns"},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "dns", "protocol": "UDP", "port": ENDPOINT_PORT},
            {"name": "dns-tcp", "protocol": "TCP", "port": ENDPOINT_PORT},
        ],
        "endpoints": endpoints,
    }))
    .expect("slice");
    Snapshot {
        services: vec![Arc::new(service)],
        endpoint_slices: vec![Arc::new(slice)],
        ..Snapshot::default()
    }
}

fn v4(octets: [u8; 4]) -> [u8; 16] {
    encode_addr(std::net::Ipv4Addr::from(octets).into()).0
}

/// The flows the datapath would have recorded: from client 198.18.0.2 (source port 40000 +
/// k) over `proto` to backend k, each with its forward and reply entry, and one affinity
/// entry per client network namespace k.
struct Flows {
    udp_service: u32,
    tcp_service: u32,
}

impl Flows {
    fn of(reconciler: &Reconciler<MemoryMaps>) -> Self {
        let id = |name: &str| {
            let names = &reconciler.applied().service_names;
            *names
                .iter()
                .find(|(_, n)| n.as_str() == name)
                .unwrap_or_else(|| panic!("{name} is not in the maps: {names:?}"))
                .0
        };
        Self {
            udp_service: id("kube-system/dns:dns"),
            tcp_service: id("kube-system/dns:dns-tcp"),
        }
    }

    fn entries(&self, proto: u8, k: u8) -> [(FlowKey, FlowValue); 2] {
        let service_id = if proto == PROTO_UDP {
            self.udp_service
        } else {
            self.tcp_service
        };
        let (client, frontend, backend) = (v4([198, 18, 0, 2]), v4(DNS_IP), v4([198, 18, k, 2]));
        let forward = FlowKey {
            src_addr: client,
            dst_addr: frontend,
            src_port: (40000 + u16::from(k)).to_be(),
            dst_port: 53u16.to_be(),
            proto,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        };
        let reply = FlowKey {
            src_addr: backend,
            dst_addr: client,
            src_port: ENDPOINT_PORT.to_be(),
            dst_port: forward.src_port,
            ..forward
        };
        let value = |direction, nat_addr, nat_port| FlowValue {
            backend_id: 0,
            service_id,
            nat_addr,
            nat_port,
            direction,
            ..FlowValue::default()
        };
        [
            (
                forward,
                value(flow_direction::FORWARD, backend, ENDPOINT_PORT.to_be()),
            ),
            (reply, value(flow_direction::REPLY, frontend, 53u16.to_be())),
        ]
    }

    fn affinity_key(&self, k: u8) -> AffinityKey {
        let mut client_addr = [0; 16];
        client_addr[0] = k;
        AffinityKey {
            client_addr,
            service_id: self.udp_service,
            family: FAMILY_IPV4 | FAMILY_BY_NETNS,
            _pad: [0; 3],
        }
    }

    /// Both protocols' flows to each of `backends`, and a UDP client pinned to each.
    fn put(&self, maps: &mut MemoryMaps, backends: &[u8]) {
        for &k in backends {
            for proto in [PROTO_UDP, PROTO_TCP] {
                maps.conntrack.extend(self.entries(proto, k));
            }
            let backend_id = backend_id(maps, k);
            let pinned = AffinityValue {
                backend_id,
                ..AffinityValue::default()
            };
            maps.affinity.insert(self.affinity_key(k), pinned);
        }
    }

    /// (protocol, backend k) of every flow whose two entries are both in the maps, and the
    /// backends of the affinity entries left; panics on a flow with one entry left.
    fn left(&self, maps: &MemoryMaps) -> (BTreeSet<(&'static str, u8)>, BTreeSet<u8>) {
        let mut flows = BTreeSet::new();
        for k in 1..=4 {
            for (proto, name) in [(PROTO_UDP, "UDP"), (PROTO_TCP, "TCP")] {
                let kept = self
                    .entries(proto, k)
                    .map(|(key, _)| maps.conntrack.contains_key(&key));
                assert_eq!(
                    kept[0], kept[1],
                    "{name} flow to backend {k}: forward and reply entries go together"
                );
                if kept[0] {
                    flows.insert((name, k));
                }
            }
        }
        let pins = (1..=4)
            .filter(|&k| maps.affinity.contains_key(&self.affinity_key(k)))
            .collect();
        (flows, pins)
    }
}

fn backend_id(maps: &MemoryMaps, k: u8) -> u32 {
    use crate::dataplane::MapWriter as _;
    let wanted = SocketAddr::from(([198, 18, k, 2], ENDPOINT_PORT));
    maps.read()
        .expect("read")
        .backends
        .iter()
        .find(|(_, b)| crate::diff::encode::backend_identity(b) == Some(wanted))
        .map(|(id, _)| *id)
        .unwrap_or(u32::MAX)
}

fn both(backends: &[u8]) -> BTreeSet<(&'static str, u8)> {
    backends
        .iter()
        .flat_map(|&k| [("UDP", k), ("TCP", k)])
        .collect()
}

#[test]
fn udp_flows_to_endpoints_that_stopped_serving_go_and_tcp_flows_stay() {
    let mut reconciler = Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
        .expect("empty maps");
    reconciler
        .sync(&dns_snapshot(&[up(1), up(2), up(3), up(4)]))
        .expect("first sync");
    let flows = Flows::of(&reconciler);
    flows.put(reconciler.writer_mut(), &[1, 2, 3, 4]);

    // Backend 2 stops serving, backend 3 is deleted, backend 4 still serves but is no longer
    // ready (terminating while serving: kept, as kube-proxy keeps it).
    let changed = dns_snapshot(&[
        up(1),
        not_serving(2),
        Endpoint {
            k: 4,
            ready: false,
            serving: true,
        },
    ]);
    let report = reconciler.sync(&changed).expect("sync");
    let (left, pinned) = flows.left(reconciler.writer());
    let mut expected = both(&[1, 4]);
    expected.extend([("TCP", 2), ("TCP", 3)]);
    assert_eq!(
        left, expected,
        "UDP flows to the not-serving and the deleted endpoint go, TCP flows stay"
    );
    assert_eq!(
        pinned,
        BTreeSet::from([1, 4]),
        "UDP clients pinned to an endpoint that stopped serving are balanced afresh"
    );
    assert_eq!(
        report.stale_flows.conntrack, 4,
        "two flows, two entries each"
    );
    assert_eq!(report.stale_flows.affinity, 2);

    // Nothing more left the serving set: the next syncs list nothing, so they read no flow
    // map, and an endpoint that keeps not serving keeps what flows it has (none new can
    // reach it: it is in no selection table).
    flows.put(reconciler.writer_mut(), &[2]);
    let again = reconciler.sync(&changed).expect("same snapshot");
    assert_eq!(again.ops, 0);
    assert_eq!(again.stale_flows, Default::default());
    let added = dns_snapshot(&[up(1), not_serving(2), up(3), up(4)]);
    let report = reconciler.sync(&added).expect("an endpoint added");
    assert_eq!(
        report.stale_flows,
        Default::default(),
        "adding an endpoint takes none away"
    );
    assert!(flows.left(reconciler.writer()).0.contains(&("UDP", 2)));

    // A restarted agent knows nothing of the serving sets: its first sync checks every UDP
    // port once.
    let maps = reconciler.writer().clone();
    let mut restarted = Reconciler::new(maps, ModelConfig::default()).expect("adopt");
    let report = restarted.sync(&added).expect("adopting sync");
    assert_eq!(report.ops, 0, "the maps already hold this snapshot");
    assert_eq!(report.stale_flows.conntrack, 2);
    assert!(!flows.left(restarted.writer()).0.contains(&("UDP", 2)));
}

#[test]
fn a_udp_port_without_serving_endpoints_keeps_its_flows_until_one_serves_again() {
    let mut reconciler = Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
        .expect("empty maps");
    reconciler
        .sync(&dns_snapshot(&[up(1), up(2)]))
        .expect("first sync");
    let flows = Flows::of(&reconciler);
    flows.put(reconciler.writer_mut(), &[1, 2]);

    // Nothing serves: kube-proxy leaves such a service's flows alone, and so do we.
    let none = dns_snapshot(&[not_serving(1), not_serving(2)]);
    let report = reconciler.sync(&none).expect("nothing serves");
    assert_eq!(report.stale_flows, Default::default());
    assert_eq!(flows.left(reconciler.writer()).0, both(&[1, 2]));

    // Backend 1 serves again: the flows kept meanwhile to backend 2 go now.
    let report = reconciler
        .sync(&dns_snapshot(&[up(1), not_serving(2)]))
        .expect("one serves again");
    assert_eq!(report.stale_flows.conntrack, 2);
    let mut expected = both(&[1]);
    expected.insert(("TCP", 2));
    assert_eq!(flows.left(reconciler.writer()).0, expected);
}
