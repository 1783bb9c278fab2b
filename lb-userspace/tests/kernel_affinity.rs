//! Session affinity only among the endpoints a frontend may use now, ported from
//! kube-proxy's terminating-endpoint tables (`TestTerminatingEndpointsTrafficPolicyLocal`
//! and `TestTerminatingEndpointsTrafficPolicyCluster` in pkg/proxy/nftables/proxier_test.go;
//! the iptables proxier runs the same tables with `sessionAffinity: ClientIP`, and its
//! rules consult affinity per chain, among that chain's endpoints only). Addresses are
//! moved into the lab ranges: 10.0.1.N -> 198.18.1.N, the ClusterIP 172.30.1.1 ->
//! 198.18.100.1, the load-balancer IP 1.2.3.4 -> 198.18.200.1.
//!
//! Each case goes through the real agent (model, planner, `AyaMaps`) into a loaded datapath;
//! each flow then runs through the forward program (BPF_PROG_TEST_RUN) with the client
//! pinned, in turn, to every backend the agent wrote: a new flow goes to the pinned backend
//! when kube-proxy's rules for that flow hold it, and otherwise to one of the endpoints they
//! hold, which the client is then pinned to. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::{collections::BTreeSet, sync::Arc};

use aya::maps::{HashMap, MapData};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kernel::*;
use lb_common::{AffinityKey, AffinityValue, Reason, map_names};
use packets::*;
use serde_json::json;
use slicelb::{
    agent::reconcile::Reconciler,
    dataplane::aya_maps::AyaMaps,
    model::{ModelConfig, Snapshot},
};

const NODE: &str = "test-node";
const CLUSTER_IP: &str = "198.18.100.1";
const LOAD_BALANCER_IP: &str = "198.18.200.1";
/// kube-proxy's pod client (10.0.0.2) and external client (203.0.113.2).
const POD_CLIENT: &str = "198.18.0.2";
const EXTERNAL_CLIENT: &str = "198.18.0.200";

#[derive(Clone, Copy, Debug)]
enum Policy {
    Local,
    Cluster,
}

/// One endpoint of the slice: 198.18.1.`last`, its conditions and node.
struct Endpoint {
    last: u8,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: &'static str,
}

const fn ready(last: u8, node: &'static str) -> Endpoint {
    Endpoint {
        last,
        ready: true,
        serving: true,
        terminating: false,
        node,
    }
}

const fn serving_terminating(last: u8, node: &'static str) -> Endpoint {
    Endpoint {
        last,
        ready: false,
        serving: true,
        terminating: true,
        node,
    }
}

const fn not_serving(last: u8, node: &'static str) -> Endpoint {
    Endpoint {
        last,
        ready: false,
        serving: false,
        terminating: true,
        node,
    }
}

/// What kube-proxy does with a new connection of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// One of these endpoints (last octets).
    To(&'static [u8]),
    Reject,
    Drop,
}

/// kube-proxy's flows: a pod to the ClusterIP, an external client to the load-balancer IP.
struct Flow {
    name: &'static str,
    client: &'static str,
    destination: &'static str,
    outcome: Outcome,
}

struct Case {
    name: &'static str,
    policy: Policy,
    endpoints: Vec<Endpoint>,
    flows: [Flow; 2],
}

fn flows(to_cluster_ip: Outcome, to_load_balancer: Outcome) -> [Flow; 2] {
    [
        Flow {
            name: "pod to clusterIP",
            client: POD_CLIENT,
            destination: CLUSTER_IP,
            outcome: to_cluster_ip,
        },
        Flow {
            name: "external to LB",
            client: EXTERNAL_CLIENT,
            destination: LOAD_BALANCER_IP,
            outcome: to_load_balancer,
        },
    ]
}

