//! Admission: whether a service port fits (ids, SELECTION space, map room), and what it
//! then adds to the plan; a port that does not fit is rejected whole and keeps what it has.

use std::{collections::BTreeSet, net::SocketAddr};

use lb_common::{FrontendKey, FrontendValue, SourceRangeKey};
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use super::{
    BuddyAllocator, Planner,
    encode::{backend_identity, frontend_key, source_range_entries},
    ids::IdAllocator,
    planner::LedgerPort,
    stale::AdmittedUdpPort,
    tables::{BackendList, TableKey, table_size},
};
use crate::{
    dataplane::{AppliedState, MapCapacity, MapOp},
    model::{DesiredBackend, DesiredService, Protocol, ServicePortName},
};

/// Why a service port was left out of the maps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("no free service id (SERVICE_NAMES holds {capacity}); raise the services capacity")]
    ServicesFull { capacity: u32 },
    #[error(
        "BACKENDS has no free id for {needed} new backends (capacity {capacity}); raise the backends capacity"
    )]
    BackendsFull { needed: usize, capacity: u32 },
    #[error(
        "SELECTION has no free block of {slots} slots (capacity {capacity}); raise the selection capacity"
    )]
    SelectionFull { slots: u32, capacity: u32 },
    #[error(
        "FRONTENDS has room for {free} more entries, the service needs {needed} (capacity {capacity})"
    )]
    FrontendsFull {
        needed: usize,
        free: usize,
        capacity: u32,
    },
    #[error(
        "SOURCE_RANGES has room for {free} more entries, the service needs {needed} (capacity {capacity})"
    )]
    SourceRangesFull {
        needed: usize,
        free: usize,
        capacity: u32,
    },
    #[error(
        "TABLE_MEMBERS has room for {free} more entries, the service's new selection tables need {needed} (capacity {capacity})"
    )]
    TableMembersFull {
        needed: u64,
        free: u64,
        capacity: u32,
    },
}

/// What the applied state holds, indexed for the plan.
pub(super) struct AppliedIndex<'a> {
    pub(super) applied: &'a AppliedState,
    pub(super) service_id: FxHashMap<&'a str, u32>,
    pub(super) backend_id: FxHashMap<SocketAddr, u32>,
    pub(super) frontends_by_service: FxHashMap<u32, Vec<FrontendKey>>,
}

impl<'a> AppliedIndex<'a> {
    pub(super) fn new(applied: &'a AppliedState) -> Self {
        let mut service_id =
            FxHashMap::with_capacity_and_hasher(applied.service_names.len(), FxBuildHasher);
        for (id, name) in &applied.service_names {
            // Duplicate names (a foreign writer): the lowest id wins, the others are removed.
            service_id.entry(name.as_str()).or_insert(*id);
        }
        let mut backend_id =
            FxHashMap::with_capacity_and_hasher(applied.backends.len(), FxBuildHasher);
        for (id, backend) in &applied.backends {
            if let Some(addr) = backend_identity(backend) {
                backend_id.entry(addr).or_insert(*id);
            }
        }
        let mut frontends_by_service: FxHashMap<u32, Vec<FrontendKey>> = FxHashMap::default();
        for (key, value) in &applied.frontends {
            frontends_by_service
                .entry(value.service_id)
                .or_default()
                .push(*key);
        }
        Self {
            applied,
            service_id,
            backend_id,
            frontends_by_service,
        }
    }
}

/// What one service's admission allocated, so that a rejection can give it back.
#[derive(Default)]
pub(super) struct Admission {
    pub(super) new_service_id: Option<u32>,
    pub(super) new_backends: Vec<(SocketAddr, u32)>,
    pub(super) new_tables: Vec<(TableKey, u32)>,
    pub(super) selection_ops: Vec<MapOp>,
    pub(super) frontend_ops: Vec<MapOp>,
    pub(super) new_frontends: usize,
    /// TABLE_MEMBERS entries of the new tables.
    pub(super) new_members: u64,
    /// Offsets of the tables this service's frontends point at.
    pub(super) tables_used: Vec<u32>,
    /// (address, id) of every backend of the service, in address order.
    pub(super) backend_ids: Vec<(SocketAddr, u32)>,
    /// `backend_ids` as a table key holds them, when a frontend's table names them all.
    pub(super) shared_backend_ids: Option<BackendList>,
}

