//! kube-proxy's flow grid on the multi-node lab with the real agent on every node: the rows
//! of `TestInternalExternalMasquerade` (kubernetes/kubernetes,
//! `pkg/proxy/nftables/proxier_test.go`) whose source is a pod on this node, the node itself
//! or a client outside the cluster, as one table of which endpoints each source reaches and
//! how each endpoint sees the client.
//!
//! Compared is kube-proxy's `output` column: the set of endpoints a flow may reach, or
//! DROP / REJECT, both "no endpoint reached". Pods and the node are balanced at socket
//! level: where kube-proxy drops, slicelb refuses `connect()` with ECONNREFUSED at once
//! (README, "Where socket level differs from kube-proxy"), and a row expecting no endpoint
//! asserts exactly that. The client outside is balanced on the packet path, which drops as
//! kube-proxy does: a row from outside expecting no endpoint asserts that every attempt
//! times out (a few attempts, a short timeout).
//!
//! kube-proxy's `masq` column is in the table, for comparison, but what each answer is
//! checked against is slicelb's rule ([`Row::slicelb_masq_when_remote`], `masquerades()` in
//! lb-common, docs/deploy.md "Masquerade"): the endpoint sees node-a's address and a port of
//! `--masquerade-ports` (default 61000-65535) exactly when the flow comes from outside, asks
//! a NodePort, load-balancer or external IP of a Service with `externalTrafficPolicy:
//! Cluster`, and was sent to an endpoint on node-b; otherwise it sees the client's own
//! address and port. Where the two columns differ, on purpose:
//! - from outside with `externalTrafficPolicy: Cluster` to an endpoint on node-a: kube-proxy
//!   masquerades (`masq` true for the whole row), slicelb keeps the client's address, as
//!   Cilium does (the reply comes back through node-a anyway);
//! - pods and the node: kube-proxy masquerades every flow of the node and a pod's flows to
//!   NodePorts, load-balancer and external IPs (unless the `externalTrafficPolicy: Local`
//!   short-circuit takes them); slicelb sends the connection to the endpoint at socket
//!   level, so nothing is rewritten and the endpoint sees the client's own address and port.
//!
//! Not ported: kube-proxy's three "external to ClusterIP" rows. In the lab (as in most
//! clusters) ClusterIPs are routed nowhere outside the cluster, and slicelb never
//! masquerades a ClusterIP (docs/deploy.md), so a routed ClusterIP's remote endpoint would
//! answer the client from its own address.
//!
//! The "external to LB" row of svc1 is also the check that a load-balancer IP routed to
//! node-a spreads over both nodes' endpoints: svc1-local and svc1-remote must both answer
//! within [`ATTEMPTS`] connections, each family.
//!
//! kube-proxy's test and this lab:
//!
//! | kube-proxy | here |
//! |---|---|
//! | this node (`testNodeName`, `testNodeIP`) | node-a: 198.18.10.10, 2001:2:0:10::10 |
//! | the node `remote` | node-b |
//! | source "pod" 10.0.0.2 | the pod `client` on node-a |
//! | source "node" `testNodeIP` | a process of node-a (its namespace, below its cgroup) |
//! | source "external" `testExternalClient` 203.0.113.2 | the client outside: 198.18.10.2, 2001:2:0:10::2 on the nodes' segment, routing the LB and external IP ranges to node-a |
//! | `svcN` ClusterIP 172.30.0.4N, port 80 | `svcN` 198.18.100.4N, 2001:2:0:100::4N, port 80 |
//! | `svcN` NodePort 300N (on `testNodeIP`) | 3000N on node-a's two addresses |
//! | load-balancer IPs 1.2.3.4 (svc1), 5.6.7.8 (svc2), 9.10.11.12 (svc3) | 198.18.98.N, 2001:2:0:98::N |
//! | (no external IPs) | 198.18.99.N, 2001:2:0:99::N |
//! | endpoints 10.180.0.N:80 (this node), 10.180.1.N:80 (`remote`) | pods `svcN-local` (node-a), `svcN-remote` (node-b), port 8080 |
//!
//! svc1 has both traffic policies Cluster, svc2 `externalTrafficPolicy: Local`, svc3
//! `internalTrafficPolicy: Local`. kube-proxy's test is IPv4 only (a proxier per family);
//! every row runs here in both families, with the same expectation.
//!
//! Rows beyond kube-proxy's grid, each following a kube-proxy rule:
//! - "… externalIP …": kube-proxy sends external IPs to the same external chain as
//!   load-balancer IPs (nftables `proxier.go`, "Capture externalIPs"): as the LB rows.
//! - svc4 (`internalTrafficPolicy: Local`, an endpoint on node-b only): the ClusterIP
//!   drops (nftables `TestInternalTrafficPolicy`, "internalTrafficPolicy is local and there
//!   are no local endpoints"); NodePort and LB IP are not internal traffic.
//! - svc5 (`externalTrafficPolicy: Local`, an endpoint on node-b only): pods and the node
//!   are short-circuited to the Cluster endpoints "even when there are no
//!   externally-usable endpoints" (`proxier.go`, `usesExternalTrafficChain`); from outside
//!   it drops (`TestTerminatingEndpointsTrafficPolicyLocal`, "external to LB, no
//!   locally-usable endpoints").

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use k8s_openapi::{
    api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use slicelb_lab::lab::{
    cluster::{
        Cluster, ClusterNode, ClusterSpec, POD_TCP_PORT,
        manifests::{ClusterEndpoint, Conditions, endpoint_slice, object_meta, write_manifest},
        serving::ServingCluster,
    },
    probe::{Probe, ProbeAnswer, ProbeProtocol, ProbeResult},
    require_root,
};
// The grid's vocabulary, unqualified so that each row reads as one line.
use Destination::{ClusterIp, ExternalIp, LoadBalancer, NodePort};
use Reaches::{Endpoints, Nothing};
use Source::{Node, Outside, Pod};

/// Connections per row and family, each a new socket: a random choice between two
/// endpoints misses one of them in all 24 with probability 2^-23.
const ATTEMPTS: u32 = 24;
/// Connections per row and family where the client outside expects a drop: each one waits
/// for [`DROP_TIMEOUT`].
const DROPPED_ATTEMPTS: u32 = 3;
/// How long the client outside waits for a handshake that a drop never answers.
const DROP_TIMEOUT: Duration = Duration::from_millis(300);
/// Each attempt of a row that must be answered may take this long: past the first SYN
/// retransmission (1 s), so a packet lost on a loaded machine costs time, not the row (the
/// rows check who answers, never how fast).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// The agents' default `--masquerade-ports`: the ports a masqueraded client shows.
const MASQUERADE_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;
/// The client outside's ephemeral ports: enough for a row's attempts to one destination
/// (its TIME_WAIT sockets hold a port for that destination only).
const OUTSIDE_PORT_RANGE: &str = "net.ipv4.ip_local_port_range=45000 45099";
/// How long the agents may take to program the grid after they start.
const SYNC_PATIENCE: Duration = Duration::from_secs(30);
const LOCAL_NODE: &str = "node-a";
const REMOTE_NODE: &str = "node-b";
/// The pod that stands for kube-proxy's source 10.0.0.2: on node-a, no Service's endpoint.
const CLIENT: &str = "client";
const SERVICE_PORT: u16 = 80;
const PORT_NAME: &str = "p80";
const MANIFEST_FILE: &str = "grid.yaml";

/// One Service of the grid: a LoadBalancer, TCP 80 -> 8080, with a NodePort, a
/// load-balancer IP and an external IP in each family.
#[derive(Debug)]
struct GridService {
    name: &'static str,
    /// N in its addresses: ClusterIP 198.18.100.4N, NodePort 3000N, LB IP 198.18.98.N,
    /// external IP 198.18.99.N.
    number: u8,
    external_local: bool,
    internal_local: bool,
    /// Its endpoints' pods, all ready.
    endpoints: &'static [&'static str],
}

