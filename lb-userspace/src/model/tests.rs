//! Table tests for the model's Kubernetes semantics. Objects are written as JSON, the way a
//! manifest would hold them.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::*;

fn service(value: Value) -> Service {
    serde_json::from_value(value).expect("test Service")
}

fn slice(value: Value) -> EndpointSlice {
    serde_json::from_value(value).expect("test EndpointSlice")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn sa(text: &str) -> SocketAddr {
    text.parse().expect("test socket address")
}

/// A ClusterIP service `default/web` with one port `http` 80 -> 8080, with `spec` merged in.
fn web(spec: Value) -> Service {
    let mut base = json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "198.18.100.1", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    });
    merge(&mut base["spec"], spec);
    service(base)
}

fn merge(base: &mut Value, patch: Value) {
    if let (Some(base), Value::Object(patch)) = (base.as_object_mut(), patch) {
        for (k, v) in patch {
            base.insert(k, v);
        }
    }
}

/// An endpoint JSON: address, node, conditions (ready, serving, terminating).
fn ep(address: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({
        "addresses": [address],
        "nodeName": node,
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
    })
}

fn ready(address: &str, node: &str) -> Value {
    ep(address, node, true, true, false)
}

/// Slice `name` of `default/web` with port `http` 8080.
fn web_slice(name: &str, family: &str, endpoints: Vec<Value>) -> EndpointSlice {
    slice(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

fn node() -> NodeInfo {
    NodeInfo {
        name: Some("node-a".into()),
        zone: Some("zone-a".into()),
        nodeport_addresses: vec![ip("198.18.0.10"), ip("2001:2::10")],
    }
}

fn run(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Built {
    build(
        &Snapshot {
            services: services.into_iter().map(Arc::new).collect(),
            endpoint_slices: slices.into_iter().map(Arc::new).collect(),
            node: node(),
            ..Snapshot::default()
        },
        &ModelConfig::default(),
    )
}

fn web_http() -> ServicePortName {
    ServicePortName::new("default", "web", "http")
}

fn only(built: &Built) -> &DesiredService {
    assert_eq!(
        built.state.services.len(),
        1,
        "expected one service port: {:?}",
        built.state.services.keys()
    );
    built.state.services.values().next().unwrap()
}

fn frontend<'a>(
    service: &'a DesiredService,
    kind: FrontendKind,
    addr: &str,
) -> &'a DesiredFrontend {
    service
        .frontends
        .iter()
        .find(|f| f.kind == kind && f.addr == ip(addr))
        .unwrap_or_else(|| panic!("no {kind} frontend on {addr}: {:?}", service.frontends))
}

fn selection(frontend: &DesiredFrontend) -> Vec<String> {
    frontend.selection.iter().map(ToString::to_string).collect()
}

#[test]
fn cluster_ip_service_gets_a_frontend_per_port_with_ready_backends() {
    let built = run(
        vec![web(json!({}))],
        vec![web_slice(
            "web-1",
            "IPv4",
            vec![ready("10.0.0.1", "node-b"), ready("10.0.0.2", "node-a")],
        )],
    );
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    let (name, svc) = built.state.services.iter().next().unwrap();
    assert_eq!(name.to_string(), "default/web:http");
    assert_eq!(
        svc.frontends.len(),
        1,
        "ClusterIP only: {:?}",
        svc.frontends
    );
    let cluster = frontend(svc, FrontendKind::ClusterIp, "198.18.100.1");
    assert_eq!(cluster.port, 80);
    assert_eq!(selection(cluster), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!(
        svc.backends[&sa("10.0.0.2:8080")],
        DesiredBackend {
            state: BackendState::Active,
            node_local: true,
            serving: true,
        }
    );
    assert!(!svc.backends[&sa("10.0.0.1:8080")].node_local);
}

#[test]
fn frontends_of_every_kind_and_family() {
    let built = run(
        vec![service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "198.18.100.1",
                "clusterIPs": ["198.18.100.1", "2001:2::100:1"],
                "externalIPs": ["198.18.200.1", "2001:2::200:1"],
                "ports": [
                    {"name": "http", "port": 80, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "sig", "port": 5060, "protocol": "SCTP"},
                ],
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "198.18.150.1"}, {"ip": "2001:2::150:1", "ipMode": "VIP"},
                {"ip": "198.18.150.2", "ipMode": "Proxy"}, {"hostname": "lb.example"},
            ]}},
        }))],
        vec![],
    );
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    let http = &built.state.services[&web_http()];
    let seen: Vec<(FrontendKind, String)> = http
        .frontends
        .iter()
        .map(|f| (f.kind, f.endpoint().to_string()))
        .collect();
    let expected = [
        (FrontendKind::NodePort, "198.18.0.10:30080"),
        (FrontendKind::ClusterIp, "198.18.100.1:80"),
        (FrontendKind::LoadBalancer, "198.18.150.1:80"),
        (FrontendKind::ExternalIp, "198.18.200.1:80"),
        (FrontendKind::NodePort, "[2001:2::10]:30080"),
        (FrontendKind::ClusterIp, "[2001:2::100:1]:80"),
        (FrontendKind::LoadBalancer, "[2001:2::150:1]:80"),
        (FrontendKind::ExternalIp, "[2001:2::200:1]:80"),
    ];
    let expected: Vec<(FrontendKind, String)> =
        expected.iter().map(|(k, a)| (*k, a.to_string())).collect();
    assert_eq!(
        seen, expected,
        "ipMode Proxy and hostname-only ingress are not frontends"
    );
    assert_eq!(
        built.state.services[&ServicePortName::new("default", "web", "dns")].protocol,
        Protocol::Udp
    );
    let sig = &built.state.services[&ServicePortName::new("default", "web", "sig")];
    assert_eq!(sig.protocol, Protocol::Sctp);
    assert_eq!(sig.frontends.len(), 6, "no NodePort for a port without one");
}

