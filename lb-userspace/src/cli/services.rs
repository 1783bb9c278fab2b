//! `slicelb services`: every frontend the kernel holds, with its backends and counters —
//! the datapath's `kubectl describe svc`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use lb_common::{
    Backend, FrontendKey, FrontendValue, PROTO_SCTP, PROTO_TCP, PROTO_UDP, ServiceCounters,
    backend_state, frontend_flags, frontend_kind,
};
use serde::Serialize;

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

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrontendRow {
    pub service: String,
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
        for id in slots.iter().take(value.table_size as usize) {
            *slots_per_backend.entry(*id).or_default() += 1;
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
    let service = applied
        .service_names
        .get(&value.service_id)
        .cloned()
        .unwrap_or_else(|| format!("<service id {}>", value.service_id));
    let backends = backend_shares(applied, value);
    let counter = counters.get(&value.service_id).copied().unwrap_or_default();
    FrontendRow {
        service,
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

/// The table: a line per frontend, then a line per backend under it.
pub fn render_table(rows: &[FrontendRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:<12} {:<30} {:>10} {:>10} {:>10}  FLAGS",
        "SERVICE", "TYPE", "FRONTEND", "PACKETS", "NEW FLOWS", "SOCKET LB"
    );
    for row in rows {
        let flags = if row.flags.is_empty() {
            "-".to_string()
        } else {
            row.flags.join(",")
        };
        let _ = writeln!(
            out,
            "{:<34} {:<12} {:<30} {:>10} {:>10} {:>10}  {flags}",
            row.service,
            row.kind,
            format!("{}/{}", row.frontend, row.protocol),
            row.packets,
            row.new_flows,
            row.socket_translations
        );
        for backend in &row.backends {
            let _ = writeln!(
                out,
                "  -> {:<44} {:<12} {:>5.1}% of {} slots",
                backend.address.to_string(),
                backend.state,
                backend.share_percent,
                row.table_size
            );
        }
    }
    out
}

pub fn render_json(rows: &[FrontendRow]) -> String {
    serde_json::to_string_pretty(rows).expect("rows are plain data") + "\n"
}

#[cfg(test)]
pub(crate) mod tests {
    use lb_common::{FAMILY_IPV4, FAMILY_IPV6};

    use super::*;

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
        let table = render_table(&rows(&applied, &counters));
        let expected = "\
SERVICE                            TYPE         FRONTEND                          PACKETS  NEW FLOWS  SOCKET LB  FLAGS
default/empty:dns                  ClusterIP    [2001:2:0:100::11]:53/UDP               0          0          0  no-endpoints(reject)
default/my-app-service:http        ClusterIP    198.18.100.10:80/TCP                 1200        300         40  affinity=10800s
  -> 198.18.1.2:8080                              active        50.2% of 251 slots
  -> 198.18.2.2:8080                              active        49.8% of 251 slots
default/my-app-service:http        NodePort     198.18.0.1:30080/TCP                 1200        300         40  externalTrafficPolicy=Local
  -> 198.18.1.2:8080                              active        50.2% of 251 slots
  -> 198.18.2.2:8080                              active        49.8% of 251 slots
";
        assert_eq!(table, expected, "services table changed:\n{table}");
    }

    #[test]
    fn services_json_golden() {
        let (applied, counters) = sample_state();
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&rows(&applied, &counters))).expect("valid JSON");
        let first_app = &json[1];
        assert_eq!(first_app["service"], "default/my-app-service:http");
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
    }
}
