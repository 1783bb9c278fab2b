//! The diff: what is in the maps (applied) versus what should be (desired) -> the ordered map
//! operations that get from one to the other without a packet ever seeing a half-written
//! service (make-before-break):
//!
//! 1. service names, backends, new selection tables (written into free space, never over a
//!    table in use) and source ranges;
//! 2. frontends, which then point at complete tables;
//! 3. deletions: frontends, then source ranges, backends and names nobody uses any more.
//!    Old table blocks need no write: once no frontend points at them they are free.
//!
//! Ids are allocated here: a service keeps the id its name has in the applied state, a
//! backend the id its address has, so a restarted agent adopting the maps writes only the
//! difference. Applying the same desired state twice gives no operation.
//!
//! A service port whose frontends, backends, table or ranges would not fit is rejected whole
//! (and named in [`Plan::rejected`]); if it was applied before, it stays exactly as it was.

mod buddy;
mod fast_hash;

#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use lb_common::{FrontendKey, FrontendValue, MAGLEV_SIZES, SourceRangeKey, maglev_size_for};

pub use buddy::BuddyAllocator;
use fast_hash::{FastMap, FastSet};

use crate::{
    dataplane::{AppliedState, MapCapacity, MapOp},
    model::{
        DesiredBackend, DesiredService, DesiredState, ServicePortName,
        encode::{
            backend_entry, backend_identity, combine_backend, frontend_flag_bits, frontend_key,
            source_range_entries,
        },
        maglev::{maglev_table, rebalance},
    },
};

/// The operations to apply, in order, and the services that did not fit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<MapOp>,
    pub rejected: Vec<(ServicePortName, RejectReason)>,
}

/// Why a service port was left out of the maps. Variant names double as metric labels.
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
}

/// Plans with a fresh [`Planner`]: what a restarted agent does.
pub fn plan(applied: &AppliedState, desired: &DesiredState, capacity: MapCapacity) -> Plan {
    Planner::default().plan(applied, desired, capacity)
}

/// A selection table's identity: its backends (address and id, in address order) and size.
type TableKey = (Vec<(SocketAddr, u32)>, u32);

/// Plans map operations; keeps Maglev tables between plans so that services whose backends
/// did not change cost a lookup, not a rebuild.
#[derive(Debug, Default)]
pub struct Planner {
    /// Table slots (backend ids) by table key, with the plan number that last used them.
    tables: FastMap<TableKey, (Arc<[u32]>, u64)>,
    /// What each SELECTION block in use holds, as this planner wrote or last verified it.
    /// Blocks in use are never written (new tables go to free space), so while a frontend
    /// keeps pointing at a block its contents stay as recorded; this spares re-reading
    /// every table on every plan. It assumes this planner is the maps' only writer: after
    /// anything else wrote SELECTION, call [`Planner::forget_tables`].
    written: FastMap<u32, Arc<[u32]>>,
    plans: u64,
    /// Who uses which backend after the last plan, when that plan admitted everything;
    /// lets [`Planner::plan_changes`] look at the changed service ports only.
    ledger: Option<Ledger>,
}

/// Every admitted service port as the last plan left it, and the SELECTION space that left
/// free: what [`Planner::plan_changes`] needs to look at the changed ports only.
#[derive(Debug, Default)]
struct Ledger {
    ports: FastMap<Arc<ServicePortName>, LedgerPort>,
    /// The service ports using each backend address.
    users: FastMap<SocketAddr, Vec<Arc<ServicePortName>>>,
    /// Free SELECTION space once the last plan is applied: built from the applied state by
    /// the first scoped plan after a whole one, then kept in step with the scoped plans'
    /// own allocations and releases (a rebuild reads every frontend and table).
    selection: Option<BuddyAllocator>,
}

/// What one admitted service port holds in the maps.
#[derive(Debug, Default)]
struct LedgerPort {
    service_id: u32,
    /// (address, id) of the port's backends, in address order.
    backends: Vec<(SocketAddr, u32)>,
    frontends: Vec<FrontendKey>,
}

impl Ledger {
    fn add(&mut self, name: ServicePortName, port: LedgerPort) {
        let name = Arc::new(name);
        for (addr, _) in &port.backends {
            self.users.entry(*addr).or_default().push(name.clone());
        }
        self.ports.insert(name, port);
    }

