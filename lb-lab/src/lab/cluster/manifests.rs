//! The seed's my-app as a cluster: the Services and EndpointSlices every node's agent reads
//! from one manifest directory (`slicelb agent --manifest-dir`).
//!
//! | Service | ClusterIPs | port | pods |
//! |---|---|---|---|
//! | `my-app-service` (NodePort 30080) | 198.18.100.10, 2001:2:0:100::10 | TCP 80 → 8080 | all |
//! | `dns` | 198.18.100.53, 2001:2:0:100::53 | UDP 53 → 5353 | all |
//! | `my-app-local` (`internalTrafficPolicy: Local`) | 198.18.100.20, 2001:2:0:100::20 | TCP 80 → 8080 | the client's node's |
//! | `my-app-external` (NodePort 30081, `externalTrafficPolicy: Local`) | 198.18.100.30, 2001:2:0:100::30 | TCP 80 → 8080 | from outside: the node's own |
//! | `my-app-lb` (LoadBalancer, NodePort 30082, `externalTrafficPolicy: Local`, `healthCheckNodePort` 32082) | 198.18.100.40, 2001:2:0:100::40 | TCP 80 → 8080 | from outside: the node's own |
//!
//! [`write_my_app`] writes the first three ([`SERVICES`]); [`write_services`] any of them
//! (the demo adds `my-app-external`).
//!
//! The Service range 198.18.100.0/24 and 2001:2:0:100::/64 is routed nowhere: a connection
//! to a ClusterIP works only when socket-level balancing translates it.
//!
//! Tests with Services of their own build them from the same parts: [`object_meta`],
//! [`endpoint_slice`] and [`write_manifest`]; [`node_manifest`] writes a node's Node object
//! (the agents read whether it is leaving).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, NodeSpec, ObjectReference, Service, ServicePort, ServiceSpec, Taint},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{Cluster, POD_TCP_PORT, POD_UDP_PORT, Pod};
use crate::lab::probe::{Probe, ProbeProtocol};

pub const NAMESPACE: &str = "default";
/// The file [`write_my_app`] writes in the manifest directory.
pub const MANIFEST_FILE: &str = "my-app.yaml";

/// One of the cluster's Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterService {
    pub name: &'static str,
    /// The Service port's name (what EndpointSlice ports match on).
    pub port_name: &'static str,
    pub protocol: ProbeProtocol,
    pub cluster_ipv4: Ipv4Addr,
    pub cluster_ipv6: Ipv6Addr,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (for its NodePort).
    pub external_local: bool,
    /// A LoadBalancer (with `externalTrafficPolicy: Local`) and its `healthCheckNodePort`,
    /// which every node serves as kube-proxy does.
    pub health_check_node_port: Option<u16>,
}

pub const MY_APP_SERVICE: ClusterService = ClusterService {
    name: "my-app-service",
    port_name: "http",
    protocol: ProbeProtocol::Tcp,
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 10),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x10),
    port: 80,
    target_port: POD_TCP_PORT,
    node_port: Some(30080),
    internal_local: false,
    external_local: false,
    health_check_node_port: None,
};

pub const DNS_SERVICE: ClusterService = ClusterService {
    name: "dns",
    port_name: "dns",
    protocol: ProbeProtocol::Udp,
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 53),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x53),
    port: 53,
    target_port: POD_UDP_PORT,
    node_port: None,
    internal_local: false,
    external_local: false,
    health_check_node_port: None,
};

pub const LOCAL_SERVICE: ClusterService = ClusterService {
    name: "my-app-local",
    port_name: "http",
    protocol: ProbeProtocol::Tcp,
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 20),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x20),
    port: 80,
    target_port: POD_TCP_PORT,
    node_port: None,
    internal_local: true,
    external_local: false,
    health_check_node_port: None,
};

