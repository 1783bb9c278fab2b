//! [`MapWriter`] over the kernel maps (pinned, or those of a loaded [`Datapath`]), plus the
//! readers the CLI and the metrics endpoint use, through [`ReadOnlyMaps`].

use std::{
    io,
    ops::Deref,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
    sync::atomic::{Ordering, fence},
};

use aya::maps::{
    Array, HashMap, IterableMap as _, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key,
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, Config, FastPathCounter, FlowKey, FlowValue, FrontendKey,
    FrontendValue, ProtoCounter, Reason, ServiceCounters, ServiceName, SocketCounter,
    SourceRangeKey, TableMember, map_names,
};

use rustc_hash::FxHashSet;

use super::{
    AppliedState, DataplaneError, DeletedFlows, MapCapacity, MapOp, MapWriter, StaleFlows,
    batch::{self, Counted},
    describe_frontend,
    frontend_filter::{self, FrontendFilter},
    fully_indexed,
    loader::{Datapath, LoadError},
    mapped_array::MappedArray,
    pins,
    undo::{NewTables, member_entries, undo_in_use},
};

/// The value stored for every source range (only the prefix matters).
const SOURCE_RANGE_ALLOWED: u8 = 1;

pub struct AyaMaps {
    frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    /// FRONTENDS for batched writes (a cold sync puts every frontend in a row).
    frontends_fd: OwnedFd,
    backends: Array<MapData, Backend>,
    /// Descriptors for batched access (one syscall per chunk instead of per slot).
    backends_fd: OwnedFd,
    selection_fd: OwnedFd,
    /// SELECTION's memory, where tables are copied; `None` for a SELECTION pinned by an
    /// older slicelb without `BPF_F_MMAPABLE` (the loader refuses to adopt one, but
    /// `from_pin` opens it), written through `selection_fd` instead, and for read-only maps.
    selection_mapping: Option<MappedArray>,
    frontend_filter_fd: OwnedFd,
    /// TABLE_MEMBERS, written and walked in batches.
    table_members_fd: OwnedFd,
    /// TABLE_MEMBERS for single lookups (entries of a table in use, before a batch that
    /// rewrites them).
    table_members: HashMap<MapData, TableMember, u32>,
    /// What the current `apply` wrote that a failure would leave without an owner.
    new_tables: NewTables,
    /// The frontends behind each FRONTEND_FILTER bit; built from FRONTENDS (and the kernel
    /// bitmap rewritten to match) on the first `apply`, so readers never pay for it.
    frontend_filter: Option<FrontendFilter>,
    /// The frontend keys the last [`MapWriter::read`] found while the filter was not built
    /// yet: its first use takes them instead of walking FRONTENDS a second time (a walk
    /// costs a syscall per frontend). Only this writer changes FRONTENDS, and every change
    /// builds the filter first, so they are still what the map holds. Never kept for
    /// read-only maps, which never build the filter.
    frontends_read: std::sync::Mutex<Option<Vec<FrontendKey>>>,
    /// False for [`ReadOnlyMaps`].
    writable: bool,
    service_names: HashMap<MapData, u32, ServiceName>,
    /// SERVICE_NAMES for batched writes (a cold sync names every service at once).
    service_names_fd: OwnedFd,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    conntrack: HashMap<MapData, FlowKey, FlowValue>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// For batched passes over the flow state (deleting stale flows, forgetting affinity).
    conntrack_fd: OwnedFd,
    affinity_fd: OwnedFd,
    reason_stats: PerCpuArray<MapData, u64>,
    proto_stats: PerCpuArray<MapData, u64>,
    socket_stats: PerCpuArray<MapData, u64>,
    fast_path_stats: PerCpuArray<MapData, u64>,
    service_stats: PerCpuArray<MapData, ServiceCounters>,
    /// Its `flow_generation` is bumped after CONNTRACK entries are deleted.
    config: Array<MapData, Config>,
    capacity: MapCapacity,
}

fn io_error(error: MapError) -> io::Error {
    match error {
        MapError::SyscallError(e) => e.io_error,
        other => io::Error::other(other),
    }
}

/// Each of `counters` with its slot of `map` summed over CPUs, in the given order.
fn summed_over_cpus<C: Copy, const N: usize>(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
    counters: [C; N],
    index: impl Fn(C) -> u32,
) -> Result<Vec<(C, u64)>, DataplaneError> {
    counters
        .into_iter()
        .map(|counter| {
            let values = map.get(&index(counter), 0).map_err(read_err(name))?;
            Ok((counter, values.iter().sum()))
        })
        .collect()
}

fn read_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |e| DataplaneError::MapRead {
        map,
        source: io_error(e),
    }
}

fn write_err(map: &'static str, capacity: u32) -> impl Fn(MapError) -> DataplaneError {
    move |e| {
        let source = io_error(e);
        // The kernel says E2BIG (hash maps) or ENOSPC (LPM tries) when a map is full.
        match source.raw_os_error() {
            Some(libc::E2BIG) | Some(libc::ENOSPC) => DataplaneError::MapFull { map, capacity },
            _ => DataplaneError::MapWrite { map, source },
        }
    }
}

fn typed<T>(
    map: &'static str,
    data: MapData,
    convert: impl FnOnce(MapData) -> Result<T, MapError>,
) -> Result<T, DataplaneError> {
    convert(data).map_err(read_err(map))
}