#[test]
fn single_stack_service_ignores_the_other_familys_addresses() {
    // kube-proxy: an IPv4 service gets no IPv6 NodePort, external IP or LB IP.
    let built = run(
        vec![web(
            json!({"type": "NodePort", "externalIPs": ["2001:2::200:1"], "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        )],
        vec![],
    );
    let svc = only(&built);
    assert!(
        svc.frontends.iter().all(|f| f.addr.is_ipv4()),
        "{:?}",
        svc.frontends
    );
    assert_eq!(svc.frontends.len(), 2);
}

#[test]
fn headless_external_name_and_other_proxies_get_nothing() {
    let cases = [
        (
            "headless",
            json!({"metadata": {"name": "h", "namespace": "default"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        ),
        (
            "no cluster IP",
            json!({"metadata": {"name": "n", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}),
        ),
        (
            "external name",
            json!({"metadata": {"name": "e", "namespace": "default"}, "spec": {"type": "ExternalName", "externalName": "x.example", "clusterIP": "198.18.100.9", "ports": [{"port": 80}]}}),
        ),
        (
            "other proxy",
            json!({"metadata": {"name": "o", "namespace": "default", "labels": {"service.kubernetes.io/service-proxy-name": "other"}}, "spec": {"clusterIP": "198.18.100.8", "ports": [{"port": 80}]}}),
        ),
    ];
    for (case, svc) in cases {
        let built = run(vec![service(svc)], vec![]);
        assert!(
            built.state.services.is_empty(),
            "{case}: {:?}",
            built.state.services
        );
        assert!(built.warnings.is_empty(), "{case}: {:?}", built.warnings);
    }
}

#[test]
fn services_labelled_with_our_proxy_name_are_ours() {
    let labelled = service(json!({
        "metadata": {"name": "o", "namespace": "default", "labels": {"service.kubernetes.io/service-proxy-name": "slicelb"}},
        "spec": {"clusterIP": "198.18.100.8", "ports": [{"port": 80}]},
    }));
    let snapshot = Snapshot {
        services: vec![Arc::new(labelled)],
        endpoint_slices: vec![],
        node: node(),
        ..Snapshot::default()
    };
    let ours = build(
        &snapshot,
        &ModelConfig {
            proxy_name: Some("slicelb".into()),
        },
    );
    assert_eq!(
        ours.state
            .services
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["default/o:80"],
        "unnamed port shows its number"
    );
    let not_ours = build(&snapshot, &ModelConfig::default());
    assert!(not_ours.state.services.is_empty());
}

/// The convention every proxy follows for `service.kubernetes.io/service-proxy-name`: with a
/// name, only the Services labelled with it; without one, only the Services without the label
/// (kube-proxy's `!service.kubernetes.io/service-proxy-name`). Issue #14: a named proxy also
/// served unlabelled Services. A slice is used for the Service it names whatever its own
/// labels; the slices of a Service not served are not used.
#[test]
fn the_proxy_name_label_decides_which_services_are_served() {
    let cases: [(&str, Option<&str>, Value, bool); 7] = [
        ("no name, unlabelled", None, json!({}), true),
        (
            "no name, labelled for slicelb",
            None,
            json!({LABEL_SERVICE_PROXY_NAME: "slicelb"}),
            false,
        ),
        (
            "no name, labelled with an empty name",
            None,
            json!({LABEL_SERVICE_PROXY_NAME: ""}),
            false,
        ),
        (
            "named slicelb, unlabelled (kube-proxy's)",
            Some("slicelb"),
            json!({}),
            false,
        ),
        (
            "named slicelb, labelled for slicelb",
            Some("slicelb"),
            json!({LABEL_SERVICE_PROXY_NAME: "slicelb"}),
            true,
        ),
        (
            "named slicelb, labelled for another proxy",
            Some("slicelb"),
            json!({LABEL_SERVICE_PROXY_NAME: "other"}),
            false,
        ),
        (
            "headless label on a Service with a cluster IP (kube-proxy reads it on slices only)",
            None,
            json!({LABEL_HEADLESS: ""}),
            true,
        ),
    ];
    for (case, proxy_name, labels, served) in cases {
        let mut labelled = web(json!({}));
        labelled.metadata.labels = serde_json::from_value(labels).expect("test labels");
        let snapshot = Snapshot {
            services: vec![Arc::new(labelled)],
            endpoint_slices: vec![Arc::new(web_slice(
                "web-1",
                "IPv4",
                vec![ready("10.0.0.1", "node-b")],
            ))],
            node: node(),
            ..Snapshot::default()
        };
        let config = ModelConfig {
            proxy_name: proxy_name.map(str::to_owned),
        };
        let built = build(&snapshot, &config);
        assert!(built.warnings.is_empty(), "{case}: {:?}", built.warnings);
        if served {
            let svc = only(&built);
            assert_eq!(
                selection(frontend(svc, FrontendKind::ClusterIp, "198.18.100.1")),
                ["10.0.0.1:8080"],
                "{case}: served, with its slice's endpoints"
            );
        } else {
            assert!(
                built.state.services.is_empty(),
                "{case}: not ours, so neither its frontends nor its slice's endpoints: {:?}",
                built.state.services
            );
        }
        let mut incremental = IncrementalModel::default();
        assert_eq!(
            *incremental.update(&snapshot, &config).state,
            built.state,
            "{case}: the incremental model agrees"
        );
    }
}

/// The address fields of kube-proxy's nftables `TestBadIPs` Service `ns1/svc1` and its
/// slice, spelled as a test row wants them.
#[derive(Clone, Copy)]
struct BadIpFields {
    cluster_ip: &'static str,
    load_balancer_ip: &'static str,
    external_ip: &'static str,
    source_range: &'static str,
    endpoint: &'static str,
}

/// kube-proxy's spelling in `TestBadIPs`' expected ruleset.
const CANONICAL_BAD_IP_FIELDS: BadIpFields = BadIpFields {
    cluster_ip: "172.30.0.41",
    load_balancer_ip: "1.2.3.4",
    external_ip: "192.168.99.22",
    source_range: "203.0.113.0/25",
    endpoint: "10.180.0.1",
};

fn build_bad_ip_service(fields: BadIpFields) -> Built {
    let mut svc = service(json!({
        "metadata": {"name": "svc1", "namespace": "ns1"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": fields.cluster_ip,
            "externalIPs": [fields.external_ip],
            "loadBalancerSourceRanges": [fields.source_range],
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
        },
    }));
    svc.status = serde_json::from_value(
        json!({"loadBalancer": {"ingress": [{"ip": fields.load_balancer_ip}]}}),
    )
    .expect("test status");
    let endpoints = slice(json!({
        "metadata": {"name": "svc1-1", "namespace": "ns1", "labels": {"kubernetes.io/service-name": "svc1"}},
        "addressType": "IPv4",
        "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": [fields.endpoint]}],
    }));
    run(vec![svc], vec![endpoints])
}

/// kube-proxy's nftables `TestBadIPs` (pkg/proxy/nftables/proxier_test.go) as a table:
/// Kubernetes reads addresses and CIDRs with leading zeros as decimal (k8s.io/utils/net
/// `ParseIPSloppy`, `ParseCIDRSloppy`), so each legacy spelling gives the frontends, range
/// and backends of its plain spelling. Issue #14: the Service was dropped, or its range
/// skipped.
#[test]
fn legacy_addresses_with_leading_zeros_read_as_kubernetes_reads_them() {
    let canonical = build_bad_ip_service(CANONICAL_BAD_IP_FIELDS);
    // What kube-proxy's expected ruleset programs: ClusterIP, external IP, load-balancer IP
    // behind the source range (the firewall chain), NodePort, and the one endpoint.
    let svc = only(&canonical);
    let frontends: Vec<(FrontendKind, String, bool)> = svc
        .frontends
        .iter()
        .map(|f| (f.kind, f.endpoint().to_string(), f.source_ranges))
        .collect();
    assert_eq!(
        frontends,
        [
            (FrontendKind::LoadBalancer, "1.2.3.4:80".to_owned(), true),
            (FrontendKind::ClusterIp, "172.30.0.41:80".to_owned(), false),
            (
                FrontendKind::ExternalIp,
                "192.168.99.22:80".to_owned(),
                false
            ),
            (FrontendKind::NodePort, "198.18.0.10:3001".to_owned(), false),
        ],
        "TestBadIPs' service-ips, firewall-ips and service-nodeports"
    );
    let ranges: Vec<String> = svc.source_ranges.iter().map(ToString::to_string).collect();
    assert_eq!(ranges, ["203.0.113.0/25"]);
    assert_eq!(
        selection(frontend(svc, FrontendKind::ClusterIp, "172.30.0.41")),
        ["10.180.0.1:80"]
    );

    let base = CANONICAL_BAD_IP_FIELDS;
    let rows: [(&str, BadIpFields, BadIpFields); 8] = [
        (
            "spec.clusterIP 172.30.0.041",
            BadIpFields {
                cluster_ip: "172.30.0.041",
                ..base
            },
            base,
        ),
        (
            "status.loadBalancer.ingress[].ip 1.2.3.004",
            BadIpFields {
                load_balancer_ip: "1.2.3.004",
                ..base
            },
            base,
        ),
        (
            "spec.externalIPs 192.168.099.022",
            BadIpFields {
                external_ip: "192.168.099.022",
                ..base
            },
            base,
        ),
        (
            "loadBalancerSourceRanges 203.0.113.000/025",
            BadIpFields {
                source_range: "203.0.113.000/025",
                ..base
            },
            base,
        ),
        (
            "endpoints[].addresses 10.180.00.001",
            BadIpFields {
                endpoint: "10.180.00.001",
                ..base
            },
            base,
        ),
        (
            "all of them at once (TestBadIPs' Service)",
            BadIpFields {
                cluster_ip: "172.30.0.041",
                load_balancer_ip: "1.2.3.004",
                external_ip: "192.168.099.022",
                source_range: "203.0.113.000/025",
                endpoint: "10.180.00.001",
            },
            base,
        ),
        (
            "spec.clusterIP 198.018.100.063 (issue #14)",
            BadIpFields {
                cluster_ip: "198.018.100.063",
                ..base
            },
            BadIpFields {
                cluster_ip: "198.18.100.63",
                ..base
            },
        ),
        (
            "loadBalancerSourceRanges 010.0.0.0/8 (issue #14)",
            BadIpFields {
                source_range: "010.0.0.0/8",
                ..base
            },
            BadIpFields {
                source_range: "10.0.0.0/8",
                ..base
            },
        ),
    ];
    for (case, legacy, plain) in rows {
        let built = build_bad_ip_service(legacy);
        assert!(built.warnings.is_empty(), "{case}: {:?}", built.warnings);
        assert_eq!(
            built.state,
            build_bad_ip_service(plain).state,
            "{case}: read as its plain spelling"
        );
    }
}

/// A `loadBalancerSourceRanges` entry that cannot be read admits nobody: the load-balancer
/// frontend still checks ranges, and only the readable ones let clients in. Issue #14: with
/// no readable range left the frontend was open to every client.
#[test]
fn an_unreadable_source_range_fails_closed_with_a_warning() {
    struct Row {
        case: &'static str,
        listed: &'static [&'static str],
        /// The ranges that let clients in.
        admitted: &'static [&'static str],
        /// The entries warned about.
        unreadable: &'static [&'static str],
        /// The load-balancer frontend checks the ranges.
        restricted: bool,
    }
    let rows = [
        Row {
            case: "only an unreadable range",
            listed: &["10.0.0.0/99"],
            admitted: &[],
            unreadable: &["10.0.0.0/99"],
            restricted: true,
        },
        Row {
            case: "an unreadable and a readable range",
            listed: &["not-a-cidr", "203.0.113.000/025"],
            admitted: &["203.0.113.0/25"],
            unreadable: &["not-a-cidr"],
            restricted: true,
        },
        Row {
            case: "a blank entry",
            listed: &[" "],
            admitted: &[],
            unreadable: &[" "],
            restricted: true,
        },
        Row {
            case: "no ranges: open to all",
            listed: &[],
            admitted: &[],
            unreadable: &[],
            restricted: false,
        },
    ];
    for Row {
        case,
        listed,
        admitted,
        unreadable,
        restricted,
    } in rows
    {
        let mut svc = service(json!({
            "metadata": {"name": "svc1", "namespace": "ns1"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "198.18.100.1",
                "loadBalancerSourceRanges": listed,
                "ports": [{"name": "http", "port": 80}],
            },
        }));
        svc.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.18.150.1"}]}}))
                .expect("test status");
        let built = run(vec![svc], vec![]);
        let svc = only(&built);
        let lb = frontend(svc, FrontendKind::LoadBalancer, "198.18.150.1");
        assert_eq!(lb.source_ranges, restricted, "{case}: ranges checked");
        assert_eq!(
            lb.flag_bits(svc) & lb_common::frontend_flags::SOURCE_RANGES != 0,
            restricted,
            "{case}: the datapath's flag"
        );
        let ranges: Vec<String> = svc.source_ranges.iter().map(ToString::to_string).collect();
        assert_eq!(ranges, admitted, "{case}: the ranges that admit clients");
        let warnings: Vec<String> = built.warnings.iter().map(ToString::to_string).collect();
        let wanted: Vec<String> = unreadable
            .iter()
            .map(|text| {
                format!(
                    "Service ns1/svc1: loadBalancerSourceRanges entry {text:?} is not a CIDR; \
                     it admits no client"
                )
            })
            .collect();
        assert_eq!(
            warnings.len(),
            wanted.len(),
            "{case}: one warning per unreadable entry: {warnings:#?}"
        );
        for (warning, want) in warnings.iter().zip(&wanted) {
            assert!(
                warning.starts_with(want),
                "{case}: {warning:?}, want {want:?}"
            );
        }
    }
}

#[test]
fn slices_are_merged_deduplicated_and_kept_per_family() {
    let built = run(
        vec![web(
            json!({"clusterIPs": ["198.18.100.1", "2001:2::100:1"]}),
        )],
        vec![
            web_slice(
                "web-b",
                "IPv4",
                vec![
                    ep("10.0.0.1", "node-b", false, true, true),
                    ready("10.0.0.2", "node-b"),
                ],
            ),
            // Same endpoint in a second slice: the non-terminating copy wins.
            web_slice("web-a", "IPv4", vec![ready("10.0.0.1", "node-b")]),
            web_slice("web-v6", "IPv6", vec![ready("fd00::1", "node-b")]),
            slice(json!({
                "metadata": {"name": "other", "namespace": "default", "labels": {"kubernetes.io/service-name": "other"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": [ready("10.9.9.9", "node-b")],
            })),
            slice(json!({
                "metadata": {"name": "web-elsewhere", "namespace": "prod", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": [ready("10.8.8.8", "node-b")],
            })),
        ],
    );
    let svc = only(&built);
    assert_eq!(
        selection(frontend(svc, FrontendKind::ClusterIp, "198.18.100.1")),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(
        selection(frontend(svc, FrontendKind::ClusterIp, "2001:2::100:1")),
        ["[fd00::1]:8080"]
    );
    assert_eq!(
        svc.backends[&sa("10.0.0.1:8080")].state,
        BackendState::Active,
        "ready copy wins"
    );
    assert_eq!(
        svc.backends.len(),
        3,
        "other services' and namespaces' slices are not ours: {:?}",
        svc.backends
    );
}

#[test]
fn target_ports_are_resolved_through_slice_port_names_and_protocols() {
    let svc = service(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "198.18.100.1", "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ]},
    }));
    let s = slice(json!({
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "dns", "port": 9999, "protocol": "TCP"},
        ],
        "endpoints": [ready("10.0.0.1", "node-b")],
    }));
    let built = run(vec![svc], vec![s]);
    let http = &built.state.services[&web_http()];
    assert_eq!(
        selection(&http.frontends[0]),
        ["10.0.0.1:8080"],
        "named targetPort via the slice port named http"
    );
    let dns = &built.state.services[&ServicePortName::new("default", "web", "dns")];
    assert_eq!(
        selection(&dns.frontends[0]),
        ["10.0.0.1:5353"],
        "the TCP slice port of the same name is not UDP's"
    );
}

#[test]
fn endpoint_conditions() {
    // (case, endpoints, expected selection, expected backend states)
    type Case = (
        &'static str,
        Vec<Value>,
        Vec<&'static str>,
        Vec<(&'static str, BackendState)>,
    );
    let t = BackendState::Terminating;
    let a = BackendState::Active;
    let cases: Vec<Case> = vec![
        (
            "ready unset counts as ready",
            vec![json!({"addresses": ["10.0.0.1"], "conditions": {}})],
            vec!["10.0.0.1:8080"],
            vec![("10.0.0.1:8080", a)],
        ),
        (
            "terminating kept for flows while ready ones exist",
            vec![
                ready("10.0.0.1", "n"),
                ep("10.0.0.2", "n", false, true, true),
            ],
            vec!["10.0.0.1:8080"],
            vec![("10.0.0.1:8080", a), ("10.0.0.2:8080", t)],
        ),
        (
            "serving terminating used when nothing is ready",
            vec![
                ep("10.0.0.1", "n", false, false, false),
                ep("10.0.0.2", "n", false, true, true),
                ep("10.0.0.3", "n", false, false, true),
            ],
            vec!["10.0.0.2:8080"],
            vec![
                ("10.0.0.1:8080", t),
                ("10.0.0.2:8080", t),
                ("10.0.0.3:8080", t),
            ],
        ),
        (
            "not ready, not terminating: kept for flows, never selected",
            vec![ep("10.0.0.1", "n", false, false, false)],
            vec![],
            vec![("10.0.0.1:8080", t)],
        ),
    ];
    for (case, endpoints, want_selection, want_backends) in cases {
        let built = run(
            vec![web(json!({}))],
            vec![web_slice("web-1", "IPv4", endpoints)],
        );
        let svc = only(&built);
        assert_eq!(
            selection(&svc.frontends[0]),
            want_selection,
            "{case}: selection"
        );
        let states: Vec<(String, BackendState)> = svc
            .backends
            .iter()
            .map(|(a, b)| (a.to_string(), b.state))
            .collect();
        let want: Vec<(String, BackendState)> = want_backends
            .iter()
            .map(|(a, s)| (a.to_string(), *s))
            .collect();
        assert_eq!(states, want, "{case}: backends");
        if want_selection.is_empty() {
            assert_eq!(
                svc.frontends[0].when_empty,
                WhenEmpty::Reject,
                "{case}: no endpoint anywhere rejects"
            );
        }
    }
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_ready() {
    let built = run(
        vec![web(json!({"publishNotReadyAddresses": true}))],
        vec![web_slice(
            "web-1",
            "IPv4",
            vec![
                ep("10.0.0.1", "n", false, false, false),
                ready("10.0.0.2", "n"),
            ],
        )],
    );
    let svc = only(&built);
    assert_eq!(
        selection(&svc.frontends[0]),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert!(
        svc.backends
            .values()
            .all(|b| b.state == BackendState::Active)
    );
}

#[test]
fn traffic_policies() {
    // (case, spec patch, endpoints, ClusterIP selection + when empty, NodePort selection + when empty, NodePort flags local?)
    let remote = || ready("10.0.0.1", "node-b");
    let local = || ready("10.0.0.2", "node-a");
    type Case = (
        &'static str,
        Value,
        Vec<Value>,
        (Vec<&'static str>, WhenEmpty),
        (Vec<&'static str>, WhenEmpty),
    );
    let np = |extra: Value| {
        let mut spec =
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]});
        merge(&mut spec, extra);
        spec
    };
    let cases: Vec<Case> = vec![
        (
            "Cluster/Cluster",
            np(json!({})),
            vec![remote(), local()],
            (vec!["10.0.0.1:8080", "10.0.0.2:8080"], WhenEmpty::Reject),
            (vec!["10.0.0.1:8080", "10.0.0.2:8080"], WhenEmpty::Reject),
        ),
        (
            "eTP Local",
            np(json!({"externalTrafficPolicy": "Local"})),
            vec![remote(), local()],
            (vec!["10.0.0.1:8080", "10.0.0.2:8080"], WhenEmpty::Reject),
            (vec!["10.0.0.2:8080"], WhenEmpty::Drop),
        ),
        (
            "eTP Local, no local endpoint: drop",
            np(json!({"externalTrafficPolicy": "Local"})),
            vec![remote()],
            (vec!["10.0.0.1:8080"], WhenEmpty::Reject),
            (vec![], WhenEmpty::Drop),
        ),
        (
            "eTP Local, no endpoint at all: reject",
            np(json!({"externalTrafficPolicy": "Local"})),
            vec![],
            (vec![], WhenEmpty::Reject),
            (vec![], WhenEmpty::Reject),
        ),
        (
            "iTP Local",
            np(json!({"internalTrafficPolicy": "Local"})),
            vec![remote(), local()],
            (vec!["10.0.0.2:8080"], WhenEmpty::Drop),
            (vec!["10.0.0.1:8080", "10.0.0.2:8080"], WhenEmpty::Reject),
        ),
        (
            "iTP Local, only remote: drop",
            np(json!({"internalTrafficPolicy": "Local"})),
            vec![remote()],
            (vec![], WhenEmpty::Drop),
            (vec!["10.0.0.1:8080"], WhenEmpty::Reject),
        ),
        (
            "eTP Local falls back to local serving terminating",
            np(json!({"externalTrafficPolicy": "Local"})),
            vec![remote(), ep("10.0.0.2", "node-a", false, true, true)],
            (vec!["10.0.0.1:8080"], WhenEmpty::Reject),
            (vec!["10.0.0.2:8080"], WhenEmpty::Drop),
        ),
    ];
    for (case, spec, endpoints, (want_cluster, cluster_empty), (want_node, node_empty)) in cases {
        let built = run(
            vec![web(spec.clone())],
            vec![web_slice("web-1", "IPv4", endpoints)],
        );
        let svc = only(&built);
        let cluster = frontend(svc, FrontendKind::ClusterIp, "198.18.100.1");
        let node_port = frontend(svc, FrontendKind::NodePort, "198.18.0.10");
        assert_eq!(
            selection(cluster),
            want_cluster,
            "{case}: ClusterIP selection"
        );
        assert_eq!(
            selection(node_port),
            want_node,
            "{case}: NodePort selection"
        );
        if want_cluster.is_empty() {
            assert_eq!(
                cluster.when_empty, cluster_empty,
                "{case}: ClusterIP when empty"
            );
        }
        if want_node.is_empty() {
            assert_eq!(
                node_port.when_empty, node_empty,
                "{case}: NodePort when empty"
            );
        }
        assert_eq!(
            cluster.policy_local,
            spec["internalTrafficPolicy"] == "Local",
            "{case}: ClusterIP local flag"
        );
        assert_eq!(
            node_port.policy_local,
            spec["externalTrafficPolicy"] == "Local",
            "{case}: NodePort local flag"
        );
        let flags = node_port.flag_bits(svc);
        assert_ne!(
            flags & lb_common::frontend_flags::EXTERNAL,
            0,
            "{case}: NodePort is external"
        );
        let drop = flags & lb_common::frontend_flags::DROP_WHEN_EMPTY != 0;
        assert_eq!(
            drop,
            want_node.is_empty() && node_empty == WhenEmpty::Drop,
            "{case}: DROP_WHEN_EMPTY"
        );
    }
}

#[test]
fn topology_hints_narrow_the_cluster_selection() {
    let hinted = |address: &str, zone: &str, node: Option<&str>| {
        let mut e = ready(address, "node-x");
        e["hints"] = json!({"forZones": [{"name": zone}]});
        if let Some(node) = node {
            e["hints"]["forNodes"] = json!([{"name": node}]);
        }
        e
    };
    type Case = (&'static str, Value, Vec<Value>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "PreferClose zone hints",
            json!({"trafficDistribution": "PreferClose"}),
            vec![
                hinted("10.0.0.1", "zone-a", None),
                hinted("10.0.0.2", "zone-b", None),
            ],
            vec!["10.0.0.1:8080"],
        ),
        (
            "PreferSameZone zone hints",
            json!({"trafficDistribution": "PreferSameZone"}),
            vec![
                hinted("10.0.0.1", "zone-a", None),
                hinted("10.0.0.2", "zone-b", None),
            ],
            vec!["10.0.0.1:8080"],
        ),
        (
            "PreferSameNode node hints",
            json!({"trafficDistribution": "PreferSameNode"}),
            vec![
                hinted("10.0.0.1", "zone-a", Some("node-b")),
                hinted("10.0.0.2", "zone-a", Some("node-a")),
            ],
            vec!["10.0.0.2:8080"],
        ),
        (
            "node hints not for us: zone hints decide",
            json!({"trafficDistribution": "PreferSameNode"}),
            vec![
                hinted("10.0.0.1", "zone-a", Some("node-b")),
                hinted("10.0.0.2", "zone-b", Some("node-c")),
            ],
            vec!["10.0.0.1:8080"],
        ),
        (
            "one endpoint without hints: no narrowing",
            json!({"trafficDistribution": "PreferClose"}),
            vec![
                hinted("10.0.0.1", "zone-a", None),
                ready("10.0.0.2", "node-x"),
            ],
            vec!["10.0.0.1:8080", "10.0.0.2:8080"],
        ),
        (
            "no hint for our zone: no narrowing",
            json!({"trafficDistribution": "PreferClose"}),
            vec![
                hinted("10.0.0.1", "zone-b", None),
                hinted("10.0.0.2", "zone-c", None),
            ],
            vec!["10.0.0.1:8080", "10.0.0.2:8080"],
        ),
    ];
    for (case, spec, endpoints, want) in cases {
        let built = run(vec![web(spec)], vec![web_slice("web-1", "IPv4", endpoints)]);
        assert_eq!(selection(&only(&built).frontends[0]), want, "{case}");
    }
}

#[test]
fn session_affinity_and_source_ranges() {
    let built = run(
        vec![web(json!({
            "type": "LoadBalancer",
            "sessionAffinity": "ClientIP",
            "loadBalancerSourceRanges": [" 198.18.7.9/24", "2001:2::/48"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }))],
        vec![],
    );
    let svc = only(&built);
    assert_eq!(
        svc.affinity_timeout_secs,
        Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
        "default timeout 10800"
    );
    let ranges: Vec<String> = svc.source_ranges.iter().map(ToString::to_string).collect();
    assert_eq!(
        ranges,
        ["198.18.7.0/24", "2001:2::/48"],
        "trimmed, host bits cleared"
    );
    assert!(
        svc.frontends.iter().all(|f| !f.source_ranges),
        "no LB IP yet, nothing to guard"
    );

    let with_lb = {
        let mut s = web(json!({
            "type": "LoadBalancer",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "loadBalancerSourceRanges": ["198.18.7.0/24"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }));
        s.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.18.150.1"}]}}))
                .unwrap();
        s
    };
    let built = run(vec![with_lb], vec![]);
    let svc = only(&built);
    assert_eq!(svc.affinity_timeout_secs, Some(60));
    for f in &svc.frontends {
        assert_eq!(
            f.source_ranges,
            f.kind == FrontendKind::LoadBalancer,
            "{} {}",
            f.kind,
            f.addr
        );
        let flags = f.flag_bits(svc);
        assert_ne!(
            flags & lb_common::frontend_flags::AFFINITY,
            0,
            "affinity flag on {}",
            f.kind
        );
    }
}

#[test]
fn invalid_objects_are_skipped_with_warnings_naming_them() {
    let bad = service(json!({
        "metadata": {"name": "bad", "namespace": "ns1"},
        "spec": {
            "clusterIP": "198.18.100.7",
            "externalIPs": ["not-an-ip"],
            "loadBalancerSourceRanges": ["10.0.0.0/99"],
            "sessionAffinity": "Sticky",
            "ports": [
                {"name": "big", "port": 70000},
                {"name": "proto", "port": 80, "protocol": "ICMP"},
                {"name": "np", "port": 81, "nodePort": -1},
                {"name": "ok", "port": 82},
                {"name": "ok", "port": 83},
            ],
        },
    }));
    let broken_ip = service(
        json!({"metadata": {"name": "badip", "namespace": "ns1"}, "spec": {"clusterIP": "300.1.1.1", "ports": [{"port": 80}]}}),
    );
    let bad_slice = slice(json!({
        "metadata": {"name": "bad-1", "namespace": "ns1", "labels": {"kubernetes.io/service-name": "bad"}},
        "addressType": "IPv4",
        "ports": [{"name": "ok", "port": 8080}],
        "endpoints": [{"addresses": []}, {"addresses": ["2001:2::1"]}, {"addresses": ["10.0.0.1"]}],
    }));
    let built = run(vec![bad, broken_ip], vec![bad_slice]);
    let keys: Vec<String> = built
        .state
        .services
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(keys, ["ns1/bad:ok"], "only the valid port survives");
    assert_eq!(
        selection(&built.state.services.values().next().unwrap().frontends[0]),
        ["10.0.0.1:8080"]
    );
    let text: Vec<String> = built.warnings.iter().map(ToString::to_string).collect();
    let expect = [
        "Service ns1/bad: spec.externalIPs \"not-an-ip\"",
        "Service ns1/bad: loadBalancerSourceRanges entry \"10.0.0.0/99\"",
        "Service ns1/bad: sessionAffinity \"Sticky\"",
        "Service ns1/bad: ports[].port 70000",
        "Service ns1/bad: protocol \"ICMP\"",
        "Service ns1/bad: ports[].nodePort -1",
        "Service ns1/bad: port name \"ok\" appears twice",
        "Service ns1/badip: spec.clusterIPs \"300.1.1.1\"",
        "Service ns1/badip: no valid cluster IP",
        "EndpointSlice ns1/bad-1: an endpoint has no address",
        "EndpointSlice ns1/bad-1: endpoints[].addresses \"2001:2::1\"",
    ];
    for want in expect {
        assert!(
            text.iter().any(|w| w.starts_with(want)),
            "missing warning {want:?} in {text:#?}"
        );
    }
    assert_eq!(text.len(), expect.len(), "unexpected warnings: {text:#?}");
}

#[test]
fn conflicting_external_ips_go_to_the_first_service_by_name() {
    let a = service(
        json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {"clusterIP": "198.18.100.1", "externalIPs": ["198.18.200.1"], "ports": [{"name": "http", "port": 80}]}}),
    );
    let b = service(
        json!({"metadata": {"name": "b", "namespace": "default"}, "spec": {"clusterIP": "198.18.100.2", "externalIPs": ["198.18.200.1"], "ports": [{"name": "http", "port": 80}]}}),
    );
    let built = run(vec![b, a], vec![]);
    let a_frontends =
        &built.state.services[&ServicePortName::new("default", "a", "http")].frontends;
    let b_frontends =
        &built.state.services[&ServicePortName::new("default", "b", "http")].frontends;
    assert_eq!(a_frontends.len(), 2, "a keeps its external IP");
    assert_eq!(b_frontends.len(), 1, "b loses it");
    assert_eq!(built.warnings.len(), 1);
    assert!(
        built.warnings[0]
            .to_string()
            .contains("already used by default/a:http"),
        "{}",
        built.warnings[0]
    );
}

#[test]
fn a_port_that_lost_a_frontend_gets_it_back_and_is_reported_when_the_winner_goes() {
    // The loser's own objects never change: only settling the conflict over the frontend
    // both want moves it, so the update must find it through the claim, not through what
    // it rebuilt.
    let a = Arc::new(service(
        json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {"clusterIP": "198.18.100.1", "externalIPs": ["198.18.200.1"], "ports": [{"name": "http", "port": 80}]}}),
    ));
    let b = Arc::new(service(
        json!({"metadata": {"name": "b", "namespace": "default"}, "spec": {"clusterIP": "198.18.100.2", "externalIPs": ["198.18.200.1"], "ports": [{"name": "http", "port": 80}]}}),
    ));
    let snapshot = |services: Vec<Arc<Service>>| Snapshot {
        services,
        node: node(),
        ..Snapshot::default()
    };
    let b_http = ServicePortName::new("default", "b", "http");
    let config = ModelConfig::default();
    let mut model = IncrementalModel::default();

    let both = snapshot(vec![a.clone(), b.clone()]);
    let update = model.update(&both, &config);
    assert_eq!(update.state.services[&b_http].frontends.len(), 1, "b loses");

    let update = model.update(&snapshot(vec![b.clone()]), &config);
    assert_eq!(
        update.state.services[&b_http].frontends.len(),
        2,
        "b gets the external IP once a is gone"
    );
    assert!(update.changed.contains(&b_http), "{:?}", update.changed);
    assert!(update.warnings.is_empty(), "{:?}", update.warnings);

    let update = model.update(&both, &config);
    assert_eq!(
        update.state.services[&b_http].frontends.len(),
        1,
        "b loses again"
    );
    assert!(update.changed.contains(&b_http), "{:?}", update.changed);
    assert_eq!(update.warnings.len(), 1, "{:?}", update.warnings);
}

#[test]
fn build_is_deterministic_whatever_the_input_order() {
    let services = vec![
        web(json!({})),
        service(
            json!({"metadata": {"name": "api", "namespace": "default"}, "spec": {"clusterIP": "198.18.100.2", "ports": [{"name": "http", "port": 80}]}}),
        ),
    ];
    let slices = vec![
        web_slice(
            "web-1",
            "IPv4",
            vec![ready("10.0.0.1", "n"), ready("10.0.0.2", "n")],
        ),
        web_slice(
            "web-2",
            "IPv4",
            vec![
                ep("10.0.0.1", "n", false, true, true),
                ready("10.0.0.3", "n"),
            ],
        ),
    ];
    let forward = run(services.clone(), slices.clone());
    let backward = run(
        services.into_iter().rev().collect(),
        slices.into_iter().rev().collect(),
    );
    assert_eq!(forward, backward);
}

#[test]
fn endpoint_slice_cache_cases() {
    // Cases after kube-proxy's endpointslicecache tests that apply to a level-based model.
    type Case = (&'static str, Vec<EndpointSlice>, Vec<&'static str>, usize);
    let port_slice = |name: &str, port: Value, endpoints: Vec<Value>| {
        slice(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port}],
            "endpoints": endpoints,
        }))
    };
    let cases: Vec<Case> = vec![
        (
            "port 0 is skipped with a warning",
            vec![port_slice("s1", json!(0), vec![ready("10.0.0.1", "n")])],
            vec![],
            1,
        ),
        (
            "missing port is skipped with a warning",
            vec![port_slice("s1", Value::Null, vec![ready("10.0.0.1", "n")])],
            vec![],
            1,
        ),
        (
            "an endpoint in two slices counts once",
            vec![
                port_slice("s1", json!(8080), vec![ready("10.0.0.1", "n")]),
                port_slice("s2", json!(8080), vec![ready("10.0.0.1", "n")]),
            ],
            vec!["10.0.0.1:8080"],
            0,
        ),
        (
            "slices with different ports for the same name give both",
            vec![
                port_slice("s1", json!(8080), vec![ready("10.0.0.1", "n")]),
                port_slice("s2", json!(9090), vec![ready("10.0.0.1", "n")]),
            ],
            vec!["10.0.0.1:8080", "10.0.0.1:9090"],
            0,
        ),
        (
            "only the first address of an endpoint is used",
            vec![port_slice(
                "s1",
                json!(8080),
                vec![json!({"addresses": ["10.0.0.1", "10.0.0.2"]})],
            )],
            vec!["10.0.0.1:8080"],
            0,
        ),
        (
            "FQDN slices are ignored",
            vec![slice(json!({
                "metadata": {"name": "s1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "FQDN", "ports": [{"name": "http", "port": 8080}], "endpoints": [{"addresses": ["db.example"]}],
            }))],
            vec![],
            0,
        ),
        (
            "slices of headless services are ignored",
            vec![slice(json!({
                "metadata": {"name": "s1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web", "service.kubernetes.io/headless": ""}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": [ready("10.0.0.1", "n")],
            }))],
            vec![],
            0,
        ),
    ];
    for (case, slices, want, warnings) in cases {
        let built = run(vec![web(json!({}))], slices);
        assert_eq!(selection(&only(&built).frontends[0]), want, "{case}");
        assert_eq!(
            built.warnings.len(),
            warnings,
            "{case}: {:?}",
            built.warnings
        );
    }
}

