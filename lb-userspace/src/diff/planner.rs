//! The planner: applied and desired state in, map operations out in make-before-break order;
//! a whole plan, or one scoped to the service ports that changed.

use std::{
    collections::{BTreeSet, hash_map::Entry},
    hash::BuildHasher,
    net::SocketAddr,
    sync::Arc,
};

use lb_common::{FrontendKey, SourceRangeKey};
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use super::{
    BuddyAllocator, Plan,
    admission::{AppliedIndex, Work},
    encode::backend_entry,
    ids::IdAllocator,
    stale::ServingMemory,
    tables::{BackendList, TableKey, free_selection},
};
use crate::{
    dataplane::{AppliedState, MapCapacity, MapOp, SelectionTable},
    model::{DesiredService, DesiredState, Protocol, ServicePortName},
};

/// Plans map operations; keeps Maglev tables between plans so that services whose backends
/// did not change cost a lookup, not a rebuild.
#[derive(Debug, Default)]
pub struct Planner {
    /// Table slots (backend ids) by table key, with the plan number that last used them.
    pub(super) tables: FxHashMap<TableKey, (SelectionTable, u64)>,
    /// What each SELECTION block in use holds, as this planner wrote or last verified it.
    /// Blocks in use are never written (new tables go to free space), so while a frontend
    /// keeps pointing at a block its contents stay as recorded; this spares re-reading
    /// every table on every plan. It assumes this planner is the maps' only writer: after
    /// anything else wrote SELECTION, call [`Planner::forget_tables`].
    pub(super) written: FxHashMap<u32, SelectionTable>,
    pub(super) plans: u64,
    /// Who uses which backend after the last plan, when that plan admitted everything;
    /// lets [`Planner::plan_changes`] look at the changed service ports only.
    ledger: Option<Ledger>,
    /// Each UDP service port's serving endpoints: which ports' flows a plan cleans.
    serving: ServingMemory,
}

/// Every admitted service port as the last plan left it, and the SELECTION space that left
/// free: what [`Planner::plan_changes`] needs to look at the changed ports only.
#[derive(Debug, Default)]
struct Ledger {
    ports: FxHashMap<Arc<ServicePortName>, LedgerPort>,
    /// The service ports using each backend address, by [`address_key`]: one entry per
    /// backend, so it is kept small (a hash instead of the 32-byte address; one user inline).
    users: FxHashMap<u64, Users>,
    /// Free SELECTION space once the last plan is applied: built from the applied state by
    /// the first scoped plan after a whole one, then kept in step with the scoped plans'
    /// own allocations and releases (a rebuild reads every frontend and table).
    selection: Option<BuddyAllocator>,
}

/// What one admitted service port holds in the maps.
#[derive(Debug, Default)]
pub(super) struct LedgerPort {
    pub(super) service_id: u32,
    /// (address, id) of the port's backends, in address order.
    pub(super) backends: BackendList,
    pub(super) frontends: Vec<FrontendKey>,
}

/// The key of a backend address in [`Ledger::users`]: a 64-bit hash. Two addresses sharing
/// one only make a scoped plan look at a port more, which plans it to what it has.
fn address_key(addr: &SocketAddr) -> u64 {
    FxBuildHasher.hash_one(addr)
}

/// The service ports using one backend: nearly always one, held without an allocation.
#[derive(Debug)]
enum Users {
    One(Arc<ServicePortName>),
    Many(Vec<Arc<ServicePortName>>),
}

impl Users {
    fn iter(&self) -> std::slice::Iter<'_, Arc<ServicePortName>> {
        match self {
            Users::One(name) => std::slice::from_ref(name).iter(),
            Users::Many(names) => names.iter(),
        }
    }

    fn add(&mut self, name: Arc<ServicePortName>) {
        match self {
            Users::One(first) => *self = Users::Many(vec![first.clone(), name]),
            Users::Many(names) => names.push(name),
        }
    }

    /// Removes `name`; whether no user is left.
    fn remove(&mut self, name: &ServicePortName) -> bool {
        match self {
            Users::One(user) => **user == *name,
            Users::Many(names) => {
                names.retain(|user| **user != *name);
                names.is_empty()
            }
        }
    }
}

impl Ledger {
    /// An empty ledger with room for `ports` service ports using `backends` backends.
    fn with_capacity(ports: usize, backends: usize) -> Self {
        Self {
            ports: FxHashMap::with_capacity_and_hasher(ports, FxBuildHasher),
            users: FxHashMap::with_capacity_and_hasher(backends, FxBuildHasher),
            selection: None,
        }
    }

    fn add(&mut self, name: ServicePortName, port: LedgerPort) {
        let name = Arc::new(name);
        for (addr, _) in port.backends.iter() {
            match self.users.entry(address_key(addr)) {
                Entry::Vacant(entry) => {
                    entry.insert(Users::One(name.clone()));
                }
                Entry::Occupied(mut entry) => entry.get_mut().add(name.clone()),
            }
        }
        self.ports.insert(name, port);
    }

    fn remove(&mut self, name: &ServicePortName) {
        let Some(port) = self.ports.remove(name) else {
            return;
        };
        for (addr, _) in port.backends.iter() {
            let key = address_key(addr);
            if self
                .users
                .get_mut(&key)
                .is_some_and(|users| users.remove(name))
            {
                self.users.remove(&key);
            }
        }
    }
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

