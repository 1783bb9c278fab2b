//! [`MemoryMaps`]: the configuration maps in memory, with the kernel maps' sizes and
//! semantics (bounded arrays and hash maps), and a checker for the invariant packets rely
//! on after every op (whether the maps are what the snapshot asks for is the planner's
//! question: `diff::differences`). Tests apply plans to it op by op, and put flow state
//! (CONNTRACK, AFFINITY entries, as the datapath would write them) in it to see which
//! entries a plan's cleanup and the agent's affinity sweep delete.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt, io,
};

use lb_common::{
    AffinityKey, AffinityValue, Backend, FlowKey, FlowValue, FrontendKey, FrontendValue,
    SourceRangeKey, TableMember, backend_state, map_names,
};

use super::{
    AppliedState, DataplaneError, DeletedFlows, MapCapacity, MapOp, MapWriter, SelectionTable,
    StaleFlows, frontend_filter::FrontendFilter, fully_indexed, members_of, undo::NewTables,
};

/// The configuration maps, in memory.
#[derive(Clone, Debug)]
pub struct MemoryMaps {
    capacity: MapCapacity,
    frontends: BTreeMap<FrontendKey, FrontendValue>,
    /// The writer's bookkeeping for FRONTEND_FILTER, as `AyaMaps` keeps it.
    filter: FrontendFilter,
    /// FRONTEND_FILTER as the kernel would hold it: word index -> value (absent: zero),
    /// changed only by the words the bookkeeping hands out.
    filter_words: BTreeMap<u32, u64>,
    /// Indexed by backend id, `capacity.backends` long, like the BACKENDS array.
    backends: Vec<Backend>,
    /// `capacity.selection_slots` long, like the SELECTION array.
    selection: Vec<u32>,
    service_names: BTreeMap<u32, String>,
    source_ranges: BTreeSet<(SourceRangeKey, u32)>,
    /// TABLE_MEMBERS: (table, backend) -> a slot naming the backend.
    table_members: BTreeMap<TableMember, u32>,
    /// Flow state, as the datapath would have written it (tests put entries here, or
    /// [`MemoryMaps::pin_client`]).
    pub conntrack: HashMap<FlowKey, FlowValue>,
    pub affinity: HashMap<AffinityKey, AffinityValue>,
    /// Ops applied so far (tests count them).
    pub applied_ops: usize,
}

/// A way the maps would mislead a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A frontend's table runs past the end of SELECTION.
    TableOutOfBounds {
        frontend: FrontendKey,
        offset: u32,
        size: u32,
    },
    /// A table slot names a backend id that is out of range or empty.
    SlotWithoutBackend {
        frontend: FrontendKey,
        slot: u32,
        backend_id: u32,
    },
    /// A bit of a frontend's FRONTEND_FILTER slot is clear: the datapath would never find it.
    FilterBitClear { frontend: FrontendKey },
    /// A frontend names a service id without a name.
    ServiceWithoutName {
        frontend: FrontendKey,
        service_id: u32,
    },
    /// A backend of a frontend's table has no TABLE_MEMBERS entry naming a slot that holds
    /// it: the datapath would not see it as eligible (affinity to it would be dropped).
    MemberNotIndexed {
        frontend: FrontendKey,
        backend_id: u32,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TableOutOfBounds {
                frontend,
                offset,
                size,
            } => {
                write!(
                    f,
                    "frontend {frontend:?}: table {offset}+{size} runs past SELECTION"
                )
            }
            Self::SlotWithoutBackend {
                frontend,
                slot,
                backend_id,
            } => {
                write!(
                    f,
                    "frontend {frontend:?}: slot {slot} names backend {backend_id}, which does not exist"
                )
            }
            Self::FilterBitClear { frontend } => {
                write!(
                    f,
                    "frontend {frontend:?}: a FRONTEND_FILTER bit of it is clear"
                )
            }
            Self::ServiceWithoutName {
                frontend,
                service_id,
            } => {
                write!(
                    f,
                    "frontend {frontend:?}: service id {service_id} has no name"
                )
            }
            Self::MemberNotIndexed {
                frontend,
                backend_id,
            } => {
                write!(
                    f,
                    "frontend {frontend:?}: backend {backend_id} of its table is not in TABLE_MEMBERS"
                )
            }
        }
    }
}

