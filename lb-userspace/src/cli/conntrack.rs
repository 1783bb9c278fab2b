//! `slicelb conntrack`: the flows the datapath balanced, from CONNTRACK's forward entries
//! (a flow's reply entry repeats it). One pass over the table's buckets, stopped at
//! `--limit`, so a full table of millions of entries answers as fast as its first matches.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::Context as _;
use lb_common::{FlowKey, FlowValue, PROTO_TCP, flow_direction, tcp_seen};
use serde::Serialize;

use super::{
    ConntrackArgs,
    commands::open_pinned,
    output::{Column, OutputArgs, joined, table},
    services::{ServicePort, UnknownService, ip_from_map, protocol_name, service_port},
};

/// Flows listed unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 1000;

/// `--backend`: an address, and a port when given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// `ADDR`, `ADDR:PORT` or `[ADDR]:PORT`.
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Endpoint {
            ip: addr.ip(),
            port: Some(addr.port()),
        });
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map(|ip| Endpoint { ip, port: None })
        .map_err(|_| format!("{text:?} is not ADDR, ADDR:PORT or [ADDR]:PORT"))
}

/// One balanced flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowRow {
    pub protocol: &'static str,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    #[serde(flatten)]
    pub service: ServicePort,
    pub service_id: u32,
    pub backend_id: u32,
    /// Seconds since the flow's last packet (the datapath records no start time).
    pub idle_seconds: u64,
    /// TCP flags seen on the flow (`SYN`, `ESTABLISHED`, `FIN`, `RST`); empty for UDP and SCTP.
    pub tcp_state: Vec<&'static str>,
}

/// Which flows are shown; every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Service ids (from `--service`); `None` is every service.
    pub service_ids: Option<BTreeSet<u32>>,
    pub backend: Option<Endpoint>,
    pub client: Option<IpAddr>,
}

impl FlowFilter {
    /// The filter of `--service`, `--backend` and `--client`, resolving the service's name
    /// through SERVICE_NAMES; an error names a service the maps do not hold.
    pub fn new(
        service: Option<&(String, String, Option<String>)>,
        backend: Option<Endpoint>,
        client: Option<IpAddr>,
        names: &BTreeMap<u32, String>,
    ) -> Result<Self, UnknownService> {
        let service_ids = match service {
            None => None,
            Some((namespace, name, port_name)) => {
                let ids: BTreeSet<u32> = names
                    .iter()
                    .filter(|(_, full)| {
                        let port = ServicePort::parse(full);
                        port.namespace == *namespace
                            && port.service == *name
                            && port_name.as_ref().is_none_or(|p| port.port_name == *p)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                if ids.is_empty() {
                    let port = port_name
                        .as_ref()
                        .map(|p| format!(":{p}"))
                        .unwrap_or_default();
                    return Err(UnknownService(format!("{namespace}/{name}{port}")));
                }
                Some(ids)
            }
        };
        Ok(Self {
            service_ids,
            backend,
            client,
        })
    }

    /// Whether this CONNTRACK entry is a flow's forward entry that the filter keeps.
    pub fn keeps(&self, key: &FlowKey, value: &FlowValue) -> bool {
        value.direction == flow_direction::FORWARD
            && self
                .service_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&value.service_id))
            && self
                .client
                .is_none_or(|ip| ip_from_map(&key.src_addr, key.family) == ip)
            && self.backend.is_none_or(|backend| {
                ip_from_map(&value.nat_addr, key.family) == backend.ip
                    && backend
                        .port
                        .is_none_or(|port| u16::from_be(value.nat_port) == port)
            })
    }
}