const SVC1: GridService = GridService {
    name: "svc1",
    number: 1,
    external_local: false,
    internal_local: false,
    endpoints: &["svc1-local", "svc1-remote"],
};
const SVC2: GridService = GridService {
    name: "svc2",
    number: 2,
    external_local: true,
    internal_local: false,
    endpoints: &["svc2-local", "svc2-remote"],
};
const SVC3: GridService = GridService {
    name: "svc3",
    number: 3,
    external_local: false,
    internal_local: true,
    endpoints: &["svc3-local", "svc3-remote"],
};
const SVC4: GridService = GridService {
    name: "svc4",
    number: 4,
    external_local: false,
    internal_local: true,
    endpoints: &["svc4-remote"],
};
const SVC5: GridService = GridService {
    name: "svc5",
    number: 5,
    external_local: true,
    internal_local: false,
    endpoints: &["svc5-remote"],
};
const SERVICES: [&GridService; 5] = [&SVC1, &SVC2, &SVC3, &SVC4, &SVC5];

/// Pods on node-a: the client and kube-proxy's local endpoints.
const NODE_A_PODS: &[&str] = &[CLIENT, "svc1-local", "svc2-local", "svc3-local"];
/// Pods on node-b: kube-proxy's remote endpoints.
const NODE_B_PODS: &[&str] = &[
    "svc1-remote",
    "svc2-remote",
    "svc3-remote",
    "svc4-remote",
    "svc5-remote",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The prefix length of the lab's per-purpose ranges (198.18.98.0/24, 2001:2:0:98::/64).
    fn range_prefix_len(self) -> u8 {
        match self {
            Family::V4 => 24,
            Family::V6 => 64,
        }
    }
}