/// my-app's NodePort for clients outside the cluster, with `externalTrafficPolicy: Local`:
/// a node hands it only to its own pods and so needs no source NAT (the client's address
/// reaches the pod, the reply goes back through the node that translated the request).
pub const EXTERNAL_LOCAL_SERVICE: ClusterService = ClusterService {
    name: "my-app-external",
    port_name: "http",
    protocol: ProbeProtocol::Tcp,
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 30),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x30),
    port: 80,
    target_port: POD_TCP_PORT,
    node_port: Some(30081),
    internal_local: false,
    external_local: true,
    health_check_node_port: None,
};

/// my-app behind a cloud load balancer with `externalTrafficPolicy: Local`: the load
/// balancer asks each node's `healthCheckNodePort` whether it has ready replicas, and sends
/// the node traffic only when it answers 200.
pub const LOCAL_LOAD_BALANCER_SERVICE: ClusterService = ClusterService {
    name: "my-app-lb",
    port_name: "http",
    protocol: ProbeProtocol::Tcp,
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 40),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x40),
    port: 80,
    target_port: POD_TCP_PORT,
    node_port: Some(30082),
    internal_local: false,
    external_local: true,
    health_check_node_port: Some(32082),
};

pub const SERVICES: [ClusterService; 3] = [MY_APP_SERVICE, DNS_SERVICE, LOCAL_SERVICE];

impl ClusterService {
    pub fn addr_v4(&self) -> SocketAddr {
        SocketAddr::new(self.cluster_ipv4.into(), self.port)
    }

    pub fn addr_v6(&self) -> SocketAddr {
        SocketAddr::new(self.cluster_ipv6.into(), self.port)
    }

    /// A probe of this Service's protocol to `addr` (one of its addresses).
    pub fn probe(&self, addr: SocketAddr) -> Probe {
        match self.protocol {
            ProbeProtocol::Tcp => Probe::tcp(addr),
            ProbeProtocol::Udp => Probe::udp(addr),
        }
    }

    fn service(&self) -> Service {
        Service {
            metadata: object_meta(self.name, BTreeMap::new()),
            spec: Some(ServiceSpec {
                type_: Some(
                    if self.health_check_node_port.is_some() {
                        "LoadBalancer"
                    } else if self.node_port.is_some() {
                        "NodePort"
                    } else {
                        "ClusterIP"
                    }
                    .into(),
                ),
                health_check_node_port: self.health_check_node_port.map(i32::from),
                selector: Some(BTreeMap::from([("app".to_string(), "my-app".to_string())])),
                ip_family_policy: Some("RequireDualStack".into()),
                ip_families: Some(vec!["IPv4".into(), "IPv6".into()]),
                cluster_ip: Some(self.cluster_ipv4.to_string()),
                cluster_ips: Some(vec![
                    self.cluster_ipv4.to_string(),
                    self.cluster_ipv6.to_string(),
                ]),
                internal_traffic_policy: self.internal_local.then(|| "Local".into()),
                external_traffic_policy: self.external_local.then(|| "Local".into()),
                ports: Some(vec![ServicePort {
                    name: Some(self.port_name.into()),
                    protocol: Some(protocol_name(self.protocol).into()),
                    port: self.port.into(),
                    target_port: Some(IntOrString::Int(self.target_port.into())),
                    node_port: self.node_port.map(i32::from),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn slice(&self, endpoints: &[ClusterEndpoint], ipv6: bool) -> EndpointSlice {
        endpoint_slice(
            self.name,
            self.port_name,
            self.protocol,
            self.target_port,
            endpoints,
            ipv6,
        )
    }
}

/// The name Kubernetes gives `protocol` in Service and EndpointSlice ports.
fn protocol_name(protocol: ProbeProtocol) -> &'static str {
    match protocol {
        ProbeProtocol::Tcp => "TCP",
        ProbeProtocol::Udp => "UDP",
    }
}

/// The EndpointSlice of Service `service` for one family (`ipv6`): every one of `endpoints`
/// on the slice port `port_name` (`protocol`, the pods' `target_port`).
pub fn endpoint_slice(
    service: &str,
    port_name: &str,
    protocol: ProbeProtocol,
    target_port: u16,
    endpoints: &[ClusterEndpoint],
    ipv6: bool,
) -> EndpointSlice {
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    EndpointSlice {
        metadata: object_meta(
            &format!("{service}-{}", family.to_lowercase()),
            BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                service.to_string(),
            )]),
        ),
        address_type: family.into(),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.into()),
            protocol: Some(protocol_name(protocol).into()),
            port: Some(target_port.into()),
            ..EndpointPort::default()
        }]),
        endpoints: endpoints
            .iter()
            .map(|endpoint| endpoint.endpoint(ipv6))
            .collect(),
    }
}

