//! `slicelb services`: every frontend the kernel holds, with its backends and counters —
//! the datapath's `kubectl describe svc`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use lb_common::{
    Backend, FrontendKey, FrontendValue, PROTO_SCTP, PROTO_TCP, PROTO_UDP, ServiceCounters,
    backend_state, frontend_flags, frontend_kind,
};
use serde::Serialize;

use super::output::{Column, joined, table};
use crate::dataplane::AppliedState;

/// An address as stored in the maps; an unknown family (an empty slot) shows as IPv6.
pub fn ip_from_map(addr: &[u8; 16], family: u8) -> IpAddr {
    crate::diff::encode::decode_addr(addr, family)
        .unwrap_or_else(|| IpAddr::V6(Ipv6Addr::from(*addr)))
}

pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        _ => "?",
    }
}

pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        frontend_kind::CLUSTER_IP => "ClusterIP",
        frontend_kind::NODE_PORT => "NodePort",
        frontend_kind::LOAD_BALANCER => "LoadBalancer",
        frontend_kind::EXTERNAL_IP => "ExternalIP",
        _ => "?",
    }
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        backend_state::ACTIVE => "active",
        backend_state::TERMINATING => "terminating",
        _ => "empty",
    }
}

fn flag_names(key: &FrontendKey, value: &FrontendValue) -> Vec<String> {
    let mut flags = Vec::new();
    if key.is_short_circuit() {
        // Pods and the node reach an external Local frontend through this twin.
        flags.push("short-circuit(pods+node:Cluster)".to_string());
    }
    if value.flags & frontend_flags::AFFINITY != 0 {
        flags.push(format!("affinity={}s", value.affinity_timeout_secs));
    }
    if value.flags & frontend_flags::TRAFFIC_POLICY_LOCAL != 0 {
        let scope = if value.flags & frontend_flags::EXTERNAL != 0 {
            "externalTrafficPolicy=Local"
        } else {
            "internalTrafficPolicy=Local"
        };
        flags.push(scope.to_string());
    }
    if value.flags & frontend_flags::SOURCE_RANGES != 0 {
        flags.push("sourceRanges".to_string());
    }
    if value.flags & frontend_flags::DROP_WHEN_EMPTY != 0 && value.table_size == 0 {
        flags.push("no-local-endpoints(drop)".to_string());
    } else if value.table_size == 0 {
        flags.push("no-endpoints(reject)".to_string());
    }
    flags
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendRow {
    pub address: SocketAddr,
    pub state: &'static str,
    /// Share of the frontend's selection table, in percent.
    pub share_percent: f64,
}

/// A service port as SERVICE_NAMES names it (`namespace/name:port`), split into the
/// metrics' labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServicePort {
    pub namespace: String,
    pub service: String,
    /// Empty for a Service's single unnamed port.
    pub port_name: String,
}

impl ServicePort {
    /// Splits `namespace/name:port`; a name not of that form (a service id without a name)
    /// is kept whole as `service`.
    pub fn parse(full: &str) -> Self {
        match full.split_once('/') {
            Some((namespace, rest)) => {
                let (service, port_name) = rest.split_once(':').unwrap_or((rest, ""));
                Self {
                    namespace: namespace.to_owned(),
                    service: service.to_owned(),
                    port_name: port_name.to_owned(),
                }
            }
            None => Self {
                service: full.to_owned(),
                ..Self::default()
            },
        }
    }
}

impl std::fmt::Display for ServicePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            return f.write_str(&self.service);
        }
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port_name)
    }
}

