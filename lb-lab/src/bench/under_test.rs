//! The seam between the benchmarks and slicelb itself: load the datapath with its maps,
//! program a snapshot into them (model -> diff -> aya map writer), attach to an interface
//! or a cgroup, run a program with `BPF_PROG_TEST_RUN`. Everything else in `bench` talks to slicelb only
//! through [`Slicelb`].

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    time::{Duration, Instant},
};

use lb_common::{SocketCounter, map_names};

use super::error::BenchError;
use slicelb::{
    dataplane::{
        AppliedState, MapCapacity, MapWriter as _,
        aya_maps::AyaMaps,
        loader::{Datapath, DatapathOptions, IngressMode},
        test_run,
    },
    diff::{BuddyAllocator, Planner},
    model::{IncrementalModel, ModelConfig, Snapshot},
};

use crate::lab::Netns;

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

/// Kernel memory of one map, from the kernel's own accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub name: &'static str,
    pub max_entries: u32,
    /// `memlock` of the map's fdinfo: what the kernel charges for the whole map.
    pub memlock_bytes: u64,
    /// Entries the programmed services use; `None` for flow state and counters that do
    /// not grow with services.
    pub used_entries: Option<u64>,
}

/// One `BPF_PROG_TEST_RUN` call: verdict, times and the frame as the program left it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    pub verdict: u32,
    /// The kernel's own average per repetition, in whole nanoseconds.
    pub kernel_ns: f64,
    /// Wall time of the call over `repeat`: finer than whole nanoseconds once `repeat` is
    /// large enough for the syscall itself to vanish.
    pub wall_ns: f64,
    pub out: Vec<u8>,
}

/// slicelb's datapath with fresh, unpinned maps, and the writer that fills them.
pub struct Slicelb {
    datapath: Datapath,
    maps: AyaMaps,
    planner: Planner,
    /// The model kept between syncs, as the agent keeps it: a change rebuilds only the
    /// services it touches.
    model: IncrementalModel,
    /// What the maps hold, kept in step with every write (as the agent keeps it), so a
    /// sync does not read the whole SELECTION array back.
    applied: AppliedState,
}

fn load_error(error: impl std::fmt::Display) -> BenchError {
    BenchError::unexpected("loading slicelb's datapath", error.to_string())
}

impl Slicelb {
    /// Loads the programs and creates the maps, sized by `capacity`.
    pub fn load(capacity: MapCapacity) -> Result<Self, BenchError> {
        let datapath = Datapath::load_unpinned(&DatapathOptions {
            capacity,
            ..DatapathOptions::default()
        })
        .map_err(load_error)?;
        let maps = AyaMaps::from_datapath(&datapath).map_err(load_error)?;
        Ok(Self {
            datapath,
            maps,
            planner: Planner::default(),
            model: IncrementalModel::default(),
            applied: AppliedState::default(),
        })
    }

