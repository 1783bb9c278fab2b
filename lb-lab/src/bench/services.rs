//! The service list every benchmark programs: one definition, rendered as a Kubernetes
//! snapshot for slicelb and as kube-proxy's iptables and nftables rule sets.
//!
//! Addresses stay in the benchmarking ranges: service addresses in 198.19.0.0/16 and
//! 2001:2:0:ff00::/64, synthetic endpoints in 198.18.128.0/17 and 2001:2:0:fe00::/64 (they
//! only ever appear in maps and test-run packets), lab endpoints on the lab's backend hosts.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use slicelb::model::{NodeInfo, Snapshot};

pub const NAMESPACE: &str = "bench";
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
pub const NODE_NAME: &str = "bench-node";
/// The node the endpoints of external services are on ([`ServiceSet::external_on_remote_node`]):
/// not [`NODE_NAME`], so that slicelb masquerades their external traffic.
pub const REMOTE_NODE_NAME: &str = "bench-remote-node";

/// A protocol a bench service listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn kubernetes(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }

    /// The lowercase name iptables and nftables use.
    pub fn netfilter(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One endpoint: IPv4 and IPv6 address of the same pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BenchEndpoint {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchService {
    /// `svc-<index>`.
    pub name: String,
    /// Its number in the set, from 0.
    pub index: usize,
    pub vip_v4: Ipv4Addr,
    pub vip_v6: Ipv6Addr,
    /// Ports and protocols: every protocol listed, on `port`, targeting `target_port`.
    pub port: u16,
    /// The endpoints' port: [`TARGET_PORT`] on the lab's hosts; synthetic services move
    /// to the next port each time the address pool wraps, so endpoints stay distinct.
    pub target_port: u16,
    pub protocols: Vec<Proto>,
    pub endpoints: Vec<BenchEndpoint>,
}

impl BenchService {
    /// kube-proxy's service port name: `namespace/name:port-name`.
    pub fn port_name(&self, proto: Proto) -> String {
        format!("{NAMESPACE}/{}:{}", self.name, proto.netfilter())
    }
}

/// The services of one benchmark case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSet {
    pub services: Vec<BenchService>,
    pub dual_stack: bool,
    /// Reached from outside at external IPs ([`ServiceSet::external_on_remote_node`]).
    pub external: bool,
}

/// Service addresses per /16: 198.19.0.1 .. 198.19.255.254; more services use more ports.
const VIPS_PER_PORT: usize = 65_534;

/// The service address and port of service number `index` (0-based).
pub fn service_address(index: usize) -> (Ipv4Addr, Ipv6Addr, u16) {
    let host = (index % VIPS_PER_PORT + 1) as u32;
    let port = SERVICE_PORT + (index / VIPS_PER_PORT) as u16;
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + host);
    let v6 = Ipv6Addr::from(
        u128::from(Ipv6Addr::new(0x2001, 2, 0, 0xff00, 0, 0, 0, 0)) + index as u128 + 1,
    );
    (v4, v6, port)
}

/// ClusterIPs of external services: the lab never uses the synthetic endpoints' pool.
pub const EXTERNAL_CLUSTER_POOL: usize = SYNTHETIC_POOL;

/// The ClusterIP of external service number `index` (below [`EXTERNAL_CLUSTER_POOL`]): its
/// service address is its external IP, and the two must differ.
pub fn external_cluster_ip(index: usize) -> Ipv4Addr {
    synthetic_endpoint(index).ipv4
}

/// Synthetic endpoint address number `index` of a pool of 32 000 addresses in
/// 198.18.128.0/17 (the pool wraps).
pub fn synthetic_endpoint(index: usize) -> BenchEndpoint {
    let host = (index % SYNTHETIC_POOL + 1) as u32;
    BenchEndpoint {
        ipv4: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + host),
        ipv6: Ipv6Addr::from(
            u128::from(Ipv6Addr::new(0x2001, 2, 0, 0xfe00, 0, 0, 0, 0)) + u128::from(host),
        ),
    }
}

/// Most services [`ServiceSet::on_hosts`] makes: their target ports stay below 65536.
pub const MAX_ON_HOSTS: usize = 50_000;

/// Ports the endpoints of `count` services on the lab's hosts listen on.
pub fn host_ports(count: usize) -> std::ops::Range<u16> {
    TARGET_PORT..TARGET_PORT + count.min(MAX_ON_HOSTS) as u16
}

/// Distinct synthetic endpoint addresses; beyond them, endpoints differ by port.
pub const SYNTHETIC_POOL: usize = 32_000;

impl ServiceSet {
    /// `count` services of `endpoints_each` synthetic endpoints (for test-run and control
    /// plane cases: nothing is sent to them).
    pub fn synthetic(
        count: usize,
        endpoints_each: usize,
        protocols: &[Proto],
        dual_stack: bool,
    ) -> Self {
        // A pool that is a multiple of `endpoints_each`, so that no service straddles a
        // wrap and every (address, port) endpoint is distinct.
        let pool = (SYNTHETIC_POOL - SYNTHETIC_POOL % endpoints_each.max(1)).max(1);
        let services = (0..count)
            .map(|index| {
                let first = index * endpoints_each;
                let endpoints = (first..first + endpoints_each)
                    .map(|e| synthetic_endpoint(e % pool))
                    .collect();
                let target_port = TARGET_PORT + (first / pool) as u16;
                Self::service(index, protocols, endpoints, target_port)
            })
            .collect();
        Self {
            services,
            dual_stack,
            external: false,
        }
    }

