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

/// Rust ports of kube-proxy's `TestCategorizeEndpoints` (`pkg/proxy/topology_test.go`), plus
/// cases for node hints (`PreferSameNode`). In kube-proxy, a service with only
/// `externalTrafficPolicy: Local` and no external frontend uses Cluster endpoints; here that
/// is the caller's `PolicyUse`.
#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoint shorthand: `10.1.2.3:80`, zone hints, node hints, ready, serving,
    /// terminating, local.
    fn ep(
        addr: &str,
        zones: &[&str],
        nodes: &[&str],
        ready: bool,
        serving: bool,
        terminating: bool,
        local: bool,
    ) -> Endpoint {
        Endpoint {
            addr: addr.parse().expect("test address"),
            ready,
            serving,
            terminating,
            local,
            zone_hints: zones.iter().map(|z| z.to_string()).collect(),
            node_hints: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn ready(addr: &str, zones: &[&str]) -> Endpoint {
        ep(addr, zones, &[], true, true, false, false)
    }

    fn local_ready(addr: &str, zones: &[&str]) -> Endpoint {
        ep(addr, zones, &[], true, true, false, true)
    }

    /// (internal policy Local, external policy Local, externally accessible)
    fn uses(itp_local: bool, etp_local: bool, external: bool) -> PolicyUse {
        PolicyUse {
            cluster: !itp_local || external,
            local: itp_local || (etp_local && external),
        }
    }

    struct Case {
        name: &'static str,
        zone: &'static str,
        node: &'static str,
        uses: PolicyUse,
        endpoints: Vec<Endpoint>,
        cluster: Option<Vec<&'static str>>,
        local: Option<Vec<&'static str>>,
        /// `None`: same as whichever of cluster/local is set.
        all: Option<Vec<&'static str>>,
        only_remote: bool,
    }

    fn case(
        name: &'static str,
        zone: &'static str,
        uses: PolicyUse,
        endpoints: Vec<Endpoint>,
    ) -> Case {
        Case {
            name,
            zone,
            node: "node-1",
            uses,
            endpoints,
            cluster: None,
            local: None,
            all: None,
            only_remote: false,
        }
    }

    impl Case {
        fn cluster(mut self, list: &[&'static str]) -> Self {
            self.cluster = Some(list.to_vec());
            self
        }
        fn local(mut self, list: &[&'static str]) -> Self {
            self.local = Some(list.to_vec());
            self
        }
        fn all(mut self, list: &[&'static str]) -> Self {
            self.all = Some(list.to_vec());
            self
        }
        fn only_remote(mut self) -> Self {
            self.only_remote = true;
            self
        }
    }

    fn sorted(list: &[SocketAddr]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(ToString::to_string).collect();
        v.sort();
        v
    }

    fn owned(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn categorize_endpoints_like_kube_proxy() {
        let za = "zone-a";
        let cluster_only = uses(false, false, false);
        let cases = vec![
            case(
                "all endpoints hinted, zone has endpoints: topology used",
                za,
                cluster_only,
                vec![
                    ready("10.1.2.3:80", &["zone-a"]),
                    ready("10.1.2.4:80", &["zone-b"]),
                    ready("10.1.2.5:80", &["zone-c"]),
                    ready("10.1.2.6:80", &["zone-a"]),
                ],
            )
            .cluster(&["10.1.2.3:80", "10.1.2.6:80"]),
            case(
                "externalTrafficPolicy: Local, topology ignored for Local endpoints",
                za,
                uses(false, true, true),
                vec![
                    local_ready("10.1.2.3:80", &["zone-a"]),
                    local_ready("10.1.2.4:80", &["zone-b"]),
                    ready("10.1.2.5:80", &["zone-c"]),
                    ready("10.1.2.6:80", &["zone-a"]),
                ],
            )
            .cluster(&["10.1.2.3:80", "10.1.2.6:80"])
            .local(&["10.1.2.3:80", "10.1.2.4:80"])
            .all(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
            case(
                "internalTrafficPolicy: Local, topology ignored for Local endpoints",
                za,
                uses(true, false, true),
                vec![
                    local_ready("10.1.2.3:80", &["zone-a"]),
                    local_ready("10.1.2.4:80", &["zone-b"]),
                    ready("10.1.2.5:80", &["zone-c"]),
                    ready("10.1.2.6:80", &["zone-a"]),
                ],
            )
            .cluster(&["10.1.2.3:80", "10.1.2.6:80"])
            .local(&["10.1.2.3:80", "10.1.2.4:80"])
            .all(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
            case(
                "empty node labels",
                "",
                cluster_only,
                vec![ready("10.1.2.3:80", &["zone-a"])],
            )
            .cluster(&["10.1.2.3:80"]),
            case(
                "node in different zone, no endpoint filtering",
                "zone-b",
                cluster_only,
                vec![ready("10.1.2.3:80", &["zone-a"])],
            )
            .cluster(&["10.1.2.3:80"]),
            case(
                "unready endpoint",
                za,
                cluster_only,
                vec![
                    ready("10.1.2.3:80", &["zone-a"]),
                    ready("10.1.2.4:80", &["zone-b"]),
                    ready("10.1.2.5:80", &["zone-c"]),
                    ep("10.1.2.6:80", &["zone-a"], &[], false, false, false, false),
                ],
            )
            .cluster(&["10.1.2.3:80"]),
            case(
                "only unready endpoints in same zone (should not filter)",
                za,
                cluster_only,
                vec![
                    ep("10.1.2.3:80", &["zone-a"], &[], false, false, false, false),
                    ready("10.1.2.4:80", &["zone-b"]),
                    ready("10.1.2.5:80", &["zone-c"]),
                    ep("10.1.2.6:80", &["zone-a"], &[], false, false, false, false),
                ],
            )
            .cluster(&["10.1.2.4:80", "10.1.2.5:80"]),
            case(
                "missing hints, no filtering applied",
                za,
                cluster_only,
                vec![
                    ready("10.1.2.3:80", &["zone-a"]),
                    ready("10.1.2.4:80", &["zone-b"]),
                    ready("10.1.2.5:80", &[]),
                    ready("10.1.2.6:80", &["zone-a"]),
                ],
            )
            .cluster(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
            case(
                "multiple hints per endpoint, filtering includes any endpoint with zone included",
                "zone-c",
                cluster_only,
                vec![
                    ready("10.1.2.3:80", &["zone-a", "zone-b", "zone-c"]),
                    ready("10.1.2.4:80", &["zone-b", "zone-c"]),
                    ready("10.1.2.5:80", &["zone-b", "zone-d"]),
                    ready("10.1.2.6:80", &["zone-c"]),
                ],
            )
            .cluster(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
            case(
                "conflicting topology and localness require merging allEndpoints",
                za,
                uses(false, true, true),
                vec![
                    local_ready("10.0.0.0:80", &["zone-a"]),
                    local_ready("10.0.0.1:80", &["zone-b"]),
                    ready("10.0.0.2:80", &["zone-a"]),
                    ready("10.0.0.3:80", &["zone-b"]),
                ],
            )
            .cluster(&["10.0.0.0:80", "10.0.0.2:80"])
            .local(&["10.0.0.0:80", "10.0.0.1:80"])
            .all(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
            case(
                "internalTrafficPolicy: Local, with empty endpoints",
                "",
                uses(true, false, false),
                vec![],
            ),
            case(
                "internalTrafficPolicy: Local, but all endpoints are remote",
                "",
                uses(true, false, false),
                vec![ready("10.0.0.0:80", &[]), ready("10.0.0.1:80", &[])],
            )
            .local(&[])
            .only_remote(),
            case(
                "internalTrafficPolicy: Local, all endpoints are local",
                "",
                uses(true, false, false),
                vec![
                    local_ready("10.0.0.0:80", &[]),
                    local_ready("10.0.0.1:80", &[]),
                ],
            )
            .local(&["10.0.0.0:80", "10.0.0.1:80"]),
            case(
                "internalTrafficPolicy: Local, some endpoints are local",
                "",
                uses(true, false, false),
                vec![local_ready("10.0.0.0:80", &[]), ready("10.0.0.1:80", &[])],
            )
            .local(&["10.0.0.0:80"]),
            case(
                "Cluster traffic policy, endpoints not Ready",
                "",
                cluster_only,
                vec![
                    ep("10.0.0.0:80", &[], &[], false, false, false, false),
                    ep("10.0.0.1:80", &[], &[], false, false, false, false),
                ],
            )
            .cluster(&[]),
            case(
                "Cluster traffic policy, some endpoints are Ready",
                "",
                cluster_only,
                vec![
                    ep("10.0.0.0:80", &[], &[], false, false, false, false),
                    ready("10.0.0.1:80", &[]),
                ],
            )
            .cluster(&["10.0.0.1:80"]),
            case(
                "Cluster traffic policy, all endpoints are terminating",
                "",
                cluster_only,
                vec![
                    ep("10.0.0.0:80", &[], &[], false, true, true, true),
                    ep("10.0.0.1:80", &[], &[], false, true, true, false),
                ],
            )
            .cluster(&["10.0.0.0:80", "10.0.0.1:80"]),
            case(
                "iTP: Local, eTP: Cluster, some endpoints local",
                "",
                uses(true, false, true),
                vec![local_ready("10.0.0.0:80", &[]), ready("10.0.0.1:80", &[])],
            )
            .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
            .local(&["10.0.0.0:80"])
            .all(&["10.0.0.0:80", "10.0.0.1:80"]),
            case(
                "iTP: Cluster, eTP: Local, some endpoints local",
                "",
                uses(false, true, true),
                vec![local_ready("10.0.0.0:80", &[]), ready("10.0.0.1:80", &[])],
            )
            .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
            .local(&["10.0.0.0:80"])
            .all(&["10.0.0.0:80", "10.0.0.1:80"]),
            case(
                "iTP: Local, eTP: Local, some endpoints local",
                "",
                uses(true, true, true),
                vec![local_ready("10.0.0.0:80", &[]), ready("10.0.0.1:80", &[])],
            )
            .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
            .local(&["10.0.0.0:80"])
            .all(&["10.0.0.0:80", "10.0.0.1:80"]),
            case(
                "iTP: Local, eTP: Local, all endpoints remote",
                "",
                uses(true, true, true),
                vec![ready("10.0.0.0:80", &[]), ready("10.0.0.1:80", &[])],
            )
            .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
            .local(&[])
            .all(&["10.0.0.0:80", "10.0.0.1:80"]),
            case(
                "iTP: Local, eTP: Local, all endpoints remote and terminating",
                "",
                uses(true, true, true),
                vec![
                    ep("10.0.0.0:80", &[], &[], false, true, true, false),
                    ep("10.0.0.1:80", &[], &[], false, true, true, false),
                ],
            )
            .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
            .local(&[])
            .all(&["10.0.0.0:80", "10.0.0.1:80"])
            .only_remote(),
            case(
                "iTP: Cluster, eTP: Local, with terminating endpoints",
                "",
                uses(false, true, true),
                vec![
                    ready("10.0.0.0:80", &[]),
                    ep("10.0.0.1:80", &[], &[], false, false, false, true),
                    ep("10.0.0.2:80", &[], &[], false, true, true, true),
                    ep("10.0.0.3:80", &[], &[], false, true, true, false),
                ],
            )
            .cluster(&["10.0.0.0:80"])
            .local(&["10.0.0.2:80"])
            .all(&["10.0.0.0:80", "10.0.0.2:80"]),
            case(
                "externalTrafficPolicy ignored if not externally accessible",
                "",
                uses(false, true, false),
                vec![ready("10.0.0.0:80", &[]), local_ready("10.0.0.1:80", &[])],
            )
            .cluster(&["10.0.0.0:80", "10.0.0.1:80"])
            .all(&["10.0.0.0:80", "10.0.0.1:80"]),
            case(
                "no cluster endpoints for iTP:Local internal-only service",
                "",
                uses(true, false, false),
                vec![ready("10.0.0.0:80", &[]), local_ready("10.0.0.1:80", &[])],
            )
            .local(&["10.0.0.1:80"])
            .all(&["10.0.0.1:80"]),
            // Node hints (PreferSameNode), from topologyModeFromHints.
            case(
                "all endpoints have node hints and one is for this node: same node",
                za,
                cluster_only,
                vec![
                    ep(
                        "10.0.0.1:80",
                        &["zone-a"],
                        &["node-1"],
                        true,
                        true,
                        false,
                        true,
                    ),
                    ep(
                        "10.0.0.2:80",
                        &["zone-a"],
                        &["node-2"],
                        true,
                        true,
                        false,
                        false,
                    ),
                ],
            )
            .cluster(&["10.0.0.1:80"]),
            case(
                "node hints, none for this node: zone hints decide",
                za,
                cluster_only,
                vec![
                    ep(
                        "10.0.0.1:80",
                        &["zone-a"],
                        &["node-2"],
                        true,
                        true,
                        false,
                        false,
                    ),
                    ep(
                        "10.0.0.2:80",
                        &["zone-b"],
                        &["node-3"],
                        true,
                        true,
                        false,
                        false,
                    ),
                ],
            )
            .cluster(&["10.0.0.1:80"]),
            case(
                "one ready endpoint without node hint: zone hints decide",
                za,
                cluster_only,
                vec![
                    ep(
                        "10.0.0.1:80",
                        &["zone-a"],
                        &["node-1"],
                        true,
                        true,
                        false,
                        true,
                    ),
                    ep("10.0.0.2:80", &["zone-a"], &[], true, true, false, false),
                    ready("10.0.0.3:80", &["zone-b"]),
                ],
            )
            .cluster(&["10.0.0.1:80", "10.0.0.2:80"]),
            case(
                "unready endpoint without hints does not spoil node hints",
                za,
                cluster_only,
                vec![
                    ep("10.0.0.1:80", &[], &["node-1"], true, true, false, true),
                    ep("10.0.0.2:80", &[], &[], false, false, false, false),
                ],
            )
            .cluster(&["10.0.0.1:80"]),
        ];

        for case in cases {
            let got = categorize_endpoints(&case.endpoints, case.uses, case.node, case.zone);
            let name = case.name;
            assert_eq!(
                got.cluster.as_deref().map(sorted),
                case.cluster.as_deref().map(owned),
                "{name}: cluster endpoints"
            );
            assert_eq!(
                got.local.as_deref().map(sorted),
                case.local.as_deref().map(owned),
                "{name}: local endpoints"
            );
            let expected_all = match (&case.cluster, &case.local, &case.all) {
                (_, _, Some(all)) => owned(all),
                (Some(cluster), None, None) => owned(cluster),
                (None, Some(local), None) => owned(local),
                _ => Vec::new(),
            };
            assert_eq!(
                sorted(&got.all_reachable),
                expected_all,
                "{name}: all reachable endpoints"
            );
            assert_eq!(
                got.has_any,
                !expected_all.is_empty() || case.only_remote,
                "{name}: has any endpoints"
            );
        }
    }
}