/// The cluster autoscaler's taint on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Node `node`'s Node object, tainted `ToBeDeletedByClusterAutoscaler` when
/// `to_be_deleted`, as YAML for [`write_manifest`].
pub fn node_manifest(node: &str, to_be_deleted: bool) -> String {
    let taints = to_be_deleted.then(|| {
        vec![Taint {
            key: TO_BE_DELETED_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }]
    });
    let object = Node {
        metadata: ObjectMeta {
            name: Some(node.into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints,
            ..NodeSpec::default()
        }),
        ..Node::default()
    };
    serde_norway::to_string(&object).expect("a Node serializes to YAML")
}

/// `name` in [`NAMESPACE`], with `labels`.
pub fn object_meta(name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NAMESPACE.into()),
        labels: (!labels.is_empty()).then_some(labels),
        ..ObjectMeta::default()
    }
}

/// An endpoint's conditions, as a kubelet and the EndpointSlice controller set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    pub const READY: Self = Self {
        ready: true,
        serving: true,
        terminating: false,
    };
    /// Being deleted, still serving (a rolling update's old pod).
    pub const TERMINATING: Self = Self {
        ready: false,
        serving: true,
        terminating: true,
    };
    /// Running but failing its readiness probe.
    pub const NOT_READY: Self = Self {
        ready: false,
        serving: false,
        terminating: false,
    };
}

/// One pod as an endpoint of every Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEndpoint {
    pub pod: String,
    /// The endpoint's `nodeName`.
    pub node: String,
    pub addr_v4: Ipv4Addr,
    pub addr_v6: Ipv6Addr,
    pub conditions: Conditions,
}

impl ClusterEndpoint {
    pub fn new(pod: &Pod, conditions: Conditions) -> Self {
        Self {
            pod: pod.name.clone(),
            node: pod.node.clone(),
            addr_v4: pod.addr_v4,
            addr_v6: pod.addr_v6,
            conditions,
        }
    }