/// The name of `service_id` in SERVICE_NAMES (`names`), or a stand-in naming the id.
pub fn service_port(names: &BTreeMap<u32, String>, service_id: u32) -> ServicePort {
    names
        .get(&service_id)
        .map(|name| ServicePort::parse(name))
        .unwrap_or_else(|| ServicePort::parse(&format!("<service id {service_id}>")))
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrontendRow {
    #[serde(flatten)]
    pub service: ServicePort,
    pub kind: &'static str,
    pub frontend: SocketAddr,
    pub protocol: &'static str,
    pub flags: Vec<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Connections (and unconnected UDP datagrams) balanced at socket level.
    pub socket_translations: u64,
    pub table_size: u32,
    pub backends: Vec<BackendRow>,
}

/// One row per frontend, sorted by service then frontend. Counters are per service port,
/// so every frontend of a service shows the same numbers.
pub fn rows(applied: &AppliedState, counters: &BTreeMap<u32, ServiceCounters>) -> Vec<FrontendRow> {
    let mut rows: Vec<FrontendRow> = applied
        .frontends
        .iter()
        .map(|(key, value)| frontend_row(applied, counters, key, value))
        .collect();
    rows.sort_by(|a, b| {
        (
            &a.service,
            a.kind,
            a.frontend.ip(),
            a.frontend.port(),
            a.protocol,
        )
            .cmp(&(
                &b.service,
                b.kind,
                b.frontend.ip(),
                b.frontend.port(),
                b.protocol,
            ))
    });
    rows
}

/// Each backend of a frontend's selection table with its share of the slots, by address.
pub fn backend_shares(applied: &AppliedState, value: &FrontendValue) -> Vec<BackendRow> {
    let mut slots_per_backend: BTreeMap<u32, u32> = BTreeMap::new();
    if let Some(slots) = applied.selection.get(&value.table_offset)
        && value.table_size > 0
    {
        for id in slots.ids().into_iter().take(value.table_size as usize) {
            *slots_per_backend.entry(id).or_default() += 1;
        }
    }
    let mut backends: Vec<BackendRow> = slots_per_backend
        .iter()
        .map(|(id, slots)| {
            let backend = applied
                .backends
                .get(id)
                .copied()
                .unwrap_or(Backend::default());
            BackendRow {
                address: SocketAddr::new(
                    ip_from_map(&backend.addr, backend.family),
                    u16::from_be(backend.port),
                ),
                state: if backend.state == backend_state::EMPTY {
                    "missing"
                } else {
                    state_name(backend.state)
                },
                share_percent: f64::from(*slots) * 100.0 / f64::from(value.table_size),
            }
        })
        .collect();
    backends.sort_by_key(|b| b.address);
    backends
}

fn frontend_row(
    applied: &AppliedState,
    counters: &BTreeMap<u32, ServiceCounters>,
    key: &FrontendKey,
    value: &FrontendValue,
) -> FrontendRow {
    let backends = backend_shares(applied, value);
    let counter = counters.get(&value.service_id).copied().unwrap_or_default();
    FrontendRow {
        service: service_port(&applied.service_names, value.service_id),
        kind: kind_name(value.kind),
        frontend: SocketAddr::new(
            ip_from_map(&key.addr, key.ip_family()),
            u16::from_be(key.port),
        ),
        protocol: protocol_name(key.proto),
        flags: flag_names(key, value),
        packets: counter.packets,
        bytes: counter.bytes,
        new_flows: counter.new_flows,
        socket_translations: counter.socket_translations,
        table_size: value.table_size,
        backends,
    }
}

/// Which frontends `slicelb services` shows: `NAMESPACE/NAME[:PORTNAME]`, `--address`,
/// `--port`, all of those given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFilter {
    /// Namespace, name and, when given, the port's name.
    pub service: Option<(String, String, Option<String>)>,
    /// A frontend's address or one of its backends'.
    pub address: Option<IpAddr>,
    /// A frontend's port or one of its backends'.
    pub port: Option<u16>,
}

/// A service asked for by name that the maps do not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no service {0} in the kernel's maps (`slicelb services` lists what they hold)")]
pub struct UnknownService(pub String);

impl ServiceFilter {
    /// Parses the positional `NAMESPACE/NAME` or `NAMESPACE/NAME:PORTNAME`.
    pub fn parse_service(text: &str) -> Result<(String, String, Option<String>), String> {
        let (namespace, rest) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not NAMESPACE/NAME[:PORTNAME]"))?;
        let (name, port_name) = match rest.split_once(':') {
            Some((name, port_name)) => (name, Some(port_name.to_owned())),
            None => (rest, None),
        };
        if namespace.is_empty() || name.is_empty() {
            return Err(format!("{text:?} is not NAMESPACE/NAME[:PORTNAME]"));
        }
        Ok((namespace.to_owned(), name.to_owned(), port_name))
    }

    fn names(&self, service: &ServicePort) -> bool {
        self.service
            .as_ref()
            .is_none_or(|(namespace, name, port_name)| {
                service.namespace == *namespace
                    && service.service == *name
                    && port_name.as_ref().is_none_or(|p| service.port_name == *p)
            })
    }