/// Pods and the node reach an `externalTrafficPolicy: Local` service's external addresses
/// through short-circuit twins that hold the Cluster endpoints (kube-proxy's rule), whatever
/// the internal policy; other services get no twins.
#[test]
fn external_local_frontends_have_short_circuit_twins_with_cluster_endpoints() {
    let spec = |etp: &str, itp: &str| {
        json!({
            "type": "LoadBalancer",
            "externalTrafficPolicy": etp,
            "internalTrafficPolicy": itp,
            "externalIPs": ["198.18.200.1"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        })
    };
    let mut with_lb = web(spec("Local", "Local"));
    with_lb.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.18.201.1"}]}}))
            .unwrap(),
    );
    let endpoints = vec![ready("10.0.0.1", "node-b"), ready("10.0.0.2", "node-a")];
    let built = run(
        vec![with_lb],
        vec![web_slice("web-1", "IPv4", endpoints.clone())],
    );
    let svc = only(&built);
    let twins: Vec<&DesiredFrontend> = svc.frontends.iter().filter(|f| f.short_circuit).collect();
    let mut twin_addrs: Vec<String> = twins.iter().map(|f| f.endpoint().to_string()).collect();
    twin_addrs.sort();
    assert_eq!(
        twin_addrs,
        ["198.18.0.10:30080", "198.18.200.1:80", "198.18.201.1:80"],
        "one twin per external frontend"
    );
    for twin in &twins {
        assert_eq!(
            selection(twin),
            ["10.0.0.1:8080", "10.0.0.2:8080"],
            "{}: Cluster endpoints",
            twin.endpoint()
        );
        assert_eq!(twin.when_empty, WhenEmpty::Reject);
        let flags = twin.flag_bits(svc);
        assert_eq!(
            flags & lb_common::frontend_flags::TRAFFIC_POLICY_LOCAL,
            0,
            "a twin is not Local"
        );
        let key = crate::diff::encode::frontend_key(twin, svc.protocol);
        assert!(key.is_short_circuit() && key.ip_family() == lb_common::FAMILY_IPV4);
    }
    // The frontends themselves keep the Local selection; the ClusterIP keeps iTP Local.
    for frontend in svc.frontends.iter().filter(|f| !f.short_circuit) {
        assert_eq!(
            selection(frontend),
            ["10.0.0.2:8080"],
            "{} keeps this node's endpoint",
            frontend.endpoint()
        );
    }

    let cluster = run(
        vec![web(spec("Cluster", "Cluster"))],
        vec![web_slice("web-1", "IPv4", endpoints)],
    );
    assert!(
        only(&cluster).frontends.iter().all(|f| !f.short_circuit),
        "eTP Cluster needs no twin"
    );

    // A service that loses an external IP to another loses its twin with it, warned once.
    let named = |name: &str, cluster_ip: &str| {
        service(
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": {
            "clusterIP": cluster_ip, "externalIPs": ["198.18.200.1"],
            "externalTrafficPolicy": "Local", "type": "NodePort",
            "ports": [{"name": "http", "port": 80}]}}),
        )
    };
    let built = run(
        vec![named("b", "198.18.100.2"), named("a", "198.18.100.1")],
        vec![],
    );
    let frontends_of = |name: &str| {
        built.state.services[&ServicePortName::new("default", name, "http")]
            .frontends
            .iter()
            .filter(|f| f.addr == ip("198.18.200.1"))
            .count()
    };
    assert_eq!(frontends_of("a"), 2, "a keeps the external IP and its twin");
    assert_eq!(frontends_of("b"), 0, "b loses both");
    assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
}