    /// Programs `snapshot` into the maps: model, diff against what the maps hold, write.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<SyncStats, BenchError> {
        let started = Instant::now();
        let update = self.model.update(snapshot, &ModelConfig::default());
        let plan = self.planner.plan_changes(
            &self.applied,
            update.state,
            &update.changed,
            self.maps.capacity(),
        );
        let planned = Instant::now();
        if let Some((name, reason)) = plan.rejected.first() {
            return Err(BenchError::unexpected(
                "programming the bench services",
                format!(
                    "{} of {} service ports rejected, first {name}: {reason}",
                    plan.rejected.len(),
                    update.state.services.len()
                ),
            ));
        }
        self.maps
            .apply(&plan.ops)
            .map_err(|e| BenchError::unexpected("writing the maps", e.to_string()))?;
        let written = Instant::now();
        self.applied.apply(&plan.ops);
        Ok(SyncStats {
            ops: plan.ops.len(),
            plan: planned - started,
            write: written - planned,
        })
    }

    /// Attaches the forward path (native XDP) and the reverse path (TC egress) to `iface`
    /// inside `netns`.
    pub fn attach(&mut self, netns: &Netns, iface: &str) -> Result<(), BenchError> {
        let datapath = &mut self.datapath;
        netns
            .enter(|| datapath.attach(iface, IngressMode::XdpNative))
            .map_err(BenchError::lab("attaching slicelb"))?
            .map_err(|e| {
                BenchError::unexpected(&format!("attaching slicelb to {iface}"), e.to_string())
            })
    }

    /// Lets the XDP fast path send frames out of `ifaces` (names in `netns`; they must take
    /// redirected XDP frames).
    pub fn allow_fast_path(&mut self, netns: &Netns, ifaces: &[&str]) -> Result<(), BenchError> {
        let datapath = &mut self.datapath;
        netns
            .enter(|| -> Result<(), slicelb::dataplane::loader::LoadError> {
                let indexes = ifaces
                    .iter()
                    .map(|iface| slicelb::dataplane::loader::interface_index(iface))
                    .collect::<Result<Vec<_>, _>>()?;
                datapath.set_fast_path(true, &indexes)
            })
            .map_err(BenchError::lab("allowing the fast path"))?
            .map_err(|e| BenchError::unexpected("allowing the fast path", e.to_string()))
    }

    /// Turns the XDP fast path off, as the agent does without `--fast-path-iface`.
    pub fn fast_path_off(&mut self) -> Result<(), BenchError> {
        self.datapath
            .set_fast_path(false, &[])
            .map_err(|e| BenchError::unexpected("turning the fast path off", e.to_string()))
    }

    /// Attaches the socket-level hooks (connect, sendmsg, recvmsg, getpeername, release) at
    /// `cgroup`: sockets of the processes below it are sent to a backend at `connect()`.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), BenchError> {
        self.datapath.attach_cgroup(cgroup).map_err(|e| {
            BenchError::unexpected(
                &format!(
                    "attaching slicelb's socket-level hooks at {}",
                    cgroup.display()
                ),
                e.to_string(),
            )
        })
    }

    /// The socket-level counters (SOCKET_STATS), summed over CPUs.
    pub fn socket_counters(&self) -> Result<Vec<(SocketCounter, u64)>, BenchError> {
        self.maps
            .socket_counters()
            .map_err(|e| BenchError::unexpected("reading SOCKET_STATS", e.to_string()))
    }

    /// How many packets ended with `reason` so far (REASON_STATS, summed over CPUs).
    pub fn reason_count(&self, reason: lb_common::Reason) -> Result<u64, BenchError> {
        let counts = self
            .maps
            .reasons()
            .map_err(|e| BenchError::unexpected("reading REASON_STATS", e.to_string()))?;
        Ok(counts
            .into_iter()
            .find(|(counted, _)| *counted == reason)
            .map_or(0, |(_, count)| count))
    }

    /// Turns masquerade on with `ports`, masquerading with `addresses` per interface index.
    pub fn set_masquerade(
        &mut self,
        ports: Option<slicelb::dataplane::masquerade::PortRange>,
        addresses: &[(u32, lb_common::SnatAddresses)],
    ) -> Result<(), BenchError> {
        self.datapath
            .set_masquerade(ports, addresses)
            .map_err(|e| BenchError::unexpected("turning masquerade on", e.to_string()))
    }

    /// The loaded datapath.
    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    /// Runs program `name` (XDP or TC) `repeat` times on `frame` with the live maps.
    pub fn run(
        &self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunOutcome, BenchError> {
        run_outcome(self.datapath.ebpf(), name, frame, repeat)
    }

    /// Memory of every map, with the entries the programmed services use.
    pub fn map_memory(&self) -> Result<Vec<MapMemory>, BenchError> {
        let selection_slots: u64 = self
            .applied
            .selection
            .values()
            .map(|slots| u64::from(BuddyAllocator::block_size(slots.len() as u32)))
            .sum();
        let services = self.applied.service_names.len() as u64;
        let used = |name: &str| -> Option<u64> {
            match name {
                map_names::FRONTENDS => Some(self.applied.frontends.len() as u64),
                map_names::BACKENDS => Some(self.applied.backends.len() as u64),
                map_names::SELECTION => Some(selection_slots),
                map_names::SERVICE_NAMES | map_names::SERVICE_STATS => Some(services),
                map_names::SOURCE_RANGES => Some(self.applied.source_ranges.len() as u64),
                _ => None,
            }
        };
        slicelb::dataplane::loader::ALL_MAPS
            .iter()
            .map(|&(name, _)| {
                let data = self.datapath.map_data(name).map_err(load_error)?;
                let info = data.info().map_err(|source| BenchError::Map {
                    name: name.to_string(),
                    action: "info",
                    source,
                })?;
                let fd = data.fd().as_fd().as_raw_fd();
                Ok(MapMemory {
                    name,
                    max_entries: info.max_entries(),
                    memlock_bytes: fdinfo_memlock(fd)?,
                    used_entries: used(name),
                })
            })
            .collect()
    }
}

