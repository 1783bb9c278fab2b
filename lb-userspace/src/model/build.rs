//! Snapshot -> desired state: kube-proxy's service and endpoint-slice semantics.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, btree_map::Entry},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::EndpointSlice,
};
use rustc_hash::{FxBuildHasher, FxHashMap};

use super::{
    BackendState, Built, DEFAULT_AFFINITY_TIMEOUT_SECS, DesiredBackend, DesiredFrontend,
    DesiredService, DesiredState, FrontendKind, HealthCheck, HealthChecks, LABEL_HEADLESS,
    LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, ModelConfig, NodeInfo, ObjectKind, ObjectRef,
    Protocol, ServiceName, ServicePortName, Snapshot, Warning, WarningReason, WhenEmpty, ip_sloppy,
    topology::{Endpoint, PolicyUse, categorize_endpoints},
};

/// Largest `sessionAffinityConfig.clientIP.timeoutSeconds` Kubernetes accepts (one day).
const MAX_AFFINITY_TIMEOUT_SECS: i64 = 86_400;

/// Builds the desired datapath state from a snapshot. Never fails: what cannot be used is
/// skipped and reported in [`Built::warnings`].
pub fn build(snapshot: &Snapshot, config: &ModelConfig) -> Built {
    let mut warnings = Vec::new();
    let slices = slices_by_service(&snapshot.endpoint_slices);
    let mut state = DesiredState::default();
    let mut health_checks = HealthChecks::new();

    let mut services: Vec<&Service> = snapshot.services.iter().map(|s| &**s).collect();
    services.sort_by(|a, b| {
        let key = |s: &Service| (namespace_of(s), s.metadata.name.clone().unwrap_or_default());
        key(a).cmp(&key(b))
    });
    for service in services {
        let object = service_ref(service);
        let service_slices: Vec<&EndpointSlice> = slices
            .get(&(object.namespace.as_str(), object.name.as_str()))
            .into_iter()
            .flatten()
            .map(|slice| &***slice)
            .collect();
        let built = build_service(service, &service_slices, &snapshot.node, config);
        warnings.extend(built.warnings);
        state.services.extend(built.ports);
        if let Some(check) = built.health_check {
            health_checks.insert(ServiceName::of(service), check);
        }
    }
    resolve_frontend_conflicts(&mut state, &mut warnings);
    Built {
        state,
        health_checks,
        warnings,
    }
}

/// One Service as the model sees it.
pub(super) struct BuiltService {
    /// Its ports as the datapath wants them.
    pub ports: Vec<(ServicePortName, DesiredService)>,
    /// What its `healthCheckNodePort` serves on this node, when it has one.
    pub health_check: Option<HealthCheck>,
    pub warnings: Vec<Warning>,
}

/// One Service's ports as the datapath wants them and its health check, given the
/// service's slices (sorted by name) and this node, and the warnings about them. Frontends
/// another service also claims are still in: [`resolve_frontend_conflicts`] settles those
/// across services.
pub(super) fn build_service(
    service: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
    config: &ModelConfig,
) -> BuiltService {
    let mut warnings = Vec::new();
    let mut ctx = Ctx {
        node,
        object: service_ref(service),
        warnings: &mut warnings,
    };
    let (ports, health_check) = ctx.service(service, slices, config);
    BuiltService {
        ports,
        health_check,
        warnings,
    }
}