    fn matches(&self, row: &FrontendRow) -> bool {
        let addresses =
            || std::iter::once(row.frontend).chain(row.backends.iter().map(|b| b.address));
        self.names(&row.service)
            && self
                .address
                .is_none_or(|ip| addresses().any(|a| a.ip() == ip))
            && self
                .port
                .is_none_or(|port| addresses().any(|a| a.port() == port))
    }

    /// The rows this filter keeps; an error when it names a service no row has.
    pub fn apply(&self, rows: Vec<FrontendRow>) -> Result<Vec<FrontendRow>, UnknownService> {
        if let Some((namespace, name, port_name)) = &self.service
            && !rows.iter().any(|row| self.names(&row.service))
        {
            let port = port_name
                .as_ref()
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            return Err(UnknownService(format!("{namespace}/{name}{port}")));
        }
        Ok(rows.into_iter().filter(|row| self.matches(row)).collect())
    }
}

/// Backends shown in the narrow table before "+ N more".
const BACKENDS_SHOWN: usize = 3;

/// The table: a line per frontend. `wide` adds the counters and each backend's state and
/// share of the selection table.
pub fn render_table(rows: &[FrontendRow], wide: bool, headers: bool) -> String {
    if !wide {
        let columns = [
            Column::text("SERVICE"),
            Column::text("TYPE"),
            Column::text("FRONTEND"),
            Column::text("BACKENDS"),
            Column::text("FLAGS"),
        ];
        let lines = rows.iter().map(|row| {
            let mut backends: Vec<String> = row
                .backends
                .iter()
                .take(BACKENDS_SHOWN)
                .map(|b| b.address.to_string())
                .collect();
            if row.backends.len() > BACKENDS_SHOWN {
                backends.push(format!("+ {} more", row.backends.len() - BACKENDS_SHOWN));
            }
            vec![
                row.service.to_string(),
                row.kind.to_string(),
                format!("{}/{}", row.frontend, row.protocol),
                joined(&backends, "<none>"),
                joined(&row.flags, "-"),
            ]
        });
        return table(&columns, lines, headers);
    }
    let columns = [
        Column::text("SERVICE"),
        Column::text("TYPE"),
        Column::text("FRONTEND"),
        Column::number("PACKETS"),
        Column::number("BYTES"),
        Column::number("NEW FLOWS"),
        Column::number("SOCKET LB"),
        Column::number("SLOTS"),
        Column::text("BACKENDS"),
        Column::text("FLAGS"),
    ];
    let lines = rows.iter().map(|row| {
        let backends: Vec<String> = row
            .backends
            .iter()
            .map(|b| format!("{}({} {:.1}%)", b.address, b.state, b.share_percent))
            .collect();
        vec![
            row.service.to_string(),
            row.kind.to_string(),
            format!("{}/{}", row.frontend, row.protocol),
            row.packets.to_string(),
            row.bytes.to_string(),
            row.new_flows.to_string(),
            row.socket_translations.to_string(),
            row.table_size.to_string(),
            joined(&backends, "<none>"),
            joined(&row.flags, "-"),
        ]
    });
    table(&columns, lines, headers)
}

#[cfg(test)]
pub(crate) mod tests {
    use lb_common::{FAMILY_IPV4, FAMILY_IPV6};