    /// `count` services (at most [`MAX_ON_HOSTS`]), each with every one of `endpoints` (the
    /// lab's backend hosts) on its own target port, `TARGET_PORT + index`: as in a real
    /// cluster, no two services share an endpoint, so none shares a selection table.
    pub fn on_hosts(count: usize, endpoints: &[BenchEndpoint], protocols: &[Proto]) -> Self {
        let services = (0..count.min(MAX_ON_HOSTS))
            .map(|index| {
                Self::service(
                    index,
                    protocols,
                    endpoints.to_vec(),
                    TARGET_PORT + index as u16,
                )
            })
            .collect();
        Self {
            services,
            dual_stack: false,
            external: false,
        }
    }

    /// The same services reached from outside the cluster, the masquerade path: each
    /// service's address ([`BenchService::vip_v4`]) becomes its external IP (its ClusterIP
    /// moves to [`external_cluster_ip`]), with the default `externalTrafficPolicy: Cluster`,
    /// and its endpoints are on another node ([`REMOTE_NODE_NAME`]). At most
    /// [`EXTERNAL_CLUSTER_POOL`] services.
    pub fn external_on_remote_node(mut self) -> Self {
        self.services.truncate(EXTERNAL_CLUSTER_POOL);
        self.external = true;
        self
    }