fn namespace_of(service: &Service) -> String {
    service
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn service_ref(service: &Service) -> ObjectRef {
    ObjectRef {
        kind: ObjectKind::Service,
        namespace: namespace_of(service),
        name: service.metadata.name.clone().unwrap_or_default(),
    }
}

fn slice_ref(slice: &EndpointSlice) -> ObjectRef {
    ObjectRef {
        kind: ObjectKind::EndpointSlice,
        namespace: slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name: slice.metadata.name.clone().unwrap_or_default(),
    }
}

fn label<'a>(labels: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

/// The (namespace, service name) a slice serves; `None` for a slice no service uses
/// (no service label, or headless).
pub(super) fn slice_owner(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let service = label(&slice.metadata.labels, LABEL_SERVICE_NAME)?;
    if service.is_empty() || label(&slice.metadata.labels, LABEL_HEADLESS).is_some() {
        return None;
    }
    Some((
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        service,
    ))
}

/// Slices grouped by (namespace, service name), each group sorted by slice name so that
/// duplicate endpoints resolve the same way every time. Hashed with FxHash: every service
/// of a full pass looks its group up.
pub(super) fn slices_by_service(
    slices: &[Arc<EndpointSlice>],
) -> FxHashMap<(&str, &str), Vec<&Arc<EndpointSlice>>> {
    let mut grouped: FxHashMap<(&str, &str), Vec<&Arc<EndpointSlice>>> =
        FxHashMap::with_capacity_and_hasher(slices.len(), FxBuildHasher);
    for slice in slices {
        if let Some(owner) = slice_owner(slice) {
            grouped.entry(owner).or_default().push(slice);
        }
    }
    for group in grouped.values_mut() {
        group.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    grouped
}

/// One service port, validated.
struct PortSpec {
    name: ServicePortName,
    /// `ports[].name`, empty when unnamed: what slice ports are matched by.
    raw_name: String,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
}

/// Per-service working context: where warnings go and which object they name.
struct Ctx<'a> {
    node: &'a NodeInfo,
    object: ObjectRef,
    warnings: &'a mut Vec<Warning>,
}

impl Ctx<'_> {
    fn warn(&mut self, reason: WarningReason) {
        self.warnings.push(Warning {
            object: self.object.clone(),
            reason,
        });
    }

    fn warn_about(&mut self, object: ObjectRef, reason: WarningReason) {
        self.warnings.push(Warning { object, reason });
    }

    /// The service's ports and its health check.
    fn service(
        &mut self,
        service: &Service,
        slices: &[&EndpointSlice],
        config: &ModelConfig,
    ) -> (Vec<(ServicePortName, DesiredService)>, Option<HealthCheck>) {
        let nothing = (Vec::new(), None);
        if !config.serves(label(&service.metadata.labels, LABEL_SERVICE_PROXY_NAME)) {
            return nothing;
        }
        let Some(spec) = &service.spec else {
            return nothing;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            return nothing;
        }
        let cluster_ips = self.cluster_ips(spec);
        if cluster_ips.is_empty() {
            return nothing;
        }

        let external_ips = self.ips("spec.externalIPs", spec.external_ips.iter().flatten());
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref());
        let lb_ips = self.ips(
            "status.loadBalancer.ingress[].ip",
            ingress
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                // `ipMode: Proxy` load balancers deliver to the nodes themselves.
                .filter(|ing| ing.ip_mode.as_deref().is_none_or(|mode| mode == "VIP"))
                .filter_map(|ing| ing.ip.as_ref())
                .filter(|ip| !ip.is_empty()),
        );
        let listed_ranges = spec
            .load_balancer_source_ranges
            .as_deref()
            .unwrap_or_default();
        // Any entry restricts, also one that cannot be read: it admits nobody, so a service
        // whose every range is unreadable is closed rather than open to all.
        let restricted = !listed_ranges.is_empty();
        let source_ranges = self.source_ranges(listed_ranges);
        let affinity_timeout_secs = self.affinity(service);
        let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let node = self.node;
        let node_name = node.name.as_deref().unwrap_or("");
        let zone = node.zone.as_deref().unwrap_or("");

        let health_check_port = self.health_check_port(spec, external_local);
        // kube-proxy's LocalReadyEndpoints: this node's ready endpoints by address, over
        // every port, in the families the service has.
        let mut local_ready: BTreeSet<IpAddr> = BTreeSet::new();
        let mut result = Vec::new();
        for port in self.ports(service) {
            let endpoints = self.endpoints(&port, slices, publish_not_ready);
            local_ready.extend(
                endpoints
                    .iter()
                    .filter(|ep| ep.local && ep.ready)
                    .map(|ep| ep.addr.ip())
                    .filter(|ip| cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4())),
            );
            let mut desired = DesiredService {
                protocol: port.protocol,
                frontends: Vec::new(),
                backends: BTreeMap::new(),
                affinity_timeout_secs,
                source_ranges: source_ranges.clone(),
            };
            for &cluster_ip in &cluster_ips {
                let v4 = cluster_ip.is_ipv4();
                let same_family = |ip: &&IpAddr| ip.is_ipv4() == v4;
                let family_endpoints: Vec<Endpoint> = endpoints
                    .iter()
                    .filter(|ep| ep.addr.is_ipv4() == v4)
                    .cloned()
                    .collect();
                let node_ports: Vec<IpAddr> = match port.node_port {
                    Some(_) => node
                        .nodeport_addresses
                        .iter()
                        .filter(same_family)
                        .copied()
                        .collect(),
                    None => Vec::new(),
                };
                let family_lb: Vec<IpAddr> = lb_ips.iter().filter(same_family).copied().collect();
                let family_external: Vec<IpAddr> =
                    external_ips.iter().filter(same_family).copied().collect();
                let externally_accessible = port.node_port.is_some()
                    || !family_lb.is_empty()
                    || !family_external.is_empty();
                let uses = PolicyUse {
                    cluster: !internal_local || externally_accessible,
                    local: internal_local || (external_local && externally_accessible),
                };
                let lists = categorize_endpoints(&family_endpoints, uses, node_name, zone);
                let scope = |local: bool| {
                    let list = if local { &lists.local } else { &lists.cluster };
                    let mut list = list.clone().unwrap_or_default();
                    list.sort();
                    let when_empty = if local && lists.has_any {
                        WhenEmpty::Drop
                    } else {
                        WhenEmpty::Reject
                    };
                    (Arc::<[SocketAddr]>::from(list), when_empty)
                };

                let (selection, when_empty) = scope(internal_local);
                let frontend = |addr, port, kind: FrontendKind| DesiredFrontend {
                    addr,
                    port,
                    kind,
                    policy_local: internal_local,
                    source_ranges: false,
                    selection: selection.clone(),
                    when_empty,
                    short_circuit: false,
                };
                desired
                    .frontends
                    .push(frontend(cluster_ip, port.port, FrontendKind::ClusterIp));
                // Pods and the node reach an external Local frontend through its twin,
                // which holds the Cluster endpoints.
                let (cluster_selection, _) = scope(false);

                let (selection, when_empty) = scope(external_local);
                // Source ranges guard every load-balancer frontend of the service, in both
                // families: a dual-stack service listing only IPv4 ranges admits no IPv6
                // client (kube-proxy would leave the IPv6 side open; we fail closed).
                let external = |addr, port, kind: FrontendKind| DesiredFrontend {
                    addr,
                    port,
                    kind,
                    policy_local: external_local,
                    source_ranges: kind == FrontendKind::LoadBalancer && restricted,
                    selection: selection.clone(),
                    when_empty,
                    short_circuit: false,
                };
                let mut externals = Vec::new();
                if let Some(node_port) = port.node_port {
                    for &addr in &node_ports {
                        externals.push(external(addr, node_port, FrontendKind::NodePort));
                    }
                }
                for &addr in &family_lb {
                    externals.push(external(addr, port.port, FrontendKind::LoadBalancer));
                }
                for &addr in &family_external {
                    externals.push(external(addr, port.port, FrontendKind::ExternalIp));
                }
                if external_local {
                    let twins: Vec<DesiredFrontend> = externals
                        .iter()
                        .map(|frontend| DesiredFrontend {
                            policy_local: false,
                            selection: cluster_selection.clone(),
                            when_empty: WhenEmpty::Reject,
                            short_circuit: true,
                            ..frontend.clone()
                        })
                        .collect();
                    externals.extend(twins);
                }
                desired.frontends.extend(externals);

                for ep in &family_endpoints {
                    let state = if ep.ready {
                        BackendState::Active
                    } else {
                        BackendState::Terminating
                    };
                    desired.backends.insert(
                        ep.addr,
                        DesiredBackend {
                            state,
                            node_local: ep.local,
                            serving: ep.ready || ep.serving,
                        },
                    );
                }
            }
            desired
                .frontends
                .sort_by_key(|f| (f.addr, f.port, f.short_circuit, f.kind));
            desired
                .frontends
                .dedup_by_key(|f| (f.addr, f.port, f.short_circuit));
            result.push((port.name, desired));
        }
        // A service without a usable port has nothing for a load balancer to check.
        let health_check = health_check_port
            .filter(|_| !result.is_empty())
            .map(|node_port| HealthCheck {
                node_port,
                local_ready_v4: local_ready.iter().filter(|ip| ip.is_ipv4()).count(),
                local_ready_v6: local_ready.iter().filter(|ip| ip.is_ipv6()).count(),
            });
        (result, health_check)
    }

    /// `spec.healthCheckNodePort` of a LoadBalancer service with `externalTrafficPolicy:
    /// Local` (the only kind the API server gives one, and kube-proxy serves); `None` for
    /// other services, or with a warning when it is missing or invalid.
    fn health_check_port(
        &mut self,
        spec: &k8s_openapi::api::core::v1::ServiceSpec,
        external_local: bool,
    ) -> Option<u16> {
        if spec.type_.as_deref() != Some("LoadBalancer") || !external_local {
            return None;
        }
        match spec.health_check_node_port {
            None | Some(0) => {
                self.warn(WarningReason::NoHealthCheckNodePort);
                None
            }
            Some(value) => valid_port(value).or_else(|| {
                self.warn(WarningReason::InvalidPort {
                    field: "spec.healthCheckNodePort",
                    value: value.into(),
                });
                None
            }),
        }
    }

    /// `spec.clusterIPs` (dual-stack), else `spec.clusterIP`; at most one per family.
    fn cluster_ips(&mut self, spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<IpAddr> {
        let listed: Vec<&String> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().collect(),
            _ => spec.cluster_ip.iter().collect(),
        };
        if listed
            .iter()
            .all(|ip| ip.is_empty() || ip.as_str() == "None")
        {
            return Vec::new(); // headless
        }
        let mut result: Vec<IpAddr> = Vec::new();
        for ip in self.ips("spec.clusterIPs", listed.into_iter()) {
            if result.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
                let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                self.warn(WarningReason::ExtraClusterIp {
                    family,
                    value: ip.to_string(),
                });
            } else {
                result.push(ip);
            }
        }
        if result.is_empty() {
            self.warn(WarningReason::NoValidClusterIp);
        }
        result
    }

    fn ips<'s>(
        &mut self,
        field: &'static str,
        texts: impl Iterator<Item = &'s String>,
    ) -> Vec<IpAddr> {
        let mut result = Vec::new();
        for text in texts {
            match ip_sloppy::parse_ip(text.trim()) {
                Some(ip) if !result.contains(&ip) => result.push(ip),
                Some(_) => {}
                None => self.warn(WarningReason::InvalidIp {
                    field,
                    value: text.clone(),
                }),
            }
        }
        result
    }

    fn source_ranges(&mut self, texts: &[String]) -> Vec<IpNet> {
        let mut result = Vec::new();
        for text in texts {
            // Validation lets whitespace through; kube-proxy trims it too.
            match ip_sloppy::parse_cidr(text.trim()) {
                Some(net) if !result.contains(&net.trunc()) => result.push(net.trunc()),
                Some(_) => {}
                None => self.warn(WarningReason::InvalidSourceRange {
                    value: text.clone(),
                }),
            }
        }
        result.sort();
        result
    }

    fn affinity(&mut self, service: &Service) -> Option<u32> {
        let spec = service.spec.as_ref()?;
        match spec.session_affinity.as_deref() {
            None | Some("None") => None,
            Some("ClientIP") => {
                let configured = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                Some(match configured {
                    None => DEFAULT_AFFINITY_TIMEOUT_SECS,
                    Some(secs) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&i64::from(secs)) => {
                        secs as u32
                    }
                    Some(secs) => {
                        self.warn(WarningReason::InvalidAffinityTimeout {
                            value: secs.into(),
                            default: DEFAULT_AFFINITY_TIMEOUT_SECS,
                        });
                        DEFAULT_AFFINITY_TIMEOUT_SECS
                    }
                })
            }
            Some(other) => {
                self.warn(WarningReason::UnknownAffinity {
                    value: other.to_owned(),
                });
                None
            }
        }
    }

    fn ports(&mut self, service: &Service) -> Vec<PortSpec> {
        let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
        let mut result: Vec<PortSpec> = Vec::new();
        for port in ports.into_iter().flatten() {
            let Some(spec) = self.port(port) else {
                continue;
            };
            if result.iter().any(|p| p.raw_name == spec.raw_name) {
                self.warn(WarningReason::DuplicatePort {
                    port: spec.name.port,
                });
                continue;
            }
            result.push(spec);
        }
        result
    }

    fn port(&mut self, port: &ServicePort) -> Option<PortSpec> {
        let protocol_text = port.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(protocol_text) else {
            self.warn(WarningReason::UnknownProtocol {
                value: protocol_text.to_owned(),
            });
            return None;
        };
        let Some(number) = valid_port(port.port) else {
            self.warn(WarningReason::InvalidPort {
                field: "ports[].port",
                value: port.port.into(),
            });
            return None;
        };
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(value) => match valid_port(value) {
                Some(p) => Some(p),
                None => {
                    let value = value.into();
                    self.warn(WarningReason::InvalidPort {
                        field: "ports[].nodePort",
                        value,
                    });
                    return None;
                }
            },
        };
        let raw_name = port.name.clone().unwrap_or_default();
        let shown = if raw_name.is_empty() {
            number.to_string()
        } else {
            raw_name.clone()
        };
        Some(PortSpec {
            name: ServicePortName::new(&self.object.namespace, &self.object.name, &shown),
            raw_name,
            protocol,
            port: number,
            node_port,
        })
    }

    /// The endpoints of one service port, merged over all the service's slices and
    /// deduplicated by address, sorted by address.
    fn endpoints(
        &mut self,
        port: &PortSpec,
        slices: &[&EndpointSlice],
        publish_not_ready: bool,
    ) -> Vec<Endpoint> {
        let node_name = self.node.name.as_deref().filter(|n| !n.is_empty());
        let mut merged: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
        for slice in slices {
            let want_v4 = match slice.address_type.as_str() {
                "IPv4" => true,
                "IPv6" => false,
                "FQDN" => continue, // kube-proxy does not proxy to names
                other => {
                    let reason = WarningReason::UnknownAddressType {
                        value: other.to_owned(),
                    };
                    self.warn_about(slice_ref(slice), reason);
                    continue;
                }
            };
            for slice_port in slice.ports.iter().flatten() {
                // Service ports and slice ports meet by name and protocol (the EndpointSlice
                // controller has already resolved `targetPort`, named or numbered, into
                // `port`). A slice port without a name matches an unnamed service port:
                // kube-proxy skips nil names, but hand-written manifests often omit them.
                if slice_port.name.as_deref().unwrap_or("") != port.raw_name
                    || Protocol::parse(slice_port.protocol.as_deref().unwrap_or("TCP"))
                        != Some(port.protocol)
                {
                    continue;
                }
                let Some(number) = slice_port.port.and_then(valid_port) else {
                    let value = slice_port.port.unwrap_or(0).into();
                    let reason = WarningReason::InvalidPort {
                        field: "ports[].port",
                        value,
                    };
                    self.warn_about(slice_ref(slice), reason);
                    continue;
                };
                for endpoint in &slice.endpoints {
                    let Some(text) = endpoint.addresses.first() else {
                        self.warn_about(slice_ref(slice), WarningReason::EndpointWithoutAddress);
                        continue;
                    };
                    let ip = match ip_sloppy::parse_ip(text) {
                        Some(ip) if ip.is_ipv4() == want_v4 => ip,
                        _ => {
                            let field = "endpoints[].addresses";
                            let reason = WarningReason::InvalidIp {
                                field,
                                value: text.clone(),
                            };
                            self.warn_about(slice_ref(slice), reason);
                            continue;
                        }
                    };
                    let conditions = endpoint.conditions.clone().unwrap_or_default();
                    let terminating = conditions.terminating == Some(true);
                    let hints = endpoint.hints.as_ref();
                    let candidate = Endpoint {
                        addr: SocketAddr::new(ip, number),
                        ready: publish_not_ready || conditions.ready.unwrap_or(true),
                        serving: conditions.serving.unwrap_or(true),
                        terminating,
                        local: node_name.is_some() && endpoint.node_name.as_deref() == node_name,
                        zone_hints: hints
                            .and_then(|h| h.for_zones.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|z| z.name.clone())
                            .collect(),
                        node_hints: hints
                            .and_then(|h| h.for_nodes.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|n| n.name.clone())
                            .collect(),
                    };
                    // An endpoint seen twice (moving between slices, or an IP reused by a new
                    // pod while the old one terminates): the non-terminating one wins.
                    match merged.entry(candidate.addr) {
                        Entry::Vacant(slot) => {
                            slot.insert(candidate);
                        }
                        Entry::Occupied(mut slot) if !terminating => {
                            slot.insert(candidate);
                        }
                        Entry::Occupied(_) => {}
                    }
                }
            }
        }
        merged.into_values().collect()
    }
}

