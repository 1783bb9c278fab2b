//! The seam between the benchmarks and slicelb itself: load the datapath with its maps,
//! program a snapshot into them (model -> diff -> aya map writer), attach to an interface.
//! Everything else in `bench` talks to slicelb only through [`Slicelb`].

use std::time::Duration;

use aya::Ebpf;

use super::error::BenchError;
use crate::{dataplane::Capacity, lab::Netns, model::Snapshot};

/// How long one snapshot took to reach the kernel, and how much it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncStats {
    /// Map operations the diff produced.
    pub ops: usize,
    /// Snapshot to desired state to ordered ops (model and diff).
    pub plan: Duration,
    /// Ops written into the kernel's maps.
    pub write: Duration,
}

impl SyncStats {
    pub fn total(&self) -> Duration {
        self.plan + self.write
    }
}

/// Kernel memory of one configuration map, from the kernel's own accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    /// `memlock` of the map's fdinfo: what the kernel charges for the whole map.
    pub memlock_bytes: u64,
    /// Entries the programmed services use.
    pub used_entries: u64,
}

/// slicelb's datapath, loaded with maps sized by a [`Capacity`].
pub struct Slicelb {
    ebpf: Ebpf,
}

/// What is still missing before slicelb itself can be measured (the datapath and model
/// branches land on main after the benchmark harness).
const MISSING: &str = "the datapath loader (dataplane/loader.rs), the aya map writer \
     (dataplane/aya_maps.rs) and model::DesiredState + diff::plan";

impl Slicelb {
    /// Loads the programs and creates the maps, sized by `capacity`.
    pub fn load(_capacity: Capacity) -> Result<Self, BenchError> {
        Err(BenchError::NotLanded {
            what: "slicelb's datapath",
            detail: MISSING.to_string(),
        })
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Programs `snapshot` into the maps: model, diff against what the maps hold, write.
    pub fn sync(&mut self, _snapshot: &Snapshot) -> Result<SyncStats, BenchError> {
        Err(BenchError::NotLanded {
            what: "slicelb's model, diff and map writer",
            detail: MISSING.to_string(),
        })
    }

    /// Attaches the forward path (XDP) and the reverse path (TC egress) to `iface`.
    pub fn attach(&mut self, _netns: &Netns, _iface: &str) -> Result<(), BenchError> {
        Err(BenchError::NotLanded {
            what: "slicelb's attach",
            detail: MISSING.to_string(),
        })
    }

    /// Memory of every configuration map, with the entries the last sync used.
    pub fn map_memory(&self) -> Result<Vec<MapMemory>, BenchError> {
        Err(BenchError::NotLanded {
            what: "slicelb's maps",
            detail: MISSING.to_string(),
        })
    }
}

/// Map sizes that hold `services` services of `endpoints_each` endpoints, one frontend
/// per family and protocol, with headroom for a second copy of each selection table
/// (tables are written beside the one in use, then swapped).
pub fn capacity_for(services: usize, endpoints_each: usize, frontends_each: usize) -> Capacity {
    let defaults = Capacity::default();
    let table = lb_common::maglev_size_for(endpoints_each as u32).next_power_of_two() as u64;
    let frontends = (services * frontends_each) as u64;
    let wanted_slots = (frontends * table + 2 * table).min(u64::from(u32::MAX / 8)) as u32;
    Capacity {
        frontends: defaults
            .frontends
            .max((frontends as u32).saturating_add(1024)),
        backends: defaults
            .backends
            .max(((services * endpoints_each * frontends_each) as u32).saturating_add(1024)),
        selection_slots: defaults.selection_slots.max(wanted_slots),
        services: defaults
            .services
            .max((services * frontends_each) as u32 + 1024),
        source_ranges: defaults.source_ranges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_grows_with_services() {
        let small = capacity_for(1, 3, 2);
        assert_eq!(small, Capacity::default(), "defaults hold one service");
        let large = capacity_for(100_000, 3, 2);
        assert!(
            u64::from(large.selection_slots) >= 200_000 * 512,
            "one 509-slot table per frontend: {}",
            large.selection_slots
        );
        assert!(large.frontends >= 200_000);
    }
}
