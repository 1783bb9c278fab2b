//! kube-proxy's flow grid at socket level: the rows of `TestInternalExternalMasquerade`
//! (kubernetes/kubernetes, `pkg/proxy/nftables/proxier_test.go`) whose source is a pod on
//! this node or the node itself, as one table of which endpoints each source reaches, on
//! the multi-node lab with the real agent on every node.
//!
//! Compared is kube-proxy's `output` column: the set of endpoints a flow may reach, or
//! DROP / REJECT, both "no endpoint reached". Not compared: `masq` (slicelb does no source
//! NAT yet) and the rows from outside the cluster (the packet path's). Where kube-proxy
//! drops, slicelb refuses `connect()` with ECONNREFUSED at once (README, "Where socket
//! level differs from kube-proxy"); a row expecting no endpoint asserts exactly that.
//!
//! kube-proxy's test and this lab:
//!
//! | kube-proxy | here |
//! |---|---|
//! | this node (`testNodeName`, `testNodeIP`) | node-a: 198.18.10.10, 2001:2:0:10::10 |
//! | the node `remote` | node-b |
//! | source "pod" 10.0.0.2 | the pod `client` on node-a |
//! | source "node" `testNodeIP` | a process of node-a (its namespace, below its cgroup) |
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
//!   externally-usable endpoints" (`proxier.go`, `usesExternalTrafficChain`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use slicelb_lab::lab::{
    ChildGuard,
    cluster::{
        Cluster, ClusterNode, ClusterSpec, POD_TCP_PORT,
        manifests::{ClusterEndpoint, Conditions, endpoint_slice, object_meta, write_manifest},
    },
    lab_binary,
    probe::{Probe, ProbeProtocol, ProbeResult},
    require_root, slicelb_binary,
};
// The grid's vocabulary, unqualified so that each row reads as one line.
use Destination::{ClusterIp, ExternalIp, LoadBalancer, NodePort};
use Reaches::{Endpoints, Nothing};
use Source::{Node, Pod};

/// Connections per row and family, each a new socket: a random choice between two
/// endpoints misses one of them in all 24 with probability 2^-23.
const ATTEMPTS: u32 = 24;
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

/// One row: kube-proxy's flow-test name, its source and destination, its `output`.
#[derive(Debug)]
struct Row {
    name: &'static str,
    from: Source,
    service: &'static GridService,
    to: Destination,
    reaches: Reaches,
}

const fn row(
    name: &'static str,
    from: Source,
    service: &'static GridService,
    to: Destination,
    reaches: Reaches,
) -> Row {
    Row {
        name,
        from,
        service,
        to,
        reaches,
    }
}

