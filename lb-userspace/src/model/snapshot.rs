//! What every source produces: the world as the model needs it, at one instant.

use std::{fmt, net::IpAddr, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

/// The taint the cluster autoscaler puts on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

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
    /// Whether load balancers should keep sending this node traffic. Not an input of the
    /// model (a change rebuilds nothing): the agent's health endpoint reports it.
    pub node_eligibility: NodeEligibility,
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

/// kube-proxy's `nodeEligible`: a node on its way out tells load balancers (through
/// `/healthz`) to stop sending it new connections, before its pods and proxy go away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeEligibility {
    /// Nothing says otherwise (also when the source has no Node to read).
    #[default]
    Eligible,
    /// The Node object has a `deletionTimestamp`.
    BeingDeleted,
    /// The Node is tainted `ToBeDeletedByClusterAutoscaler`.
    ToBeDeleted,
    /// The source watches Nodes but has none of this node's name (kube-proxy counts a
    /// node it cannot see as not eligible).
    NotFound,
}

impl NodeEligibility {
    /// What `node` says about itself.
    pub fn of(node: &Node) -> Self {
        if node.metadata.deletion_timestamp.is_some() {
            return Self::BeingDeleted;
        }
        let tainted = node
            .spec
            .as_ref()
            .and_then(|spec| spec.taints.as_ref())
            .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        if tainted {
            Self::ToBeDeleted
        } else {
            Self::Eligible
        }
    }

    pub fn is_eligible(self) -> bool {
        self == Self::Eligible
    }
}

impl fmt::Display for NodeEligibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Eligible => "eligible",
            Self::BeingDeleted => "the Node is being deleted",
            Self::ToBeDeleted => "the Node is tainted ToBeDeletedByClusterAutoscaler",
            Self::NotFound => "no Node object of this node's name",
        })
    }
}