/// `node`'s uplink address of `family`.
fn node_address(node: &ClusterNode, family: Family) -> IpAddr {
    match family {
        Family::V4 => node.addr_v4.into(),
        Family::V6 => node.addr_v6.into(),
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Where a flow starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The pod [`CLIENT`] on node-a.
    Pod,
    /// A process of node-a.
    Node,
    /// The client outside the cluster, on the nodes' segment: NodePorts on node-a's
    /// address, load-balancer and external IPs routed to node-a.
    Outside,
}

/// Which of the Service's addresses a flow asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Destination {
    ClusterIp,
    /// The NodePort on node-a's own address.
    NodePort,
    LoadBalancer,
    ExternalIp,
}

/// kube-proxy's `output`: the endpoints a flow may reach, every one of them.
#[derive(Clone, Copy, Debug)]
enum Reaches {
    Endpoints(&'static [&'static str]),
    /// DROP or REJECT.
    Nothing,
}

/// One row: kube-proxy's flow-test name, its source and destination, its `output` and
/// its `masq`.
#[derive(Debug)]
struct Row {
    name: &'static str,
    from: Source,
    service: &'static GridService,
    to: Destination,
    reaches: Reaches,
    /// kube-proxy's `masq`: whether kube-proxy masquerades the flow, to any endpoint.
    /// Not what is asserted: [`Row::slicelb_masq_when_remote`] is.
    kube_proxy_masq: bool,
}

impl Row {
    /// slicelb's masquerade rule (`lb_common::masquerades`, docs/deploy.md "Masquerade"):
    /// traffic from outside to a NodePort, load-balancer or external IP of a Service with
    /// `externalTrafficPolicy: Cluster` is masqueraded when it goes to an endpoint on
    /// another node, and only then. Pods and the node are balanced at socket level, where
    /// nothing is rewritten.
    fn slicelb_masq_when_remote(&self) -> bool {
        self.from == Outside && self.to != ClusterIp && !self.service.external_local
    }

    /// How `pod` sees the client of this row's flows under slicelb's rule.
    fn slicelb_client_view(&self, pod: &str) -> ClientView {
        if self.slicelb_masq_when_remote() && NODE_B_PODS.contains(&pod) {
            ClientView::NodeA
        } else {
            ClientView::Itself
        }
    }

    /// Connections per family: a drop seen from outside costs a timeout each.
    fn attempts(&self) -> u32 {
        match (self.from, self.reaches) {
            (Outside, Nothing) => DROPPED_ATTEMPTS,
            _ => ATTEMPTS,
        }
    }

