//! Keeping an [`AppliedState`] in step with the ops written to the kernel, so the agent need
//! not read every map back after each sync; and telling what kind of change each op made
//! (the agent counts them by map: `slicelb_map_changes_total`).

use std::collections::BTreeMap;

use lb_common::{FrontendValue, map_names};
use rustc_hash::FxHashMap;

use super::{AppliedState, MapOp};

/// What one op did to its map's entry: the `change` label of `slicelb_map_changes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    Added,
    Updated,
    Deleted,
}

impl Change {
    pub const ALL: [Self; 3] = [Self::Added, Self::Updated, Self::Deleted];

    pub fn name(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

impl MapOp {
    /// Every map [`Self::map`] names: the metrics count changes to each from zero.
    pub const MAPS: [&'static str; 6] = [
        map_names::FRONTENDS,
        map_names::BACKENDS,
        map_names::SELECTION,
        map_names::TABLE_MEMBERS,
        map_names::SERVICE_NAMES,
        map_names::SOURCE_RANGES,
    ];

    /// The map this op writes, named as in `lb_common::map_names`.
    pub fn map(&self) -> &'static str {
        match self {
            Self::PutBackend { .. } | Self::DeleteBackend { .. } => map_names::BACKENDS,
            Self::PutSelection { .. } => map_names::SELECTION,
            Self::PutTableMembers { .. } | Self::DeleteTableMembers { .. } => {
                map_names::TABLE_MEMBERS
            }
            Self::PutFrontend { .. } | Self::DeleteFrontend { .. } => map_names::FRONTENDS,
            Self::PutServiceName { .. } | Self::DeleteServiceName { .. } => {
                map_names::SERVICE_NAMES
            }
            Self::PutSourceRange { .. } | Self::DeleteSourceRange { .. } => {
                map_names::SOURCE_RANGES
            }
        }
    }

    /// Whether this op adds, replaces or deletes an entry of maps holding `before`.
    pub fn change(&self, before: &AppliedState) -> Change {
        let put = |present: bool| {
            if present {
                Change::Updated
            } else {
                Change::Added
            }
        };
        match self {
            Self::PutBackend { id, .. } => put(before.backends.contains_key(id)),
            Self::PutSelection { offset, .. } => put(before.selection.contains_key(offset)),
            Self::PutTableMembers { offset, .. } => put(before.table_members.contains_key(offset)),
            Self::PutFrontend { key, .. } => put(before.frontends.contains_key(key)),
            Self::PutServiceName { id, .. } => put(before.service_names.contains_key(id)),
            Self::PutSourceRange { key, prefix_len } => {
                put(before.source_ranges.contains(&(*key, *prefix_len)))
            }
            Self::DeleteBackend { .. }
            | Self::DeleteTableMembers { .. }
            | Self::DeleteFrontend { .. }
            | Self::DeleteServiceName { .. }
            | Self::DeleteSourceRange { .. } => Change::Deleted,
        }
    }
}

/// Ops written, by map and kind of change.
pub type MapChanges = BTreeMap<(&'static str, Change), u64>;

/// Counts `ops` by map and kind of change, as written over maps holding `before`.
pub fn count_changes(before: &AppliedState, ops: &[MapOp]) -> MapChanges {
    let mut changes = MapChanges::new();
    for op in ops {
        *changes.entry((op.map(), op.change(before))).or_default() += 1;
    }
    changes
}

/// What [`AppliedState::apply`] counts beside the maps' contents: how many frontends point
/// at each table, and the TABLE_MEMBERS entries of all tables. A small change then finds the
/// tables it left unused, and the planner the entries in use, without a pass over every
/// frontend or table. Derived data, so never compared; counted afresh when the sizes of
/// `frontends` and `table_members` are not the ones last counted (a state read back from
/// the maps, or built by hand).
#[derive(Clone, Debug, Default)]
pub struct Tallies {
    /// Frontends pointing at each table (only tables some frontend points at).
    table_users: FxHashMap<u32, u32>,
    table_members: u64,
    /// The sizes of `frontends` and `table_members` these counts are for.
    counted: Option<(usize, usize)>,
}

impl PartialEq for Tallies {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Tallies {}

impl Tallies {
    fn join(&mut self, value: &FrontendValue) {
        if value.table_size > 0 {
            *self.table_users.entry(value.table_offset).or_default() += 1;
        }
    }

    /// Counts `value` out; returns the table it pointed at.
    fn leave(&mut self, value: &FrontendValue) -> Option<u32> {
        if value.table_size == 0 {
            return None;
        }
        let offset = value.table_offset;
        if let Some(users) = self.table_users.get_mut(&offset) {
            *users -= 1;
            if *users == 0 {
                self.table_users.remove(&offset);
            }
        }
        Some(offset)
    }
}

impl AppliedState {
    /// Applies `ops` as the kernel maps would, then forgets selection tables that no frontend
    /// points at any more (their space is free again).
    pub fn apply(&mut self, ops: &[MapOp]) {
        self.count_if_stale();
        // Tables a frontend pointed at before an op replaced or removed it: the only ones
        // that may have lost their last frontend.
        let mut maybe_unused: Vec<u32> = Vec::new();
        let tallies = &mut self.tallies;
        for op in ops {
            match op {
                MapOp::PutBackend { id, backend } => {
                    self.backends.insert(*id, *backend);
                }
                MapOp::DeleteBackend { id } => {
                    self.backends.remove(id);
                }
                MapOp::PutSelection { offset, slots } => {
                    self.selection.insert(*offset, slots.clone());
                }
                MapOp::PutTableMembers { offset, slots } => {
                    let count = u32::try_from(slots.members().len()).unwrap_or(u32::MAX);
                    let old = self.table_members.insert(*offset, count).unwrap_or(0);
                    tallies.table_members =
                        tallies.table_members + u64::from(count) - u64::from(old);
                }
                MapOp::DeleteTableMembers { offset, .. } => {
                    if let Some(old) = self.table_members.remove(offset) {
                        tallies.table_members -= u64::from(old);
                    }
                }
                MapOp::PutFrontend { key, value } => {
                    if let Some(old) = self.frontends.insert(*key, *value) {
                        maybe_unused.extend(tallies.leave(&old));
                    }
                    tallies.join(value);
                }
                MapOp::DeleteFrontend { key } => {
                    if let Some(old) = self.frontends.remove(key) {
                        maybe_unused.extend(tallies.leave(&old));
                    }
                }
                MapOp::PutServiceName { id, name } => {
                    self.service_names.insert(*id, name.clone());
                }
                MapOp::DeleteServiceName { id } => {
                    self.service_names.remove(id);
                }
                MapOp::PutSourceRange { key, prefix_len } => {
                    self.source_ranges.insert((*key, *prefix_len));
                }
                MapOp::DeleteSourceRange { key, prefix_len } => {
                    self.source_ranges.remove(&(*key, *prefix_len));
                }
            }
        }
        tallies.counted = Some((self.frontends.len(), self.table_members.len()));
        // A table written by these ops that no frontend points at is also unused.
        maybe_unused.extend(ops.iter().filter_map(|op| match op {
            MapOp::PutSelection { offset, .. } => Some(*offset),
            _ => None,
        }));
        for offset in maybe_unused {
            if !tallies.table_users.contains_key(&offset) {
                self.selection.remove(&offset);
            }
        }
    }

    /// Counts frontends per table and table members afresh unless the counts are for the
    /// maps as they are.
    fn count_if_stale(&mut self) {
        if self.tallies.counted == Some((self.frontends.len(), self.table_members.len())) {
            return;
        }
        let mut tallies = Tallies {
            table_members: self.table_members.values().map(|&n| u64::from(n)).sum(),
            counted: Some((self.frontends.len(), self.table_members.len())),
            ..Tallies::default()
        };
        for value in self.frontends.values() {
            tallies.join(value);
        }
        self.tallies = tallies;
    }

    /// Selection slots in use (whole tables).
    pub fn selection_slots_used(&self) -> u64 {
        self.selection.values().map(|t| t.len() as u64).sum()
    }

    /// Entries of TABLE_MEMBERS the indexed tables hold.
    pub fn table_member_count(&self) -> u64 {
        if self.tallies.counted == Some((self.frontends.len(), self.table_members.len())) {
            return self.tallies.table_members;
        }
        self.table_members.values().map(|&n| u64::from(n)).sum()
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{Backend, FrontendKey, FrontendValue};

    use super::*;

    #[test]
    fn ops_are_counted_as_added_updated_or_deleted_against_the_maps_before_them() {
        let backend = |port: u16| Backend {
            port: port.to_be(),
            ..Backend::default()
        };
        let frontend = |port: u16| FrontendKey {
            port: port.to_be(),
            ..FrontendKey::default()
        };
        let mut before = AppliedState::default();
        before.apply(&[
            MapOp::PutBackend {
                id: 1,
                backend: backend(8080),
            },
            MapOp::PutFrontend {
                key: frontend(80),
                value: FrontendValue::default(),
            },
        ]);
        let ops = [
            MapOp::PutBackend {
                id: 1,
                backend: backend(8081),
            },
            MapOp::PutBackend {
                id: 2,
                backend: backend(8080),
            },
            MapOp::PutBackend {
                id: 3,
                backend: backend(8080),
            },
            MapOp::PutFrontend {
                key: frontend(443),
                value: FrontendValue::default(),
            },
            MapOp::DeleteFrontend { key: frontend(80) },
        ];
        let expected = MapChanges::from([
            ((map_names::BACKENDS, Change::Added), 2),
            ((map_names::BACKENDS, Change::Updated), 1),
            ((map_names::FRONTENDS, Change::Added), 1),
            ((map_names::FRONTENDS, Change::Deleted), 1),
        ]);
        assert_eq!(count_changes(&before, &ops), expected);
        assert!(
            ops.iter().all(|op| MapOp::MAPS.contains(&op.map())),
            "MapOp::MAPS lists every map an op writes"
        );
    }
}
