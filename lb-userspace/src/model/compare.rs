//! Desired versus applied, in words: what `slicelb check` prints. Every difference names the
//! service, the frontend when there is one, and what differs.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::SocketAddr,
};

use lb_common::FrontendKey;

use super::{DesiredState, FrontendKind, Protocol};
use crate::{
    dataplane::AppliedState,
    diff::{
        encode::{
            backend_entry, backend_identity, decode_addr, frontend_key, source_range_entries,
        },
        maglev::rebalance,
    },
};

/// One way the maps differ from what the snapshot asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference {
    /// `namespace/name:port`, or `service id N` for an id without a name.
    pub service: String,
    /// `address:port/PROTO` when the difference is about one frontend.
    pub frontend: Option<String>,
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.frontend {
            Some(frontend) => write!(f, "{} {frontend}: {}", self.service, self.what),
            None => write!(f, "{}: {}", self.service, self.what),
        }
    }
}

fn describe_key(key: &FrontendKey) -> String {
    let proto = Protocol::from_number(key.proto)
        .map_or_else(|| format!("proto {}", key.proto), |p| p.to_string());
    match decode_addr(&key.addr, key.family) {
        Some(ip) => format!("{}/{proto}", SocketAddr::new(ip, u16::from_be(key.port))),
        None => format!("<family {}>/{proto}", key.family),
    }
}

