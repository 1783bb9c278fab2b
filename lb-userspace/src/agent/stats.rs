//! The kernel's counters for the metrics endpoint, read from the pinned maps (read-only) at
//! scrape time; map fill levels come from the agent's own record of what it wrote.

use std::sync::{Arc, Mutex, RwLock};

use lb_common::{FastPathCounter, ProtoCounter, Reason, ServiceCounters, SocketCounter, map_names};

use crate::{
    dataplane::{AppliedState, DataplaneError, MapCapacity, aya_maps::ReadOnlyMaps},
    metrics::{KernelStats, MapFill},
};

pub struct PinnedStats {
    maps: Mutex<ReadOnlyMaps>,
    applied: Arc<RwLock<AppliedState>>,
    capacity: MapCapacity,
}

impl PinnedStats {
    pub fn new(
        maps: ReadOnlyMaps,
        applied: Arc<RwLock<AppliedState>>,
        capacity: MapCapacity,
    ) -> Self {
        Self {
            maps: Mutex::new(maps),
            applied,
            capacity,
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, ReadOnlyMaps> {
        // A panic while holding the lock leaves the maps as they were: keep using them.
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl KernelStats for PinnedStats {
    fn service_counters(&self) -> Result<Vec<(String, ServiceCounters)>, DataplaneError> {
        Ok(self
            .maps()
            .all_service_counters()?
            .into_iter()
            .map(|(_, name, counters)| (name, counters))
            .collect())
    }

    fn reason_counters(&self) -> Result<[u64; Reason::COUNT as usize], DataplaneError> {
        let mut out = [0; Reason::COUNT as usize];
        for (reason, count) in self.maps().reasons()? {
            out[reason as usize] = count;
        }
        Ok(out)
    }

    fn proto_counters(&self) -> Result<[u64; ProtoCounter::COUNT as usize], DataplaneError> {
        let mut out = [0; ProtoCounter::COUNT as usize];
        for (counter, count) in self.maps().protocols()? {
            out[counter as usize] = count;
        }
        Ok(out)
    }

    fn socket_counters(&self) -> Result<[u64; SocketCounter::COUNT as usize], DataplaneError> {
        let mut out = [0; SocketCounter::COUNT as usize];
        for (counter, count) in self.maps().socket_counters()? {
            out[counter as usize] = count;
        }
        Ok(out)
    }

    fn fast_path_counters(&self) -> Result<[u64; FastPathCounter::COUNT as usize], DataplaneError> {
        let mut out = [0; FastPathCounter::COUNT as usize];
        for (counter, count) in self.maps().fast_path_counters()? {
            out[counter as usize] = count;
        }
        Ok(out)
    }

    fn conntrack_entries(&self) -> Result<u64, DataplaneError> {
        Ok(self.maps().conntrack_entries()?.entries.into())
    }

    fn map_fill(&self, conntrack_entries: Option<u64>) -> Result<Vec<MapFill>, DataplaneError> {
        let applied = self.applied.read().unwrap_or_else(|p| p.into_inner());
        let mut fills = vec![
            MapFill {
                map: map_names::FRONTENDS,
                used: applied.frontends.len() as u64,
                capacity: self.capacity.frontends.into(),
            },
            MapFill {
                map: map_names::BACKENDS,
                used: applied.backends.len() as u64,
                capacity: self.capacity.backends.into(),
            },
            MapFill {
                map: map_names::SELECTION,
                used: applied.selection_slots_used(),
                capacity: self.capacity.selection_slots.into(),
            },
            MapFill {
                map: map_names::TABLE_MEMBERS,
                used: applied.table_member_count(),
                capacity: self.capacity.table_members.into(),
            },
            MapFill {
                map: map_names::SERVICE_NAMES,
                used: applied.service_names.len() as u64,
                capacity: self.capacity.services.into(),
            },
            MapFill {
                map: map_names::SOURCE_RANGES,
                used: applied.source_ranges.len() as u64,
                capacity: self.capacity.source_ranges.into(),
            },
        ];
        if let Some(used) = conntrack_entries {
            fills.push(MapFill {
                map: map_names::CONNTRACK,
                used,
                capacity: self.capacity.conntrack.into(),
            });
        }
        Ok(fills)
    }
}