/// Everything the plan has decided so far.
pub(super) struct Work<'a> {
    pub(super) index: AppliedIndex<'a>,
    pub(super) capacity: MapCapacity,
    pub(super) service_ids: IdAllocator<'a>,
    pub(super) backend_ids: IdAllocator<'a>,
    pub(super) selection: BuddyAllocator,
    /// Tables placed in this plan (reused or new), by key: frontends with equal backends
    /// share one.
    pub(super) placed: FxHashMap<TableKey, u32>,
    pub(super) frontend_count: usize,
    pub(super) range_count: usize,
    /// TABLE_MEMBERS entries once the plan is applied (freed tables' entries counted until
    /// the next plan, as their deletion comes last).
    pub(super) member_count: u64,
    pub(super) keep_frontends: FxHashSet<FrontendKey>,
    /// Offsets of the tables frontends point at after the plan.
    pub(super) referenced_tables: FxHashSet<u32>,
    pub(super) keep_service_ids: FxHashSet<u32>,
    pub(super) keep_backend_ids: FxHashSet<u32>,
    pub(super) keep_ranges: BTreeSet<(SourceRangeKey, u32)>,
    /// Backends the admitted services want, by id.
    pub(super) backends: FxHashMap<u32, (SocketAddr, DesiredBackend)>,
    pub(super) name_ops: Vec<MapOp>,
    pub(super) selection_ops: Vec<MapOp>,
    pub(super) range_ops: Vec<MapOp>,
    pub(super) frontend_ops: Vec<MapOp>,
    pub(super) rejected: Vec<(ServicePortName, RejectReason)>,
    /// Every admitted service port, for the ledger.
    pub(super) admitted: Vec<(ServicePortName, LedgerPort)>,
    /// Every admitted UDP service port, with its serving endpoints.
    pub(super) udp_ports: Vec<AdmittedUdpPort>,
}

impl Planner {
    pub(super) fn admit(
        &mut self,
        work: &mut Work<'_>,
        name: &ServicePortName,
        service: &DesiredService,
        text: &str,
    ) {
        let mut admission = Admission::default();
        match self.try_admit(work, service, text, &mut admission) {
            Ok(service_id) => work.commit(service_id, name, service, text, admission),
            Err(reason) => {
                work.roll_back(admission);
                work.retain_applied(text, service);
                work.rejected.push((name.clone(), reason));
            }
        }
    }