    fn probe(&self, target: SocketAddr) -> Probe {
        let probe = Probe::tcp(target).count(self.attempts());
        match (self.from, self.reaches) {
            (Outside, Nothing) => probe.timeout(DROP_TIMEOUT),
            _ => probe.timeout(ANSWER_TIMEOUT),
        }
    }
}

const fn row(
    name: &'static str,
    from: Source,
    service: &'static GridService,
    to: Destination,
    reaches: Reaches,
    kube_proxy_masq: bool,
) -> Row {
    Row {
        name,
        from,
        service,
        to,
        reaches,
        kube_proxy_masq,
    }
}

#[rustfmt::skip]
const GRID: &[Row] = &[
    // TestInternalExternalMasquerade, the "base" case (a working local-traffic detector,
    // no masquerade-all): its pod, node and external rows, in its order. Columns: name,
    // source, service, destination, kube-proxy's `output`, kube-proxy's `masq`.
    row("pod to ClusterIP",                      Pod,     &SVC1, ClusterIp,    Endpoints(&["svc1-local", "svc1-remote"]), false),
    row("pod to NodePort",                       Pod,     &SVC1, NodePort,     Endpoints(&["svc1-local", "svc1-remote"]), true),
    row("pod to LB",                             Pod,     &SVC1, LoadBalancer, Endpoints(&["svc1-local", "svc1-remote"]), true),
    row("node to ClusterIP",                     Node,    &SVC1, ClusterIp,    Endpoints(&["svc1-local", "svc1-remote"]), true),
    row("node to NodePort",                      Node,    &SVC1, NodePort,     Endpoints(&["svc1-local", "svc1-remote"]), true),
    row("node to LB",                            Node,    &SVC1, LoadBalancer, Endpoints(&["svc1-local", "svc1-remote"]), true),
    // "external to ClusterIP": not ported (module documentation).
    row("external to NodePort",                  Outside, &SVC1, NodePort,     Endpoints(&["svc1-local", "svc1-remote"]), true),
    // Also the spread of a routed load-balancer IP: both nodes' endpoints answer.
    row("external to LB",                        Outside, &SVC1, LoadBalancer, Endpoints(&["svc1-local", "svc1-remote"]), true),
    row("pod to ClusterIP with eTP:Local",       Pod,     &SVC2, ClusterIp,    Endpoints(&["svc2-local", "svc2-remote"]), false),
    row("pod to NodePort with eTP:Local",        Pod,     &SVC2, NodePort,     Endpoints(&["svc2-local", "svc2-remote"]), false),
    row("pod to LB with eTP:Local",              Pod,     &SVC2, LoadBalancer, Endpoints(&["svc2-local", "svc2-remote"]), false),
    row("node to ClusterIP with eTP:Local",      Node,    &SVC2, ClusterIp,    Endpoints(&["svc2-local", "svc2-remote"]), true),
    // kube-proxy's row asks svc1's NodePort (3001) and expects svc1's endpoints, which
    // repeats "node to NodePort"; its comment ("short-circuited, ignoring
    // externalTrafficPolicy") and the proxier's "short-circuit local traffic" rule say what
    // svc2's own NodePort gives the node: every endpoint. Here it asks svc2's.
    row("node to NodePort with eTP:Local",       Node,    &SVC2, NodePort,     Endpoints(&["svc2-local", "svc2-remote"]), true),
    row("node to LB with eTP:Local",             Node,    &SVC2, LoadBalancer, Endpoints(&["svc2-local", "svc2-remote"]), true),
    row("external to NodePort with eTP:Local",   Outside, &SVC2, NodePort,     Endpoints(&["svc2-local"]),                false),
    row("external to LB with eTP:Local",         Outside, &SVC2, LoadBalancer, Endpoints(&["svc2-local"]),                false),
    row("pod to ClusterIP with iTP:Local",       Pod,     &SVC3, ClusterIp,    Endpoints(&["svc3-local"]),                false),
    row("pod to NodePort with iTP:Local",        Pod,     &SVC3, NodePort,     Endpoints(&["svc3-local", "svc3-remote"]), true),
    row("pod to LB with iTP:Local",              Pod,     &SVC3, LoadBalancer, Endpoints(&["svc3-local", "svc3-remote"]), true),
    row("node to ClusterIP with iTP:Local",      Node,    &SVC3, ClusterIp,    Endpoints(&["svc3-local"]),                true),
    row("node to NodePort with iTP:Local",       Node,    &SVC3, NodePort,     Endpoints(&["svc3-local", "svc3-remote"]), true),
    row("node to LB with iTP:Local",             Node,    &SVC3, LoadBalancer, Endpoints(&["svc3-local", "svc3-remote"]), true),
    row("external to NodePort with iTP:Local",   Outside, &SVC3, NodePort,     Endpoints(&["svc3-local", "svc3-remote"]), true),
    row("external to LB with iTP:Local",         Outside, &SVC3, LoadBalancer, Endpoints(&["svc3-local", "svc3-remote"]), true),

    // Beyond the grid (module documentation): external IPs, as the LB rows.
    row("pod to externalIP",                     Pod,     &SVC1, ExternalIp, Endpoints(&["svc1-local", "svc1-remote"]), true),
    row("node to externalIP",                    Node,    &SVC1, ExternalIp, Endpoints(&["svc1-local", "svc1-remote"]), true),
    row("external to externalIP",                Outside, &SVC1, ExternalIp, Endpoints(&["svc1-local", "svc1-remote"]), true),
    row("pod to externalIP with eTP:Local",      Pod,     &SVC2, ExternalIp, Endpoints(&["svc2-local", "svc2-remote"]), false),
    row("node to externalIP with eTP:Local",     Node,    &SVC2, ExternalIp, Endpoints(&["svc2-local", "svc2-remote"]), true),
    row("external to externalIP with eTP:Local", Outside, &SVC2, ExternalIp, Endpoints(&["svc2-local"]),                false),
    row("pod to externalIP with iTP:Local",      Pod,     &SVC3, ExternalIp, Endpoints(&["svc3-local", "svc3-remote"]), true),
    row("node to externalIP with iTP:Local",     Node,    &SVC3, ExternalIp, Endpoints(&["svc3-local", "svc3-remote"]), true),
    row("external to externalIP with iTP:Local", Outside, &SVC3, ExternalIp, Endpoints(&["svc3-local", "svc3-remote"]), true),

    // Beyond the grid: a Local policy with no endpoint on this node. A drop masquerades
    // nothing: `masq` false.
    row("pod to ClusterIP with iTP:Local, no local endpoint",       Pod,     &SVC4, ClusterIp,    Nothing,                    false),
    row("pod to NodePort with iTP:Local, no local endpoint",        Pod,     &SVC4, NodePort,     Endpoints(&["svc4-remote"]), true),
    row("pod to LB with iTP:Local, no local endpoint",              Pod,     &SVC4, LoadBalancer, Endpoints(&["svc4-remote"]), true),
    row("node to ClusterIP with iTP:Local, no local endpoint",      Node,    &SVC4, ClusterIp,    Nothing,                    false),
    row("node to NodePort with iTP:Local, no local endpoint",       Node,    &SVC4, NodePort,     Endpoints(&["svc4-remote"]), true),
    row("node to LB with iTP:Local, no local endpoint",             Node,    &SVC4, LoadBalancer, Endpoints(&["svc4-remote"]), true),
    row("external to NodePort with iTP:Local, no local endpoint",   Outside, &SVC4, NodePort,     Endpoints(&["svc4-remote"]), true),
    row("external to LB with iTP:Local, no local endpoint",         Outside, &SVC4, LoadBalancer, Endpoints(&["svc4-remote"]), true),
    row("external to externalIP with iTP:Local, no local endpoint", Outside, &SVC4, ExternalIp,   Endpoints(&["svc4-remote"]), true),
    row("pod to ClusterIP with eTP:Local, no local endpoint",       Pod,     &SVC5, ClusterIp,    Endpoints(&["svc5-remote"]), false),
    row("pod to NodePort with eTP:Local, no local endpoint",        Pod,     &SVC5, NodePort,     Endpoints(&["svc5-remote"]), false),
    row("pod to LB with eTP:Local, no local endpoint",              Pod,     &SVC5, LoadBalancer, Endpoints(&["svc5-remote"]), false),
    row("node to ClusterIP with eTP:Local, no local endpoint",      Node,    &SVC5, ClusterIp,    Endpoints(&["svc5-remote"]), true),
    row("node to NodePort with eTP:Local, no local endpoint",       Node,    &SVC5, NodePort,     Endpoints(&["svc5-remote"]), true),
    row("node to LB with eTP:Local, no local endpoint",             Node,    &SVC5, LoadBalancer, Endpoints(&["svc5-remote"]), true),
    // kube-proxy: "external to LB, no locally-usable endpoints" (TestTerminatingEndpointsTrafficPolicyLocal) DROP.
    row("external to NodePort with eTP:Local, no local endpoint",   Outside, &SVC5, NodePort,     Nothing,                    false),
    row("external to LB with eTP:Local, no local endpoint",         Outside, &SVC5, LoadBalancer, Nothing,                    false),
    row("external to externalIP with eTP:Local, no local endpoint", Outside, &SVC5, ExternalIp,   Nothing,                    false),
];

