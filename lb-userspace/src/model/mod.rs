//! The model: Kubernetes semantics as pure code. A [`Snapshot`] of Services, EndpointSlices
//! and this node goes in; the desired datapath tables come out. No IO, no `kube`, no `aya`:
//! everything here is tested with ordinary `#[test]`s.
//!
//! The unit is kube-proxy's service port (`namespace/name:port`): each has its own service
//! id, frontends (ClusterIPs, NodePorts, load-balancer IPs, external IPs) and backends. Names,
//! never ids: the diff allocates ids.
//!
//! Endpoint conditions, as this model applies them:
//! - ready (`ready` unset counts as ready) -> [`BackendState::Active`], in the selection
//!   tables of its scopes;
//! - serving and terminating -> [`BackendState::Terminating`]; in a selection table only when
//!   a scope has no ready endpoint (KEP-1669), otherwise kept for existing flows only;
//! - terminating and not serving -> `Terminating`, existing flows only;
//! - not ready and not terminating (a failing readiness probe, a pod still starting) ->
//!   `Terminating`, existing flows only: a readiness blip does not cut established
//!   connections (kube-proxy's conntrack entries outlive its rules the same way), and the
//!   endpoint takes no new flow;
//! - `publishNotReadyAddresses: true` -> every endpoint counts as ready.
//!
//! Whether an endpoint still serves ([`DesiredBackend::serving`]: ready, or its `serving`
//! condition) decides nothing for TCP; a UDP service port's flows to an endpoint that stopped
//! serving are deleted (`dataplane::StaleFlows`, kube-proxy's conntrack cleanup).

mod build;
pub mod health_check;
pub mod incremental;
mod ip_sloppy;
#[cfg(test)]
pub(crate) mod random_world;
pub mod snapshot;
pub mod topology;
mod warning;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use lb_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP, frontend_flags, frontend_kind};

pub use build::build;
pub use health_check::{HealthCheck, HealthChecks, ServiceName};
pub use incremental::{IncrementalModel, ModelUpdate};
pub use snapshot::{NodeEligibility, NodeInfo, Snapshot};
pub use warning::{ObjectKind, ObjectRef, Warning, WarningReason};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours, as Kubernetes).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;

/// Label naming the proxy that should handle a service: see [`ModelConfig::serves`].
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on the slices of headless services; kube-proxy
/// ignores those slices (it does not look for the label on Services).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label linking an EndpointSlice to its service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// How the model reads the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelConfig {
    /// Our value of `service.kubernetes.io/service-proxy-name`: see [`Self::serves`].
    pub proxy_name: Option<String>,
}

impl ModelConfig {
    /// Whether a Service whose `service.kubernetes.io/service-proxy-name` label has this
    /// value (`None`: no such label) is ours. With a proxy name, only the Services labelled
    /// with exactly that name; without one, only the Services without the label, whatever
    /// its value (kube-proxy's `!service.kubernetes.io/service-proxy-name`). An unlabelled
    /// Service belongs to the default proxy, never to a named one.
    pub fn serves(&self, proxy_name_label: Option<&str>) -> bool {
        proxy_name_label == self.proxy_name.as_deref()
    }
}

/// kube-proxy's ServicePortName: `namespace/name:port`, where `port` is the port's name, or
/// its number when the port is unnamed. It names a service in SERVICE_NAMES, the CLI and
/// metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl ServicePortName {
    pub fn new(namespace: &str, name: &str, port: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port: port.to_owned(),
        }
    }

    /// Reads back what `Display` wrote (`namespace/name:port`, e.g. from SERVICE_NAMES);
    /// `None` for anything else. Kubernetes names hold neither `/` nor `:`.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, rest) = text.split_once('/')?;
        let (name, port) = rest.split_once(':')?;
        Some(Self::new(namespace, name, port))
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// Transport protocols a service port may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes spelling (`TCP`, `UDP`, `SCTP`); `None` when unknown.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number, as in the IP header and in `FrontendKey::proto`.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
            Self::Sctp => PROTO_SCTP,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            PROTO_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// How a frontend is reached; `lb_common::frontend_kind` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    pub fn code(self) -> u8 {
        match self {
            Self::ClusterIp => frontend_kind::CLUSTER_IP,
            Self::NodePort => frontend_kind::NODE_PORT,
            Self::LoadBalancer => frontend_kind::LOAD_BALANCER,
            Self::ExternalIp => frontend_kind::EXTERNAL_IP,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            frontend_kind::CLUSTER_IP => Some(Self::ClusterIp),
            frontend_kind::NODE_PORT => Some(Self::NodePort),
            frontend_kind::LOAD_BALANCER => Some(Self::LoadBalancer),
            frontend_kind::EXTERNAL_IP => Some(Self::ExternalIp),
            _ => None,
        }
    }

    /// NodePorts, load-balancer IPs and external IPs are reached from outside the cluster:
    /// the external traffic policy applies to them.
    pub fn is_external(self) -> bool {
        self != Self::ClusterIp
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalIp => "ExternalIP",
        })
    }
}

