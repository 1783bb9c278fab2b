//! Drift, in words (what `slicelb check` prints): the operations a fresh planner would write
//! to take the maps to the desired state, each described for a person, and the service
//! ports that would not fit. Maps in sync give no operation, so no difference; the planner's
//! comparison is the only one. Every difference names the service, the frontend when there
//! is one, and what differs. Deleting an unused backend is the one operation that is not
//! drift.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
};

use lb_common::{FrontendKey, FrontendValue};

use super::{encode::backend_identity, plan};
use crate::{
    dataplane::{AppliedState, MapCapacity, MapOp, SelectionTable, describe_frontend},
    model::{DesiredState, FrontendKind},
};

/// One way the maps differ from what the snapshot asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference {
    /// `namespace/name:port`; `service id N` for an id without a name.
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

/// What differs between `applied` and `desired`, planned within `capacity`; empty when the
/// maps hold exactly what is desired.
pub fn differences(
    applied: &AppliedState,
    desired: &DesiredState,
    capacity: MapCapacity,
) -> Vec<Difference> {
    let plan = plan(applied, desired, capacity);
    let mut out: Vec<Difference> = plan
        .rejected
        .iter()
        .map(|(name, reason)| Difference {
            service: name.to_string(),
            frontend: None,
            what: format!("does not fit: {reason}"),
        })
        .collect();
    let words = Words::new(applied, desired, &plan.ops);
    for op in &plan.ops {
        words.describe(op, &mut out);
    }
    out.sort();
    out
}

/// What describing the ops needs to know: the maps before the plan, and what the plan
/// writes that its ops refer to by id.
struct Words<'a> {
    applied: &'a AppliedState,
    /// Service names by id once the plan is applied.
    names: BTreeMap<u32, &'a str>,
    /// Backend addresses by id once the plan is applied.
    planned_backends: BTreeMap<u32, SocketAddr>,
    /// Tables the plan writes, by offset.
    new_tables: BTreeMap<u32, &'a SelectionTable>,
    /// The desired service ports using each backend address.
    users: BTreeMap<SocketAddr, Vec<String>>,
}

impl<'a> Words<'a> {
    fn new(applied: &'a AppliedState, desired: &DesiredState, ops: &'a [MapOp]) -> Self {
        let mut names: BTreeMap<u32, &str> = applied
            .service_names
            .iter()
            .map(|(id, name)| (*id, name.as_str()))
            .collect();
        let mut planned_backends: BTreeMap<u32, SocketAddr> = applied
            .backends
            .iter()
            .filter_map(|(id, backend)| Some((*id, backend_identity(backend)?)))
            .collect();
        let mut new_tables = BTreeMap::new();
        for op in ops {
            match op {
                MapOp::PutServiceName { id, name } => {
                    names.insert(*id, name);
                }
                MapOp::PutBackend { id, backend } => {
                    if let Some(addr) = backend_identity(backend) {
                        planned_backends.insert(*id, addr);
                    }
                }
                MapOp::PutSelection { offset, slots } => {
                    new_tables.insert(*offset, slots);
                }
                _ => {}
            }
        }
        let mut users: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
        for (name, service) in &desired.services {
            for addr in service.backends.keys() {
                users.entry(*addr).or_default().push(name.to_string());
            }
        }
        Self {
            applied,
            names,
            planned_backends,
            new_tables,
            users,
        }
    }

    fn name(&self, service_id: u32) -> String {
        self.names.get(&service_id).map_or_else(
            || format!("service id {service_id}"),
            |name| (*name).to_owned(),
        )
    }

    fn describe(&self, op: &MapOp, out: &mut Vec<Difference>) {
        let mut push = |service: String, frontend: Option<&FrontendKey>, what: String| {
            out.push(Difference {
                service,
                frontend: frontend.map(describe_frontend),
                what,
            });
        };
        match op {
            MapOp::PutServiceName { name, .. } => {
                push(name.clone(), None, "not in SERVICE_NAMES".to_owned());
            }
            MapOp::DeleteServiceName { id } => {
                push(
                    self.name(*id),
                    None,
                    format!("service id {id} is not desired"),
                );
            }
            MapOp::PutFrontend { key, value } => {
                for what in self.frontend_changes(key, value) {
                    push(self.name(value.service_id), Some(key), what);
                }
            }
            MapOp::DeleteFrontend { key } => {
                let owner = self.applied.frontends.get(key).map(|v| v.service_id);
                let service = owner.map_or_else(|| "no service".to_owned(), |id| self.name(id));
                push(service, Some(key), "frontend is not desired".to_owned());
            }
            // Described with the frontends that point at them.
            MapOp::PutSelection { .. } => {}
            // A new table's index goes with the table; an index missing for a table in use
            // is drift: affinity to its backends would not be kept.
            MapOp::PutTableMembers { offset, .. } if !self.new_tables.contains_key(offset) => {
                for (key, value) in &self.applied.frontends {
                    if value.table_size > 0 && value.table_offset == *offset {
                        push(
                            self.name(value.service_id),
                            Some(key),
                            format!("selection table at {offset} is not indexed in TABLE_MEMBERS"),
                        );
                    }
                }
            }
            MapOp::PutTableMembers { .. } => {}
            // The index of a table no frontend uses: on no packet's path.
            MapOp::DeleteTableMembers { .. } => {}
            MapOp::PutBackend { id, backend } => {
                let Some(addr) = backend_identity(backend) else {
                    return;
                };
                let what = match self.applied.backends.get(id) {
                    None => format!("backend {addr} missing from BACKENDS"),
                    Some(found) => format!(
                        "backend {addr} (id {id}) has state {} flags {:#x}, expected state {} flags {:#x}",
                        found.state, found.flags, backend.state, backend.flags
                    ),
                };
                // Only the admitted services' backends are written: each has a user.
                for user in self.users.get(&addr).into_iter().flatten() {
                    push(user.clone(), None, what.clone());
                }
            }
            // A backend no service uses any more is on no packet's path but that of flows
            // which already name it; the planner tidies it away, and it is not drift (a
            // rejected service that lost a frontend to another may leave one).
            MapOp::DeleteBackend { .. } => {}
            MapOp::PutSourceRange { key, prefix_len }
            | MapOp::DeleteSourceRange { key, prefix_len } => {
                let state = if matches!(op, MapOp::PutSourceRange { .. }) {
                    "is missing"
                } else {
                    "is not desired"
                };
                push(
                    self.name(u32::from_be_bytes(key.service_id_be)),
                    None,
                    format!("source range entry /{prefix_len} {state}"),
                );
            }
        }
    }

