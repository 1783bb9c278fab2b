//! What every source produces: the world as the model needs it, at one instant.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

/// Services and EndpointSlices (as Kubernetes or a manifest directory gives them) and the
/// node slicelb runs on. Both sources produce this type, so everything after is shared.
///
/// Objects are shared (`Arc`), as the Kubernetes reflector stores hand them out: a snapshot
/// costs no copy of the objects, and an object that did not change since the last snapshot
/// is recognised by its pointer, so only what changed is rebuilt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
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