fn tcp_state(proto: u8, seen: u8) -> Vec<&'static str> {
    if proto != PROTO_TCP {
        return Vec::new();
    }
    [
        (tcp_seen::SYN, "SYN"),
        (tcp_seen::ESTABLISHED, "ESTABLISHED"),
        (tcp_seen::FIN, "FIN"),
        (tcp_seen::RST, "RST"),
    ]
    .into_iter()
    .filter(|(bit, _)| seen & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// A forward entry as a row; `now_ns` is CLOCK_MONOTONIC_COARSE, the datapath's clock.
pub fn flow_row(
    key: &FlowKey,
    value: &FlowValue,
    names: &BTreeMap<u32, String>,
    now_ns: u64,
) -> FlowRow {
    let endpoint = |addr: &[u8; 16], port: u16| {
        SocketAddr::new(ip_from_map(addr, key.family), u16::from_be(port))
    };
    FlowRow {
        protocol: protocol_name(key.proto),
        client: endpoint(&key.src_addr, key.src_port),
        frontend: endpoint(&key.dst_addr, key.dst_port),
        backend: endpoint(&value.nat_addr, value.nat_port),
        service: service_port(names, value.service_id),
        service_id: value.service_id,
        backend_id: value.backend_id,
        idle_seconds: now_ns.saturating_sub(value.last_seen_ns) / 1_000_000_000,
        tcp_state: tcp_state(key.proto, value.tcp_flags_seen),
    }
}

/// The flows, a line each; `wide` adds the service and backend ids.
pub fn render_flows(rows: &[FlowRow], wide: bool, headers: bool) -> String {
    let mut columns = vec![
        Column::text("PROTOCOL"),
        Column::text("CLIENT"),
        Column::text("FRONTEND"),
        Column::text("BACKEND"),
        Column::text("SERVICE"),
        Column::number("IDLE"),
        Column::text("TCP STATE"),
    ];
    if wide {
        columns.extend([Column::number("SERVICE ID"), Column::number("BACKEND ID")]);
    }
    let lines = rows.iter().map(|row| {
        let mut line = vec![
            row.protocol.to_string(),
            row.client.to_string(),
            row.frontend.to_string(),
            row.backend.to_string(),
            row.service.to_string(),
            format!("{}s", row.idle_seconds),
            joined(&row.tcp_state, "-"),
        ];
        if wide {
            line.extend([row.service_id.to_string(), row.backend_id.to_string()]);
        }
        line
    });
    table(&columns, lines, headers)
}

/// `--count`: how many flows match, per service port and in all.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FlowCounts {
    pub flows: u64,
    pub services: Vec<ServiceFlows>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceFlows {
    #[serde(flatten)]
    pub service: ServicePort,
    pub flows: u64,
}

impl FlowCounts {
    /// Counts from flows per service id.
    pub fn new(per_service: &BTreeMap<u32, u64>, names: &BTreeMap<u32, String>) -> Self {
        let mut services: Vec<ServiceFlows> = per_service
            .iter()
            .map(|(id, flows)| ServiceFlows {
                service: service_port(names, *id),
                flows: *flows,
            })
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        Self {
            flows: per_service.values().sum(),
            services,
        }
    }

    /// A line per service port, then the total.
    pub fn render_table(&self, headers: bool) -> String {
        let lines = self
            .services
            .iter()
            .map(|s| vec![s.service.to_string(), s.flows.to_string()])
            .chain([vec!["total".to_string(), self.flows.to_string()]]);
        table(
            &[Column::text("SERVICE"), Column::number("FLOWS")],
            lines,
            headers,
        )
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of `FlowValue::last_seen_ns`.
fn monotonic_coarse_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

pub fn run(args: &ConntrackArgs) -> anyhow::Result<()> {
    let maps = open_pinned(&args.pin_path)?;
    let names = maps.service_names().context("reading SERVICE_NAMES")?;
    let filter = FlowFilter::new(args.service.as_ref(), args.backend, args.client, &names)?;
    let output: &OutputArgs = &args.output;
    if args.count {
        let mut per_service: BTreeMap<u32, u64> = BTreeMap::new();
        // Nothing is kept: the pass only tallies, over the whole table.
        maps.select_conntrack(0, |key, value| {
            if filter.keeps(key, value) {
                *per_service.entry(value.service_id).or_default() += 1;
            }
            false
        })
        .context("reading CONNTRACK")?;
        let counts = FlowCounts::new(&per_service, &names);
        print!(
            "{}",
            output
                .serialized(&counts)
                .unwrap_or_else(|| counts.render_table(!output.no_headers))
        );
        return Ok(());
    }
    let selected = maps
        .select_conntrack(args.limit, |key, value| filter.keeps(key, value))
        .context("reading CONNTRACK")?;
    let now = monotonic_coarse_ns();
    let mut rows: Vec<FlowRow> = selected
        .entries
        .iter()
        .map(|(key, value)| flow_row(key, value, &names, now))
        .collect();
    rows.sort_by(|a, b| {
        (&a.service, a.frontend, a.client).cmp(&(&b.service, b.frontend, b.client))
    });
    print!(
        "{}",
        output.serialized(&rows).unwrap_or_else(|| render_flows(
            &rows,
            output.wide(),
            !output.no_headers
        ))
    );
    if selected.truncated {
        eprintln!(
            "stopped at --limit {}: more flows match (`--count` counts them all)",
            args.limit
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::{FAMILY_IPV4, PROTO_UDP};

    use super::*;
    use crate::cli::{output::OutputFormat, services::ServiceFilter};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&a);
        addr
    }

    fn names() -> BTreeMap<u32, String> {
        BTreeMap::from([
            (1, "default/my-app-service:http".to_string()),
            (2, "kube-system/kube-dns:dns".to_string()),
        ])
    }

    /// A forward entry: `client` to `frontend`, balanced to `backend`.
    fn flow(
        proto: u8,
        client: ([u8; 4], u16),
        frontend: ([u8; 4], u16),
        backend: ([u8; 4], u16),
        service_id: u32,
    ) -> (FlowKey, FlowValue) {
        (
            FlowKey {
                src_addr: v4(client.0),
                dst_addr: v4(frontend.0),
                src_port: client.1.to_be(),
                dst_port: frontend.1.to_be(),
                proto,
                family: FAMILY_IPV4,
                _pad: [0; 2],
            },
            FlowValue {
                backend_id: 3,
                service_id,
                last_seen_ns: 10_000_000_000,
                nat_addr: v4(backend.0),
                nat_port: backend.1.to_be(),
                direction: flow_direction::FORWARD,
                tcp_flags_seen: tcp_seen::SYN | tcp_seen::ESTABLISHED,
                _pad: [0; 4],
            },
        )
    }

    fn table_of_flows() -> Vec<(FlowKey, FlowValue)> {
        let web = flow(
            PROTO_TCP,
            ([198, 18, 0, 2], 40000),
            ([198, 18, 100, 10], 80),
            ([198, 18, 1, 2], 8080),
            1,
        );
        let mut reply = web;
        reply.1.direction = flow_direction::REPLY;
        vec![
            web,
            reply,
            flow(
                PROTO_TCP,
                ([198, 18, 0, 3], 40001),
                ([198, 18, 100, 10], 80),
                ([198, 18, 2, 2], 8080),
                1,
            ),
            flow(
                PROTO_UDP,
                ([198, 18, 0, 2], 5353),
                ([198, 18, 100, 53], 53),
                ([198, 18, 3, 2], 53),
                2,
            ),
        ]
    }

    fn kept(filter: &FlowFilter) -> Vec<String> {
        table_of_flows()
            .iter()
            .filter(|(k, v)| filter.keeps(k, v))
            .map(|(k, v)| flow_row(k, v, &names(), 0).client.to_string())
            .collect()
    }

    #[test]
    fn filters_keep_forward_entries_by_service_backend_and_client() {
        let all = FlowFilter::default();
        assert_eq!(
            kept(&all),
            ["198.18.0.2:40000", "198.18.0.3:40001", "198.18.0.2:5353"],
            "one row per flow: its reply entry is not listed"
        );
        let service = |text: &str| {
            FlowFilter::new(
                Some(&ServiceFilter::parse_service(text).expect("a service")),
                None,
                None,
                &names(),
            )
        };
        assert_eq!(
            kept(&service("kube-system/kube-dns").expect("known")),
            ["198.18.0.2:5353"]
        );
        assert_eq!(
            kept(&service("default/my-app-service:http").expect("known")).len(),
            2
        );
        let unknown = service("default/my-app-service:grpc").expect_err("no such port");
        assert!(unknown.to_string().contains("default/my-app-service:grpc"));
        let backend = |text: &str| FlowFilter {
            backend: Some(parse_endpoint(text).expect("an endpoint")),
            ..FlowFilter::default()
        };
        assert_eq!(kept(&backend("198.18.2.2")), ["198.18.0.3:40001"]);
        assert_eq!(kept(&backend("198.18.2.2:8080")), ["198.18.0.3:40001"]);
        assert_eq!(kept(&backend("198.18.2.2:9090")), Vec::<String>::new());
        let client = FlowFilter {
            client: Some("198.18.0.2".parse().expect("literal")),
            ..FlowFilter::default()
        };
        assert_eq!(kept(&client), ["198.18.0.2:40000", "198.18.0.2:5353"]);
        assert!(parse_endpoint("[2001:2::5]:80").is_ok_and(|e| e.port == Some(80)));
        assert!(parse_endpoint("2001:2::5").is_ok_and(|e| e.port.is_none()));
        assert!(parse_endpoint("backend-1").is_err());
    }

    #[test]
    fn a_flow_row_names_its_service_idle_time_and_tcp_state() {
        let (key, value) = table_of_flows()[0];
        let row = flow_row(&key, &value, &names(), 13_500_000_000);
        assert_eq!(row.protocol, "TCP");
        assert_eq!(row.backend.to_string(), "198.18.1.2:8080");
        assert_eq!(row.service.to_string(), "default/my-app-service:http");
        assert_eq!(row.idle_seconds, 3);
        assert_eq!(row.tcp_state, ["SYN", "ESTABLISHED"]);
        let (key, value) = table_of_flows()[3];
        assert!(flow_row(&key, &value, &names(), 0).tcp_state.is_empty());
        let json = serde_json::to_value(flow_row(&key, &value, &BTreeMap::new(), 0)).expect("JSON");
        assert_eq!(
            json["service"], "<service id 2>",
            "an unnamed id stays visible"
        );
    }

    #[test]
    fn flows_render_as_table_wide_json_and_yaml() {
        let rows: Vec<FlowRow> = table_of_flows()
            .iter()
            .filter(|(k, v)| FlowFilter::default().keeps(k, v))
            .map(|(k, v)| flow_row(k, v, &names(), 12_000_000_000))
            .collect();
        let text = render_flows(&rows, false, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("PROTOCOL "), "{text}");
        assert!(!lines[0].contains("SERVICE ID"), "{text}");
        assert!(
            lines[1].contains("198.18.1.2:8080")
                && lines[1].contains("default/my-app-service:http")
                && lines[1].contains("SYN,ESTABLISHED")
                && lines[1].contains(" 2s "),
            "{text}"
        );
        // The columns line up whatever the length of each cell.
        let backend_at = lines[0].find("BACKEND").expect("header");
        assert_eq!(lines[1].find("198.18.1.2"), Some(backend_at), "{text}");
        assert_eq!(lines[3].find("198.18.3.2"), Some(backend_at), "{text}");
        assert!(
            render_flows(&rows, true, true)
                .lines()
                .next()
                .expect("header")
                .ends_with("BACKEND ID")
        );
        assert_eq!(render_flows(&rows, false, false).lines().count(), 3);
        let json = OutputArgs {
            output: OutputFormat::Json,
            no_headers: false,
        };
        let value: serde_json::Value =
            serde_json::from_str(&json.serialized(&rows).expect("json")).expect("valid JSON");
        for key in [
            "protocol",
            "client",
            "frontend",
            "backend",
            "namespace",
            "service",
            "port_name",
            "idle_seconds",
            "tcp_state",
        ] {
            assert!(value[0].get(key).is_some(), "{key} missing: {value}");
        }
        assert_eq!(value[2]["namespace"], "kube-system");
        let yaml = OutputArgs {
            output: OutputFormat::Yaml,
            ..json
        };
        let from_yaml: serde_json::Value =
            serde_norway::from_str(&yaml.serialized(&rows).expect("yaml")).expect("valid YAML");
        assert_eq!(from_yaml, value);
    }

    #[test]
    fn counts_are_per_service_port_with_a_total() {
        let counts = FlowCounts::new(&BTreeMap::from([(1, 2), (2, 1), (9, 4)]), &names());
        assert_eq!(counts.flows, 7);
        let table = counts.render_table(true);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("SERVICE"), "{table}");
        assert!(
            lines[4].starts_with("total") && lines[4].ends_with(" 7"),
            "{table}"
        );
        assert!(table.contains("<service id 9>"), "{table}");
        let json = serde_json::to_value(&counts).expect("JSON");
        assert_eq!(json["flows"], 7);
        assert!(
            json["services"]
                .as_array()
                .expect("a list")
                .iter()
                .any(|s| s["namespace"] == "kube-system"
                    && s["service"] == "kube-dns"
                    && s["flows"] == 1)
        );
        assert_eq!(counts.render_table(false).lines().count(), 4);
    }
}