#[rustfmt::skip]
const GRID: &[Row] = &[
    // TestInternalExternalMasquerade, the "base" case (a working local-traffic detector,
    // no masquerade-all): its pod and node rows, in its order.
    row("pod to ClusterIP",                 Pod,  &SVC1, ClusterIp,    Endpoints(&["svc1-local", "svc1-remote"])),
    row("pod to NodePort",                  Pod,  &SVC1, NodePort,     Endpoints(&["svc1-local", "svc1-remote"])),
    row("pod to LB",                        Pod,  &SVC1, LoadBalancer, Endpoints(&["svc1-local", "svc1-remote"])),
    row("node to ClusterIP",                Node, &SVC1, ClusterIp,    Endpoints(&["svc1-local", "svc1-remote"])),
    row("node to NodePort",                 Node, &SVC1, NodePort,     Endpoints(&["svc1-local", "svc1-remote"])),
    row("node to LB",                       Node, &SVC1, LoadBalancer, Endpoints(&["svc1-local", "svc1-remote"])),
    row("pod to ClusterIP with eTP:Local",  Pod,  &SVC2, ClusterIp,    Endpoints(&["svc2-local", "svc2-remote"])),
    row("pod to NodePort with eTP:Local",   Pod,  &SVC2, NodePort,     Endpoints(&["svc2-local", "svc2-remote"])),
    row("pod to LB with eTP:Local",         Pod,  &SVC2, LoadBalancer, Endpoints(&["svc2-local", "svc2-remote"])),
    row("node to ClusterIP with eTP:Local", Node, &SVC2, ClusterIp,    Endpoints(&["svc2-local", "svc2-remote"])),
    // kube-proxy's row asks svc1's NodePort (3001) and expects svc1's endpoints, which
    // repeats "node to NodePort"; its comment ("short-circuited, ignoring
    // externalTrafficPolicy") and the proxier's "short-circuit local traffic" rule say what
    // svc2's own NodePort gives the node: every endpoint. Here it asks svc2's.
    row("node to NodePort with eTP:Local",  Node, &SVC2, NodePort,     Endpoints(&["svc2-local", "svc2-remote"])),
    row("node to LB with eTP:Local",        Node, &SVC2, LoadBalancer, Endpoints(&["svc2-local", "svc2-remote"])),
    row("pod to ClusterIP with iTP:Local",  Pod,  &SVC3, ClusterIp,    Endpoints(&["svc3-local"])),
    row("pod to NodePort with iTP:Local",   Pod,  &SVC3, NodePort,     Endpoints(&["svc3-local", "svc3-remote"])),
    row("pod to LB with iTP:Local",         Pod,  &SVC3, LoadBalancer, Endpoints(&["svc3-local", "svc3-remote"])),
    row("node to ClusterIP with iTP:Local", Node, &SVC3, ClusterIp,    Endpoints(&["svc3-local"])),
    row("node to NodePort with iTP:Local",  Node, &SVC3, NodePort,     Endpoints(&["svc3-local", "svc3-remote"])),
    row("node to LB with iTP:Local",        Node, &SVC3, LoadBalancer, Endpoints(&["svc3-local", "svc3-remote"])),

    // Beyond the grid (module documentation): external IPs, as the LB rows.
    row("pod to externalIP",                        Pod,  &SVC1, ExternalIp, Endpoints(&["svc1-local", "svc1-remote"])),
    row("node to externalIP",                       Node, &SVC1, ExternalIp, Endpoints(&["svc1-local", "svc1-remote"])),
    row("pod to externalIP with eTP:Local",         Pod,  &SVC2, ExternalIp, Endpoints(&["svc2-local", "svc2-remote"])),
    row("node to externalIP with eTP:Local",        Node, &SVC2, ExternalIp, Endpoints(&["svc2-local", "svc2-remote"])),
    row("pod to externalIP with iTP:Local",         Pod,  &SVC3, ExternalIp, Endpoints(&["svc3-local", "svc3-remote"])),
    row("node to externalIP with iTP:Local",        Node, &SVC3, ExternalIp, Endpoints(&["svc3-local", "svc3-remote"])),

    // Beyond the grid: a Local policy with no endpoint on this node.
    row("pod to ClusterIP with iTP:Local, no local endpoint",  Pod,  &SVC4, ClusterIp,    Nothing),
    row("pod to NodePort with iTP:Local, no local endpoint",   Pod,  &SVC4, NodePort,     Endpoints(&["svc4-remote"])),
    row("pod to LB with iTP:Local, no local endpoint",         Pod,  &SVC4, LoadBalancer, Endpoints(&["svc4-remote"])),
    row("node to ClusterIP with iTP:Local, no local endpoint", Node, &SVC4, ClusterIp,    Nothing),
    row("node to NodePort with iTP:Local, no local endpoint",  Node, &SVC4, NodePort,     Endpoints(&["svc4-remote"])),
    row("node to LB with iTP:Local, no local endpoint",        Node, &SVC4, LoadBalancer, Endpoints(&["svc4-remote"])),
    row("pod to ClusterIP with eTP:Local, no local endpoint",  Pod,  &SVC5, ClusterIp,    Endpoints(&["svc5-remote"])),
    row("pod to NodePort with eTP:Local, no local endpoint",   Pod,  &SVC5, NodePort,     Endpoints(&["svc5-remote"])),
    row("pod to LB with eTP:Local, no local endpoint",         Pod,  &SVC5, LoadBalancer, Endpoints(&["svc5-remote"])),
    row("node to ClusterIP with eTP:Local, no local endpoint", Node, &SVC5, ClusterIp,    Endpoints(&["svc5-remote"])),
    row("node to NodePort with eTP:Local, no local endpoint",  Node, &SVC5, NodePort,     Endpoints(&["svc5-remote"])),
    row("node to LB with eTP:Local, no local endpoint",        Node, &SVC5, LoadBalancer, Endpoints(&["svc5-remote"])),
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
            NodePort => {
                let node_ip = match family {
                    Family::V4 => IpAddr::from(node.addr_v4),
                    Family::V6 => node.addr_v6.into(),
                };
                SocketAddr::new(node_ip, self.node_port())
            }
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

/// What the attempts of one row gave: who answered, and how many attempts failed how.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    served_by: BTreeSet<String>,
    /// "ECONNREFUSED at Connect" -> attempts.
    failures: BTreeMap<String, u32>,
}