fn cases() -> Vec<Case> {
    use Outcome::*;
    vec![
        // TestTerminatingEndpointsTrafficPolicyLocal
        Case {
            name: "Local: ready endpoints exist",
            policy: Policy::Local,
            endpoints: vec![
                ready(1, NODE),
                ready(2, NODE),
                // Ignored for external: there are ready non-terminating endpoints.
                serving_terminating(3, NODE),
                not_serving(4, NODE),
                // Ignored for external: not local.
                ready(5, "host-1"),
            ],
            flows: flows(To(&[1, 2, 5]), To(&[1, 2])),
        },
        Case {
            name: "Local: only terminating endpoints exist",
            policy: Policy::Local,
            endpoints: vec![
                serving_terminating(2, NODE),
                serving_terminating(3, NODE),
                not_serving(4, NODE),
                ready(5, "host-1"),
            ],
            flows: flows(To(&[5]), To(&[2, 3])),
        },
        Case {
            name: "Local: terminating endpoints on remote node",
            policy: Policy::Local,
            endpoints: vec![serving_terminating(5, "host-1")],
            flows: flows(To(&[5]), Drop),
        },
        Case {
            name: "Local: no usable endpoints on any node",
            policy: Policy::Local,
            endpoints: vec![not_serving(5, NODE), not_serving(5, "host-1")],
            flows: flows(Reject, Reject),
        },
        // TestTerminatingEndpointsTrafficPolicyCluster
        Case {
            name: "Cluster: ready endpoints exist",
            policy: Policy::Cluster,
            endpoints: vec![
                ready(1, NODE),
                ready(2, NODE),
                serving_terminating(3, "another-node"),
                not_serving(4, "another-node"),
                ready(5, "another-node"),
            ],
            flows: flows(To(&[1, 2, 5]), To(&[1, 2, 5])),
        },
        Case {
            name: "Cluster: only terminating endpoints exist",
            policy: Policy::Cluster,
            endpoints: vec![
                serving_terminating(2, NODE),
                serving_terminating(3, NODE),
                not_serving(4, "another-node"),
                serving_terminating(5, "another-node"),
            ],
            flows: flows(To(&[2, 3, 5]), To(&[2, 3, 5])),
        },
        Case {
            name: "Cluster: terminating endpoints on remote node",
            policy: Policy::Cluster,
            endpoints: vec![serving_terminating(5, "node-1")],
            flows: flows(To(&[5]), To(&[5])),
        },
        Case {
            name: "Cluster: no usable endpoints on any node",
            policy: Policy::Cluster,
            endpoints: vec![not_serving(5, NODE), not_serving(5, "node-1")],
            flows: flows(Reject, Reject),
        },
    ]
}

/// kube-proxy's `svc1`: a LoadBalancer Service with `sessionAffinity: ClientIP` (default
/// timeout) and the case's external traffic policy, and its one EndpointSlice.
fn snapshot(case: &Case) -> Snapshot {
    let policy = match case.policy {
        Policy::Local => "Local",
        Policy::Cluster => "Cluster",
    };
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "svc1", "namespace": "ns1"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": CLUSTER_IP,
            "clusterIPs": [CLUSTER_IP],
            "externalTrafficPolicy": policy,
            "selector": {"foo": "bar"},
            "ports": [{"name": "", "protocol": "TCP", "port": 80, "targetPort": 80}],
            "healthCheckNodePort": 30000,
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
        },
        "status": {"loadBalancer": {"ingress": [{"ip": LOAD_BALANCER_IP}]}},
    }))
    .expect("service");
    let endpoints: Vec<_> = case
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "addresses": [format!("198.18.1.{}", e.last)],
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                "nodeName": e.node,
            })
        })
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {
            "name": "svc1-1",
            "namespace": "ns1",
            "labels": {"kubernetes.io/service-name": "svc1"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "", "protocol": "TCP", "port": 80}],
        "endpoints": endpoints,
    }))
    .expect("endpoint slice");
    let mut snapshot = Snapshot {
        services: vec![Arc::new(service)],
        endpoint_slices: vec![Arc::new(slice)],
        ..Snapshot::default()
    };
    snapshot.node.name = Some(NODE.into());
    snapshot
}

/// CLOCK_MONOTONIC_COARSE in ns, the clock the datapath stamps affinity entries with.
fn coarse_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn affinity_map(env: &mut Env) -> HashMap<&mut MapData, AffinityKey, AffinityValue> {
    HashMap::try_from(env.datapath.map_mut(map_names::AFFINITY).expect("AFFINITY"))
        .expect("AFFINITY as a hash map")
}

fn affinity_key(client: &str, service_id: u32) -> AffinityKey {
    let (client_addr, family) = addr16(client);
    AffinityKey {
        client_addr,
        service_id,
        family,
        _pad: [0; 3],
    }
}

/// The last octet of the destination a forwarded IPv4 packet was rewritten to (port 80).
fn destination_of(packet: &[u8]) -> u8 {
    let sliced = SlicedPacket::from_ethernet(packet).expect("forwarded packet parses");
    let Some(NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("forwarded packet is not IPv4");
    };
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("forwarded packet is not TCP");
    };
    assert_eq!(tcp.destination_port(), 80, "the endpoints' port");
    let addr = ip.header().destination_addr();
    assert_eq!(
        &addr.octets()[..3],
        &[198, 18, 1],
        "rewritten to an endpoint"
    );
    addr.octets()[3]
}