    use super::*;
    use crate::cli::output::{OutputArgs, OutputFormat};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&a);
        addr
    }

    /// A small applied state: my-app-service on ClusterIP (IPv4, IPv6) and a NodePort with
    /// two backends and one terminating, plus an empty service.
    pub(crate) fn sample_state() -> (AppliedState, BTreeMap<u32, ServiceCounters>) {
        let mut applied = AppliedState::default();
        applied
            .service_names
            .insert(1, "default/my-app-service:http".to_string());
        applied
            .service_names
            .insert(2, "default/empty:dns".to_string());
        for (id, addr, state) in [
            (1, v4([198, 18, 1, 2]), backend_state::ACTIVE),
            (2, v4([198, 18, 2, 2]), backend_state::ACTIVE),
            (3, v4([198, 18, 3, 2]), backend_state::TERMINATING),
        ] {
            applied.backends.insert(
                id,
                Backend {
                    addr,
                    port: 8080u16.to_be(),
                    family: FAMILY_IPV4,
                    state,
                    ..Backend::default()
                },
            );
        }
        let size = 251u32;
        let table: Vec<u32> = (0..size)
            .map(|slot| if slot < 126 { 1 } else { 2 })
            .collect();
        applied.selection.insert(0, table.into());
        let frontend = |kind, flags| FrontendValue {
            service_id: 1,
            table_offset: 0,
            table_size: size,
            affinity_timeout_secs: 10800,
            backend_count: 2,
            flags,
            kind,
            _pad: [0; 3],
        };
        applied.frontends.insert(
            FrontendKey {
                addr: v4([198, 18, 100, 10]),
                port: 80u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_IPV4,
            },
            frontend(frontend_kind::CLUSTER_IP, frontend_flags::AFFINITY),
        );
        applied.frontends.insert(
            FrontendKey {
                addr: v4([198, 18, 0, 1]),
                port: 30080u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_IPV4,
            },
            frontend(
                frontend_kind::NODE_PORT,
                frontend_flags::EXTERNAL | frontend_flags::TRAFFIC_POLICY_LOCAL,
            ),
        );
        applied.frontends.insert(
            FrontendKey {
                addr: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x11).octets(),
                port: 53u16.to_be(),
                proto: PROTO_UDP,
                family: FAMILY_IPV6,
            },
            FrontendValue {
                service_id: 2,
                kind: frontend_kind::CLUSTER_IP,
                ..FrontendValue::default()
            },
        );
        let mut counters = BTreeMap::new();
        counters.insert(
            1,
            ServiceCounters {
                packets: 1200,
                bytes: 96000,
                new_flows: 300,
                socket_translations: 40,
            },
        );
        (applied, counters)
    }

    #[test]
    fn services_table_golden() {
        let (applied, counters) = sample_state();
        let table = render_table(&rows(&applied, &counters), false, true);
        let expected = "\
SERVICE                       TYPE        FRONTEND                    BACKENDS                          FLAGS
default/empty:dns             ClusterIP   [2001:2:0:100::11]:53/UDP   <none>                            no-endpoints(reject)
default/my-app-service:http   ClusterIP   198.18.100.10:80/TCP        198.18.1.2:8080,198.18.2.2:8080   affinity=10800s
default/my-app-service:http   NodePort    198.18.0.1:30080/TCP        198.18.1.2:8080,198.18.2.2:8080   externalTrafficPolicy=Local
";
        assert_eq!(table, expected, "services table changed:\n{table}");
    }

    #[test]
    fn services_json_golden() {
        let (applied, counters) = sample_state();
        let output = OutputArgs {
            output: OutputFormat::Json,
            no_headers: false,
        };
        let json: serde_json::Value =
            serde_json::from_str(&output.serialized(&rows(&applied, &counters)).expect("json"))
                .expect("valid JSON");
        let first_app = &json[1];
        assert_eq!(first_app["namespace"], "default");
        assert_eq!(first_app["service"], "my-app-service");
        assert_eq!(first_app["port_name"], "http");
        assert_eq!(first_app["kind"], "ClusterIP");
        assert_eq!(first_app["frontend"], "198.18.100.10:80");
        assert_eq!(first_app["protocol"], "TCP");
        assert_eq!(first_app["packets"], 1200);
        assert_eq!(first_app["new_flows"], 300);
        assert_eq!(first_app["backends"][0]["address"], "198.18.1.2:8080");
        assert_eq!(first_app["backends"][0]["state"], "active");
        let share = first_app["backends"][0]["share_percent"]
            .as_f64()
            .expect("number");
        assert!((share - 50.199).abs() < 0.01, "share {share}");
        assert_eq!(json[0]["flags"][0], "no-endpoints(reject)");
        let yaml: serde_json::Value = serde_norway::from_str(
            &OutputArgs {
                output: OutputFormat::Yaml,
                ..output
            }
            .serialized(&rows(&applied, &counters))
            .expect("yaml"),
        )
        .expect("valid YAML");
        assert_eq!(yaml, json, "YAML holds what JSON holds");
    }

    #[test]
    fn wide_adds_the_counters_and_each_backends_share_and_no_headers_drops_the_header() {
        let (applied, counters) = sample_state();
        let rows = rows(&applied, &counters);
        let wide = render_table(&rows, true, true);
        let header = wide.lines().next().expect("a header");
        for column in ["PACKETS", "BYTES", "NEW FLOWS", "SOCKET LB", "SLOTS"] {
            assert!(header.contains(column), "{column} missing: {header}");
        }
        let nodeport = wide
            .lines()
            .find(|l| l.contains("NodePort"))
            .expect("the NodePort row");
        for cell in [
            "1200",
            "96000",
            "300",
            "40",
            "251",
            "198.18.1.2:8080(active 50.2%)",
            "externalTrafficPolicy=Local",
        ] {
            assert!(nodeport.contains(cell), "{cell} missing: {nodeport}");
        }
        let bare = render_table(&rows, false, false);
        assert_eq!(bare.lines().count(), 3, "{bare}");
        assert!(bare.starts_with("default/empty:dns "), "{bare}");
    }

    #[test]
    fn many_backends_are_summed_up_in_the_narrow_table() {
        let (applied, counters) = sample_state();
        let mut row = rows(&applied, &counters).remove(1);
        row.backends = (1..=5)
            .map(|i| BackendRow {
                address: SocketAddr::from(([198, 18, i, 2], 8080)),
                state: "active",
                share_percent: 20.0,
            })
            .collect();
        let table = render_table(&[row], false, false);
        assert!(
            table.contains("198.18.1.2:8080,198.18.2.2:8080,198.18.3.2:8080,+ 2 more"),
            "{table}"
        );
    }

    fn filtered(filter: &ServiceFilter) -> Result<Vec<String>, UnknownService> {
        let (applied, counters) = sample_state();
        Ok(filter
            .apply(rows(&applied, &counters))?
            .iter()
            .map(|row| format!("{} {}", row.service, row.frontend))
            .collect())
    }

    #[test]
    fn filters_by_name_port_name_address_and_port() {
        let service = |text: &str| ServiceFilter {
            service: Some(ServiceFilter::parse_service(text).expect("a service")),
            ..ServiceFilter::default()
        };
        assert_eq!(
            filtered(&service("default/my-app-service")).expect("known"),
            [
                "default/my-app-service:http 198.18.100.10:80",
                "default/my-app-service:http 198.18.0.1:30080"
            ]
        );
        assert_eq!(
            filtered(&service("default/empty:dns")).expect("known"),
            ["default/empty:dns [2001:2:0:100::11]:53"]
        );
        let by_address = ServiceFilter {
            address: Some("198.18.0.1".parse().expect("literal")),
            ..ServiceFilter::default()
        };
        assert_eq!(
            filtered(&by_address).expect("no name"),
            ["default/my-app-service:http 198.18.0.1:30080"]
        );
        let by_backend = ServiceFilter {
            address: Some("198.18.2.2".parse().expect("literal")),
            port: Some(8080),
            ..ServiceFilter::default()
        };
        assert_eq!(filtered(&by_backend).expect("no name").len(), 2);
        let by_port = ServiceFilter {
            port: Some(53),
            ..ServiceFilter::default()
        };
        assert_eq!(
            filtered(&by_port).expect("no name"),
            ["default/empty:dns [2001:2:0:100::11]:53"]
        );
        let nothing_there = ServiceFilter {
            port: Some(9),
            ..service("default/my-app-service")
        };
        assert_eq!(
            filtered(&nothing_there).expect("known"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_unknown_service_is_an_error_naming_it() {
        for (text, named) in [
            ("default/nope", "default/nope"),
            ("default/my-app-service:grpc", "default/my-app-service:grpc"),
            ("other/my-app-service", "other/my-app-service"),
        ] {
            let filter = ServiceFilter {
                service: Some(ServiceFilter::parse_service(text).expect("well formed")),
                ..ServiceFilter::default()
            };
            let error = filtered(&filter).expect_err("unknown");
            assert!(error.to_string().contains(named), "{error}");
        }
        for malformed in ["my-app-service", "/x", "default/", ""] {
            assert!(
                ServiceFilter::parse_service(malformed).is_err(),
                "{malformed:?} accepted"
            );
        }
    }

    #[test]
    fn service_names_split_into_the_metrics_labels() {
        assert_eq!(
            ServicePort::parse("kube-system/kube-dns:dns-tcp"),
            ServicePort {
                namespace: "kube-system".into(),
                service: "kube-dns".into(),
                port_name: "dns-tcp".into()
            }
        );
        let unnamed = ServicePort::parse("default/web:");
        assert_eq!(
            (unnamed.service.as_str(), unnamed.port_name.as_str()),
            ("web", "")
        );
        assert_eq!(unnamed.to_string(), "default/web:");
        let bare = ServicePort::parse("<service id 7>");
        assert_eq!(bare.to_string(), "<service id 7>");
    }
}
