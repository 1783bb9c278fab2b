//! Selection tables: their size, where they go in SELECTION, and the planner's cache of
//! Maglev tables (a service whose backends did not change costs a lookup, not a rebuild).

use std::{net::SocketAddr, sync::Arc};

use lb_common::{MAGLEV_SIZES, maglev_size_for};

use super::{
    BuddyAllocator, Planner,
    encode::backend_identity,
    maglev::{maglev_table, rebalance},
};
use crate::dataplane::{AppliedState, MapCapacity, SelectionTable};

/// A selection table's identity: its backends (address and id, in address order) and size.
/// The backend list is shared with the ledger's entry of a port whose table names all its
/// backends (the usual case), so the planner keeps one copy between plans.
pub(super) type TableKey = (BackendList, u32);

/// (address, id) of backends, in address order.
pub(super) type BackendList = Arc<[(SocketAddr, u32)]>;

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

/// The table size for `backends` backends: `maglev_size_for`, except that a table keeps its
/// current size while that still gives each backend at least 50 slots and is at most four
/// times the usual size. A size change remaps every slot, so crossing a size step by one
/// backend would move nearly all new flows; this keeps small changes small.
pub(super) fn table_size(backends: usize, current: Option<u32>) -> u32 {
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

impl Planner {
    /// Whether the applied table at `offset` holds `slots`.
    pub(super) fn holds(
        &mut self,
        applied: &AppliedState,
        offset: u32,
        slots: &SelectionTable,
    ) -> bool {
        if self
            .written
            .get(&offset)
            .is_some_and(|known| known.shares(slots))
        {
            return true;
        }
        let same = applied
            .selection
            .get(&offset)
            .is_some_and(|found| found == slots);
        if same {
            self.written.insert(offset, slots.clone());
        }
        same
    }

    /// Drops the cached table `slots` (a changed port's old table, about to leave the maps)
    /// unless this plan used it. Its key is rebuilt from the slots: the distinct backends
    /// in address order, and the size.
    pub(super) fn forget_table(
        &mut self,
        applied: &AppliedState,
        slots: &SelectionTable,
        plans: u64,
    ) {
        let mut backends: Vec<(SocketAddr, u32)> = slots
            .members()
            .iter()
            .filter_map(|&id| Some((backend_identity(applied.backends.get(&id)?)?, id)))
            .collect();
        backends.sort_unstable();
        let key = (backends.into(), slots.len() as u32);
        if self
            .tables
            .get(&key)
            .is_some_and(|(cached, used)| *used != plans && cached.shares(slots))
        {
            self.tables.remove(&key);
        }
    }

    /// The backend ids, slot by slot, of the table for `key` (cached), and the backend list
    /// of the cache's key (to share it instead of `key`'s). With `previous`, the
    /// frontend's current table of the same size, it is the table that differs least from
    /// it (`maglev::rebalance`: only the slots of departed backends and of backends above
    /// their new share move), so tables depend on history, not only on the backend set: a
    /// removal moves 1/N of the flows, not 1/N plus Maglev's few percent. Without, a fresh
    /// Maglev table.
    pub(super) fn table(
        &mut self,
        key: &TableKey,
        previous: Option<&SelectionTable>,
        applied: &AppliedState,
    ) -> (SelectionTable, BackendList) {
        let plans = self.plans;
        if let Some((cached_key, (slots, _))) = self.tables.get_key_value(key)
            && previous.is_none_or(|previous| slots == previous)
        {
            let found = (slots.clone(), cached_key.0.clone());
            if let Some((_, used)) = self.tables.get_mut(key) {
                *used = plans;
            }
            return found;
        }
        let (backends, size) = key;
        let addrs: Vec<SocketAddr> = backends.iter().map(|(addr, _)| *addr).collect();
        let indices = match previous {
            Some(previous) => {
                // A slot whose backend is gone names no address of the new set: refilled.
                let departed = SocketAddr::from(([0, 0, 0, 0], 0));
                // One backend lookup per member, not per slot.
                let owners = previous.map_members(|id| {
                    let addr = applied.backends.get(&id).and_then(backend_identity);
                    addr.unwrap_or(departed)
                });
                rebalance(&owners, &addrs, *size)
            }
            None => maglev_table(&addrs, *size),
        };
        let ids: Vec<u32> = backends.iter().map(|(_, id)| *id).collect();
        let slots = SelectionTable::from_indices(&ids, &indices);
        self.tables.insert(key.clone(), (slots.clone(), plans));
        (slots, key.0.clone())
    }
}
