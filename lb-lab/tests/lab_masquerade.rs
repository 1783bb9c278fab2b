//! Masquerade on the multi-node lab, as a client outside the cluster and the pods see it:
//! a NodePort with `externalTrafficPolicy: Cluster` whose endpoint is on the other node
//! answers over IPv4 and IPv6, TCP and UDP, and the endpoint sees the node's address and a
//! port of `--masquerade-ports`; a local endpoint sees the client's own address; with
//! `externalTrafficPolicy: Local` every node keeps the client's address and its own pods; a
//! pod calling the other node's NodePort reaches an endpoint on its own node; a tiny port
//! range refuses the flow it cannot take (counted by name) without breaking the others, and
//! frees ports once flows close; a masqueraded connection survives an agent SIGKILL.
//!
//! The cluster: node-a runs my-app-1, node-b runs my-app-2.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use slicelb_lab::lab::{
    cluster::{
        ClusterSpec, POD_UDP_PORT,
        manifests::{
            ClusterEndpoint, ClusterService, Conditions, EXTERNAL_LOCAL_SERVICE, MY_APP_SERVICE,
            write_services,
        },
        serving::ServingCluster,
    },
    probe::{Probe, ProbeAnswer, ProbeProtocol, RunningProbe},
    require_root,
};

/// A bound on a failure (a change that never shows), not a measured time.
const PATIENCE: Duration = Duration::from_secs(30);
/// The agents' default `--masquerade-ports`.
const DEFAULT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

/// my-app's DNS-style UDP port as a NodePort with `externalTrafficPolicy: Cluster`.
const UDP_NODE_PORT_SERVICE: ClusterService = ClusterService {
    name: "my-app-udp",
    port_name: "dns",
    protocol: ProbeProtocol::Udp,
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 54),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x54),
    port: 53,
    target_port: POD_UDP_PORT,
    node_port: Some(30053),
    internal_local: false,
    external_local: false,
    health_check_node_port: None,
};

const SERVICES: [ClusterService; 3] = [
    MY_APP_SERVICE,
    UDP_NODE_PORT_SERVICE,
    EXTERNAL_LOCAL_SERVICE,
];

struct MasqueradeLab {
    serving: ServingCluster,
}

impl std::ops::Deref for MasqueradeLab {
    type Target = ServingCluster;
    fn deref(&self) -> &ServingCluster {
        &self.serving
    }
}

impl std::ops::DerefMut for MasqueradeLab {
    fn deref_mut(&mut self) -> &mut ServingCluster {
        &mut self.serving
    }
}

impl MasqueradeLab {
    /// The cluster with both pods serving, `endpoints` as the Services' endpoints, and an
    /// agent (with `agent_args` added) on each node that has synced.
    fn new(test: &str, endpoints: &[&str], agent_args: &[&str]) -> Self {
        require_root(test);
        let spec = ClusterSpec::new(&[("node-a", &["my-app-1"]), ("node-b", &["my-app-2"])]);
        let mut this = Self {
            serving: ServingCluster::new(test, &spec, agent_args),
        };
        let endpoints: Vec<ClusterEndpoint> = endpoints
            .iter()
            .map(|pod| ClusterEndpoint::new(this.cluster.pod(pod), Conditions::READY))
            .collect();
        write_services(this.manifests.path(), &SERVICES, &endpoints).expect("write manifests");
        for node in ["node-a", "node-b"] {
            this.start_agent(node);
        }
        // Each node's pod reaches the ClusterIP (socket level, nothing masqueraded): its
        // node's agent has synced.
        for pod in ["my-app-1", "my-app-2"] {
            slicelb_lab::lab::wait_until(&format!("the first sync beside {pod}"), PATIENCE, || {
                let probe = Probe::tcp(MY_APP_SERVICE.addr_v4()).timeout(Duration::from_secs(1));
                this.run(this.command(pod), &probe)[0].answer().is_some()
            });
        }
        this
    }

    /// `service`'s NodePort on `node`'s uplink address of the family.
    fn node_port(&self, node: &str, service: &ClusterService, ipv6: bool) -> SocketAddr {
        let node = self.cluster.node(node);
        let addr: IpAddr = if ipv6 {
            node.addr_v6.into()
        } else {
            node.addr_v4.into()
        };
        SocketAddr::new(addr, service.node_port.expect("a NodePort Service"))
    }