    fn endpoint(&self, ipv6: bool) -> Endpoint {
        let address = if ipv6 {
            self.addr_v6.to_string()
        } else {
            self.addr_v4.to_string()
        };
        Endpoint {
            addresses: vec![address],
            conditions: Some(EndpointConditions {
                ready: Some(self.conditions.ready),
                serving: Some(self.conditions.serving),
                terminating: Some(self.conditions.terminating),
            }),
            node_name: Some(self.node.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(NAMESPACE.into()),
                name: Some(self.pod.clone()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        }
    }
}

impl Cluster {
    /// Every pod of the cluster as a ready endpoint.
    pub fn ready_endpoints(&self) -> Vec<ClusterEndpoint> {
        self.pods()
            .iter()
            .map(|pod| ClusterEndpoint::new(pod, Conditions::READY))
            .collect()
    }
}

/// The three Services ([`SERVICES`]) with an IPv4 and an IPv6 EndpointSlice each, all
/// listing `endpoints`, as one multi-document YAML.
pub fn my_app_manifests(endpoints: &[ClusterEndpoint]) -> String {
    manifests(&SERVICES, endpoints)
}

/// `services` with an IPv4 and an IPv6 EndpointSlice each, all listing `endpoints`, as one
/// multi-document YAML.
pub fn manifests(services: &[ClusterService], endpoints: &[ClusterEndpoint]) -> String {
    let mut documents = Vec::new();
    for service in services {
        documents.push(serde_norway::to_string(&service.service()));
        for ipv6 in [false, true] {
            documents.push(serde_norway::to_string(&service.slice(endpoints, ipv6)));
        }
    }
    let documents: Vec<String> = documents
        .into_iter()
        .map(|document| document.expect("Kubernetes objects serialize to YAML"))
        .collect();
    format!(
        "# Written by the slicelb cluster lab: my-app as a cluster.\n{}",
        documents.join("---\n")
    )
}

/// Writes [`my_app_manifests`] to `dir`/[`MANIFEST_FILE`] ([`write_manifest`]).
pub fn write_my_app(dir: &Path, endpoints: &[ClusterEndpoint]) -> std::io::Result<()> {
    write_services(dir, &SERVICES, endpoints)
}

/// Writes [`manifests`] of `services` to `dir`/[`MANIFEST_FILE`] ([`write_manifest`]).
pub fn write_services(
    dir: &Path,
    services: &[ClusterService],
    endpoints: &[ClusterEndpoint],
) -> std::io::Result<()> {
    write_manifest(dir, MANIFEST_FILE, &manifests(services, endpoints))
}

/// Writes `yaml` to `dir`/`file`, by rename so that no agent reads half a file.
pub fn write_manifest(dir: &Path, file: &str, yaml: &str) -> std::io::Result<()> {
    // A dot file: the agents ignore it while it is being written.
    let temporary = dir.join(format!(".{file}.partial"));
    std::fs::write(&temporary, yaml)?;
    std::fs::rename(&temporary, dir.join(file))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, net::IpAddr};

    use slicelb::model::{self, FrontendKind, ModelConfig, NodeInfo, ServicePortName, Snapshot};

    use super::*;

    fn endpoint(
        pod: &str,
        node: &str,
        v4: [u8; 4],
        v6_group: u16,
        group_host: u16,
    ) -> ClusterEndpoint {
        ClusterEndpoint {
            pod: pod.into(),
            node: node.into(),
            addr_v4: v4.into(),
            addr_v6: Ipv6Addr::new(0x2001, 2, 0, v6_group, 0, 0, 0, group_host),
            conditions: Conditions::READY,
        }
    }

    fn my_app_endpoints() -> Vec<ClusterEndpoint> {
        vec![
            endpoint("my-app-1", "node-a", [198, 18, 20, 10], 0x20, 0x10),
            endpoint("my-app-2", "node-a", [198, 18, 20, 11], 0x20, 0x11),
            endpoint("my-app-3", "node-b", [198, 18, 21, 10], 0x21, 0x10),
        ]
    }

    /// What node `node`'s agent would build from the manifests, read by the agent's own
    /// manifest loader.
    fn as_node_sees_it(endpoints: &[ClusterEndpoint], node: &str) -> model::DesiredState {
        built_as_node_sees_it(endpoints, node).state
    }

    fn built_as_node_sees_it(endpoints: &[ClusterEndpoint], node: &str) -> model::Built {
        let dir = tempfile::tempdir().expect("temp dir");
        let services = [
            SERVICES.as_slice(),
            &[EXTERNAL_LOCAL_SERVICE, LOCAL_LOAD_BALANCER_SERVICE],
        ]
        .concat();
        write_services(dir.path(), &services, endpoints).expect("write manifests");
        write_manifest(dir.path(), "node.yaml", &node_manifest(node, true)).expect("write");
        let node = NodeInfo {
            name: Some(node.to_string()),
            // node-a's uplink address, as `--nodeport-addresses` would give it.
            nodeport_addresses: vec![Ipv4Addr::new(198, 18, 10, 10).into()],
            ..NodeInfo::default()
        };
        let (snapshot, warnings): (Snapshot, _) =
            slicelb::source::load_dir(dir.path(), node).expect("the agent reads the manifests");
        assert!(warnings.is_empty(), "manifest warnings: {warnings:?}");
        assert_eq!(
            snapshot.node_eligibility,
            model::NodeEligibility::ToBeDeleted,
            "the agent reads the Node manifest"
        );
        let built = model::build(&snapshot, &ModelConfig::default());
        assert!(
            built.warnings.is_empty(),
            "model warnings: {:?}",
            built.warnings
        );
        built
    }

    #[test]
    fn the_local_load_balancer_has_a_health_check_counting_each_nodes_ready_pods() {
        let mut endpoints = my_app_endpoints();
        endpoints[0].conditions = Conditions::TERMINATING;
        for (node, ready_here) in [("node-a", 1), ("node-b", 1)] {
            let built = built_as_node_sees_it(&endpoints, node);
            let checks: Vec<(String, u16, usize, usize)> = built
                .health_checks
                .iter()
                .map(|(name, check)| {
                    (
                        name.to_string(),
                        check.node_port,
                        check.local_ready_v4,
                        check.local_ready_v6,
                    )
                })
                .collect();
            assert_eq!(
                checks,
                [(
                    "default/my-app-lb".to_string(),
                    32082,
                    ready_here,
                    ready_here
                )],
                "{node}: only the LoadBalancer with the Local policy, its ready pods here"
            );
        }
    }

    /// The pods a ClusterIP frontend of `service` selects for new flows, by pod name.
    fn selected(
        state: &model::DesiredState,
        service: &ClusterService,
        ip: IpAddr,
        endpoints: &[ClusterEndpoint],
    ) -> BTreeSet<String> {
        selected_by(state, service, endpoints, &format!("ClusterIP {ip}"), |f| {
            f.kind == FrontendKind::ClusterIp && f.addr == ip && f.port == service.port
        })
    }

    /// The pods that the frontend of `service` matching `which` (described by `what`)
    /// selects for new flows, by pod name.
    fn selected_by(
        state: &model::DesiredState,
        service: &ClusterService,
        endpoints: &[ClusterEndpoint],
        what: &str,
        which: impl Fn(&model::DesiredFrontend) -> bool,
    ) -> BTreeSet<String> {
        let key = ServicePortName::new(NAMESPACE, service.name, service.port_name);
        let desired = state
            .services
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} is built"));
        let frontend = desired
            .frontends
            .iter()
            .find(|f| which(f))
            .unwrap_or_else(|| panic!("{} has a frontend {what}", service.name));
        frontend
            .selection
            .iter()
            .map(|backend| {
                assert_eq!(
                    backend.port(),
                    service.target_port,
                    "{} targets its pods' port",
                    service.name
                );
                endpoints
                    .iter()
                    .find(|e| {
                        IpAddr::from(e.addr_v4) == backend.ip()
                            || IpAddr::from(e.addr_v6) == backend.ip()
                    })
                    .unwrap_or_else(|| panic!("{backend} is no pod"))
                    .pod
                    .clone()
            })
            .collect()
    }