/// What a frontend does with a new flow when its selection is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WhenEmpty {
    /// No usable endpoint anywhere: reject (TCP RST / ICMP unreachable), as kube-proxy.
    Reject,
    /// A Local policy with endpoints only on other nodes: drop silently, as kube-proxy.
    Drop,
}

/// One (address, port) a service answers on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub addr: IpAddr,
    pub port: u16,
    pub kind: FrontendKind,
    /// The traffic policy of this frontend's scope (internal or external) is Local.
    pub policy_local: bool,
    /// Only `loadBalancerSourceRanges` sources may use it (load-balancer frontends).
    pub source_ranges: bool,
    /// Backends new flows may pick, sorted; empty when none is usable. Every address is
    /// also in the service's `backends`. Frontends of one scope and family share the list.
    pub selection: Arc<[SocketAddr]>,
    pub when_empty: WhenEmpty,
    /// The short-circuit twin of an external frontend with `externalTrafficPolicy: Local`:
    /// used by socket-level balancing (pods and the node itself) only, with the Cluster
    /// endpoints (kube-proxy: traffic from inside the cluster to an external address may
    /// go to any endpoint). Keyed with `lb_common::FAMILY_SHORT_CIRCUIT`.
    pub short_circuit: bool,
}

impl DesiredFrontend {
    /// `address:port`, bracketed for IPv6.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }

    /// Its `frontend_flags` bits, as FRONTENDS holds them (`service` is the service it belongs to).
    pub fn flag_bits(&self, service: &DesiredService) -> u16 {
        let mut flags = 0;
        if self.kind.is_external() {
            flags |= frontend_flags::EXTERNAL;
        }
        if service.affinity_timeout_secs.is_some() {
            flags |= frontend_flags::AFFINITY;
        }
        if self.policy_local {
            flags |= frontend_flags::TRAFFIC_POLICY_LOCAL;
        }
        if self.source_ranges {
            flags |= frontend_flags::SOURCE_RANGES;
        }
        if self.selection.is_empty() && self.when_empty == WhenEmpty::Drop {
            flags |= frontend_flags::DROP_WHEN_EMPTY;
        }
        flags
    }
}

/// `lb_common::backend_state` in model terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendState {
    /// Ready: takes new flows.
    Active,
    /// Terminating or not ready: keeps existing flows; new ones only through a selection
    /// table that has nothing better.
    Terminating,
}

impl BackendState {
    pub fn code(self) -> u8 {
        match self {
            Self::Active => lb_common::backend_state::ACTIVE,
            Self::Terminating => lb_common::backend_state::TERMINATING,
        }
    }
}

/// An endpoint the BACKENDS map must hold for a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DesiredBackend {
    pub state: BackendState,
    /// The endpoint runs on this node.
    pub node_local: bool,
    /// kube-proxy's `IsServing()`: the endpoint's `serving` condition (unset counts as
    /// serving), or ready (`publishNotReadyAddresses`: an endpoint new flows may pick is never
    /// one whose flows are cleaned). Not in the BACKENDS entry: it only decides which UDP
    /// flows go (`dataplane::StaleFlows`).
    pub serving: bool,
}

impl DesiredBackend {
    /// One endpoint as two services see it: Active if either counts it ready.
    pub fn combine(self, other: Self) -> Self {
        let state = if self.state == BackendState::Active || other.state == BackendState::Active {
            BackendState::Active
        } else {
            BackendState::Terminating
        };
        Self {
            state,
            node_local: self.node_local || other.node_local,
            serving: self.serving || other.serving,
        }
    }
}

/// Everything one service port needs in the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub protocol: Protocol,
    /// Sorted by (address, port).
    pub frontends: Vec<DesiredFrontend>,
    /// Every endpoint to keep: those in selections and those kept only for existing flows.
    pub backends: BTreeMap<SocketAddr, DesiredBackend>,
    /// `sessionAffinity: ClientIP` timeout; `None` without affinity.
    pub affinity_timeout_secs: Option<u32>,
    /// `loadBalancerSourceRanges`, as networks (host bits cleared).
    pub source_ranges: Vec<IpNet>,
}

/// The datapath configuration the snapshot asks for, by service port name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<ServicePortName, DesiredService>,
}

/// The model's answer: the state, the health checks this node serves, and what was skipped
/// on the way, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Built {
    pub state: DesiredState,
    /// Not datapath state: served by the agent's health module.
    pub health_checks: HealthChecks,
    pub warnings: Vec<Warning>,
}