    /// Every answer of `count` attempts of `probe` from outside, all of which must succeed.
    fn outside_answers(&self, probe: Probe, count: u32) -> Vec<ProbeAnswer> {
        // Past the first SYN retransmission (1 s): a lost packet costs time, not the test.
        let probe = probe.count(count).timeout(Duration::from_secs(3));
        let results = self.outside(&probe);
        results
            .iter()
            .map(|r| {
                r.answer()
                    .cloned()
                    .unwrap_or_else(|| panic!("{probe:?} from outside: {r:?} in {results:?}"))
            })
            .collect()
    }

    /// Whether one TCP connection from outside to `target` is answered now.
    fn outside_answered(&self, target: SocketAddr) -> bool {
        self.outside(&Probe::tcp(target).timeout(Duration::from_secs(1)))[0]
            .answer()
            .is_some()
    }

    /// A held TCP connection from outside to `target` and its first answer.
    fn hold_from_outside(&self, target: SocketAddr, hold: Duration) -> (RunningProbe, ProbeAnswer) {
        let mut probe = Probe::tcp(target)
            .hold(hold)
            .spawn(self.cluster.outside_command(&self.lab))
            .expect("a held connection");
        let first = probe
            .next_result()
            .expect("a first answer")
            .expect("a line")
            .answer()
            .cloned()
            .expect("the held connection is answered");
        (probe, first)
    }
}

/// The answer came from `pod` through the NodePort asked, and the pod saw `client` with a
/// port in `ports` (masqueraded) or `client` with the client's own port (not).
fn assert_answer(
    answer: &ProbeAnswer,
    target: SocketAddr,
    pod: &str,
    client: IpAddr,
    masquerade_ports: Option<&std::ops::RangeInclusive<u16>>,
) {
    let what = format!("{target} answered by {}, {answer:?}", answer.served_by);
    assert_eq!(answer.served_by, pod, "{what}");
    assert_eq!(
        answer.peer, target,
        "{what}: the peer is the NodePort asked"
    );
    assert_eq!(
        answer.client_seen.ip(),
        client,
        "{what}: the address the pod sees"
    );
    match masquerade_ports {
        Some(ports) => assert!(
            ports.contains(&answer.client_seen.port()),
            "{what}: a masquerade port"
        ),
        None => assert_eq!(
            answer.client_seen.port(),
            answer.local.port(),
            "{what}: the client's own port"
        ),
    }
}