impl DesiredState {
    /// What differs between this desired state and the maps' contents; empty when the maps
    /// hold exactly what is desired.
    pub fn differences(&self, applied: &AppliedState) -> Vec<Difference> {
        let mut out = Vec::new();
        let mut push = |service: &str, frontend: Option<String>, what: String| {
            out.push(Difference {
                service: service.to_owned(),
                frontend,
                what,
            });
        };
        let ids_by_name: HashMap<&str, u32> = applied
            .service_names
            .iter()
            .map(|(id, name)| (name.as_str(), *id))
            .collect();
        let backend_by_id: HashMap<u32, SocketAddr> = applied
            .backends
            .iter()
            .filter_map(|(id, b)| backend_identity(b).map(|addr| (*id, addr)))
            .collect();
        let id_by_backend: HashMap<SocketAddr, u32> =
            backend_by_id.iter().map(|(id, a)| (*a, *id)).collect();
        let merged = self.merged_backends();
        let mut desired_keys = BTreeSet::new();
        let mut desired_ranges = BTreeSet::new();

        for (name, service) in &self.services {
            let name_text = name.to_string();
            let service_id = ids_by_name.get(name_text.as_str()).copied();
            if service_id.is_none() {
                push(&name_text, None, "not in SERVICE_NAMES".to_owned());
            }
            if let Some(id) = service_id {
                desired_ranges.extend(source_range_entries(id, service));
            }
            for frontend in &service.frontends {
                let key = frontend_key(frontend, service.protocol);
                desired_keys.insert(key);
                let shown = Some(describe_key(&key));
                let Some(value) = applied.frontends.get(&key) else {
                    push(
                        &name_text,
                        shown,
                        format!("{} frontend missing from FRONTENDS", frontend.kind),
                    );
                    continue;
                };
                if Some(value.service_id) != service_id {
                    let owner = applied.service_names.get(&value.service_id);
                    let owner = owner.map_or_else(|| "no name".to_owned(), Clone::clone);
                    push(
                        &name_text,
                        shown.clone(),
                        format!("belongs to service id {} ({owner})", value.service_id),
                    );
                }
                if value.kind != frontend.kind.code() {
                    let found = FrontendKind::from_code(value.kind)
                        .map_or_else(|| format!("kind {}", value.kind), |k| k.to_string());
                    push(
                        &name_text,
                        shown.clone(),
                        format!("kind is {found}, expected {}", frontend.kind),
                    );
                }
                let flags = frontend.flag_bits(service);
                if value.flags != flags {
                    push(
                        &name_text,
                        shown.clone(),
                        format!("flags are {:#06x}, expected {flags:#06x}", value.flags),
                    );
                }
                let timeout = service.affinity_timeout_secs.unwrap_or(0);
                if service.affinity_timeout_secs.is_some() && value.affinity_timeout_secs != timeout
                {
                    push(
                        &name_text,
                        shown.clone(),
                        format!(
                            "affinity timeout is {}s, expected {timeout}s",
                            value.affinity_timeout_secs
                        ),
                    );
                }
                let table: Vec<Option<SocketAddr>> = if value.table_size == 0 {
                    Vec::new()
                } else {
                    match applied.selection.get(&value.table_offset) {
                        Some(slots) if slots.len() == value.table_size as usize => slots
                            .iter()
                            .map(|id| backend_by_id.get(id).copied())
                            .collect(),
                        _ => {
                            push(
                                &name_text,
                                shown.clone(),
                                format!(
                                    "selection table at {} ({} slots) is missing",
                                    value.table_offset, value.table_size
                                ),
                            );
                            continue;
                        }
                    }
                };
                let dangling = table.iter().filter(|slot| slot.is_none()).count();
                if dangling > 0 {
                    push(
                        &name_text,
                        shown.clone(),
                        format!("{dangling} table slots name no backend"),
                    );
                }
                let in_table: BTreeSet<SocketAddr> = table.iter().flatten().copied().collect();
                let wanted: BTreeSet<SocketAddr> = frontend.selection.iter().copied().collect();
                for missing in wanted.difference(&in_table) {
                    push(
                        &name_text,
                        shown.clone(),
                        format!("backend {missing} is not in the selection table"),
                    );
                }
                for extra in in_table.difference(&wanted) {
                    push(
                        &name_text,
                        shown.clone(),
                        format!("backend {extra} is in the selection table but not desired"),
                    );
                }
                if in_table == wanted && dangling == 0 && !table.is_empty() {
                    // Tables are updated from the one before (fewest moves), so they depend on
                    // history; what must hold is that every backend owns its exact quota, and
                    // such a table is one that rebalancing onto the same backends leaves alone.
                    let owners: Vec<SocketAddr> = table.iter().flatten().copied().collect();
                    let settled = rebalance(&owners, &frontend.selection, value.table_size);
                    let misplaced = settled
                        .iter()
                        .zip(&owners)
                        .filter(|(index, found)| frontend.selection[**index as usize] != **found)
                        .count();
                    if misplaced > 0 {
                        push(
                            &name_text,
                            shown.clone(),
                            format!(
                                "{misplaced} table slots are beyond their backend's share of the table"
                            ),
                        );
                    }
                }
                if value.backend_count as usize != in_table.len() {
                    push(
                        &name_text,
                        shown,
                        format!(
                            "backend count says {}, table holds {}",
                            value.backend_count,
                            in_table.len()
                        ),
                    );
                }
            }
            for (addr, backend) in &service.backends {
                match id_by_backend.get(addr) {
                    None => push(
                        &name_text,
                        None,
                        format!("backend {addr} missing from BACKENDS"),
                    ),
                    Some(id) => {
                        let found = applied.backends[id];
                        let merged_state = merged.get(addr).copied().unwrap_or(*backend);
                        let expected = backend_entry(*addr, merged_state);
                        if found.state != expected.state || found.flags != expected.flags {
                            push(
                                &name_text,
                                None,
                                format!(
                                    "backend {addr} (id {id}) has state {} flags {:#x}, expected state {} flags {:#x}",
                                    found.state, found.flags, expected.state, expected.flags
                                ),
                            );
                        }
                    }
                }
            }
        }

        let name_of = |id: u32| {
            applied
                .service_names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("service id {id}"))
        };
        for (key, value) in &applied.frontends {
            if !desired_keys.contains(key) {
                push(
                    &name_of(value.service_id),
                    Some(describe_key(key)),
                    "frontend is not desired".to_owned(),
                );
            }
        }
        let desired_names: BTreeSet<String> =
            self.services.keys().map(ToString::to_string).collect();
        for (id, name) in &applied.service_names {
            if !desired_names.contains(name) {
                push(name, None, format!("service id {id} is not desired"));
            }
        }
        for (key, prefix_len) in applied.source_ranges.difference(&desired_ranges) {
            let id = u32::from_be_bytes(key.service_id_be);
            push(
                &name_of(id),
                None,
                format!("source range entry /{prefix_len} is not desired"),
            );
        }
        for (key, prefix_len) in desired_ranges.difference(&applied.source_ranges) {
            let id = u32::from_be_bytes(key.service_id_be);
            push(
                &name_of(id),
                None,
                format!("source range entry /{prefix_len} is missing"),
            );
        }
        out.sort();
        out
    }
}