/// The value of `key` in a hash map, `None` when it holds none.
fn entry<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<Option<V>, DataplaneError> {
    match map.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(read_err(name)(e)),
    }
}

/// The pinned maps, opened for reading only: every descriptor is read-only, so the kernel
/// refuses any write through them, and the type offers [`AyaMaps`]'s reads but not `apply`
/// (which needs `&mut`). The operator commands and the metrics read through it: they never
/// change what the agent keeps.
pub struct ReadOnlyMaps(AyaMaps);

impl ReadOnlyMaps {
    /// The maps pinned under `pin_path/maps`, with the sizes they were made with.
    pub fn open(pin_path: &Path) -> Result<Self, DataplaneError> {
        let capacity = pins::pinned_capacity(pin_path)?;
        let mut maps = AyaMaps::build(capacity, |name| pins::open_read_only(pin_path, name))?;
        // The kernel maps a map's memory shared only through a writable descriptor: read
        // SELECTION with batched lookups instead.
        maps.selection_mapping = None;
        maps.writable = false;
        Ok(Self(maps))
    }
}

impl Deref for ReadOnlyMaps {
    type Target = AyaMaps;

    fn deref(&self) -> &AyaMaps {
        &self.0
    }
}

impl AyaMaps {
    /// Opens the maps pinned under `pin_path/maps` (as [`Datapath::open`] pins them).
    pub fn from_pin(pin_path: &Path, capacity: MapCapacity) -> Result<Self, DataplaneError> {
        let dir = pin_path.join("maps");
        Self::build(capacity, |name| {
            MapData::from_pin(dir.join(name)).map_err(read_err(name))
        })
    }