fn valid_port(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|&p| p != 0)
}

/// Two services cannot share an (address, port, protocol) in the datapath. Kubernetes keeps
/// ClusterIPs and NodePorts unique, but external IPs and load-balancer IPs may collide: the
/// first service by name keeps the frontend, the others lose it with a warning.
fn resolve_frontend_conflicts(state: &mut DesiredState, warnings: &mut Vec<Warning>) {
    let mut owners: HashMap<FrontendClaim, ServicePortName> = HashMap::new();
    for (name, service) in &mut state.services {
        let protocol = service.protocol;
        service.frontends.retain(|frontend| {
            let key = (frontend.addr, frontend.port, protocol);
            if frontend.short_circuit {
                // Sorted after its frontend: it goes with it.
                return owners.get(&key) == Some(name);
            }
            match owners.get(&key) {
                None => {
                    owners.insert(key, name.clone());
                    true
                }
                Some(owner) => {
                    warnings.push(conflict_warning(name, frontend, protocol, owner));
                    false
                }
            }
        });
    }
}

/// What two service ports cannot both have: one frontend address, port and protocol. The
/// first claimant in name order keeps it.
pub(super) type FrontendClaim = (IpAddr, u16, Protocol);

/// `name` lost `frontend` to `owner`.
pub(super) fn conflict_warning(
    name: &ServicePortName,
    frontend: &DesiredFrontend,
    protocol: Protocol,
    owner: &ServicePortName,
) -> Warning {
    Warning {
        object: ObjectRef {
            kind: ObjectKind::Service,
            namespace: name.namespace.clone(),
            name: name.name.clone(),
        },
        reason: WarningReason::FrontendConflict {
            frontend: format!("{}/{protocol}", frontend.endpoint()),
            owner: owner.to_string(),
        },
    }
}
