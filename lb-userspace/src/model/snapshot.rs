//! What every source produces: the world as the model needs it, at one instant.

use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

/// Services and EndpointSlices (as Kubernetes or a manifest directory gives them) and the
/// node slicelb runs on. Both sources produce this type, so everything after is shared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub node: NodeInfo,
}

/// The node this agent runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `--node-name` (or the Node object's name): decides which endpoints are local.
    pub name: Option<String>,
    /// The node's `topology.kubernetes.io/zone` label, for PreferClose / PreferSameZone.
    pub zone: Option<String>,
    /// Addresses NodePorts answer on (local addresses, filtered by `--nodeport-addresses`).
    pub nodeport_addresses: Vec<IpAddr>,
}