    /// Drops what the planner remembers about UDP service ports' serving endpoints, so that
    /// the next plan lists every UDP port it looks at for cleaning (after a cleanup failed).
    pub fn forget_serving(&mut self) {
        self.serving.forget();
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
            let addrs: FxHashSet<SocketAddr> = planned
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
                .filter_map(|addr| ledger.users.get(&address_key(addr)))
                .flat_map(Users::iter)
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
                    if let Some(members) = applied.table_members.get(&value.table_offset) {
                        scope.table_members.insert(value.table_offset, *members);
                    }
                }
            }
            for (_, id) in port.backends.iter() {
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
        let mut index = AppliedIndex::new(scope);
        // The maps that grow with the planned backends are sized once for all of them (at
        // most: backends can be shared): a cold sync otherwise rehashes each a dozen times,
        // touching fresh memory every time.
        let planned_backends = services
            .iter()
            .map(|(_, service)| service.backends.len())
            .sum::<usize>()
            .min(capacity.backends as usize);
        index
            .backend_id
            .reserve(planned_backends.saturating_sub(index.backend_id.len()));
        if whole {
            self.tables
                .reserve(services.len().saturating_sub(self.tables.len()));
            self.written
                .reserve(services.len().saturating_sub(self.written.len()));
        }
        // Service ids frontends use without a name (left by a foreign writer) are taken too.
        // A scoped plan follows a whole plan that admitted everything, which deleted every
        // frontend without a name: no need to look at them all.
        let unnamed_ids: FxHashSet<u32> = if whole {
            applied
                .frontends
                .values()
                .map(|v| v.service_id)
                .filter(|id| !applied.service_names.contains_key(id))
                .collect()
        } else {
            FxHashSet::default()
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
            placed: FxHashMap::with_capacity_and_hasher(services.len(), FxBuildHasher),
            frontend_count: applied.frontends.len(),
            range_count: applied.source_ranges.len(),
            member_count: applied.table_member_count(),
            keep_frontends: FxHashSet::with_capacity_and_hasher(
                scope.frontends.len(),
                FxBuildHasher,
            ),
            referenced_tables: FxHashSet::with_capacity_and_hasher(
                scope.frontends.len(),
                FxBuildHasher,
            ),
            udp_ports: Vec::new(),
            keep_service_ids: FxHashSet::with_capacity_and_hasher(services.len(), FxBuildHasher),
            keep_backend_ids: FxHashSet::default(),
            keep_ranges: BTreeSet::new(),
            backends: FxHashMap::with_capacity_and_hasher(
                scope.backends.len().max(planned_backends),
                FxBuildHasher,
            ),
            name_ops: Vec::new(),
            selection_ops: Vec::new(),
            range_ops: Vec::new(),
            frontend_ops: Vec::new(),
            rejected: Vec::new(),
            admitted: Vec::with_capacity(services.len()),
            index,
        };

        // A planned port that is not UDP (any more), or gone, is forgotten; a rejected one
        // keeps what it had, as its maps do.
        let udp_names: FxHashSet<&ServicePortName> = services
            .iter()
            .filter(|(_, service)| service.protocol == Protocol::Udp)
            .map(|(name, _)| *name)
            .collect();
        self.serving.retain(|name| {
            udp_names.contains(name) || scope_names.is_some_and(|planned| !planned.contains(name))
        });

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
        let udp_ports = std::mem::take(&mut work.udp_ports);
        let mut plan = work.finish();
        plan.stale_flows = self.serving.admitted(udp_ports);
        self.ledger = if !plan.rejected.is_empty() {
            None
        } else if whole {
            let mut ledger = Ledger::with_capacity(admitted.len(), planned_backends);
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
}

/// An index for every table of `applied` at an offset `kept` accepts that has none (its
/// frontends point at it, but an agent from before TABLE_MEMBERS wrote it, or one stopped
/// before indexing it).
pub fn unindexed_tables<'a>(
    applied: &'a AppliedState,
    kept: impl Fn(u32) -> bool + 'a,
) -> impl Iterator<Item = MapOp> + 'a {
    applied
        .selection
        .iter()
        .filter(move |(offset, _)| kept(**offset) && !applied.table_members.contains_key(offset))
        .map(|(offset, slots)| MapOp::PutTableMembers {
            offset: *offset,
            slots: slots.clone(),
        })
}

impl Work<'_> {
    pub(super) fn finish(self) -> Plan {
        let applied = self.index.applied;
        // Sized once: a cold sync's ops are the largest allocation of a plan, and doubling
        // would leave up to half of it unused. Backend puts (at most one per backend the
        // plan uses) go straight in, so no second list of them sits beside it.
        let mut ops = self.name_ops;
        ops.reserve_exact(
            self.backends.len()
                + self.selection_ops.len()
                + self.range_ops.len()
                + self.frontend_ops.len(),
        );
        // One pass over the applied backends (in id order) finds changed and unused ones;
        // ids not in the applied state are new.
        let mut backend_deletes = Vec::new();
        for (id, found) in &applied.backends {
            match self.backends.get(id) {
                Some((addr, backend)) => {
                    let entry = backend_entry(*addr, *backend);
                    if entry != *found {
                        ops.push(MapOp::PutBackend {
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
            ops.push(MapOp::PutBackend {
                id,
                backend: backend_entry(addr, backend),
            });
        }
        ops.extend(self.selection_ops);
        // A table kept without its index (left by an agent before TABLE_MEMBERS) gets one.
        ops.extend(unindexed_tables(applied, |offset| {
            self.referenced_tables.contains(&offset)
        }));
        ops.extend(self.range_ops);
        ops.extend(self.frontend_ops);
        for key in applied
            .frontends
            .keys()
            .filter(|k| !self.keep_frontends.contains(k))
        {
            ops.push(MapOp::DeleteFrontend { key: *key });
        }
        // Break after make: a table's index goes once no frontend points at the table.
        for (offset, slots) in &applied.selection {
            if !self.referenced_tables.contains(offset) {
                ops.push(MapOp::DeleteTableMembers {
                    offset: *offset,
                    slots: slots.clone(),
                });
            }
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
            stale_flows: Default::default(),
        }
    }
}