impl GridService {
    fn cluster_ip(&self, family: Family) -> IpAddr {
        let host = 40 + self.number;
        match family {
            Family::V4 => Ipv4Addr::new(198, 18, 100, host).into(),
            // 0x41 for 41: the IPv6 address reads like the IPv4 one.
            Family::V6 => {
                Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x40 + u16::from(self.number)).into()
            }
        }
    }

    fn load_balancer_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => Ipv4Addr::new(198, 18, 98, self.number).into(),
            Family::V6 => Ipv6Addr::new(0x2001, 2, 0, 0x98, 0, 0, 0, self.number.into()).into(),
        }
    }

    fn external_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => Ipv4Addr::new(198, 18, 99, self.number).into(),
            Family::V6 => Ipv6Addr::new(0x2001, 2, 0, 0x99, 0, 0, 0, self.number.into()).into(),
        }
    }

    fn node_port(&self) -> u16 {
        30_000 + u16::from(self.number)
    }

    /// The address a flow to `to` asks for; NodePorts on `node`'s own address.
    fn address(&self, to: Destination, family: Family, node: &ClusterNode) -> SocketAddr {
        match to {
            ClusterIp => SocketAddr::new(self.cluster_ip(family), SERVICE_PORT),
            NodePort => SocketAddr::new(node_address(node, family), self.node_port()),
            LoadBalancer => SocketAddr::new(self.load_balancer_ip(family), SERVICE_PORT),
            ExternalIp => SocketAddr::new(self.external_ip(family), SERVICE_PORT),
        }
    }

    fn service(&self) -> Service {
        let in_both_families = |ip: fn(&Self, Family) -> IpAddr| {
            Family::BOTH.map(|f| ip(self, f).to_string()).to_vec()
        };
        let policy = |local: bool| Some(if local { "Local" } else { "Cluster" }.to_string());
        Service {
            metadata: object_meta(self.name, BTreeMap::new()),
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ip_family_policy: Some("RequireDualStack".into()),
                ip_families: Some(vec!["IPv4".into(), "IPv6".into()]),
                cluster_ip: Some(self.cluster_ip(Family::V4).to_string()),
                cluster_ips: Some(in_both_families(Self::cluster_ip)),
                external_ips: Some(in_both_families(Self::external_ip)),
                external_traffic_policy: policy(self.external_local),
                // As the API server gives every LoadBalancer with the Local policy.
                health_check_node_port: self
                    .external_local
                    .then(|| 32_000 + i32::from(self.number)),
                internal_traffic_policy: policy(self.internal_local),
                ports: Some(vec![ServicePort {
                    name: Some(PORT_NAME.into()),
                    protocol: Some("TCP".into()),
                    port: SERVICE_PORT.into(),
                    target_port: Some(IntOrString::Int(POD_TCP_PORT.into())),
                    node_port: Some(self.node_port().into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        in_both_families(Self::load_balancer_ip)
                            .into_iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some(ip),
                                ..LoadBalancerIngress::default()
                            })
                            .collect(),
                    ),
                }),
                ..ServiceStatus::default()
            }),
        }
    }
}