fn not_found(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, what)
}

impl MemoryMaps {
    pub fn new(capacity: MapCapacity) -> Self {
        Self {
            capacity,
            frontends: BTreeMap::new(),
            filter: FrontendFilter::default(),
            filter_words: BTreeMap::new(),
            backends: vec![Backend::default(); capacity.backends as usize],
            selection: vec![0; capacity.selection_slots as usize],
            service_names: BTreeMap::new(),
            source_ranges: BTreeSet::new(),
            table_members: BTreeMap::new(),
            conntrack: HashMap::new(),
            affinity: HashMap::new(),
            applied_ops: 0,
        }
    }

    /// Pins `client` (a 16-byte address, or a network namespace cookie) to `backend_id` for
    /// `service_id`, as the datapath does for `sessionAffinity: ClientIP`.
    pub fn pin_client(&mut self, client: [u8; 16], family: u8, service_id: u32, backend_id: u32) {
        let key = AffinityKey {
            client_addr: client,
            service_id,
            family,
            _pad: [0; 3],
        };
        let value = AffinityValue {
            backend_id,
            slot: 0,
            last_seen_ns: 0,
        };
        self.affinity.insert(key, value);
    }

    /// The (table, backend) pairs of TABLE_MEMBERS.
    pub fn table_member_entries(&self) -> usize {
        self.table_members.len()
    }

    /// Applies one op, with the kernel maps' bounds.
    pub fn apply_op(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        let cap = self.capacity;
        match op {
            MapOp::PutBackend { id, backend } => {
                let slot = self
                    .backends
                    .get_mut(*id as usize)
                    .filter(|_| *id != 0)
                    .ok_or(DataplaneError::MapFull {
                        map: map_names::BACKENDS,
                        capacity: cap.backends,
                    })?;
                *slot = *backend;
            }
            MapOp::DeleteBackend { id } => {
                // Array entries cannot be deleted; the writer empties the slot.
                let slot = self.backends.get_mut(*id as usize).ok_or_else(|| {
                    DataplaneError::MapWrite {
                        map: map_names::BACKENDS,
                        source: not_found(format!("backend id {id}")),
                    }
                })?;
                *slot = Backend::default();
            }
            MapOp::PutSelection { offset, slots } => {
                let end = *offset as usize + slots.len();
                let target = self.selection.get_mut(*offset as usize..end).ok_or(
                    DataplaneError::MapFull {
                        map: map_names::SELECTION,
                        capacity: cap.selection_slots,
                    },
                )?;
                target.copy_from_slice(&slots.ids());
            }
            MapOp::PutTableMembers { offset, slots } => {
                let members = slots.first_slots();
                let new = members
                    .iter()
                    .filter(|(backend_id, _)| {
                        !self.table_members.contains_key(&TableMember {
                            table_offset: *offset,
                            backend_id: *backend_id,
                        })
                    })
                    .count();
                if self.table_members.len() + new > cap.table_members as usize {
                    return Err(DataplaneError::MapFull {
                        map: map_names::TABLE_MEMBERS,
                        capacity: cap.table_members,
                    });
                }
                for (backend_id, slot) in members {
                    let key = TableMember {
                        table_offset: *offset,
                        backend_id,
                    };
                    self.table_members.insert(key, slot);
                }
            }
            MapOp::DeleteTableMembers { offset, slots } => {
                // Like the kernel writer: entries already gone are skipped.
                for &backend_id in slots.members() {
                    self.table_members.remove(&TableMember {
                        table_offset: *offset,
                        backend_id,
                    });
                }
            }
            MapOp::PutFrontend { key, value } => {
                if !self.frontends.contains_key(key)
                    && self.frontends.len() >= cap.frontends as usize
                {
                    return Err(DataplaneError::MapFull {
                        map: map_names::FRONTENDS,
                        capacity: cap.frontends,
                    });
                }
                // Make before break: the filter bit first.
                if let Some(word) = self.filter.add(key) {
                    self.write_filter_word(word);
                }
                self.frontends.insert(*key, *value);
            }
            MapOp::DeleteFrontend { key } => {
                self.frontends
                    .remove(key)
                    .ok_or_else(|| DataplaneError::MapWrite {
                        map: map_names::FRONTENDS,
                        source: not_found(format!("frontend {key:?}")),
                    })?;
                if let Some(word) = self.filter.remove(key) {
                    self.write_filter_word(word);
                }
            }
            MapOp::PutServiceName { id, name } => {
                if *id == 0 || *id >= cap.services {
                    return Err(DataplaneError::MapFull {
                        map: map_names::SERVICE_NAMES,
                        capacity: cap.services,
                    });
                }
                self.service_names.insert(*id, name.clone());
            }
            MapOp::DeleteServiceName { id } => {
                self.service_names
                    .remove(id)
                    .ok_or_else(|| DataplaneError::MapWrite {
                        map: map_names::SERVICE_NAMES,
                        source: not_found(format!("service id {id}")),
                    })?;
            }
            MapOp::PutSourceRange { key, prefix_len } => {
                let entry = (*key, *prefix_len);
                if !self.source_ranges.contains(&entry)
                    && self.source_ranges.len() >= cap.source_ranges as usize
                {
                    return Err(DataplaneError::MapFull {
                        map: map_names::SOURCE_RANGES,
                        capacity: cap.source_ranges,
                    });
                }
                self.source_ranges.insert(entry);
            }
            MapOp::DeleteSourceRange { key, prefix_len } => {
                if !self.source_ranges.remove(&(*key, *prefix_len)) {
                    return Err(DataplaneError::MapWrite {
                        map: map_names::SOURCE_RANGES,
                        source: not_found(format!("source range {key:?}/{prefix_len}")),
                    });
                }
            }
        }
        self.applied_ops += 1;
        Ok(())
    }