    fn remove(&mut self, name: &ServicePortName) {
        let Some(port) = self.ports.remove(name) else {
            return;
        };
        for (addr, _) in port.backends {
            if let Some(users) = self.users.get_mut(&addr) {
                users.retain(|user| **user != *name);
                if users.is_empty() {
                    self.users.remove(&addr);
                }
            }
        }
    }
}

/// Ids in `1..limit` (0 is never used), handed out from just after the highest one in use,
/// so that a freed id is not reused at once while stale flow state may still name it.
struct IdAllocator<'a> {
    /// Whether the applied state uses an id: looked up, not copied, so that a plan of a
    /// few services does not copy every id in the maps.
    taken: Box<dyn Fn(u32) -> bool + 'a>,
    taken_count: usize,
    /// Ids this plan handed out.
    handed: BTreeSet<u32>,
    limit: u32,
    cursor: u32,
}

impl<'a> IdAllocator<'a> {
    /// `taken_count` ids are taken, the highest is `highest`.
    fn new(
        taken: impl Fn(u32) -> bool + 'a,
        taken_count: usize,
        highest: Option<u32>,
        limit: u32,
    ) -> Self {
        Self {
            taken: Box::new(taken),
            taken_count,
            handed: BTreeSet::new(),
            limit,
            cursor: highest.map_or(1, |last| last + 1),
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        let usable = u64::from(self.limit.saturating_sub(1));
        if (self.taken_count + self.handed.len()) as u64 >= usable {
            return None;
        }
        let mut id = self.cursor;
        loop {
            if id == 0 || id >= self.limit {
                id = 1;
            }
            if !(self.taken)(id) && self.handed.insert(id) {
                self.cursor = id + 1;
                return Some(id);
            }
            id += 1;
        }
    }

    fn release(&mut self, id: u32) {
        self.handed.remove(&id);
    }
}

/// SELECTION's free space: everything but the blocks of the applied tables.
pub(crate) fn free_selection(applied: &AppliedState, capacity: MapCapacity) -> BuddyAllocator {
    let mut selection = BuddyAllocator::new(capacity.selection_slots);
    for value in applied.frontends.values().filter(|v| v.table_size > 0) {
        selection.reserve(
            value.table_offset,
            BuddyAllocator::block_size(value.table_size),
        );
    }
    for (offset, slots) in &applied.selection {
        selection.reserve(*offset, BuddyAllocator::block_size(slots.len() as u32));
    }
    selection
}

fn sized_map<K, V>(capacity: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(capacity, Default::default())
}

fn sized_set<K>(capacity: usize) -> FastSet<K> {
    FastSet::with_capacity_and_hasher(capacity, Default::default())
}

/// What the applied state holds, indexed for the plan.
struct AppliedIndex<'a> {
    applied: &'a AppliedState,
    service_id: FastMap<&'a str, u32>,
    backend_id: FastMap<SocketAddr, u32>,
    frontends_by_service: FastMap<u32, Vec<FrontendKey>>,
}

impl<'a> AppliedIndex<'a> {
    fn new(applied: &'a AppliedState) -> Self {
        let mut service_id = sized_map(applied.service_names.len());
        for (id, name) in &applied.service_names {
            // Duplicate names (a foreign writer): the lowest id wins, the others are removed.
            service_id.entry(name.as_str()).or_insert(*id);
        }
        let mut backend_id = sized_map(applied.backends.len());
        for (id, backend) in &applied.backends {
            if let Some(addr) = backend_identity(backend) {
                backend_id.entry(addr).or_insert(*id);
            }
        }
        let mut frontends_by_service: FastMap<u32, Vec<FrontendKey>> = FastMap::default();
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
struct Admission {
    new_service_id: Option<u32>,
    new_backends: Vec<(SocketAddr, u32)>,
    new_tables: Vec<(TableKey, u32)>,
    selection_ops: Vec<MapOp>,
    frontend_ops: Vec<MapOp>,
    new_frontends: usize,
    /// Offsets of the tables this service's frontends point at.
    tables_used: Vec<u32>,
    /// (address, id) of every backend of the service, in address order.
    backend_ids: Vec<(SocketAddr, u32)>,
}

/// Everything the plan has decided so far.
struct Work<'a> {
    index: AppliedIndex<'a>,
    capacity: MapCapacity,
    service_ids: IdAllocator<'a>,
    backend_ids: IdAllocator<'a>,
    selection: BuddyAllocator,
    /// Tables placed in this plan (reused or new), by key: frontends with equal backends
    /// share one.
    placed: FastMap<TableKey, u32>,
    frontend_count: usize,
    range_count: usize,
    keep_frontends: FastSet<FrontendKey>,
    /// Offsets of the tables frontends point at after the plan.
    referenced_tables: FastSet<u32>,
    keep_service_ids: FastSet<u32>,
    keep_backend_ids: FastSet<u32>,
    keep_ranges: BTreeSet<(SourceRangeKey, u32)>,
    /// Backends the admitted services want, by id.
    backends: FastMap<u32, (SocketAddr, DesiredBackend)>,
    name_ops: Vec<MapOp>,
    selection_ops: Vec<MapOp>,
    range_ops: Vec<MapOp>,
    frontend_ops: Vec<MapOp>,
    rejected: Vec<(ServicePortName, RejectReason)>,
    /// Every admitted service port, for the ledger.
    admitted: Vec<(ServicePortName, LedgerPort)>,
}

impl Planner {
    /// The SELECTION free space the planner keeps for its next scoped plan, if any.
    #[cfg(test)]
    pub(crate) fn kept_selection(&self) -> Option<&BuddyAllocator> {
        self.ledger.as_ref()?.selection.as_ref()
    }