    /// Opens the maps of a loaded datapath (pinned or not).
    pub fn from_datapath(datapath: &Datapath) -> Result<Self, DataplaneError> {
        let capacity = datapath.capacity();
        Self::build(capacity, |name| {
            let data = datapath
                .map_data(name)
                .map_err(|e: LoadError| DataplaneError::MapRead {
                    map: name,
                    source: io::Error::other(e.to_string()),
                })?;
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::MapRead { map: name, source })?;
            MapData::from_fd(fd).map_err(read_err(name))
        })
    }

    fn build(
        capacity: MapCapacity,
        open: impl Fn(&'static str) -> Result<MapData, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        use aya::maps::Map;
        let clone_fd = |name: &'static str, data: &MapData| {
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::MapRead { map: name, source })
        };
        let backends = open(map_names::BACKENDS)?;
        let backends_fd = clone_fd(map_names::BACKENDS, &backends)?;
        let selection = open(map_names::SELECTION)?;
        let selection_fd = clone_fd(map_names::SELECTION, &selection)?;
        let selection_info = selection.info().map_err(read_err(map_names::SELECTION))?;
        let selection_mapping =
            MappedArray::new(selection_fd.as_fd(), &selection_info).map_err(|error| {
                DataplaneError::MapRead {
                    map: map_names::SELECTION,
                    source: io::Error::other(error),
                }
            })?;
        let frontend_filter_fd = clone_fd(
            map_names::FRONTEND_FILTER,
            &open(map_names::FRONTEND_FILTER)?,
        )?;
        let conntrack = open(map_names::CONNTRACK)?;
        let conntrack_fd = clone_fd(map_names::CONNTRACK, &conntrack)?;
        let affinity = open(map_names::AFFINITY)?;
        let affinity_fd = clone_fd(map_names::AFFINITY, &affinity)?;
        let table_members = open(map_names::TABLE_MEMBERS)?;
        let table_members_fd = clone_fd(map_names::TABLE_MEMBERS, &table_members)?;
        let service_names = open(map_names::SERVICE_NAMES)?;
        let service_names_fd = clone_fd(map_names::SERVICE_NAMES, &service_names)?;
        let frontends = open(map_names::FRONTENDS)?;
        let frontends_fd = clone_fd(map_names::FRONTENDS, &frontends)?;
        Ok(Self {
            frontends: typed(map_names::FRONTENDS, frontends, |d| {
                HashMap::try_from(Map::HashMap(d))
            })?,
            frontends_fd,
            backends: typed(map_names::BACKENDS, backends, |d| {
                Array::try_from(Map::Array(d))
            })?,
            backends_fd,
            selection_fd,
            selection_mapping,
            frontend_filter_fd,
            table_members_fd,
            table_members: typed(map_names::TABLE_MEMBERS, table_members, |d| {
                HashMap::try_from(Map::HashMap(d))
            })?,
            new_tables: NewTables::default(),
            frontend_filter: None,
            frontends_read: std::sync::Mutex::new(None),
            writable: true,
            service_names: typed(map_names::SERVICE_NAMES, service_names, |d| {
                HashMap::try_from(Map::HashMap(d))
            })?,
            service_names_fd,
            source_ranges: typed(
                map_names::SOURCE_RANGES,
                open(map_names::SOURCE_RANGES)?,
                |d| LpmTrie::try_from(Map::LpmTrie(d)),
            )?,
            conntrack: typed(map_names::CONNTRACK, conntrack, |d| {
                HashMap::try_from(Map::LruHashMap(d))
            })?,
            affinity: typed(map_names::AFFINITY, affinity, |d| {
                HashMap::try_from(Map::LruHashMap(d))
            })?,
            conntrack_fd,
            affinity_fd,
            reason_stats: typed(
                map_names::REASON_STATS,
                open(map_names::REASON_STATS)?,
                |d| PerCpuArray::try_from(Map::PerCpuArray(d)),
            )?,
            proto_stats: typed(map_names::PROTO_STATS, open(map_names::PROTO_STATS)?, |d| {
                PerCpuArray::try_from(Map::PerCpuArray(d))
            })?,
            socket_stats: typed(
                map_names::SOCKET_STATS,
                open(map_names::SOCKET_STATS)?,
                |d| PerCpuArray::try_from(Map::PerCpuArray(d)),
            )?,
            fast_path_stats: typed(
                map_names::FAST_PATH_STATS,
                open(map_names::FAST_PATH_STATS)?,
                |d| PerCpuArray::try_from(Map::PerCpuArray(d)),
            )?,
            service_stats: typed(
                map_names::SERVICE_STATS,
                open(map_names::SERVICE_STATS)?,
                |d| PerCpuArray::try_from(Map::PerCpuArray(d)),
            )?,
            config: typed(map_names::CONFIG, open(map_names::CONFIG)?, |d| {
                Array::try_from(Map::Array(d))
            })?,
            capacity,
        })
    }

    /// Bumps CONFIG's `flow_generation`, so that no flow cache slot filled before serves
    /// another packet: after CONNTRACK entries are deleted, their flows must be balanced
    /// afresh, not sent on by a cache that still holds them.
    fn bump_flow_generation(&mut self) -> Result<(), DataplaneError> {
        let mut config = self
            .config
            .get(&0, 0)
            .map_err(read_err(map_names::CONFIG))?;
        config.flow_generation = config.flow_generation.wrapping_add(1);
        self.config
            .set(0, &config, 0)
            .map_err(write_err(map_names::CONFIG, 1))
    }

    /// REASON_STATS summed over CPUs, in `Reason::ALL` order.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, DataplaneError> {
        summed_over_cpus(
            &self.reason_stats,
            map_names::REASON_STATS,
            Reason::ALL,
            |r| r as u32,
        )
    }

    /// PROTO_STATS summed over CPUs, in `ProtoCounter::ALL` order.
    pub fn protocols(&self) -> Result<Vec<(ProtoCounter, u64)>, DataplaneError> {
        summed_over_cpus(
            &self.proto_stats,
            map_names::PROTO_STATS,
            ProtoCounter::ALL,
            |c| c as u32,
        )
    }

    /// SOCKET_STATS summed over CPUs, in `SocketCounter::ALL` order.
    pub fn socket_counters(&self) -> Result<Vec<(SocketCounter, u64)>, DataplaneError> {
        summed_over_cpus(
            &self.socket_stats,
            map_names::SOCKET_STATS,
            SocketCounter::ALL,
            |c| c as u32,
        )
    }

    /// FAST_PATH_STATS summed over CPUs, in `FastPathCounter::ALL` order.
    pub fn fast_path_counters(&self) -> Result<Vec<(FastPathCounter, u64)>, DataplaneError> {
        summed_over_cpus(
            &self.fast_path_stats,
            map_names::FAST_PATH_STATS,
            FastPathCounter::ALL,
            |c| c as u32,
        )
    }

    /// One service's counters summed over CPUs.
    pub fn service_counters(&self, service_id: u32) -> Result<ServiceCounters, DataplaneError> {
        let values = self
            .service_stats
            .get(&service_id, 0)
            .map_err(read_err(map_names::SERVICE_STATS))?;
        Ok(values
            .iter()
            .fold(ServiceCounters::default(), |acc, v| ServiceCounters {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
                new_flows: acc.new_flows + v.new_flows,
                socket_translations: acc.socket_translations + v.socket_translations,
            }))
    }

    /// Counters of every named service (ids from SERVICE_NAMES).
    pub fn all_service_counters(
        &self,
    ) -> Result<Vec<(u32, String, ServiceCounters)>, DataplaneError> {
        self.service_names()?
            .into_iter()
            .map(|(id, name)| Ok((id, name, self.service_counters(id)?)))
            .collect()
    }

    /// SERVICE_NAMES: each service port's id and `namespace/name:port`, by id.
    pub fn service_names(&self) -> Result<std::collections::BTreeMap<u32, String>, DataplaneError> {
        self.service_names
            .iter()
            .map(|entry| {
                let (id, name) = entry.map_err(read_err(map_names::SERVICE_NAMES))?;
                Ok((id, name.as_str().to_string()))
            })
            .collect()
    }

    /// The CONNTRACK entries `keep` picks, at most `limit` of them, in one pass over its
    /// buckets that stops at the limit ([`batch::select_from_hash`]).
    pub fn select_conntrack(
        &self,
        limit: usize,
        keep: impl FnMut(&FlowKey, &FlowValue) -> bool,
    ) -> Result<batch::Selected<FlowKey, FlowValue>, DataplaneError> {
        batch::select_from_hash(self.conntrack_fd.as_fd(), limit, keep).map_err(|source| {
            DataplaneError::MapRead {
                map: map_names::CONNTRACK,
                source,
            }
        })
    }

    /// Entries in CONNTRACK (each balanced flow has two: forward and reply), counted in
    /// one pass over its buckets: the work is bounded by the map's size however fast flows
    /// come and go (a key-by-key walk starts again whenever its key is evicted).
    pub fn conntrack_entries(&self) -> Result<Counted, DataplaneError> {
        let fd = self.conntrack.map().fd().as_fd();
        batch::count_entries::<FlowKey, FlowValue>(fd, self.capacity.conntrack).map_err(|source| {
            DataplaneError::MapRead {
                map: map_names::CONNTRACK,
                source,
            }
        })
    }

    /// One conntrack entry, for tests and `slicelb trace`.
    pub fn conntrack_entry(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        entry(&self.conntrack, map_names::CONNTRACK, key)
    }

    /// One session-affinity entry, for `slicelb trace`.
    pub fn affinity_entry(
        &self,
        key: &AffinityKey,
    ) -> Result<Option<AffinityValue>, DataplaneError> {
        entry(&self.affinity, map_names::AFFINITY, key)
    }

    /// SELECTION slots `offset..offset + size`.
    fn read_table(&self, offset: u32, size: u32) -> Result<Vec<u32>, DataplaneError> {
        let read_error = |source| DataplaneError::MapRead {
            map: map_names::SELECTION,
            source,
        };
        match &self.selection_mapping {
            Some(mapping) if !mapping.fits(offset, size as usize) => {
                Err(read_error(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "a frontend's table {offset}..{} lies past the end of the array ({} slots)",
                        u64::from(offset) + u64::from(size),
                        mapping.entries()
                    ),
                )))
            }
            Some(mapping) => mapping.read(offset, size).map_err(read_error),
            None => batch::lookup(self.selection_fd.as_fd(), offset, size).map_err(read_error),
        }
    }

    /// The filter bookkeeping, built (and the kernel bitmap rewritten) on first use.
    fn filter(&mut self) -> Result<&mut FrontendFilter, DataplaneError> {
        if self.frontend_filter.is_none() {
            let read = self
                .frontends_read
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let keys = match read {
                Some(keys) => keys,
                None => self
                    .frontends
                    .keys()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(read_err(map_names::FRONTENDS))?,
            };
            // At the size the datapath reads now; `size_filter` changes it afterwards.
            let words_log2 = self.filter_size_in_use()?;
            let built =
                frontend_filter::rebuild(self.frontend_filter_fd.as_fd(), keys, words_log2)?;
            self.frontend_filter = Some(built);
        }
        Ok(self
            .frontend_filter
            .get_or_insert_with(FrontendFilter::default))
    }

    /// FRONTEND_FILTER's size in use (log2 of its words), as CONFIG says.
    fn filter_size_in_use(&self) -> Result<u32, DataplaneError> {
        let config = self
            .config
            .get(&0, 0)
            .map_err(read_err(map_names::CONFIG))?;
        Ok(lb_common::frontend_filter::words_log2_in_use(
            config.frontend_filter_words_log2,
        ))
    }

    /// Resizes FRONTEND_FILTER when `frontends` frontends want another size
    /// ([`frontend_filter::size_change`]); with `grow_only`, only to a larger one.
    fn size_filter(&mut self, frontends: usize, grow_only: bool) -> Result<(), DataplaneError> {
        let current = self.filter()?.words_log2();
        let Some(words_log2) = frontend_filter::size_change(current, frontends) else {
            return Ok(());
        };
        if grow_only && words_log2 < current {
            return Ok(());
        }
        let Self {
            frontend_filter: Some(filter),
            frontend_filter_fd,
            config,
            ..
        } = self
        else {
            return Ok(());
        };
        let switch_size = |words_log2| {
            let mut value = config.get(&0, 0).map_err(read_err(map_names::CONFIG))?;
            value.frontend_filter_words_log2 = words_log2;
            config
                .set(0, &value, 0)
                .map_err(write_err(map_names::CONFIG, 1))
        };
        frontend_filter::resize(
            frontend_filter_fd.as_fd(),
            filter,
            words_log2,
            switch_size,
            frontend_filter::RESIZE_GRACE,
        )?;
        tracing::info!(
            "FRONTEND_FILTER resized to 2^{words_log2} words for {} frontends",
            filter.len()
        );
        Ok(())
    }

    /// Sets the frontend's filter bit, then inserts it (make before break).
    fn put_frontend(
        &mut self,
        key: &FrontendKey,
        value: &FrontendValue,
    ) -> Result<(), DataplaneError> {
        let known = self.filter()?.contains(key);
        if let Some(word) = self.filter()?.add(key)
            && let Err(error) = frontend_filter::write_word(self.frontend_filter_fd.as_fd(), word)
        {
            self.filter()?.remove(key);
            return Err(error);
        }
        let capacity = self.capacity.frontends;
        let inserted = self
            .frontends
            .insert(key, value, 0)
            .map_err(write_err(map_names::FRONTENDS, capacity));
        if inserted.is_err() && !known {
            // Not inserted: forget it (its bit left set only costs a lookup).
            self.filter()?.remove(key);
        }
        inserted
    }

    fn apply_one(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        let capacity = self.capacity;
        if let MapOp::PutSelection { offset, .. } = op {
            // Free space: no entry of TABLE_MEMBERS at this offset is in use.
            self.new_tables.place(*offset);
        }
        match op {
            MapOp::PutBackend { id, backend } => {
                if *id >= capacity.backends {
                    return Err(DataplaneError::MapFull {
                        map: map_names::BACKENDS,
                        capacity: capacity.backends,
                    });
                }
                self.backends
                    .set(*id, backend, 0)
                    .map_err(write_err(map_names::BACKENDS, capacity.backends))
            }
            MapOp::DeleteBackend { id } => {
                if *id >= capacity.backends {
                    return Ok(());
                }
                self.backends
                    .set(*id, &Backend::default(), 0)
                    .map_err(write_err(map_names::BACKENDS, capacity.backends))
            }
            MapOp::PutSelection { offset, slots } => {
                let end = u64::from(*offset) + slots.len() as u64;
                if end > u64::from(capacity.selection_slots) {
                    return Err(DataplaneError::MapFull {
                        map: map_names::SELECTION,
                        capacity: capacity.selection_slots,
                    });
                }
                // The kernel's table holds a u32 backend id per slot.
                let ids = slots.ids();
                let Some(mapping) = &mut self.selection_mapping else {
                    return batch::update(self.selection_fd.as_fd(), *offset, &ids).map_err(
                        |failed| {
                            DataplaneError::refused(
                                map_names::SELECTION,
                                capacity.selection_slots,
                                failed,
                                |index| Some(format!("slot {index} of the table at {offset}")),
                            )
                        },
                    );
                };
                if !mapping.fits(*offset, slots.len()) {
                    return Err(DataplaneError::MapFull {
                        map: map_names::SELECTION,
                        capacity: mapping.entries(),
                    });
                }
                mapping
                    .write(*offset, &ids)
                    .map_err(|source| DataplaneError::MapWrite {
                        map: map_names::SELECTION,
                        source,
                    })?;
                // Make before break: the frontend naming this table is published later by a
                // bpf syscall (itself a full barrier); the fence says so in the code and
                // keeps the stores ahead of it on any architecture.
                fence(Ordering::SeqCst);
                Ok(())
            }
            MapOp::PutTableMembers { .. } => self.put_tables(std::slice::from_ref(op), &[]),
            MapOp::DeleteTableMembers { offset, slots } => {
                let (keys, _) = member_entries(*offset, slots);
                batch::delete_entries(self.table_members_fd.as_fd(), &keys)
                    .map(|_| ())
                    .map_err(|source| DataplaneError::MapWrite {
                        map: map_names::TABLE_MEMBERS,
                        source,
                    })
            }
            MapOp::PutFrontend { key, value } => self.put_frontend(key, value),
            MapOp::DeleteFrontend { key } => {
                match self.frontends.remove(key) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(write_err(map_names::FRONTENDS, capacity.frontends)(e)),
                }
                // Break after make: the bit goes once no frontend needs it.
                match self.filter()?.remove(key) {
                    Some(word) => {
                        frontend_filter::write_word(self.frontend_filter_fd.as_fd(), word)
                    }
                    None => Ok(()),
                }
            }
            MapOp::PutServiceName { id, name } => self
                .service_names
                .insert(id, &ServiceName::new(name), 0)
                .map_err(write_err(map_names::SERVICE_NAMES, capacity.services)),
            MapOp::DeleteServiceName { id } => match self.service_names.remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(write_err(map_names::SERVICE_NAMES, capacity.services)(e)),
            },
            MapOp::PutSourceRange { key, prefix_len } => self
                .source_ranges
                .insert(&Key::new(*prefix_len, *key), &SOURCE_RANGE_ALLOWED, 0)
                .map_err(write_err(map_names::SOURCE_RANGES, capacity.source_ranges)),
            MapOp::DeleteSourceRange { key, prefix_len } => {
                match self.source_ranges.remove(&Key::new(*prefix_len, *key)) {
                    Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                    Err(e) => Err(write_err(map_names::SOURCE_RANGES, capacity.source_ranges)(
                        e,
                    )),
                }
            }
        }
    }
}