/// Every grid Service with its IPv4 and IPv6 EndpointSlices, as one multi-document YAML.
fn grid_manifests(cluster: &Cluster) -> String {
    let mut documents = Vec::new();
    for service in SERVICES {
        let endpoints: Vec<ClusterEndpoint> = service
            .endpoints
            .iter()
            .map(|pod| ClusterEndpoint::new(cluster.pod(pod), Conditions::READY))
            .collect();
        documents.push(serde_norway::to_string(&service.service()));
        for ipv6 in [false, true] {
            let slice = endpoint_slice(
                service.name,
                PORT_NAME,
                ProbeProtocol::Tcp,
                POD_TCP_PORT,
                &endpoints,
                ipv6,
            );
            documents.push(serde_norway::to_string(&slice));
        }
    }
    let documents: Vec<String> = documents
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("Kubernetes objects serialize to YAML");
    documents.join("---\n")
}

/// How an endpoint saw the client: the source address and port the server got.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ClientView {
    /// The client's own address and port: not masqueraded.
    Itself,
    /// node-a's address of the family and a port of [`MASQUERADE_PORTS`]: masqueraded.
    NodeA,
    /// Anything else, as seen.
    Other(SocketAddr),
}

impl ClientView {
    fn of(answer: &ProbeAnswer, node_a: IpAddr) -> Self {
        let seen = answer.client_seen;
        if seen == answer.local {
            Self::Itself
        } else if seen.ip() == node_a && MASQUERADE_PORTS.contains(&seen.port()) {
            Self::NodeA
        } else {
            Self::Other(seen)
        }
    }
}