    fn write_filter_word(&mut self, (word, value): (u32, u64)) {
        if value == 0 {
            self.filter_words.remove(&word);
        } else {
            self.filter_words.insert(word, value);
        }
    }

    /// Are all of `key`'s bits set in FRONTEND_FILTER as the kernel would hold it?
    pub fn filter_covers(&self, key: &FrontendKey) -> bool {
        let (word, mask) = self.filter.slot(key);
        self.filter_words
            .get(&word)
            .is_some_and(|w| w & mask == mask)
    }

    /// Set bits of FRONTEND_FILTER as the kernel would hold it.
    pub fn filter_bits_set(&self) -> u32 {
        self.filter_words.values().map(|w| w.count_ones()).sum()
    }

    /// Checks what a packet relies on: every frontend's filter bits are set, its table lies
    /// inside SELECTION, each of its slots names an existing backend that TABLE_MEMBERS
    /// indexes, and its service has a name.
    pub fn check(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        for (key, value) in &self.frontends {
            if !self.filter_covers(key) {
                violations.push(Violation::FilterBitClear { frontend: *key });
            }
            if !self.service_names.contains_key(&value.service_id) {
                violations.push(Violation::ServiceWithoutName {
                    frontend: *key,
                    service_id: value.service_id,
                });
            }
            if value.table_size == 0 {
                continue;
            }
            let start = value.table_offset as usize;
            let Some(slots) = self.selection.get(start..start + value.table_size as usize) else {
                violations.push(Violation::TableOutOfBounds {
                    frontend: *key,
                    offset: value.table_offset,
                    size: value.table_size,
                });
                continue;
            };
            for (slot, &backend_id) in slots.iter().enumerate() {
                let exists = backend_id != 0
                    && self
                        .backends
                        .get(backend_id as usize)
                        .is_some_and(|b| b.state != backend_state::EMPTY);
                if !exists {
                    violations.push(Violation::SlotWithoutBackend {
                        frontend: *key,
                        slot: slot as u32,
                        backend_id,
                    });
                    break; // one per frontend is enough to name the problem
                }
            }
            let offset = value.table_offset;
            for (backend_id, _) in members_of(slots) {
                let member = TableMember {
                    table_offset: offset,
                    backend_id,
                };
                let indexed = self
                    .table_members
                    .get(&member)
                    .is_some_and(|slot| slots.get(*slot as usize) == Some(&backend_id));
                if !indexed {
                    violations.push(Violation::MemberNotIndexed {
                        frontend: *key,
                        backend_id,
                    });
                    break;
                }
            }
        }
        violations
    }