    /// Drops what the planner remembers about SELECTION's contents, so that the next plan
    /// compares every table with the applied state again.
    pub fn forget_tables(&mut self) {
        self.written.clear();
        self.ledger = None;
    }

    /// Whether the applied table at `offset` holds `slots`.
    fn holds(&mut self, applied: &AppliedState, offset: u32, slots: &Arc<[u32]>) -> bool {
        if self
            .written
            .get(&offset)
            .is_some_and(|known| Arc::ptr_eq(known, slots))
        {
            return true;
        }
        let same = applied
            .selection
            .get(&offset)
            .is_some_and(|found| Arc::ptr_eq(found, slots) || **found == **slots);
        if same {
            self.written.insert(offset, slots.clone());
        }
        same
    }

    /// The operations that turn `applied` into `desired`, within `capacity`.
    pub fn plan(
        &mut self,
        applied: &AppliedState,
        desired: &DesiredState,
        capacity: MapCapacity,
    ) -> Plan {
        let services = desired.services.iter().collect();
        self.run(applied, applied, None, services, capacity)
    }

    /// The same operations as [`Planner::plan`], looking only at the `changed` service
    /// ports (added, removed or different since this planner's previous plan, which must
    /// have been applied to `applied`) and the ports sharing a backend with them. Falls
    /// back to a whole plan when the previous plan rejected something, or when sharing
    /// spreads to many ports.
    pub fn plan_changes(
        &mut self,
        applied: &AppliedState,
        desired: &DesiredState,
        changed: &BTreeSet<ServicePortName>,
        capacity: MapCapacity,
    ) -> Plan {
        let Some((scope, planned)) = self.changed_scope(applied, desired, changed) else {
            return self.plan(applied, desired, capacity);
        };
        let services = planned
            .iter()
            .filter_map(|name| desired.services.get_key_value(name))
            .collect();
        self.run(applied, &scope, Some(&planned), services, capacity)
    }