/// `default/web` as a cloud LoadBalancer with `externalTrafficPolicy: Local` and its health
/// check port, dual-stack, with two ports (so that an endpoint is behind two).
fn web_local_lb() -> Service {
    web(json!({
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 32000,
        "clusterIPs": ["198.18.100.1", "2001:2::100:1"],
        "ports": [
            {"name": "http", "port": 80, "nodePort": 30080},
            {"name": "https", "port": 443, "nodePort": 30443},
        ],
    }))
}

/// Slice `name` of `default/web` with ports `http` 8080 and `https` 8443.
fn web_slice_two_ports(name: &str, family: &str, endpoints: Vec<Value>) -> EndpointSlice {
    let mut slice = web_slice(name, family, endpoints);
    slice.ports = Some(
        serde_json::from_value(json!([
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "https", "port": 8443, "protocol": "TCP"},
        ]))
        .unwrap(),
    );
    slice
}

fn web_check(built: &Built) -> Option<HealthCheck> {
    built
        .health_checks
        .get(&ServiceName::new("default", "web"))
        .copied()
}

/// kube-proxy's `TestHealthCheckNodePortWhenTerminating` (nftables and iptables
/// proxier_test.go): three ready endpoints on this node count, a not-ready one does not;
/// once all of them are terminating (or no longer ready) none counts, even those still
/// serving.
#[test]
fn health_check_node_port_when_terminating() {
    let ready_then = vec![
        ready("10.0.1.1", "node-a"),
        ready("10.0.1.2", "node-a"),
        ready("10.0.1.3", "node-a"),
        ep("10.0.1.4", "node-a", false, false, false),
    ];
    let built = run(
        vec![web_local_lb()],
        vec![web_slice("web-1", "IPv4", ready_then)],
    );
    let check = web_check(&built).expect("a health check");
    assert_eq!((check.node_port, check.local_ready_v4), (32000, 3));

    let terminating = vec![
        ep("10.0.1.1", "node-a", false, true, false),
        ep("10.0.1.2", "node-a", false, true, true),
        ep("10.0.1.3", "node-a", false, true, true),
        ep("10.0.1.4", "node-a", false, false, true),
    ];
    let built = run(
        vec![web_local_lb()],
        vec![web_slice("web-1", "IPv4", terminating)],
    );
    assert_eq!(web_check(&built).expect("a health check").local_ready_v4, 0);
}

