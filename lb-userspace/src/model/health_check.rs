//! What a Service's `spec.healthCheckNodePort` tells load balancers about this node
//! (kube-proxy's service health server): for each LoadBalancer Service with
//! `externalTrafficPolicy: Local`, how many of its endpoints on this node are ready. A cloud
//! load balancer sends such a Service's traffic only to nodes that answer 200, so that the
//! client's address can be kept without a hop to another node.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use k8s_openapi::api::core::v1::Service;

/// A Service by namespace and name (kube-proxy's `NamespacedName`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The Service's name, its namespace defaulted as kubectl does.
    pub fn of(service: &Service) -> Self {
        Self::new(
            service.metadata.namespace.as_deref().unwrap_or("default"),
            service.metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One Service's health check on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `spec.healthCheckNodePort`: served on every NodePort address of the node.
    pub node_port: u16,
    /// This node's ready endpoints of the Service's IPv4 side, counted by address (an
    /// endpoint behind two ports is one; terminating and not-ready ones do not count).
    pub local_ready_v4: usize,
    /// The same for its IPv6 side.
    pub local_ready_v6: usize,
}

impl HealthCheck {
    /// The count a probe arriving on `node_addr` gets: that family's. kube-proxy runs one
    /// proxier per family, each counting its own family's endpoints.
    pub fn local_ready_for(&self, node_addr: IpAddr) -> usize {
        if node_addr.is_ipv4() {
            self.local_ready_v4
        } else {
            self.local_ready_v6
        }
    }
}

/// Every health check this node serves, by Service.
pub type HealthChecks = BTreeMap<ServiceName, HealthCheck>;