    fn snapshot(&self) -> AppliedState {
        let mut selection: BTreeMap<u32, SelectionTable> = BTreeMap::new();
        for value in self.frontends.values().filter(|v| v.table_size > 0) {
            let start = value.table_offset as usize;
            if let Some(slots) = self.selection.get(start..start + value.table_size as usize) {
                selection.insert(value.table_offset, slots.into());
            }
        }
        let table_members = selection
            .iter()
            .filter(|(offset, slots)| {
                fully_indexed(**offset, slots, |member| {
                    self.table_members.get(&member).copied()
                })
            })
            .map(|(offset, slots)| {
                (
                    *offset,
                    u32::try_from(slots.members().len()).unwrap_or(u32::MAX),
                )
            })
            .collect();
        AppliedState {
            table_members,
            frontends: self.frontends.clone(),
            backends: self
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.state != backend_state::EMPTY)
                .map(|(id, b)| (id as u32, *b))
                .collect(),
            selection,
            service_names: self.service_names.clone(),
            source_ranges: self.source_ranges.clone(),
            tallies: Default::default(),
        }
    }
}

impl MapWriter for MemoryMaps {
    fn capacity(&self) -> MapCapacity {
        self.capacity
    }

    fn read(&self) -> Result<AppliedState, DataplaneError> {
        Ok(self.snapshot())
    }

    /// Applies `ops` in order; on a failure, as `AyaMaps` does, takes out the TABLE_MEMBERS
    /// entries of the tables no frontend points at that these ops wrote or meant to delete
    /// (a table's own entries go in whole or not at all here).
    fn apply(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        let mut new_tables = NewTables::default();
        for op in ops {
            if let MapOp::PutSelection { offset, .. } = op {
                new_tables.place(*offset);
            }
            if let Err(error) = self.apply_op(op) {
                let referenced = self
                    .frontends
                    .values()
                    .filter(|value| value.table_size > 0)
                    .map(|value| value.table_offset)
                    .collect();
                for key in new_tables.orphans(ops, &referenced) {
                    self.table_members.remove(&key);
                }
                return Err(error);
            }
            if let MapOp::PutTableMembers { offset, slots } = op {
                new_tables.wrote(*offset, slots, slots.members().len());
            }
        }
        Ok(())
    }

    fn delete_stale_flows(&mut self, stale: &StaleFlows) -> Result<DeletedFlows, DataplaneError> {
        let (flows, pins) = (self.conntrack.len(), self.affinity.len());
        self.conntrack
            .retain(|key, value| !stale.is_stale_flow(key, value));
        self.affinity
            .retain(|key, value| !stale.is_stale_affinity(key, value));
        Ok(DeletedFlows {
            conntrack: flows - self.conntrack.len(),
            affinity: pins - self.affinity.len(),
        })
    }