/// kube-proxy's `LocalReadyEndpoints`: this node's ready endpoints by address, an endpoint
/// behind two ports once, each family apart, other nodes' never.
#[test]
fn health_checks_count_this_nodes_ready_endpoints_by_address_and_family() {
    let built = run(
        vec![web_local_lb()],
        vec![
            web_slice_two_ports(
                "web-v4",
                "IPv4",
                vec![
                    ready("10.0.1.1", "node-a"),
                    ready("10.0.1.2", "node-a"),
                    ready("10.0.1.3", "node-b"),
                ],
            ),
            web_slice_two_ports("web-v6", "IPv6", vec![ready("fd00::1", "node-a")]),
        ],
    );
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    assert_eq!(
        web_check(&built),
        Some(HealthCheck {
            node_port: 32000,
            local_ready_v4: 2,
            local_ready_v6: 1,
        })
    );
    let check = web_check(&built).unwrap();
    assert_eq!(check.local_ready_for(ip("198.18.0.10")), 2);
    assert_eq!(check.local_ready_for(ip("2001:2::10")), 1);
}

/// Only a LoadBalancer with `externalTrafficPolicy: Local` has a health check (the only kind
/// the API server gives a `healthCheckNodePort`, and all kube-proxy serves); one without a
/// port is warned about; a service that is not ours, or has no usable port, has none.
#[test]
fn health_checks_are_for_local_load_balancers_with_a_port() {
    let endpoints = || {
        vec![web_slice(
            "web-1",
            "IPv4",
            vec![ready("10.0.1.1", "node-a")],
        )]
    };
    let with = |patch: Value| {
        let mut service = web_local_lb();
        let mut spec = serde_json::to_value(service.spec.take()).unwrap();
        merge(&mut spec, patch);
        service.spec = Some(serde_json::from_value(spec).unwrap());
        service
    };
    let cases: Vec<(&str, Service, bool, usize)> = vec![
        ("a Local LoadBalancer", web_local_lb(), true, 0),
        (
            "Cluster policy",
            with(json!({"externalTrafficPolicy": "Cluster"})),
            false,
            0,
        ),
        (
            "a NodePort with the Local policy",
            with(json!({"type": "NodePort"})),
            false,
            0,
        ),
        (
            "no healthCheckNodePort",
            with(json!({"healthCheckNodePort": null})),
            false,
            1,
        ),
        (
            "an invalid healthCheckNodePort",
            with(json!({"healthCheckNodePort": 70000})),
            false,
            1,
        ),
        ("no ports", with(json!({"ports": []})), false, 0),
    ];
    for (case, service, has_check, warnings) in cases {
        let built = run(vec![service], endpoints());
        assert_eq!(web_check(&built).is_some(), has_check, "{case}");
        assert_eq!(
            built.warnings.len(),
            warnings,
            "{case}: {:?}",
            built.warnings
        );
    }

    let mut other_proxy = web_local_lb();
    other_proxy.metadata.labels =
        Some([(LABEL_SERVICE_PROXY_NAME.to_owned(), "other".to_owned())].into());
    let built = run(vec![other_proxy], endpoints());
    assert_eq!(web_check(&built), None, "another proxy's service");
}