    #[test]
    fn every_service_selects_every_ready_pod_in_both_families() {
        let endpoints = my_app_endpoints();
        let state = as_node_sees_it(&endpoints, "node-a");
        let all: BTreeSet<String> = ["my-app-1", "my-app-2", "my-app-3"]
            .map(String::from)
            .into();
        for service in [MY_APP_SERVICE, DNS_SERVICE] {
            for ip in [
                IpAddr::from(service.cluster_ipv4),
                service.cluster_ipv6.into(),
            ] {
                assert_eq!(
                    selected(&state, &service, ip, &endpoints),
                    all,
                    "{} on {ip}",
                    service.name
                );
            }
        }
        let key = ServicePortName::new(NAMESPACE, MY_APP_SERVICE.name, MY_APP_SERVICE.port_name);
        let node_ports: Vec<SocketAddr> = state.services[&key]
            .frontends
            .iter()
            .filter(|f| f.kind == FrontendKind::NodePort)
            .map(|f| f.endpoint())
            .collect();
        assert_eq!(
            node_ports,
            ["198.18.10.10:30080".parse::<SocketAddr>().expect("literal")]
        );
    }

    #[test]
    fn the_local_service_selects_only_the_pods_of_the_clients_node() {
        let endpoints = my_app_endpoints();
        for (node, pods) in [
            ("node-a", vec!["my-app-1", "my-app-2"]),
            ("node-b", vec!["my-app-3"]),
        ] {
            let state = as_node_sees_it(&endpoints, node);
            let expected: BTreeSet<String> = pods.into_iter().map(String::from).collect();
            for ip in [
                IpAddr::from(LOCAL_SERVICE.cluster_ipv4),
                LOCAL_SERVICE.cluster_ipv6.into(),
            ] {
                assert_eq!(
                    selected(&state, &LOCAL_SERVICE, ip, &endpoints),
                    expected,
                    "{node} on {ip}"
                );
            }
        }
    }