impl fmt::Display for ClientView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Itself => f.write_str("saw the client"),
            Self::NodeA => f.write_str("saw node-a"),
            Self::Other(seen) => write!(f, "saw {seen}"),
        }
    }
}

/// What the attempts of one row gave: who answered and how each saw the client, and how
/// many attempts failed how.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    served_by: BTreeSet<(String, ClientView)>,
    /// "ECONNREFUSED at Connect" -> attempts.
    failures: BTreeMap<String, u32>,
}

impl Outcome {
    /// `node_a`: node-a's address of the attempts' family, the masquerade source.
    fn of(results: &[ProbeResult], node_a: IpAddr) -> Self {
        let mut outcome = Self::default();
        for result in results {
            match result {
                ProbeResult::Answered(answer) => {
                    let view = ClientView::of(answer, node_a);
                    outcome.served_by.insert((answer.served_by.clone(), view));
                }
                ProbeResult::Failed(failure) => {
                    let how = format!("{} at {:?}", failure.error, failure.stage);
                    *outcome.failures.entry(how).or_default() += 1;
                }
            }
        }
        outcome
    }

    /// What kube-proxy's `output` and slicelb's masquerade rule mean for the row's
    /// attempts: every endpoint answers, each seeing the client as the rule says, and no
    /// attempt fails; or every attempt fails, at once with ECONNREFUSED from a pod or the
    /// node (socket level), as a timeout from outside (a drop).
    fn expected(row: &Row) -> Self {
        match row.reaches {
            Endpoints(pods) => Self {
                served_by: pods
                    .iter()
                    .map(|pod| (pod.to_string(), row.slicelb_client_view(pod)))
                    .collect(),
                failures: BTreeMap::new(),
            },
            Nothing => {
                let how = match row.from {
                    Pod | Node => "ECONNREFUSED at Connect",
                    Outside => "timeout at Connect",
                };
                Self {
                    served_by: BTreeSet::new(),
                    failures: BTreeMap::from([(how.to_string(), row.attempts())]),
                }
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.served_by.is_empty() {
            f.write_str("no endpoint")?;
        } else {
            let pods: Vec<String> = self
                .served_by
                .iter()
                .map(|(pod, view)| format!("{pod} {view}"))
                .collect();
            f.write_str(&pods.join(", "))?;
        }
        for (how, attempts) in &self.failures {
            write!(f, "; {attempts}x {how}")?;
        }
        Ok(())
    }
}

fn source_command(cluster: &Cluster, from: Source, program: &Path) -> Command {
    match from {
        Pod => cluster.pod(CLIENT).command(program),
        Node => cluster.node(LOCAL_NODE).command(program),
        Outside => cluster.outside_command(program),
    }
}

/// Polls the first grid ClusterIP from the client pod until it answers: node-a's agent
/// has made its first sync, which programs every Service of the manifest directory.
fn wait_for_first_sync(cluster: &Cluster, lab: &Path) {
    let target = SVC1.address(ClusterIp, Family::V4, cluster.node(LOCAL_NODE));
    let probe = Probe::tcp(target).timeout(Duration::from_millis(200));
    let started = Instant::now();
    loop {
        let results = probe
            .run(source_command(cluster, Pod, lab))
            .unwrap_or_else(|e| panic!("probe {target} from {CLIENT}: {e}"));
        if results.iter().any(|result| result.answer().is_some()) {
            return;
        }
        assert!(
            started.elapsed() < SYNC_PATIENCE,
            "node-a's agent has not programmed {target} after {SYNC_PATIENCE:?}: {results:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_source_reaches_kube_proxys_endpoints_and_is_masqueraded_as_slicelb_defines() {
    const TEST: &str = "socket_grid";
    require_root(TEST);
    let spec = ClusterSpec::new(&[(LOCAL_NODE, NODE_A_PODS), (REMOTE_NODE, NODE_B_PODS)]);
    let mut serving = ServingCluster::new(TEST, &spec, &[]);
    let cluster = &serving.cluster;
    // As a router in front of the cluster would: every load-balancer and external IP
    // (one range per kind and family) reaches node-a.
    for family in Family::BOTH {
        for address in [SVC1.load_balancer_ip(family), SVC1.external_ip(family)] {
            let range = IpNet::new(address, family.range_prefix_len())
                .expect("a valid prefix length")
                .trunc();
            cluster
                .route_from_outside(range, LOCAL_NODE)
                .unwrap_or_else(|e| panic!("route {range} from outside to {LOCAL_NODE}: {e}"));
        }
    }
    write_manifest(
        serving.manifests.path(),
        MANIFEST_FILE,
        &grid_manifests(cluster),
    )
    .expect("write the grid's manifests");
    for node in [LOCAL_NODE, REMOTE_NODE] {
        serving.start_agent(node);
    }
    let (cluster, lab) = (&serving.cluster, &serving.lab);
    wait_for_first_sync(cluster, lab);
    // Few ports, so that the client reuses a port across the frontends of one endpoint
    // (Linux picks a connect()'s port per destination), as a busy client does now and then:
    // each such flow must still be answered (lab_masquerade_reuse).
    cluster
        .outside()
        .netns
        .sysctl(OUTSIDE_PORT_RANGE)
        .expect("the outside client's port range");

    let node_a = cluster.node(LOCAL_NODE);
    let mut mismatches = Vec::new();
    for row in GRID {
        for family in Family::BOTH {
            let target = row.service.address(row.to, family, node_a);
            let results = row
                .probe(target)
                .run(source_command(cluster, row.from, lab))
                .unwrap_or_else(|e| panic!("{:?} probe for {:?}: {e}", row.from, row.name));
            assert_eq!(
                results.len(),
                row.attempts() as usize,
                "{}: one line per attempt",
                row.name
            );
            let seen = Outcome::of(&results, node_address(node_a, family));
            let expected = Outcome::expected(row);
            let verdict = if seen == expected { "ok" } else { "MISMATCH" };
            // Padded as text: `Outcome`'s Display writes its parts without padding.
            let line = format!(
                "{verdict:8} {:56} {family} {target:26} kube-proxy masq: {:5} expected: {:64} seen: {seen}",
                row.name,
                row.kube_proxy_masq,
                expected.to_string()
            );
            println!("{line}");
            if seen != expected {
                mismatches.push(line);
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} flows reach other endpoints than kube-proxy's, or see the client otherwise \
         than slicelb's masquerade rule says:\n{}",
        mismatches.len(),
        GRID.len() * Family::BOTH.len(),
        mismatches.join("\n")
    );
}