    fn forget_affinity(
        &mut self,
        stale: &dyn Fn(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize, DataplaneError> {
        let before = self.affinity.len();
        self.affinity.retain(|key, value| !stale(key, value));
        Ok(before - self.affinity.len())
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{FAMILY_IPV4, PROTO_UDP};

    use super::{super::frontend_filter, *};

    fn frontend(last: u8, port: u16) -> FrontendKey {
        FrontendKey {
            addr: [198, 18, 100, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: port.to_be(),
            proto: PROTO_UDP,
            family: FAMILY_IPV4,
        }
    }

    fn value() -> FrontendValue {
        FrontendValue {
            service_id: 1,
            ..FrontendValue::default()
        }
    }

    /// The ops writing a table at `offset` that names backends `1..=members`.
    fn table_ops(offset: u32, members: u32) -> Vec<MapOp> {
        let ids: Vec<u32> = (1..=members).collect();
        let slots = SelectionTable::from_ids(&ids);
        vec![
            MapOp::PutSelection {
                offset,
                slots: slots.clone(),
            },
            MapOp::PutTableMembers { offset, slots },
        ]
    }

    #[test]
    fn a_failed_apply_takes_out_the_entries_of_its_new_tables_no_frontend_uses() {
        let capacity = MapCapacity {
            table_members: 10,
            ..MapCapacity::default()
        };
        let mut maps = MemoryMaps::new(capacity);
        let mut live = table_ops(0, 4);
        live.push(MapOp::PutFrontend {
            key: frontend(1, 53),
            value: FrontendValue {
                table_offset: 0,
                table_size: 4,
                ..value()
            },
        });
        maps.apply(&live).expect("the first table fits");
        // The second table fits, the third does not: the second is left without a frontend.
        let failing: Vec<MapOp> = [table_ops(100, 4), table_ops(200, 4)].concat();
        let error = maps.apply(&failing).expect_err("TABLE_MEMBERS overflows");
        assert_eq!(error.kind(), "map_full", "{error}");
        assert_eq!(
            maps.table_member_entries() as u64,
            maps.read().expect("read").table_member_count(),
            "TABLE_MEMBERS holds what the applied state read back accounts for"
        );
        assert_eq!(
            maps.table_member_entries(),
            4,
            "the table in use keeps its entries"
        );
    }

    #[test]
    fn filter_follows_frontend_puts_and_deletes() {
        let mut maps = MemoryMaps::new(MapCapacity::default());
        let keys: Vec<FrontendKey> = (1..=50).map(|i| frontend(i, 53)).collect();
        let ops: Vec<MapOp> = keys
            .iter()
            .map(|key| MapOp::PutFrontend {
                key: *key,
                value: value(),
            })
            .collect();
        maps.apply(&ops).expect("50 frontends fit");
        for key in &keys {
            assert!(
                maps.filter_covers(key),
                "bits of {key:?} not set after its put"
            );
        }
        assert!(
            maps.check()
                .iter()
                .all(|v| !matches!(v, Violation::FilterBitClear { .. })),
            "{:?}",
            maps.check()
        );
        let deletes: Vec<MapOp> = keys
            .iter()
            .map(|key| MapOp::DeleteFrontend { key: *key })
            .collect();
        maps.apply(&deletes).expect("deletes of present frontends");
        assert_eq!(
            maps.filter_bits_set(),
            0,
            "every bit cleared after the last delete"
        );
    }

    #[test]
    fn shared_filter_bit_survives_the_first_delete() {
        let (a, b) = frontend_filter::sharing_pair(
            |i| frontend((i >> 8) as u8, 1000 + (i & 0xff) as u16),
            lb_common::frontend_filter::WORDS_LOG2_UNSET,
        )
        .expect("two keys sharing a filter bit");
        let mut maps = MemoryMaps::new(MapCapacity::default());
        for key in [a, b] {
            maps.apply(&[MapOp::PutFrontend {
                key,
                value: value(),
            }])
            .expect("put");
        }
        maps.apply(&[MapOp::DeleteFrontend { key: a }])
            .expect("delete a");
        assert!(
            maps.filter_covers(&b),
            "a bit cleared while {b:?} still uses it"
        );
        assert!(
            maps.check()
                .iter()
                .all(|v| !matches!(v, Violation::FilterBitClear { .. }))
        );
        maps.apply(&[MapOp::DeleteFrontend { key: b }])
            .expect("delete b");
        assert_eq!(maps.filter_bits_set(), 0, "bits left set with no frontend");
    }
}