    #[test]
    fn the_external_local_node_port_selects_only_the_nodes_pods_and_its_twin_every_pod() {
        let endpoints = my_app_endpoints();
        let all: BTreeSet<String> = ["my-app-1", "my-app-2", "my-app-3"]
            .map(String::from)
            .into();
        for (node, pods) in [
            ("node-a", vec!["my-app-1", "my-app-2"]),
            ("node-b", vec!["my-app-3"]),
        ] {
            let state = as_node_sees_it(&endpoints, node);
            let node_port = |short_circuit: bool| {
                move |f: &model::DesiredFrontend| {
                    f.kind == FrontendKind::NodePort
                        && Some(f.port) == EXTERNAL_LOCAL_SERVICE.node_port
                        && f.short_circuit == short_circuit
                }
            };
            let expected: BTreeSet<String> = pods.into_iter().map(String::from).collect();
            assert_eq!(
                selected_by(
                    &state,
                    &EXTERNAL_LOCAL_SERVICE,
                    &endpoints,
                    "NodePort",
                    node_port(false)
                ),
                expected,
                "{node}'s NodePort, for clients outside"
            );
            assert_eq!(
                selected_by(
                    &state,
                    &EXTERNAL_LOCAL_SERVICE,
                    &endpoints,
                    "NodePort (short-circuit twin)",
                    node_port(true)
                ),
                all,
                "{node}'s NodePort, for its pods and itself"
            );
        }
    }

    #[test]
    fn a_terminating_pod_takes_no_new_flows() {
        let mut endpoints = my_app_endpoints();
        endpoints[0].conditions = Conditions::TERMINATING;
        endpoints[1].conditions = Conditions::NOT_READY;
        let state = as_node_sees_it(&endpoints, "node-b");
        let only_three: BTreeSet<String> = ["my-app-3".to_string()].into();
        assert_eq!(
            selected(
                &state,
                &MY_APP_SERVICE,
                MY_APP_SERVICE.cluster_ipv4.into(),
                &endpoints
            ),
            only_three
        );
    }

    #[test]
    fn service_addresses_are_in_the_unrouted_service_range() {
        let v4: ipnet::Ipv4Net = "198.18.100.0/24".parse().expect("literal");
        let v6: ipnet::Ipv6Net = "2001:2:0:100::/64".parse().expect("literal");
        for service in SERVICES
            .iter()
            .chain([&EXTERNAL_LOCAL_SERVICE, &LOCAL_LOAD_BALANCER_SERVICE])
        {
            assert!(v4.contains(&service.cluster_ipv4), "{}", service.name);
            assert!(v6.contains(&service.cluster_ipv6), "{}", service.name);
        }
    }
}