impl Outcome {
    fn of(results: &[ProbeResult]) -> Self {
        let mut outcome = Self::default();
        for result in results {
            match result {
                ProbeResult::Answered(answer) => {
                    outcome.served_by.insert(answer.served_by.clone());
                }
                ProbeResult::Failed(failure) => {
                    let how = format!("{} at {:?}", failure.error, failure.stage);
                    *outcome.failures.entry(how).or_default() += 1;
                }
            }
        }
        outcome
    }

    /// What kube-proxy's `output` means for [`ATTEMPTS`] connections: every endpoint
    /// answers and no attempt fails, or every attempt is refused at `connect()`.
    fn expected(reaches: Reaches) -> Self {
        match reaches {
            Endpoints(pods) => Self {
                served_by: pods.iter().map(|pod| pod.to_string()).collect(),
                failures: BTreeMap::new(),
            },
            Nothing => Self {
                served_by: BTreeSet::new(),
                failures: BTreeMap::from([("ECONNREFUSED at Connect".to_string(), ATTEMPTS)]),
            },
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.served_by.is_empty() {
            f.write_str("no endpoint")?;
        } else {
            let pods: Vec<&str> = self.served_by.iter().map(String::as_str).collect();
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
fn pods_and_the_node_reach_the_endpoints_kube_proxy_gives_them() {
    const TEST: &str = "socket_grid";
    require_root(TEST);
    let spec = ClusterSpec::new(&[(LOCAL_NODE, NODE_A_PODS), (REMOTE_NODE, NODE_B_PODS)]);
    let cluster = Cluster::new(TEST, &spec).expect("build the cluster");
    let lab = lab_binary().expect("the slicelb-lab binary");
    let slicelb = slicelb_binary().expect("the slicelb binary (SLICELB_BIN or built)");
    let _servers = cluster
        .start_pod_servers(&lab)
        .expect("start the pod servers");
    let manifests = tempfile::tempdir().expect("a manifest directory");
    write_manifest(manifests.path(), MANIFEST_FILE, &grid_manifests(&cluster))
        .expect("write the grid's manifests");
    let _agents: Vec<ChildGuard> = [LOCAL_NODE, REMOTE_NODE]
        .iter()
        .map(|node| {
            let command = cluster.agent_command(node, &slicelb, manifests.path());
            ChildGuard::spawn(command, &format!("{node}'s agent"))
                .unwrap_or_else(|e| panic!("start {node}'s agent: {e}"))
        })
        .collect();
    wait_for_first_sync(&cluster, &lab);

    let node_a = cluster.node(LOCAL_NODE);
    let mut mismatches = Vec::new();
    for row in GRID {
        for family in Family::BOTH {
            let target = row.service.address(row.to, family, node_a);
            let results = Probe::tcp(target)
                .count(ATTEMPTS)
                .run(source_command(&cluster, row.from, &lab))
                .unwrap_or_else(|e| panic!("{:?} probe for {:?}: {e}", row.from, row.name));
            assert_eq!(
                results.len(),
                ATTEMPTS as usize,
                "{}: one line per attempt",
                row.name
            );
            let seen = Outcome::of(&results);
            let expected = Outcome::expected(row.reaches);
            let verdict = if seen == expected { "ok" } else { "MISMATCH" };
            // Padded as text: `Outcome`'s Display writes its parts without padding.
            let line = format!(
                "{verdict:8} {:52} {family} {target:26} expected: {:40} seen: {seen}",
                row.name,
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
        "{} of {} flows reach other endpoints than kube-proxy's:\n{}",
        mismatches.len(),
        GRID.len() * Family::BOTH.len(),
        mismatches.join("\n")
    );
}