    /// What `applied` holds for the `changed` ports: their names, frontends, tables,
    /// source ranges and backends; `None` when a changed port cannot be planned alone.
    /// Reads only what the ledger names for the planned ports, never all of `applied`.
    fn changed_scope(
        &self,
        applied: &AppliedState,
        desired: &DesiredState,
        changed: &BTreeSet<ServicePortName>,
    ) -> Option<(AppliedState, BTreeSet<ServicePortName>)> {
        let ledger = self.ledger.as_ref()?;
        // A backend's state combines every port that uses it: ports sharing a backend with
        // a changed one are planned with it (if that spreads to a quarter of all ports, a
        // whole plan is as cheap).
        let mut planned = changed.clone();
        loop {
            let before = planned.len();
            let addrs: FastSet<SocketAddr> = planned
                .iter()
                .filter_map(|name| ledger.ports.get(name))
                .flat_map(|port| port.backends.iter().map(|(addr, _)| *addr))
                .chain(
                    planned
                        .iter()
                        .filter_map(|name| desired.services.get(name))
                        .flat_map(|service| service.backends.keys().copied()),
                )
                .collect();
            for user in addrs
                .iter()
                .filter_map(|addr| ledger.users.get(addr))
                .flatten()
            {
                if !planned.contains(&**user) {
                    planned.insert((**user).clone());
                }
            }
            if planned.len() == before {
                break;
            }
            if planned.len() > ledger.ports.len() / 4 + 1 {
                return None;
            }
        }

        let mut scope = AppliedState::default();
        for port in planned.iter().filter_map(|name| ledger.ports.get(name)) {
            if let Some(name) = applied.service_names.get(&port.service_id) {
                scope.service_names.insert(port.service_id, name.clone());
            }
            for key in &port.frontends {
                let Some(value) = applied.frontends.get(key) else {
                    continue;
                };
                scope.frontends.insert(*key, *value);
                if let Some(table) = applied
                    .selection
                    .get(&value.table_offset)
                    .filter(|_| value.table_size > 0)
                {
                    scope.selection.insert(value.table_offset, table.clone());
                }
            }
            for (_, id) in &port.backends {
                if let Some(backend) = applied.backends.get(id) {
                    scope.backends.insert(*id, *backend);
                }
            }
            let id_be = port.service_id.to_be_bytes();
            let first = SourceRangeKey {
                service_id_be: id_be,
                ..SourceRangeKey::default()
            };
            scope.source_ranges.extend(
                applied
                    .source_ranges
                    .range((first, 0)..)
                    .take_while(|(key, _)| key.service_id_be == id_be),
            );
        }
        Some((scope, planned))
    }

    /// Plans `services` against `scope`: all of `applied`, or what it holds for the
    /// service ports in `scope_names`, which are the ones planned. Ids, SELECTION space and capacity always come from all of `applied`.
    fn run(
        &mut self,
        applied: &AppliedState,
        scope: &AppliedState,
        scope_names: Option<&BTreeSet<ServicePortName>>,
        services: Vec<(&ServicePortName, &DesiredService)>,
        capacity: MapCapacity,
    ) -> Plan {
        let whole = scope_names.is_none();
        self.plans += 1;
        let index = AppliedIndex::new(scope);
        // Service ids frontends use without a name (left by a foreign writer) are taken too.
        // A scoped plan follows a whole plan that admitted everything, which deleted every
        // frontend without a name: no need to look at them all.
        let unnamed_ids: FastSet<u32> = if whole {
            applied
                .frontends
                .values()
                .map(|v| v.service_id)
                .filter(|id| !applied.service_names.contains_key(id))
                .collect()
        } else {
            FastSet::default()
        };
        let taken_service_ids = applied.service_names.len() + unnamed_ids.len();
        let highest_service_id = applied
            .service_names
            .keys()
            .next_back()
            .into_iter()
            .chain(&unnamed_ids)
            .max()
            .copied();
        let kept_selection = if whole {
            None
        } else {
            self.ledger
                .as_mut()
                .and_then(|ledger| ledger.selection.take())
        };
        let selection = kept_selection.unwrap_or_else(|| free_selection(applied, capacity));
        let mut work = Work {
            capacity,
            service_ids: IdAllocator::new(
                move |id| applied.service_names.contains_key(&id) || unnamed_ids.contains(&id),
                taken_service_ids,
                highest_service_id,
                capacity.services,
            ),
            backend_ids: IdAllocator::new(
                |id| applied.backends.contains_key(&id),
                applied.backends.len(),
                applied.backends.keys().next_back().copied(),
                capacity.backends,
            ),
            selection,
            placed: sized_map(services.len()),
            frontend_count: applied.frontends.len(),
            range_count: applied.source_ranges.len(),
            keep_frontends: sized_set(scope.frontends.len()),
            referenced_tables: sized_set(scope.frontends.len()),
            keep_service_ids: sized_set(services.len()),
            keep_backend_ids: FastSet::default(),
            keep_ranges: BTreeSet::new(),
            backends: sized_map(scope.backends.len()),
            name_ops: Vec::new(),
            selection_ops: Vec::new(),
            range_ops: Vec::new(),
            frontend_ops: Vec::new(),
            rejected: Vec::new(),
            admitted: Vec::with_capacity(services.len()),
            index,
        };

        // Services already in the maps first: a newcomer can never push one out.
        let names: Vec<(&ServicePortName, &DesiredService, String)> = services
            .into_iter()
            .map(|(name, service)| (name, service, name.to_string()))
            .collect();
        let (known, new): (Vec<_>, Vec<_>) = names
            .into_iter()
            .partition(|(_, _, text)| work.index.service_id.contains_key(text.as_str()));
        for (name, service, text) in known.into_iter().chain(new) {
            self.admit(&mut work, name, service, &text);
        }

        let plans = self.plans;
        if whole {
            self.tables.retain(|_, (_, used)| *used == plans);
            self.written
                .retain(|offset, _| work.referenced_tables.contains(offset));
        } else {
            // Unchanged services did not touch their tables; the changed services' old
            // blocks are forgotten below.
            for offset in scope.selection.keys() {
                if !work.referenced_tables.contains(offset) {
                    self.written.remove(offset);
                }
            }
        }
        // The SELECTION space the plan leaves free: its own allocations are in `work`; the
        // blocks of the changed ports' old tables are freed. A block this planner did not
        // lay out (not aligned to its size) cannot be given back: rebuild next time.
        let mut selection = Some(std::mem::replace(
            &mut work.selection,
            BuddyAllocator::new(0),
        ));
        if !whole {
            for (offset, slots) in &scope.selection {
                if work.referenced_tables.contains(offset) {
                    continue;
                }
                self.forget_table(applied, slots, plans);
                let block = BuddyAllocator::block_size(slots.len() as u32);
                match selection.as_mut() {
                    Some(space) if offset.is_multiple_of(block) => space.release(*offset, block),
                    _ => selection = None,
                }
            }
        }
        let admitted = std::mem::take(&mut work.admitted);
        let plan = work.finish();
        self.ledger = if !plan.rejected.is_empty() {
            None
        } else if whole {
            let mut ledger = Ledger::default();
            for (name, port) in admitted {
                ledger.add(name, port);
            }
            // The whole plan's space still holds the blocks it frees: the first scoped plan
            // rebuilds it from the maps as they are then.
            Some(ledger)
        } else {
            self.ledger.take().map(|mut ledger| {
                for name in scope_names.into_iter().flatten() {
                    ledger.remove(name);
                }
                for (name, port) in admitted {
                    ledger.add(name, port);
                }
                ledger.selection = selection;
                ledger
            })
        };
        plan
    }