/// kube-proxy's `SyncNode` / `NodeEligible` cases (healthcheck_test.go): only a deletion or
/// the cluster autoscaler's taint make a node ineligible.
#[test]
fn a_node_being_deleted_or_tainted_for_deletion_is_not_eligible() {
    let node = |metadata: Value, spec: Value| -> k8s_openapi::api::core::v1::Node {
        serde_json::from_value(json!({"metadata": metadata, "spec": spec})).unwrap()
    };
    let taint = |key: &str| json!({"taints": [{"key": key, "effect": "NoSchedule"}]});
    let cases = [
        (
            "plain",
            node(json!({"name": "node-a"}), json!({})),
            NodeEligibility::Eligible,
        ),
        (
            "tainted some other way",
            node(json!({"name": "node-a"}), taint("other")),
            NodeEligibility::Eligible,
        ),
        (
            "tainted by the autoscaler",
            node(
                json!({"name": "node-a"}),
                taint("ToBeDeletedByClusterAutoscaler"),
            ),
            NodeEligibility::ToBeDeleted,
        ),
        (
            "being deleted",
            node(
                json!({"name": "node-a", "deletionTimestamp": "2026-01-02T03:04:05Z"}),
                json!({}),
            ),
            NodeEligibility::BeingDeleted,
        ),
    ];
    for (case, node, expected) in cases {
        assert_eq!(NodeEligibility::of(&node), expected, "{case}");
        assert_eq!(
            expected.is_eligible(),
            expected == NodeEligibility::Eligible,
            "{case}"
        );
    }
}