/// `memlock:` of `/proc/self/fdinfo/<fd>`: the kernel's accounting of a map's memory.
fn fdinfo_memlock(fd: i32) -> Result<u64, BenchError> {
    let path = std::path::PathBuf::from(format!("/proc/self/fdinfo/{fd}"));
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| BenchError::unexpected("map memory", format!("no memlock in {text:?}")))
}

/// Map sizes that hold `services` services of `endpoints_each` endpoints with
/// `frontends_each` frontends (families x protocols) each. SELECTION rounds up to a power of
/// two, which leaves room for changed tables to be written beside the ones in use.
pub fn capacity_for(services: usize, endpoints_each: usize, frontends_each: usize) -> MapCapacity {
    let defaults = MapCapacity::default();
    let table = u64::from(BuddyAllocator::block_size(lb_common::maglev_size_for(
        endpoints_each as u32,
    )));
    let frontends = (services * frontends_each) as u64;
    // Room for every table twice over, in power-of-two blocks (the buddy allocator's).
    let wanted_slots = (2 * frontends * table).next_power_of_two().min(1 << 30) as u32;
    let at_least = |default: u32, wanted: u64| default.max(wanted.min(u64::from(u32::MAX)) as u32);
    MapCapacity {
        frontends: at_least(defaults.frontends, frontends + 1024),
        backends: at_least(
            defaults.backends,
            (services * endpoints_each * frontends_each) as u64 + 1024,
        ),
        selection_slots: defaults.selection_slots.max(wanted_slots),
        // Every table's backends, twice over (changed tables beside the ones in use).
        table_members: at_least(
            defaults.table_members,
            2 * frontends * endpoints_each as u64 + 1024,
        ),
        services: at_least(defaults.services, frontends + 1024),
        ..defaults
    }
}

/// Runs program `name` of `ebpf` `repeat` times on `frame`, timed by the kernel and by us.
pub fn run_outcome(
    ebpf: &aya::Ebpf,
    name: &'static str,
    frame: &[u8],
    repeat: u32,
) -> Result<RunOutcome, BenchError> {
    let started = Instant::now();
    let output = test_run::run_program(ebpf, name, frame, repeat)
        .map_err(|e| BenchError::unexpected(name, e.to_string()))?;
    let wall = started.elapsed();
    Ok(RunOutcome {
        verdict: output.verdict,
        kernel_ns: output.duration.as_nanos() as f64,
        wall_ns: wall.as_nanos() as f64 / f64::from(repeat.max(1)),
        out: output.packet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_grows_with_services() {
        let small = capacity_for(1, 3, 2);
        assert_eq!(small, MapCapacity::default(), "defaults hold one service");
        let large = capacity_for(100_000, 3, 2);
        assert!(
            u64::from(large.selection_slots) > 200_000 * 512,
            "a 509-slot table per frontend and room to change one: {}",
            large.selection_slots
        );
        assert!(large.frontends >= 200_000);
        assert!(large.backends >= 600_000);
    }
}