impl MapWriter for AyaMaps {
    fn capacity(&self) -> MapCapacity {
        self.capacity
    }

    fn read(&self) -> Result<AppliedState, DataplaneError> {
        let mut state = AppliedState::default();
        for entry in self.frontends.iter() {
            let (key, value) = entry.map_err(read_err(map_names::FRONTENDS))?;
            state.frontends.insert(key, value);
        }
        if self.writable && self.frontend_filter.is_none() {
            *self
                .frontends_read
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(state.frontends.keys().copied().collect());
        }
        let backends: Vec<Backend> =
            batch::lookup(self.backends_fd.as_fd(), 0, self.capacity.backends).map_err(
                |source| DataplaneError::MapRead {
                    map: map_names::BACKENDS,
                    source,
                },
            )?;
        for (id, backend) in backends.into_iter().enumerate() {
            if backend.state != lb_common::backend_state::EMPTY {
                state.backends.insert(id as u32, backend);
            }
        }
        for value in state.frontends.values() {
            if value.table_size == 0 || state.selection.contains_key(&value.table_offset) {
                continue;
            }
            let slots = self.read_table(value.table_offset, value.table_size)?;
            state.selection.insert(value.table_offset, slots.into());
        }
        for entry in self.service_names.iter() {
            let (id, name) = entry.map_err(read_err(map_names::SERVICE_NAMES))?;
            state.service_names.insert(id, name.as_str().to_string());
        }
        for key in self.source_ranges.keys() {
            let key = key.map_err(read_err(map_names::SOURCE_RANGES))?;
            state.source_ranges.insert((key.data(), key.prefix_len()));
        }
        let members: std::collections::HashMap<TableMember, u32> =
            batch::entries(self.table_members_fd.as_fd())
                .map_err(|source| DataplaneError::MapRead {
                    map: map_names::TABLE_MEMBERS,
                    source,
                })?
                .into_iter()
                .collect();
        for (offset, slots) in &state.selection {
            if fully_indexed(*offset, slots, |member| members.get(&member).copied()) {
                let count = u32::try_from(slots.members().len()).unwrap_or(u32::MAX);
                state.table_members.insert(*offset, count);
            }
        }
        Ok(state)
    }