/// Runs a SYN of `flow` from `sport`; returns the verdict, the endpoint it went to, and the
/// reasons counted.
fn syn(env: &Env, flow: &Flow, sport: u16) -> (u32, Option<u8>, Vec<(Reason, u64)>) {
    let before = env.reasons();
    let out = env.run(
        Program::Xdp,
        &Spec::new(flow.client, sport, flow.destination, 80, L4::Tcp(SYN)).build(),
    );
    let deltas = reason_deltas(&before, &env.reasons());
    let to = (out.verdict == XDP_PASS).then(|| destination_of(&out.packet));
    (out.verdict, to, deltas)
}

#[test]
fn affinity_only_among_the_endpoints_kube_proxy_would_use() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut env = Env::new();
        let maps = AyaMaps::from_datapath(&env.datapath).expect("opening the maps");
        let mut agent = Reconciler::new(maps, ModelConfig::default()).expect("adopting the maps");
        let report = agent.sync(&snapshot(&case)).expect("sync");
        assert!(report.rejected.is_empty(), "{}: {:?}", case.name, report);
        let applied = agent.applied().clone();
        let service_id = *applied
            .service_names
            .keys()
            .next()
            .unwrap_or_else(|| panic!("{}: the service has an id", case.name));
        // No pin, then a pin to every backend the agent wrote (serving or not), by id and
        // last octet.
        let pins: Vec<Option<(u32, u8)>> = std::iter::once(None)
            .chain(
                applied
                    .backends
                    .iter()
                    .map(|(id, b)| Some((*id, b.addr[3]))),
            )
            .collect();
        let mut sport = 40_000;
        for flow in &case.flows {
            let label = format!("{} / {}", case.name, flow.name);
            let eligible: BTreeSet<u8> = match flow.outcome {
                Outcome::To(lasts) => lasts.iter().copied().collect(),
                Outcome::Reject | Outcome::Drop => BTreeSet::new(),
            };
            for &pin in &pins {
                let key = affinity_key(flow.client, service_id);
                let case_label = match pin {
                    Some((pinned_id, pinned)) => {
                        let value = AffinityValue {
                            backend_id: pinned_id,
                            last_seen_ns: coarse_now_ns(),
                            ..AffinityValue::default()
                        };
                        affinity_map(&mut env)
                            .insert(&key, &value, 0)
                            .expect("pinning the client");
                        format!("{label}, client pinned to 198.18.1.{pinned}")
                    }
                    None => {
                        let _ = affinity_map(&mut env).remove(&key);
                        format!("{label}, client not pinned")
                    }
                };
                sport += 1;
                let (verdict, to, reasons) = syn(&env, flow, sport);
                let expected_verdict = match flow.outcome {
                    Outcome::To(_) => XDP_PASS,
                    Outcome::Reject => XDP_TX,
                    Outcome::Drop => XDP_DROP,
                };
                if verdict != expected_verdict {
                    failures.push(format!(
                        "{case_label}: verdict {verdict}, kube-proxy: {:?}",
                        flow.outcome
                    ));
                    continue;
                }
                let Some(to) = to else { continue };
                if !eligible.contains(&to) {
                    failures.push(format!(
                        "{case_label}: went to 198.18.1.{to}, kube-proxy uses only {eligible:?}"
                    ));
                    continue;
                }
                let followed = pin.is_some_and(|(_, pinned)| eligible.contains(&pinned));
                if followed && pin.is_some_and(|(_, pinned)| pinned != to) {
                    failures.push(format!(
                        "{case_label}: went to 198.18.1.{to}, not to the client's backend"
                    ));
                }
                let reason = if followed {
                    Reason::LbAffinity
                } else {
                    Reason::LbNewFlow
                };
                if reasons != vec![(reason, 1)] {
                    failures.push(format!(
                        "{case_label}: reasons {reasons:?}, expected {reason:?}"
                    ));
                }
                // The client is pinned where it went: the next new flow follows.
                sport += 1;
                let (_, again, reasons) = syn(&env, flow, sport);
                if again != Some(to) || reasons != vec![(Reason::LbAffinity, 1)] {
                    failures.push(format!(
                        "{case_label}: the next flow went to {again:?} ({reasons:?}), not to 198.18.1.{to} by affinity"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the flows differ from kube-proxy:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
