//! Which endpoints a service port uses from this node: kube-proxy's `CategorizeEndpoints`
//! (`pkg/proxy/topology.go`) in Rust. Traffic policies pick between the Cluster and Local
//! lists; topology hints narrow the Cluster list; terminating endpoints are the fallback when
//! nothing is ready (KEP-1669).
//!
//! As in current kube-proxy, the hints decide, not `spec.trafficDistribution`: the
//! EndpointSlice controller turns `PreferClose` / `PreferSameZone` into zone hints and
//! `PreferSameNode` into node hints, and only hints that cover every ready endpoint are used.

use std::{collections::BTreeSet, net::SocketAddr};

/// One endpoint of one service port, as the slices describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Runs on this node (`nodeName` equals ours).
    pub local: bool,
    /// `hints.forZones[].name`; empty when the endpoint has no zone hint.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`; empty when the endpoint has no node hint.
    pub node_hints: Vec<String>,
}

impl Endpoint {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// Which endpoint lists a service port needs (kube-proxy's `UsesClusterEndpoints` /
/// `UsesLocalEndpoints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyUse {
    /// Some scope has a Cluster policy (or the port is externally reachable at all).
    pub cluster: bool,
    /// Some scope has a Local policy.
    pub local: bool,
}

/// The result of [`categorize_endpoints`]. `None` means "this service port never uses this
/// kind of list", `Some(empty)` "uses it but it is empty".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    pub cluster: Option<Vec<SocketAddr>>,
    pub local: Option<Vec<SocketAddr>>,
    /// Union of the two lists: every endpoint this node may send new flows to.
    pub all_reachable: Vec<SocketAddr>,
    /// Some endpoint anywhere in the cluster is usable (even if none is reachable from
    /// here): a Local frontend without local endpoints drops instead of rejecting.
    pub has_any: bool,
}

/// Topology narrowing chosen from the hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    /// Every ready endpoint.
    All,
    /// Endpoints hinted for this zone.
    SameZone,
    /// Endpoints hinted for this node.
    SameNode,
}

/// Splits `endpoints` into the lists the traffic policies use, as kube-proxy does.
/// `node_name` and `zone` are empty when unknown.
pub fn categorize_endpoints(
    endpoints: &[Endpoint],
    uses: PolicyUse,
    node_name: &str,
    zone: &str,
) -> Categorized {
    let mut result = Categorized::default();
    if endpoints.is_empty() {
        return result;
    }

    let mut mode = TopologyMode::All;
    if uses.cluster {
        mode = topology_mode_from_hints(endpoints, node_name, zone);
        let mut cluster = pick(endpoints, |ep| {
            ep.ready && available_for_topology(ep, mode, node_name, zone)
        });
        // The mode is only chosen when some ready endpoint matches it, so an empty list here
        // means nothing is ready anywhere: fall back to serving terminating endpoints.
        if cluster.is_empty() {
            cluster = pick(endpoints, Endpoint::serving_terminating);
        }
        result.has_any = !cluster.is_empty();
        result.cluster = Some(cluster);
    }

    if !uses.local {
        result.all_reachable = result.cluster.clone().unwrap_or_default();
        return result;
    }

    let mut has_local_ready = false;
    let mut has_local_serving_terminating = false;
    for ep in endpoints {
        if ep.ready {
            result.has_any = true;
            has_local_ready |= ep.local;
        } else if ep.serving_terminating() {
            result.has_any = true;
            has_local_serving_terminating |= ep.local;
        }
    }
    let mut local_uses_terminating = false;
    let local = if has_local_ready {
        pick(endpoints, |ep| ep.local && ep.ready)
    } else if has_local_serving_terminating {
        local_uses_terminating = true;
        pick(endpoints, |ep| ep.local && ep.serving_terminating())
    } else {
        Vec::new()
    };

    result.all_reachable = match &result.cluster {
        None => local.clone(),
        // Cluster holds every ready endpoint and Local only ready ones: a superset already.
        Some(cluster) if mode == TopologyMode::All && !local_uses_terminating => cluster.clone(),
        Some(cluster) => {
            let union: BTreeSet<SocketAddr> = cluster.iter().chain(&local).copied().collect();
            union.into_iter().collect()
        }
    };
    result.local = Some(local);
    result
}

/// Same-node hints win when every ready endpoint has one and some name this node; then
/// same-zone hints under the same rule; otherwise no narrowing.
fn topology_mode_from_hints(endpoints: &[Endpoint], node_name: &str, zone: &str) -> TopologyMode {
    let mut has_ready = false;
    let mut all_have_node_hints = true;
    let mut has_for_node = false;
    let mut all_have_zone_hints = true;
    let mut has_for_zone = false;
    for ep in endpoints.iter().filter(|ep| ep.ready) {
        has_ready = true;
        if ep.node_hints.is_empty() {
            all_have_node_hints = false;
        } else if ep.node_hints.iter().any(|n| n == node_name) {
            has_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_have_zone_hints = false;
        } else if ep.zone_hints.iter().any(|z| z == zone) {
            has_for_zone = true;
        }
    }
    if !has_ready {
        TopologyMode::All
    } else if all_have_node_hints && has_for_node {
        TopologyMode::SameNode
    } else if all_have_zone_hints && has_for_zone {
        TopologyMode::SameZone
    } else {
        TopologyMode::All
    }
}

fn available_for_topology(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::All => true,
        TopologyMode::SameNode => ep.node_hints.iter().any(|n| n == node_name),
        TopologyMode::SameZone => ep.zone_hints.iter().any(|z| z == zone),
    }
}

fn pick(endpoints: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<SocketAddr> {
    endpoints
        .iter()
        .filter(|ep| keep(ep))
        .map(|ep| ep.addr)
        .collect()
}