    fn service(
        index: usize,
        protocols: &[Proto],
        endpoints: Vec<BenchEndpoint>,
        target_port: u16,
    ) -> BenchService {
        let (vip_v4, vip_v6, port) = service_address(index);
        BenchService {
            name: format!("svc-{index}"),
            index,
            vip_v4,
            vip_v6,
            port,
            target_port,
            protocols: protocols.to_vec(),
            endpoints,
        }
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The same services as Kubernetes objects, as every slicelb source produces them.
    pub fn snapshot(&self) -> Snapshot {
        let mut services = Vec::with_capacity(self.services.len());
        let mut endpoint_slices = Vec::with_capacity(self.services.len() * 2);
        for service in &self.services {
            services.push(Arc::new(self.kubernetes_service(service)));
            let node = if self.external {
                REMOTE_NODE_NAME
            } else {
                NODE_NAME
            };
            endpoint_slices.push(Arc::new(endpoint_slice(service, false, node)));
            if self.dual_stack {
                endpoint_slices.push(Arc::new(endpoint_slice(service, true, node)));
            }
        }
        Snapshot {
            services,
            endpoint_slices,
            node: NodeInfo {
                name: Some(NODE_NAME.to_string()),
                zone: None,
                nodeport_addresses: Vec::new(),
            },
            ..Snapshot::default()
        }
    }

    fn kubernetes_service(&self, service: &BenchService) -> Service {
        let (cluster_ip, external_ips) = if self.external {
            (
                external_cluster_ip(service.index),
                Some(vec![service.vip_v4.to_string()]),
            )
        } else {
            (service.vip_v4, None)
        };
        let mut cluster_ips = vec![cluster_ip.to_string()];
        let mut families = vec!["IPv4".to_string()];
        if self.dual_stack {
            cluster_ips.push(service.vip_v6.to_string());
            families.push("IPv6".to_string());
        }
        Service {
            metadata: ObjectMeta {
                name: Some(service.name.clone()),
                namespace: Some(NAMESPACE.to_string()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_string()),
                cluster_ip: Some(cluster_ips[0].clone()),
                cluster_ips: Some(cluster_ips),
                ip_families: Some(families),
                external_ips,
                ip_family_policy: Some(
                    if self.dual_stack {
                        "RequireDualStack"
                    } else {
                        "SingleStack"
                    }
                    .to_string(),
                ),
                ports: Some(
                    service
                        .protocols
                        .iter()
                        .map(|proto| ServicePort {
                            name: Some(proto.netfilter().to_string()),
                            port: i32::from(service.port),
                            protocol: Some(proto.kubernetes().to_string()),
                            target_port: Some(IntOrString::Int(i32::from(service.target_port))),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }
}

fn endpoint_slice(service: &BenchService, ipv6: bool, node: &str) -> EndpointSlice {
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", service.name, family.to_lowercase())),
            namespace: Some(NAMESPACE.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                service.name.clone(),
            )])),
            ..Default::default()
        },
        address_type: family.to_string(),
        endpoints: service
            .endpoints
            .iter()
            .map(|endpoint| Endpoint {
                addresses: vec![if ipv6 {
                    endpoint.ipv6.to_string()
                } else {
                    endpoint.ipv4.to_string()
                }],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(node.to_string()),
                ..Default::default()
            })
            .collect(),
        ports: Some(
            service
                .protocols
                .iter()
                .map(|proto| EndpointPort {
                    name: Some(proto.netfilter().to_string()),
                    port: Some(i32::from(service.target_port)),
                    protocol: Some(proto.kubernetes().to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn in_bench_range_v4(addr: Ipv4Addr) -> bool {
        let [a, b, ..] = addr.octets();
        a == 198 && (b == 18 || b == 19)
    }

    fn in_bench_range_v6(addr: Ipv6Addr) -> bool {
        let s = addr.segments();
        s[0] == 0x2001 && s[1] == 2 && s[2] == 0
    }

    #[test]
    fn service_addresses_are_unique_and_in_the_benchmarking_ranges() {
        let mut seen = HashSet::new();
        for index in (0..150_000).step_by(7) {
            let (v4, v6, port) = service_address(index);
            assert!(in_bench_range_v4(v4), "service {index}: {v4}");
            assert!(in_bench_range_v6(v6), "service {index}: {v6}");
            assert!(
                seen.insert((v4, port)),
                "service {index} reuses {v4}:{port}"
            );
            assert!(
                v4 != Ipv4Addr::new(198, 19, 0, 0) && v4 != Ipv4Addr::new(198, 19, 255, 255),
                "service {index}: network or broadcast address {v4}"
            );
        }
        for index in [0, 1, 31_999, 32_000, 100_000] {
            let endpoint = synthetic_endpoint(index);
            assert!(in_bench_range_v4(endpoint.ipv4), "endpoint {index}");
            assert!(in_bench_range_v6(endpoint.ipv6), "endpoint {index}");
        }
    }

    #[test]
    fn snapshot_has_a_service_and_a_slice_per_family() {
        let set = ServiceSet::synthetic(5, 3, &[Proto::Tcp, Proto::Udp], true);
        let snapshot = set.snapshot();
        assert_eq!(snapshot.services.len(), 5);
        assert_eq!(snapshot.endpoint_slices.len(), 10);
        let slice = &snapshot.endpoint_slices[1];
        assert_eq!(slice.address_type, "IPv6");
        assert_eq!(slice.endpoints.len(), 3);
        let spec = snapshot.services[4].spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ips.as_ref().expect("ips").len(), 2);
        assert_eq!(spec.ports.as_ref().expect("ports").len(), 2);
        assert_eq!(set.services[4].endpoints.len(), 3);
    }

    #[test]
    fn synthetic_endpoints_are_distinct_beyond_the_address_pool() {
        for each in [3, 10, 100] {
            let set = ServiceSet::synthetic(100_000 / each * 4, each, &[Proto::Tcp], false);
            let mut seen = HashSet::new();
            for service in &set.services {
                for endpoint in &service.endpoints {
                    assert!(
                        seen.insert((endpoint.ipv4, service.target_port)),
                        "{} x {each}: {}:{} used twice",
                        service.name,
                        endpoint.ipv4,
                        service.target_port
                    );
                }
            }
        }
    }

    #[test]
    fn external_services_are_reached_at_their_address_with_endpoints_on_another_node() {
        let hosts = [synthetic_endpoint(0), synthetic_endpoint(1)];
        let set = ServiceSet::on_hosts(3, &hosts, &[Proto::Tcp]).external_on_remote_node();
        let snapshot = set.snapshot();
        for (index, service) in snapshot.services.iter().enumerate() {
            let spec = service.spec.as_ref().expect("spec");
            assert_eq!(
                spec.external_ips.as_deref(),
                Some(&[set.services[index].vip_v4.to_string()][..]),
                "the service address is the external IP"
            );
            assert_eq!(
                spec.cluster_ip.as_deref(),
                Some(external_cluster_ip(index).to_string().as_str())
            );
            assert_ne!(external_cluster_ip(index), set.services[index].vip_v4);
            assert_eq!(spec.external_traffic_policy, None, "Cluster, the default");
        }
        for slice in &snapshot.endpoint_slices {
            for endpoint in &slice.endpoints {
                assert_eq!(endpoint.node_name.as_deref(), Some(REMOTE_NODE_NAME));
            }
        }
        assert_ne!(
            REMOTE_NODE_NAME, NODE_NAME,
            "the bench's node is not theirs"
        );
        let local = ServiceSet::on_hosts(1, &hosts, &[Proto::Tcp]).snapshot();
        let spec = local.services[0].spec.as_ref().expect("spec");
        assert_eq!(spec.external_ips, None);
        assert_eq!(
            local.endpoint_slices[0].endpoints[0].node_name.as_deref(),
            Some(NODE_NAME)
        );
    }

    #[test]
    fn lab_services_use_the_given_hosts() {
        let hosts = [synthetic_endpoint(0), synthetic_endpoint(1)];
        let set = ServiceSet::on_hosts(3, &hosts, &[Proto::Udp]);
        assert!(set.services.iter().all(|s| s.endpoints == hosts));
        let ports: Vec<u16> = set.services.iter().map(|s| s.target_port).collect();
        assert_eq!(ports, [8080, 8081, 8082], "one target port per service");
        assert_eq!(host_ports(3), 8080..8083);
        assert_eq!(set.snapshot().endpoint_slices.len(), 3, "single stack");
    }
}