    /// Drops the cached table `slots` (a changed port's old table, about to leave the maps)
    /// unless this plan used it. Its key is rebuilt from the slots: the distinct backends
    /// in address order, and the size.
    fn forget_table(&mut self, applied: &AppliedState, slots: &Arc<[u32]>, plans: u64) {
        let mut ids: Vec<u32> = slots.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut backends: Vec<(SocketAddr, u32)> = ids
            .into_iter()
            .filter_map(|id| Some((backend_identity(applied.backends.get(&id)?)?, id)))
            .collect();
        backends.sort_unstable();
        let key = (backends, slots.len() as u32);
        if self
            .tables
            .get(&key)
            .is_some_and(|(cached, used)| *used != plans && Arc::ptr_eq(cached, slots))
        {
            self.tables.remove(&key);
        }
    }

    fn admit(
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
                let table_key = (ids, size);
                // A frontend keeping its table size gets the table that moves the fewest
                // slots away from its current one; a new frontend or a new size, a fresh one.
                let previous = current
                    .filter(|v| v.table_size == size)
                    .and_then(|v| applied.selection.get(&v.table_offset));
                let slots = self.table(&table_key, previous, applied);
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
                    admission.selection_ops.push(MapOp::PutSelection {
                        offset,
                        slots: slots.clone(),
                    });
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
                flags: frontend_flag_bits(frontend, service),
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

    /// The backend ids, slot by slot, of the table for `key` (cached). With `previous`, the
    /// frontend's current table of the same size, it is the table that differs least from
    /// it (`maglev::rebalance`: only the slots of departed backends and of backends above
    /// their new share move), so tables depend on history, not only on the backend set: a
    /// removal moves 1/N of the flows, not 1/N plus Maglev's few percent. Without, a fresh
    /// Maglev table.
    fn table(
        &mut self,
        key: &TableKey,
        previous: Option<&Arc<[u32]>>,
        applied: &AppliedState,
    ) -> Arc<[u32]> {
        let plans = self.plans;
        if let Some((slots, used)) = self.tables.get_mut(key)
            && previous.is_none_or(|previous| Arc::ptr_eq(slots, previous) || **slots == **previous)
        {
            *used = plans;
            return slots.clone();
        }
        let (backends, size) = key;
        let addrs: Vec<SocketAddr> = backends.iter().map(|(addr, _)| *addr).collect();
        let indices = match previous {
            Some(previous) => {
                // A slot whose backend is gone names no address of the new set: refilled.
                let departed = SocketAddr::from(([0, 0, 0, 0], 0));
                let owners: Vec<SocketAddr> = previous
                    .iter()
                    .map(|id| {
                        applied
                            .backends
                            .get(id)
                            .and_then(backend_identity)
                            .unwrap_or(departed)
                    })
                    .collect();
                rebalance(&owners, &addrs, *size)
            }
            None => maglev_table(&addrs, *size),
        };
        let slots: Arc<[u32]> = indices
            .into_iter()
            .map(|i| backends[i as usize].1)
            .collect();
        self.tables.insert(key.clone(), (slots.clone(), plans));
        slots
    }
}

/// The table size for `backends` backends: `maglev_size_for`, except that a table keeps its
/// current size while that still gives each backend at least 50 slots and is at most four
/// times the usual size. A size change remaps every slot, so crossing a size step by one
/// backend would move nearly all new flows; this keeps small changes small.
fn table_size(backends: usize, current: Option<u32>) -> u32 {
    let natural = maglev_size_for(u32::try_from(backends).unwrap_or(u32::MAX));
    match current {
        Some(size)
            if MAGLEV_SIZES.contains(&size)
                && u64::from(size) >= 50 * backends as u64
                && u64::from(size) <= 4 * u64::from(natural) =>
        {
            size
        }
        _ => natural,
    }
}

impl Work<'_> {
    fn commit(
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
                backends: admission.backend_ids.clone(),
                frontends: service
                    .frontends
                    .iter()
                    .map(|frontend| frontend_key(frontend, service.protocol))
                    .collect(),
            },
        ));
        for ((addr, backend), (_, id)) in service.backends.iter().zip(&admission.backend_ids) {
            let entry = self.backends.entry(*id).or_insert((*addr, *backend));
            entry.1 = combine_backend(entry.1, *backend);
        }
        for frontend in &service.frontends {
            self.keep_frontends
                .insert(frontend_key(frontend, service.protocol));
        }
        self.frontend_count += admission.new_frontends;
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

    fn roll_back(&mut self, admission: Admission) {
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
    fn retain_applied(&mut self, text: &str, service: &DesiredService) {
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
                self.keep_backend_ids.extend(slots.iter().copied());
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

    fn finish(self) -> Plan {
        let applied = self.index.applied;
        // One pass over the applied backends (in id order) finds changed and unused ones;
        // ids not in the applied state are new.
        let mut backend_ops = Vec::new();
        let mut backend_deletes = Vec::new();
        for (id, found) in &applied.backends {
            match self.backends.get(id) {
                Some((addr, backend)) => {
                    let entry = backend_entry(*addr, *backend);
                    if entry != *found {
                        backend_ops.push(MapOp::PutBackend {
                            id: *id,
                            backend: entry,
                        });
                    }
                }
                None if !self.keep_backend_ids.contains(id) => {
                    backend_deletes.push(MapOp::DeleteBackend { id: *id });
                }
                None => {}
            }
        }
        let mut new_ids: Vec<u32> = self
            .backends
            .keys()
            .filter(|id| !applied.backends.contains_key(id))
            .copied()
            .collect();
        new_ids.sort_unstable();
        for id in new_ids {
            let (addr, backend) = self.backends[&id];
            backend_ops.push(MapOp::PutBackend {
                id,
                backend: backend_entry(addr, backend),
            });
        }

        let mut ops = self.name_ops;
        ops.extend(backend_ops);
        ops.extend(self.selection_ops);
        ops.extend(self.range_ops);
        ops.extend(self.frontend_ops);
        for key in applied
            .frontends
            .keys()
            .filter(|k| !self.keep_frontends.contains(k))
        {
            ops.push(MapOp::DeleteFrontend { key: *key });
        }
        for (key, prefix_len) in applied.source_ranges.difference(&self.keep_ranges) {
            ops.push(MapOp::DeleteSourceRange {
                key: *key,
                prefix_len: *prefix_len,
            });
        }
        ops.extend(backend_deletes);
        for id in applied
            .service_names
            .keys()
            .filter(|id| !self.keep_service_ids.contains(id))
        {
            ops.push(MapOp::DeleteServiceName { id: *id });
        }
        Plan {
            ops,
            rejected: self.rejected,
        }
    }
}