    fn try_admit(
        &mut self,
        work: &mut Work<'_>,
        service: &DesiredService,
        text: &str,
        admission: &mut Admission,
    ) -> Result<u32, RejectReason> {
        let service_id = match work.index.service_id.get(text) {
            Some(id) => *id,
            None => {
                let id = work
                    .service_ids
                    .allocate()
                    .ok_or(RejectReason::ServicesFull {
                        capacity: work.capacity.services,
                    })?;
                admission.new_service_id = Some(id);
                id
            }
        };

        // Ids of the service's backends, in address order (as `service.backends`).
        for addr in service.backends.keys() {
            let id = match work.index.backend_id.get(addr) {
                Some(id) => *id,
                None => {
                    let Some(id) = work.backend_ids.allocate() else {
                        let needed = service
                            .backends
                            .keys()
                            .filter(|a| !work.index.backend_id.contains_key(a))
                            .count();
                        return Err(RejectReason::BackendsFull {
                            needed,
                            capacity: work.capacity.backends,
                        });
                    };
                    work.index.backend_id.insert(*addr, id);
                    admission.new_backends.push((*addr, id));
                    id
                }
            };
            admission.backend_ids.push((*addr, id));
        }

        let applied = work.index.applied;
        for frontend in &service.frontends {
            let key = frontend_key(frontend, service.protocol);
            let current = applied.frontends.get(&key);
            if current.is_none() {
                admission.new_frontends += 1;
            }
            let (table_offset, table_size, table_backends) = if frontend.selection.is_empty() {
                (0, 0, 0)
            } else {
                // A selection only names the service's own backends (the model's contract);
                // anything else would have no BACKENDS entry, so it is left out.
                let known = &admission.backend_ids;
                let ids: Vec<(SocketAddr, u32)> = frontend
                    .selection
                    .iter()
                    .filter_map(|addr| {
                        let at = known.binary_search_by_key(addr, |(a, _)| *a).ok()?;
                        Some(known[at])
                    })
                    .collect();
                let size = table_size(ids.len(), current.map(|v| v.table_size));
                let count = ids.len();
                let table_key: TableKey = (ids.into(), size);
                // A frontend keeping its table size gets the table that moves the fewest
                // slots away from its current one; a new frontend or a new size, a fresh one.
                let previous = current
                    .filter(|v| v.table_size == size)
                    .and_then(|v| applied.selection.get(&v.table_offset));
                let (slots, key_backends) = self.table(&table_key, previous, applied);
                if *key_backends == *admission.backend_ids {
                    admission.shared_backend_ids = Some(key_backends);
                }
                let in_place = current.filter(|v| {
                    v.table_size == size && self.holds(applied, v.table_offset, &slots)
                });
                let offset = if let Some(value) = in_place {
                    work.placed.entry(table_key).or_insert(value.table_offset);
                    value.table_offset
                } else if let Some(offset) = work.placed.get(&table_key) {
                    *offset
                } else {
                    let offset =
                        work.selection
                            .allocate(size)
                            .ok_or(RejectReason::SelectionFull {
                                slots: size,
                                capacity: work.capacity.selection_slots,
                            })?;
                    // The table, then its index: both before a frontend points at it.
                    admission.selection_ops.push(MapOp::PutSelection {
                        offset,
                        slots: slots.clone(),
                    });
                    admission.selection_ops.push(MapOp::PutTableMembers {
                        offset,
                        slots: slots.clone(),
                    });
                    admission.new_members += count as u64;
                    self.written.insert(offset, slots.clone());
                    work.placed.insert(table_key.clone(), offset);
                    admission.new_tables.push((table_key, offset));
                    offset
                };
                admission.tables_used.push(offset);
                (offset, size, count)
            };
            let value = FrontendValue {
                service_id,
                table_offset,
                table_size,
                affinity_timeout_secs: service.affinity_timeout_secs.unwrap_or(0),
                backend_count: u16::try_from(table_backends).unwrap_or(u16::MAX),
                flags: frontend.flag_bits(service),
                kind: frontend.kind.code(),
                _pad: [0; 3],
            };
            if current != Some(&value) {
                admission
                    .frontend_ops
                    .push(MapOp::PutFrontend { key, value });
            }
        }
        let free = (work.capacity.frontends as usize).saturating_sub(work.frontend_count);
        if admission.new_frontends > free {
            return Err(RejectReason::FrontendsFull {
                needed: admission.new_frontends,
                free,
                capacity: work.capacity.frontends,
            });
        }
        let free = u64::from(work.capacity.table_members).saturating_sub(work.member_count);
        if admission.new_members > free {
            return Err(RejectReason::TableMembersFull {
                needed: admission.new_members,
                free,
                capacity: work.capacity.table_members,
            });
        }

        let ranges = source_range_entries(service_id, service);
        let new_ranges = ranges
            .iter()
            .filter(|r| !applied.source_ranges.contains(r))
            .count();
        let free = (work.capacity.source_ranges as usize).saturating_sub(work.range_count);
        if new_ranges > free {
            return Err(RejectReason::SourceRangesFull {
                needed: new_ranges,
                free,
                capacity: work.capacity.source_ranges,
            });
        }
        Ok(service_id)
    }
}