    fn forget_affinity(
        &mut self,
        stale: &dyn Fn(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize, DataplaneError> {
        batch::delete_from_hash::<AffinityKey, AffinityValue>(
            self.affinity_fd.as_fd(),
            |key, value| stale(key, value),
        )
        .map_err(|source| DataplaneError::MapWrite {
            map: map_names::AFFINITY,
            source,
        })
    }

    fn apply(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        let result = self.apply_all(ops);
        let new_tables = std::mem::take(&mut self.new_tables);
        if result.is_err() {
            self.forget_orphans(&new_tables, ops);
        }
        // The mapped window counts in the agent's RSS: keep it only while writing.
        if let Some(mapping) = &mut self.selection_mapping {
            mapping.release();
        }
        result
    }

    fn delete_stale_flows(&mut self, stale: &StaleFlows) -> Result<DeletedFlows, DataplaneError> {
        if stale.is_empty() {
            return Ok(DeletedFlows::default());
        }
        let failed = |map| move |source| DataplaneError::MapWrite { map, source };
        let conntrack = batch::delete_from_hash::<FlowKey, FlowValue>(
            self.conntrack_fd.as_fd(),
            |key, value| stale.is_stale_flow(key, value),
        )
        .map_err(failed(map_names::CONNTRACK))?;
        // After the deletes: a packet that read the old generation found the entries still
        // there, and its slot carries the old generation.
        if conntrack > 0 {
            self.bump_flow_generation()?;
        }
        let affinity = batch::delete_from_hash::<AffinityKey, AffinityValue>(
            self.affinity_fd.as_fd(),
            |key, value| stale.is_stale_affinity(key, value),
        )
        .map_err(failed(map_names::AFFINITY))?;
        Ok(DeletedFlows {
            conntrack,
            affinity,
        })
    }
}

impl AyaMaps {
    fn apply_all(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        // Grown before the new frontends' bits are set (a cold sync resizes once, not at
        // each power of two), shrunk after the deletes (or after the first sync, from the
        // size a zero in CONFIG stands for).
        if ops.iter().any(|op| matches!(op, MapOp::PutFrontend { .. })) {
            let filter = self.filter()?;
            let new = ops
                .iter()
                .filter_map(|op| match op {
                    MapOp::PutFrontend { key, .. } if !filter.contains(key) => Some(key),
                    _ => None,
                })
                .collect::<std::collections::HashSet<_>>()
                .len();
            let after_puts = filter.len() + new;
            self.size_filter(after_puts, true)?;
        }
        self.apply_ops(ops)?;
        if ops
            .iter()
            .any(|op| matches!(op, MapOp::PutFrontend { .. } | MapOp::DeleteFrontend { .. }))
        {
            let frontends = self.filter()?.len();
            self.size_filter(frontends, false)?;
        }
        Ok(())
    }

    fn apply_ops(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        let mut rest = ops;
        while let Some(op) = rest.first() {
            let run = consecutive_backends(rest, self.capacity.backends);
            let names = leading_service_names(rest);
            let tables = leading_tables(rest);
            if names.len() > 1 {
                // A cold sync names every service in a row: one batch, not one syscall each.
                let (ids, values): (Vec<u32>, Vec<ServiceName>) = names.into_iter().unzip();
                batch::update_entries(self.service_names_fd.as_fd(), &ids, &values).map_err(
                    |failed| {
                        DataplaneError::refused(
                            map_names::SERVICE_NAMES,
                            self.capacity.services,
                            failed,
                            |index| {
                                let (id, name) = (ids.get(index)?, values.get(index)?);
                                Some(format!("the name {} of service id {id}", name.as_str()))
                            },
                        )
                    },
                )?;
                rest = &rest[ids.len()..];
            } else if tables > 2 || matches!(op, MapOp::PutTableMembers { .. }) {
                // An index is always written here, so a batch that stops part way is undone.
                self.put_tables(&rest[..tables], rest)?;
                rest = &rest[tables..];
            } else if let frontends @ 3.. = leading_frontends(rest) {
                self.put_frontends(&rest[..frontends])?;
                rest = &rest[frontends..];
            } else if run.len() > 1 {
                // A cold sync writes backends with consecutive new ids: one batch, not one
                // syscall each.
                let first = match op {
                    MapOp::PutBackend { id, .. } => *id,
                    _ => unreachable!("a run holds PutBackend ops only"),
                };
                batch::update(self.backends_fd.as_fd(), first, &run).map_err(|failed| {
                    DataplaneError::refused(
                        map_names::BACKENDS,
                        self.capacity.backends,
                        failed,
                        |index| Some(format!("backend id {}", u64::from(first) + index as u64)),
                    )
                })?;
                rest = &rest[run.len()..];
            } else {
                self.apply_one(op)?;
                rest = &rest[1..];
            }
        }
        Ok(())
    }
}

impl AyaMaps {
    /// Writes a run of tables (`PutSelection` and `PutTableMembers` ops): every table into
    /// SELECTION, then all their TABLE_MEMBERS entries in one batch. Each table's entries
    /// still follow its slots, and no frontend names a new one yet. `context`, the ops from
    /// the run on, may name the service of a table whose entry the kernel refuses.
    ///
    /// A batch the kernel stops part way is undone rather than adopted: the applied state
    /// knows a table as indexed or not, never half, so it could not account for part of an
    /// index. A new table's entries are deleted with the apply's other new tables
    /// ([`NewTables`]). A table in use (indexed again because an older agent left it
    /// without an index) gets back what each entry held: those are looked up first, so its
    /// live entries stay, and deleting every key of the batch would not be safe.
    fn put_tables(&mut self, run: &[MapOp], context: &[MapOp]) -> Result<(), DataplaneError> {
        let mut keys = Vec::new();
        let mut first_slots = Vec::new();
        let mut tables = Vec::new();
        for op in run {
            match op {
                MapOp::PutTableMembers { offset, slots } => {
                    let (table_keys, table_slots) = member_entries(*offset, slots);
                    tables.push((*offset, slots, table_keys.len()));
                    keys.extend(table_keys);
                    first_slots.extend(table_slots);
                }
                _ => self.apply_one(op)?,
            }
        }
        // Per table, not per key: a cold sync's tables are all placed, and cost no lookup.
        let mut in_use = Vec::new();
        let mut start = 0;
        for &(offset, _, count) in &tables {
            if !self.new_tables.placed(offset) {
                for (index, key) in keys.iter().enumerate().skip(start).take(count) {
                    let before = entry(&self.table_members, map_names::TABLE_MEMBERS, key)?;
                    in_use.push((index, before));
                }
            }
            start += count;
        }
        let result = batch::update_entries(self.table_members_fd.as_fd(), &keys, &first_slots);
        let written = result
            .as_ref()
            .map_or_else(|failed| failed.written, |()| keys.len());
        let mut start = 0;
        for (offset, slots, count) in tables {
            let done = written.saturating_sub(start).min(count);
            self.new_tables.wrote(offset, slots, done);
            start += count;
        }
        let Err(failed) = result else {
            return Ok(());
        };
        let (doomed, restored) = undo_in_use(&keys[..written], &first_slots, &in_use);
        if let Err(error) = self.undo_members(&doomed, &restored) {
            tracing::warn!(
                "a TABLE_MEMBERS batch stopped part way, and undoing its entries of tables in use failed: {error}"
            );
        }
        let refused = keys.get(written).zip(first_slots.get(written));
        let owner = refused.and_then(|(key, _)| self.service_of_table(key.table_offset, context));
        Err(DataplaneError::refused(
            map_names::TABLE_MEMBERS,
            self.capacity.table_members,
            failed,
            |_| {
                let (key, slot) = refused?;
                let owner = owner.map_or_else(String::new, |name| format!(" (service {name})"));
                Some(format!(
                    "backend {} (first slot {slot}) of the selection table at {}{owner}",
                    key.backend_id, key.table_offset
                ))
            },
        ))
    }

    /// Deletes `doomed` from TABLE_MEMBERS, then writes `restored` back.
    fn undo_members(
        &self,
        doomed: &[TableMember],
        restored: &[(TableMember, u32)],
    ) -> Result<(), DataplaneError> {
        let fd = self.table_members_fd.as_fd();
        batch::delete_entries(fd, doomed).map_err(|source| DataplaneError::MapWrite {
            map: map_names::TABLE_MEMBERS,
            source,
        })?;
        let (keys, slots): (Vec<TableMember>, Vec<u32>) = restored.iter().copied().unzip();
        batch::update_entries(fd, &keys, &slots).map_err(|failed| DataplaneError::MapWrite {
            map: map_names::TABLE_MEMBERS,
            source: failed.source,
        })
    }

    /// After `ops` failed: deletes the TABLE_MEMBERS entries of tables no frontend points at
    /// that they wrote or meant to delete ([`NewTables::orphans`]; a table that a frontend
    /// written before the failure points at is in the applied state, indexed). Best effort:
    /// the caller reports the write's error.
    fn forget_orphans(&self, new_tables: &NewTables, ops: &[MapOp]) {
        if !new_tables.may_leave_orphans(ops) {
            return;
        }
        let forgotten = self.referenced_tables().and_then(|referenced| {
            let doomed = new_tables.orphans(ops, &referenced);
            batch::delete_entries(self.table_members_fd.as_fd(), &doomed).map_err(|source| {
                DataplaneError::MapWrite {
                    map: map_names::TABLE_MEMBERS,
                    source,
                }
            })
        });
        if let Err(error) = forgotten {
            tracing::warn!(
                "after a failed write, deleting the TABLE_MEMBERS entries of tables no frontend uses failed: {error}"
            );
        }
    }

    /// Every entry of FRONTENDS, in one batched pass.
    fn frontend_entries(&self) -> Result<Vec<(FrontendKey, FrontendValue)>, DataplaneError> {
        batch::entries(self.frontends_fd.as_fd()).map_err(|source| DataplaneError::MapRead {
            map: map_names::FRONTENDS,
            source,
        })
    }

    /// The offsets of the tables FRONTENDS points at.
    fn referenced_tables(&self) -> Result<FxHashSet<u32>, DataplaneError> {
        Ok(self
            .frontend_entries()?
            .into_iter()
            .filter(|(_, value)| value.table_size > 0)
            .map(|(_, value)| value.table_offset)
            .collect())
    }

    /// The service a frontend pointing at the table at `offset` belongs to, by name when
    /// SERVICE_NAMES has one: from `context` (a plan's frontends come after its tables),
    /// else from FRONTENDS. For an error message only.
    fn service_of_table(&self, offset: u32, context: &[MapOp]) -> Option<String> {
        let points_here =
            |value: &FrontendValue| value.table_size > 0 && value.table_offset == offset;
        let planned = context.iter().find_map(|op| match op {
            MapOp::PutFrontend { value, .. } if points_here(value) => Some(value.service_id),
            _ => None,
        });
        let id = planned.or_else(|| {
            self.frontend_entries()
                .ok()?
                .into_iter()
                .find_map(|(_, value)| points_here(&value).then_some(value.service_id))
        })?;
        let name = context
            .iter()
            .find_map(|op| match op {
                MapOp::PutServiceName { id: named, name } if *named == id => Some(name.clone()),
                _ => None,
            })
            .or_else(|| {
                let name = entry(&self.service_names, map_names::SERVICE_NAMES, &id).ok()??;
                Some(name.as_str().to_owned())
            });
        Some(name.unwrap_or_else(|| format!("id {id}")))
    }
}

impl AyaMaps {
    /// Writes a run of `PutFrontend` ops as [`AyaMaps::put_frontend`] does one at a time, in
    /// two syscalls instead of two per frontend: every filter word the run changes, then
    /// every entry (make before break: the bits are set before any entry needing them).
    fn put_frontends(&mut self, run: &[MapOp]) -> Result<(), DataplaneError> {
        self.filter()?;
        let filter = self
            .frontend_filter
            .get_or_insert_with(FrontendFilter::default);
        let mut keys = Vec::with_capacity(run.len());
        let mut values = Vec::with_capacity(run.len());
        let mut unknown = Vec::new();
        let mut words = Vec::new();
        for op in run {
            let MapOp::PutFrontend { key, value } = op else {
                unreachable!("a run holds PutFrontend ops only")
            };
            if !filter.contains(key) {
                unknown.push(*key);
            }
            words.extend(filter.add(key).map(|(word, _)| word));
            keys.push(*key);
            values.push(*value);
        }
        words.sort_unstable();
        words.dedup();
        let word_values: Vec<u64> = words.iter().map(|&word| filter.word_value(word)).collect();
        if let Err(failed) =
            batch::update_entries(self.frontend_filter_fd.as_fd(), &words, &word_values)
        {
            for key in &unknown {
                filter.remove(key);
            }
            return Err(DataplaneError::refused(
                map_names::FRONTEND_FILTER,
                lb_common::frontend_filter::WORDS,
                failed,
                |index| Some(format!("word {}", words.get(index)?)),
            ));
        }
        let written = batch::update_entries(self.frontends_fd.as_fd(), &keys, &values);
        if written.is_err() {
            // Forget the new keys the batch did not insert (their bits left set only cost a
            // lookup).
            for key in &unknown {
                if self.frontends.get(key, 0).is_err() {
                    filter.remove(key);
                }
            }
        }
        written.map_err(|failed| {
            DataplaneError::refused(
                map_names::FRONTENDS,
                self.capacity.frontends,
                failed,
                |index| {
                    let (key, value) = (keys.get(index)?, values.get(index)?);
                    Some(format!(
                        "frontend {} of service id {}",
                        describe_frontend(key),
                        value.service_id
                    ))
                },
            )
        })
    }
}

/// How many ops at the start of `ops` are `PutFrontend` (at most [`BATCH_OPS`]).
fn leading_frontends(ops: &[MapOp]) -> usize {
    ops.iter()
        .take(BATCH_OPS)
        .take_while(|op| matches!(op, MapOp::PutFrontend { .. }))
        .count()
}

/// Most ops written in one batch: a few syscalls per thousand services, and buffers that
/// stay small beside the plan (a whole cold sync at once would add megabytes to the peak).
const BATCH_OPS: usize = 1024;

/// The service names of the `PutServiceName` ops at the start of `ops` (at most
/// [`BATCH_OPS`]).
fn leading_service_names(ops: &[MapOp]) -> Vec<(u32, ServiceName)> {
    ops.iter()
        .take(BATCH_OPS)
        .map_while(|op| match op {
            MapOp::PutServiceName { id, name } => Some((*id, ServiceName::new(name))),
            _ => None,
        })
        .collect()
}

/// How many ops at the start of `ops` write new tables (`PutSelection`, `PutTableMembers`),
/// at most [`BATCH_OPS`] (a table cut from its members by the limit still has them written
/// after it, by the next run).
fn leading_tables(ops: &[MapOp]) -> usize {
    ops.iter()
        .take(BATCH_OPS)
        .take_while(|op| {
            matches!(
                op,
                MapOp::PutSelection { .. } | MapOp::PutTableMembers { .. }
            )
        })
        .count()
}

/// The backends of the `PutBackend` ops at the start of `ops` whose ids follow one another
/// (and fit in `capacity`).
fn consecutive_backends(ops: &[MapOp], capacity: u32) -> Vec<Backend> {
    let mut run = Vec::new();
    let mut next_id = None;
    for op in ops {
        match op {
            MapOp::PutBackend { id, backend }
                if *id < capacity && next_id.is_none_or(|next| next == *id) =>
            {
                run.push(*backend);
                next_id = Some(id + 1);
            }
            _ => break,
        }
    }
    run
}