#[test]
fn outside_to_a_node_port_with_the_endpoint_on_the_other_node_is_masqueraded() {
    let lab = MasqueradeLab::new("masq_remote", &["my-app-2"], &[]);
    let outside = lab.cluster.outside();
    for service in [MY_APP_SERVICE, UDP_NODE_PORT_SERVICE] {
        for ipv6 in [false, true] {
            let (outside_addr, node_a_addr): (IpAddr, IpAddr) = if ipv6 {
                (
                    outside.addr_v6.into(),
                    lab.cluster.node("node-a").addr_v6.into(),
                )
            } else {
                (
                    outside.addr_v4.into(),
                    lab.cluster.node("node-a").addr_v4.into(),
                )
            };
            // Via node-a: the endpoint is on node-b, so node-a masquerades.
            let target = lab.node_port("node-a", &service, ipv6);
            for answer in lab.outside_answers(service.probe(target), 5) {
                assert_answer(
                    &answer,
                    target,
                    "my-app-2",
                    node_a_addr,
                    Some(&DEFAULT_PORTS),
                );
            }
            // Via node-b: the endpoint is local and sees the client itself.
            let target = lab.node_port("node-b", &service, ipv6);
            for answer in lab.outside_answers(service.probe(target), 5) {
                assert_answer(&answer, target, "my-app-2", outside_addr, None);
            }
        }
    }
    assert!(lab.reason("node-a", "lb_masqueraded") > 0);
    assert!(lab.reason("node-a", "reply_unmasqueraded") > 0);
    assert_eq!(
        lab.reason("node-b", "lb_masqueraded"),
        0,
        "nothing to masquerade"
    );
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_the_nodes_own_pods() {
    let lab = MasqueradeLab::new("masq_local", &["my-app-1", "my-app-2"], &[]);
    let outside = lab.cluster.outside();
    for (node, pod) in [("node-a", "my-app-1"), ("node-b", "my-app-2")] {
        for ipv6 in [false, true] {
            let client: IpAddr = if ipv6 {
                outside.addr_v6.into()
            } else {
                outside.addr_v4.into()
            };
            let target = lab.node_port(node, &EXTERNAL_LOCAL_SERVICE, ipv6);
            for answer in lab.outside_answers(Probe::tcp(target), 10) {
                assert_answer(&answer, target, pod, client, None);
            }
        }
    }
    for node in ["node-a", "node-b"] {
        assert_eq!(lab.reason(node, "lb_masqueraded"), 0, "{node}");
    }
}

#[test]
fn a_pod_calling_the_other_nodes_node_port_reaches_an_endpoint_on_its_own_node() {
    let lab = MasqueradeLab::new("masq_hairpin", &["my-app-1"], &[]);
    let node_b = lab.cluster.node("node-b");
    for ipv6 in [false, true] {
        let node_b_addr: IpAddr = if ipv6 {
            node_b.addr_v6.into()
        } else {
            node_b.addr_v4.into()
        };
        let target = lab.node_port("node-b", &MY_APP_SERVICE, ipv6);
        let probe = Probe::tcp(target).count(5);
        for result in lab.run(lab.command("my-app-1"), &probe) {
            let answer = result
                .answer()
                .unwrap_or_else(|| panic!("{probe:?} from my-app-1: {result:?}"));
            // node-b masquerades: without it, my-app-1 would answer itself directly and the
            // client would drop the reply from an address it never called.
            assert_answer(
                answer,
                target,
                "my-app-1",
                node_b_addr,
                Some(&DEFAULT_PORTS),
            );
        }
    }
    assert!(lab.reason("node-b", "lb_masqueraded") > 0);
}

#[test]
fn a_full_port_range_refuses_the_new_flow_by_name_keeps_the_others_and_frees_closed_ones() {
    let lab = MasqueradeLab::new(
        "masq_exhausted",
        &["my-app-2"],
        // Closed flows keep their port for the TCP transient timeout only (10 s), not the
        // default time-wait (120 s; lab_masquerade_reuse), so that the test sees one freed.
        &[
            "--masquerade-ports",
            "61000-61001",
            "--masquerade-tcp-time-wait",
            "1",
        ],
    );
    let target = lab.node_port("node-a", &MY_APP_SERVICE, false);
    let node_a: IpAddr = lab.cluster.node("node-a").addr_v4.into();
    let tiny = 61000..=61001;
    // Two held connections take the range's two ports.
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut probe = Probe::tcp(target)
                .hold(Duration::from_secs(5))
                .spawn(lab.cluster.outside_command(&lab.lab))
                .expect("a held connection");
            let first = probe
                .next_result()
                .expect("a first answer")
                .expect("a line");
            let answer = first
                .answer()
                .cloned()
                .expect("the held connection is answered");
            assert_answer(&answer, target, "my-app-2", node_a, Some(&tiny));
            (probe, answer)
        })
        .collect();
    assert_ne!(
        held[0].1.client_seen, held[1].1.client_seen,
        "two flows, two ports"
    );
    let refused = lab.outside(&Probe::tcp(target).timeout(Duration::from_secs(2)));
    assert!(
        refused[0].answer().is_none(),
        "a third flow while both ports are in use: {refused:?}"
    );
    assert!(lab.reason("node-a", "drop_masquerade_ports_exhausted") > 0);
    for (probe, first) in held.drain(..) {
        let rest = probe.finish().expect("the held connection's lines");
        assert!(!rest.is_empty());
        for result in &rest {
            let answer = result
                .answer()
                .unwrap_or_else(|| panic!("a held connection broke: {result:?}"));
            assert_eq!(answer.client_seen, first.client_seen, "its mapping stays");
        }
    }
    // Closed flows expire (TCP after FIN: the transient timeout) and free their ports.
    slicelb_lab::lab::wait_until("a port is free again", PATIENCE, || {
        lab.outside_answered(target)
    });
}

#[test]
fn a_masqueraded_connection_survives_an_agent_sigkill_and_restart() {
    let mut lab = MasqueradeLab::new("masq_restart", &["my-app-2"], &[]);
    let target = lab.node_port("node-a", &MY_APP_SERVICE, false);
    let node_a: IpAddr = lab.cluster.node("node-a").addr_v4.into();
    let (held, first) = lab.hold_from_outside(target, Duration::from_secs(6));
    assert_answer(&first, target, "my-app-2", node_a, Some(&DEFAULT_PORTS));
    lab.kill_agent("node-a");
    lab.start_agent("node-a");
    // The new agent has adopted the pins and serves new masqueraded flows.
    slicelb_lab::lab::wait_until("node-a's new agent", PATIENCE, || {
        lab.outside_answered(target)
    });
    let rest = held.finish().expect("the held connection's lines");
    assert!(!rest.is_empty());
    for result in &rest {
        let answer = result
            .answer()
            .unwrap_or_else(|| panic!("the held connection broke: {result:?}"));
        assert_eq!(
            answer.served_by, first.served_by,
            "same endpoint throughout"
        );
        assert_eq!(
            answer.client_seen, first.client_seen,
            "same masquerade mapping"
        );
    }
}