impl Work<'_> {
    pub(super) fn commit(
        &mut self,
        service_id: u32,
        name: &ServicePortName,
        service: &DesiredService,
        text: &str,
        admission: Admission,
    ) {
        if admission.new_service_id.is_some() {
            self.name_ops.push(MapOp::PutServiceName {
                id: service_id,
                name: text.to_owned(),
            });
        }
        self.keep_service_ids.insert(service_id);
        self.admitted.push((
            name.clone(),
            LedgerPort {
                service_id,
                backends: admission
                    .shared_backend_ids
                    .unwrap_or_else(|| admission.backend_ids.as_slice().into()),
                frontends: service
                    .frontends
                    .iter()
                    .map(|frontend| frontend_key(frontend, service.protocol))
                    .collect(),
            },
        ));
        for ((addr, backend), (_, id)) in service.backends.iter().zip(&admission.backend_ids) {
            let entry = self.backends.entry(*id).or_insert((*addr, *backend));
            entry.1 = entry.1.combine(*backend);
        }
        if service.protocol == Protocol::Udp {
            let serving = service
                .backends
                .values()
                .zip(&admission.backend_ids)
                .filter(|(backend, _)| backend.serving)
                .map(|(_, addr_id)| *addr_id)
                .collect();
            self.udp_ports.push(AdmittedUdpPort {
                name: name.clone(),
                service_id,
                serving,
            });
        }
        for frontend in &service.frontends {
            self.keep_frontends
                .insert(frontend_key(frontend, service.protocol));
        }
        self.frontend_count += admission.new_frontends;
        self.member_count += admission.new_members;
        self.referenced_tables.extend(admission.tables_used);
        for range in source_range_entries(service_id, service) {
            if !self.index.applied.source_ranges.contains(&range) {
                self.range_count += 1;
                self.range_ops.push(MapOp::PutSourceRange {
                    key: range.0,
                    prefix_len: range.1,
                });
            }
            self.keep_ranges.insert(range);
        }
        self.selection_ops.extend(admission.selection_ops);
        self.frontend_ops.extend(admission.frontend_ops);
    }

    pub(super) fn roll_back(&mut self, admission: Admission) {
        if let Some(id) = admission.new_service_id {
            self.service_ids.release(id);
        }
        for (addr, id) in admission.new_backends {
            self.index.backend_id.remove(&addr);
            self.backend_ids.release(id);
        }
        for ((key, size), offset) in admission.new_tables {
            self.selection.release(offset, size);
            self.placed.remove(&(key, size));
        }
    }

    /// A rejected service that is in the maps keeps what it has there.
    pub(super) fn retain_applied(&mut self, text: &str, service: &DesiredService) {
        let Some(&id) = self.index.service_id.get(text) else {
            return;
        };
        let applied = self.index.applied;
        self.keep_service_ids.insert(id);
        for key in self
            .index
            .frontends_by_service
            .get(&id)
            .into_iter()
            .flatten()
        {
            self.keep_frontends.insert(*key);
            let value = applied.frontends[key];
            if value.table_size > 0 {
                self.referenced_tables.insert(value.table_offset);
            }
            if let Some(slots) = applied
                .selection
                .get(&value.table_offset)
                .filter(|_| value.table_size > 0)
            {
                self.keep_backend_ids
                    .extend(slots.members().iter().copied());
            }
        }
        for addr in service.backends.keys() {
            if let Some(id) = self
                .index
                .backend_id
                .get(addr)
                .filter(|id| applied.backends.contains_key(id))
            {
                self.keep_backend_ids.insert(*id);
            }
        }
        let id_be = id.to_be_bytes();
        self.keep_ranges.extend(
            applied
                .source_ranges
                .iter()
                .filter(|(key, _)| key.service_id_be == id_be),
        );
    }
}