    /// How the FRONTENDS entry for `key` differs from `value`, the one the plan writes.
    fn frontend_changes(&self, key: &FrontendKey, value: &FrontendValue) -> Vec<String> {
        let Some(found) = self.applied.frontends.get(key) else {
            return vec![format!(
                "{} frontend missing from FRONTENDS",
                kind_name(value.kind)
            )];
        };
        let mut changes = Vec::new();
        if found.service_id != value.service_id {
            let owner = self.applied.service_names.get(&found.service_id);
            let owner = owner.map_or("no name", String::as_str);
            changes.push(format!(
                "belongs to service id {} ({owner})",
                found.service_id
            ));
        }
        if found.kind != value.kind {
            changes.push(format!(
                "kind is {}, expected {}",
                kind_name(found.kind),
                kind_name(value.kind)
            ));
        }
        if found.flags != value.flags {
            changes.push(format!(
                "flags are {:#06x}, expected {:#06x}",
                found.flags, value.flags
            ));
        }
        if found.affinity_timeout_secs != value.affinity_timeout_secs {
            changes.push(format!(
                "affinity timeout is {}s, expected {}s",
                found.affinity_timeout_secs, value.affinity_timeout_secs
            ));
        }
        changes.extend(self.table_changes(found, value));
        if changes.is_empty() {
            changes.push(format!("FRONTENDS holds {found:?}, expected {value:?}"));
        }
        changes
    }

    /// How the frontend's selection table (and its backend count) differs from the one the
    /// plan points it at.
    fn table_changes(&self, found: &FrontendValue, value: &FrontendValue) -> Vec<String> {
        let old: Vec<Option<SocketAddr>> = if found.table_size == 0 {
            Vec::new()
        } else {
            match self.applied.selection.get(&found.table_offset) {
                Some(slots) if slots.len() == found.table_size as usize => slots
                    .map_members(|id| self.applied.backends.get(&id).and_then(backend_identity)),
                _ => {
                    return vec![format!(
                        "selection table at {} ({} slots) is missing",
                        found.table_offset, found.table_size
                    )];
                }
            }
        };
        let mut changes = Vec::new();
        let dangling = old.iter().filter(|slot| slot.is_none()).count();
        if dangling > 0 {
            changes.push(format!("{dangling} table slots name no backend"));
        }
        let in_old: BTreeSet<SocketAddr> = old.iter().flatten().copied().collect();
        if usize::from(found.backend_count) != in_old.len() {
            changes.push(format!(
                "backend count says {}, table holds {}",
                found.backend_count,
                in_old.len()
            ));
        }
        if (found.table_offset, found.table_size) == (value.table_offset, value.table_size) {
            return changes;
        }
        let new: Vec<Option<SocketAddr>> = if value.table_size == 0 {
            Vec::new()
        } else {
            let slots = self
                .new_tables
                .get(&value.table_offset)
                .copied()
                .or_else(|| self.applied.selection.get(&value.table_offset));
            slots
                .map(SelectionTable::ids)
                .unwrap_or_default()
                .iter()
                .map(|id| self.planned_backends.get(id).copied())
                .collect()
        };
        let in_new: BTreeSet<SocketAddr> = new.iter().flatten().copied().collect();
        for missing in in_new.difference(&in_old) {
            changes.push(format!("backend {missing} is not in the selection table"));
        }
        for extra in in_old.difference(&in_new) {
            changes.push(format!(
                "backend {extra} is in the selection table but not desired"
            ));
        }
        if in_old == in_new && dangling == 0 && !old.is_empty() {
            if old.len() == new.len() {
                // Tables are updated from the one before with the fewest moves, so the
                // slots the plan moves are exactly those beyond their backend's share.
                let misplaced = old.iter().zip(&new).filter(|(a, b)| a != b).count();
                if misplaced > 0 {
                    changes.push(format!(
                        "{misplaced} table slots are beyond their backend's share of the table"
                    ));
                }
            } else {
                changes.push(format!(
                    "selection table has {} slots, expected {}",
                    old.len(),
                    new.len()
                ));
            }
        }
        changes
    }
}

fn kind_name(code: u8) -> String {
    FrontendKind::from_code(code).map_or_else(|| format!("kind {code}"), |k| k.to_string())
}
