//! Upgrades across a change of the pinned maps: a new layout of a key or value
//! ([`lb_common::LAYOUT_VERSION`]) or a flow map of another size (`--conntrack-max` …).
//! The maps that change are made anew and their entries carried over (converted from the
//! pinned layout), the others are kept as they are, and the programs are swapped in the
//! pinned links as on any restart: established flows keep their backends.
//!
//! The steps, and what a crash after each leaves (every state is recovered by
//! [`recover`] and the next start):
//! 1. [`Plan::stage`]: `<pin>/maps-next/` gets a second pin of every map kept as it is;
//!    the loader then makes the rebuilt maps there. Crash: `maps/` still holds every map
//!    the programs use; the next start removes `maps-next/` and begins again.
//! 2. [`Plan::carry_over`]: entries of the rebuilt maps are copied (converted) from
//!    `maps/`, then `maps-next/LAYOUT` is pinned last, marking the set complete. Crash: as
//!    after 1.
//! 3. `maps/` is renamed `maps-retired/`, then `maps-next/` renamed `maps/`. Crash between
//!    the two: the next start finds no `maps/` and a complete `maps-next/`, and renames it.
//! 4. The caller swaps its programs into the pinned links (the old programs write flows
//!    into the retired maps until then). Crash: the next start adopts `maps/` (now current)
//!    and does 4 and 5 itself.
//! 5. [`retire`]: flow entries the old programs wrote into the retired maps since step 2
//!    are carried over too (only into free room, never over an entry the new programs
//!    wrote), then `maps-retired/` is removed.

use std::{
    collections::HashSet,
    fmt, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, MapError, MapType};
use lb_common::{LAYOUT_VERSION, MapLayout, map_layout, map_names};

use super::{
    MapCapacity,
    batch::{self, RawEntries},
    loader::{ALL_MAPS, MapRole, max_entries},
};

/// The one-entry array beside the maps that holds their [`LAYOUT_VERSION`].
pub const LAYOUT_PIN: &str = "LAYOUT";
/// Where a migration builds the new set of maps.
pub const STAGING_DIR: &str = "maps-next";
/// Where the replaced set waits until the programs using it are swapped out.
pub const RETIRED_DIR: &str = "maps-retired";
const MAPS_DIR: &str = "maps";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the maps under {path} are of layout version {pinned}, newer than this slicelb's {current}: run that slicelb (or a newer one), or `slicelb detach` (drops the flows) and start again"
    )]
    Newer {
        path: PathBuf,
        pinned: u32,
        current: u32,
    },
    #[error(
        "{map} holds {property}s of {actual} bytes where layout version {version} has {expected}: its LAYOUT pin does not describe it; run `slicelb detach` (drops the flows) and start again"
    )]
    EntrySize {
        map: &'static str,
        version: u32,
        property: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{map} is not a map slicelb pins")]
    UnknownMap { map: &'static str },
    #[error("{map} is a {kind:?} map, whose entries a migration cannot carry over")]
    Unsupported { map: &'static str, kind: MapType },
    #[error("{map} at {path}: {source}")]
    Map {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("copying the entries of {map}: {source}")]
    Copy {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}: {source}")]
    Pins {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How one map's pinned entries become this build's; a new layout version adds its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The pinned layout is this build's: entries pass byte for byte.
    Same,
    /// The value grew at its end; the new bytes start as zeros.
    ZeroExtend,
    /// Nothing is carried: the loader computes the new map's entries from other maps
    /// (FRONTEND_FILTER from FRONTENDS).
    Recompute,
}

/// CONFIG's size in versions 0 and 1, and in version 2. Version 2 added `ns_per_jiffy` and
/// `flow_generation` (zero: the flow cache stays off until the agent writes CONFIG, which
/// it does on every start), version 3 `frontend_filter_words_log2` (zero: the size of
/// version 2's filter, at which the loader recomputes it).
const CONFIG_SIZE_BEFORE_VERSION_2: usize = 40;
const CONFIG_SIZE_IN_VERSION_2: usize = 48;

/// How the entries of one map pinned in an older layout become this build's.
#[derive(Clone, Copy, Debug)]
pub struct Converter {
    map: &'static str,
    from_version: u32,
    step: Step,
    /// Key and value sizes in the pinned layout.
    pinned_key_size: usize,
    pinned_value_size: usize,
    layout: &'static MapLayout,
}

impl Converter {
    /// The converter of `map` from layout `from_version`; a version newer than this build's
    /// is refused (nothing here knows its layout).
    pub fn new(from_version: u32, map: &'static str, dir: &Path) -> Result<Self, MigrateError> {
        let layout = map_layout(map).ok_or(MigrateError::UnknownMap { map })?;
        let same = Self {
            map,
            from_version,
            step: Step::Same,
            pinned_key_size: layout.key_size,
            pinned_value_size: layout.value_size,
            layout,
        };
        let config_size = match from_version {
            // Version 0 is the layout of maps pinned before versions were, which is
            // version 1's.
            0 | 1 => CONFIG_SIZE_BEFORE_VERSION_2,
            2 => CONFIG_SIZE_IN_VERSION_2,
            3 => return Ok(same),
            pinned => {
                return Err(MigrateError::Newer {
                    path: dir.to_path_buf(),
                    pinned,
                    current: LAYOUT_VERSION,
                });
            }
        };
        // Before version 3: CONFIG was shorter, and FRONTEND_FILTER had a fixed size and
        // another hash.
        Ok(match map {
            map_names::CONFIG => Self {
                step: Step::ZeroExtend,
                pinned_value_size: config_size,
                ..same
            },
            map_names::FRONTEND_FILTER => Self {
                step: Step::Recompute,
                ..same
            },
            _ => same,
        })
    }

    /// Entries pass unchanged: a pinned map of the right size can be kept as it is.
    pub fn is_identity(&self) -> bool {
        self.step == Step::Same
    }

    /// Checks that a pinned map's sizes are those of the layout it is said to be in.
    fn check_sizes(&self, key_size: usize, value_size: usize) -> Result<(), MigrateError> {
        for (property, expected, actual) in [
            ("key", self.pinned_key_size, key_size),
            ("value", self.pinned_value_size, value_size),
        ] {
            if expected != actual {
                return Err(MigrateError::EntrySize {
                    map: self.map,
                    version: self.from_version,
                    property,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// `pinned`'s entries in this build's layout.
    pub fn convert(&self, pinned: &RawEntries) -> Result<RawEntries, MigrateError> {
        self.check_sizes(pinned.key_size, pinned.value_size)?;
        let mut out = RawEntries::new(self.layout.key_size, self.layout.value_size);
        for index in 0..pinned.len() {
            let (key, value) = (pinned.key(index), pinned.value(index));
            match self.step {
                Step::Same => out.push(key, value),
                Step::ZeroExtend => {
                    let mut grown = vec![0; self.layout.value_size];
                    grown[..value.len()].copy_from_slice(value);
                    out.push(key, &grown);
                }
                Step::Recompute => {}
            }
        }
        Ok(out)
    }
}

/// What became of one rebuilt map's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    /// Copied over; `dropped` did not fit the new size (the least recently used went).
    Entries { kept: usize, dropped: usize },
    /// Per-CPU counters start again from zero.
    CountersRestarted,
    /// Computed afresh from other maps by the loader.
    Recomputed,
}

/// One map a migration made anew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuiltMap {
    pub map: &'static str,
    pub pinned_entries: u32,
    pub entries: u32,
    pub carried: Carried,
}

/// What a start did to maps pinned by an older slicelb or with other sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// 0: pinned before layout versions were.
    pub from_version: u32,
    pub to_version: u32,
    pub rebuilt: Vec<RebuiltMap>,
}

impl Migration {
    /// Entries that did not fit their new map.
    pub fn dropped(&self) -> usize {
        self.rebuilt
            .iter()
            .map(|map| match map.carried {
                Carried::Entries { dropped, .. } => dropped,
                Carried::CountersRestarted | Carried::Recomputed => 0,
            })
            .sum()
    }
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pinned maps migrated from layout version {} to {}",
            self.from_version, self.to_version
        )?;
        if self.rebuilt.is_empty() {
            return write!(f, "; every map kept as it is");
        }
        for map in &self.rebuilt {
            write!(
                f,
                "; {} rebuilt ({} -> {} entries",
                map.map, map.pinned_entries, map.entries
            )?;
            match map.carried {
                Carried::Entries { kept, dropped } => {
                    write!(f, ", {kept} carried over, {dropped} dropped)")?
                }
                Carried::CountersRestarted => write!(f, ", counters restarted)")?,
                Carried::Recomputed => write!(f, ", recomputed)")?,
            }
        }
        Ok(())
    }
}

struct Rebuild {
    map: &'static str,
    pinned_entries: u32,
    entries: u32,
}

/// What this start does with the maps pinned in `<pin>/maps`.
pub struct Plan {
    maps_dir: PathBuf,
    from_version: u32,
    rebuilt: Vec<Rebuild>,
}

impl Plan {
    /// Compares the maps pinned under `pin_path` with what this build needs at `capacity`:
    /// `None` when nothing is pinned.
    pub fn new(pin_path: &Path, capacity: &MapCapacity) -> Result<Option<Self>, MigrateError> {
        let maps_dir = pin_path.join(MAPS_DIR);
        let Some(from_version) = pinned_version(&maps_dir)? else {
            return Ok(None);
        };
        let mut rebuilt = Vec::new();
        for (map, _) in ALL_MAPS {
            let path = maps_dir.join(map);
            if !path.exists() {
                continue;
            }
            let converter = Converter::new(from_version, map, &maps_dir)?;
            let pinned_entries = open_pinned(map, &path)?.1.max_entries();
            let wanted = max_entries(capacity, map);
            if !converter.is_identity() || wanted.is_some_and(|size| size != pinned_entries) {
                rebuilt.push(Rebuild {
                    map,
                    pinned_entries,
                    entries: wanted.unwrap_or(pinned_entries),
                });
            }
        }
        Ok(Some(Self {
            maps_dir,
            from_version,
            rebuilt,
        }))
    }

    /// Some map must be made anew.
    pub fn rebuilds(&self) -> bool {
        !self.rebuilt.is_empty()
    }

    fn is_rebuilt(&self, map: &str) -> bool {
        self.rebuilt.iter().any(|rebuild| rebuild.map == map)
    }

    /// Step 1: a staging directory holding a second pin of every map kept as it is; the
    /// loader pins the rebuilt ones there. Returns the directory.
    pub fn stage(&self, pin_path: &Path) -> Result<PathBuf, MigrateError> {
        let staging = pin_path.join(STAGING_DIR);
        if staging.exists() {
            remove_pins(&staging)?;
        }
        std::fs::create_dir(&staging).map_err(|source| MigrateError::Pins {
            what: "creating",
            path: staging.clone(),
            source,
        })?;
        for (map, _) in ALL_MAPS {
            let path = self.maps_dir.join(map);
            if self.is_rebuilt(map) || !path.exists() {
                continue;
            }
            let (data, _) = open_pinned(map, &path)?;
            let target = staging.join(map);
            data.pin(&target).map_err(|error| MigrateError::Pins {
                what: "pinning",
                path: target,
                source: io::Error::other(error),
            })?;
        }
        Ok(staging)
    }

    /// Steps 2 and 3: copies the entries of the rebuilt maps (pinned by the loader in the
    /// staging directory) from the pinned ones, marks the new set complete and puts it in
    /// place; the old set waits under `maps-retired/` for [`retire`].
    pub fn carry_over(&self, pin_path: &Path) -> Result<Migration, MigrateError> {
        let staging = pin_path.join(STAGING_DIR);
        let mut rebuilt = Vec::new();
        for rebuild in &self.rebuilt {
            let converter = Converter::new(self.from_version, rebuild.map, &self.maps_dir)?;
            let old = self.maps_dir.join(rebuild.map);
            let new = staging.join(rebuild.map);
            let carried = copy_entries(&converter, &old, &new, false)?;
            rebuilt.push(RebuiltMap {
                map: rebuild.map,
                pinned_entries: rebuild.pinned_entries,
                entries: rebuild.entries,
                carried,
            });
        }
        pin_version(&staging)?;
        let retired = pin_path.join(RETIRED_DIR);
        if retired.exists() {
            // A migration before this one stopped before its step 5: the flows its old
            // programs wrote since are lost (they are balanced again, counted
            // `lb_conntrack_lost` when TCP).
            remove_pins(&retired)?;
        }
        rename(&self.maps_dir, &retired)?;
        rename(&staging, &self.maps_dir)?;
        Ok(Migration {
            from_version: self.from_version,
            to_version: LAYOUT_VERSION,
            rebuilt,
        })
    }

    /// Without maps to rebuild: records this build's version beside the pinned maps.
    /// `Some` when it differed.
    pub fn record_version(&self) -> Result<Option<Migration>, MigrateError> {
        if self.from_version == LAYOUT_VERSION {
            return Ok(None);
        }
        pin_version(&self.maps_dir)?;
        Ok(Some(Migration {
            from_version: self.from_version,
            to_version: LAYOUT_VERSION,
            rebuilt: Vec::new(),
        }))
    }
}

/// Entries the old programs wrote during a switch, carried over by [`retire`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaughtUp {
    pub entries: usize,
}

/// Step 5, once this build's programs run in every link: carries the flow entries written
/// into the retired maps since the copy into the rebuilt ones, then removes the retired
/// set. `None` when there is none.
pub fn retire(pin_path: &Path) -> Result<Option<CaughtUp>, MigrateError> {
    let retired = pin_path.join(RETIRED_DIR);
    if !retired.exists() {
        return Ok(None);
    }
    let maps_dir = pin_path.join(MAPS_DIR);
    let version = pinned_version(&retired)?.unwrap_or(0);
    let mut caught_up = CaughtUp::default();
    for (map, role) in ALL_MAPS {
        let (old, new) = (retired.join(map), maps_dir.join(map));
        if role != MapRole::Datapath || !old.exists() || !new.exists() {
            continue;
        }
        let (_, old_info) = open_pinned(map, &old)?;
        let (_, new_info) = open_pinned(map, &new)?;
        let hash = matches!(old_info.map_type(), Ok(MapType::Hash | MapType::LruHash));
        if old_info.id() == new_info.id() || !hash {
            continue;
        }
        let converter = Converter::new(version, map, &retired)?;
        if let Carried::Entries { kept, .. } = copy_entries(&converter, &old, &new, true)? {
            caught_up.entries += kept;
        }
    }
    remove_pins(&retired)?;
    Ok(Some(caught_up))
}

/// Finishes or undoes the renames of a migration that stopped (see the module's steps).
pub fn recover(pin_path: &Path) -> Result<(), MigrateError> {
    let maps_dir = pin_path.join(MAPS_DIR);
    let staging = pin_path.join(STAGING_DIR);
    let retired = pin_path.join(RETIRED_DIR);
    if staging.exists() {
        if !maps_dir.exists() && staging.join(LAYOUT_PIN).exists() {
            // Stopped between the two renames of step 3.
            rename(&staging, &maps_dir)?;
        } else {
            // Stopped in step 1 or 2: no program ever used the staged maps.
            remove_pins(&staging)?;
        }
    }
    if !maps_dir.exists() && retired.exists() {
        rename(&retired, &maps_dir)?;
    }
    Ok(())
}

/// The layout version of the maps pinned in `dir`: its LAYOUT pin, 0 when maps are pinned
/// without one, `None` when no map is.
pub fn pinned_version(dir: &Path) -> Result<Option<u32>, MigrateError> {
    let marker = dir.join(LAYOUT_PIN);
    if marker.exists() {
        let map_error = |source| MigrateError::Map {
            map: LAYOUT_PIN,
            path: marker.clone(),
            source,
        };
        let data = MapData::from_pin(&marker).map_err(map_error)?;
        let array: Array<MapData, u32> = Array::try_from(Map::Array(data)).map_err(map_error)?;
        return array.get(&0, 0).map(Some).map_err(map_error);
    }
    let any_pinned = ALL_MAPS.iter().any(|(map, _)| dir.join(map).exists());
    Ok(any_pinned.then_some(0))
}

/// Pins (or rewrites) `dir/LAYOUT` with this build's version.
pub fn pin_version(dir: &Path) -> Result<(), MigrateError> {
    let marker = dir.join(LAYOUT_PIN);
    let map_error = |source| MigrateError::Map {
        map: LAYOUT_PIN,
        path: marker.clone(),
        source,
    };
    if marker.exists() {
        let data = MapData::from_pin(&marker).map_err(map_error)?;
        let mut array: Array<MapData, u32> =
            Array::try_from(Map::Array(data)).map_err(map_error)?;
        return array.set(0, &LAYOUT_VERSION, 0).map_err(map_error);
    }
    let mut array = Array::<MapData, u32>::create(1, 0).map_err(map_error)?;
    array.set(0, &LAYOUT_VERSION, 0).map_err(map_error)?;
    array.pin(&marker).map_err(|error| MigrateError::Pins {
        what: "pinning",
        path: marker.clone(),
        source: io::Error::other(error),
    })
}

fn open_pinned(
    map: &'static str,
    path: &Path,
) -> Result<(MapData, aya::maps::MapInfo), MigrateError> {
    let map_error = |source| MigrateError::Map {
        map,
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(map_error)?;
    let info = data.info().map_err(map_error)?;
    Ok((data, info))
}

/// Copies the entries of the map pinned at `old` into the one at `new`, converted. When
/// they do not all fit, the most recently used are kept (by the layout's last use). With
/// `only_new`, entries `new` holds are left alone and only its free room is filled.
fn copy_entries(
    converter: &Converter,
    old: &Path,
    new: &Path,
    only_new: bool,
) -> Result<Carried, MigrateError> {
    let map = converter.map;
    if converter.step == Step::Recompute {
        return Ok(Carried::Recomputed);
    }
    let (old_data, old_info) = open_pinned(map, old)?;
    let (new_data, new_info) = open_pinned(map, new)?;
    let kind = old_info.map_type().map_err(|source| MigrateError::Map {
        map,
        path: old.to_path_buf(),
        source,
    })?;
    match kind {
        MapType::Hash | MapType::LruHash | MapType::Array => {}
        MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash => {
            return Ok(Carried::CountersRestarted);
        }
        kind => return Err(MigrateError::Unsupported { map, kind }),
    }
    let copy_error = |source| MigrateError::Copy { map, source };
    let pinned = batch::raw_entries(
        old_data.fd().as_fd(),
        old_info.key_size() as usize,
        old_info.value_size() as usize,
    )
    .map_err(copy_error)?;
    let converted = converter.convert(&pinned)?;
    let present = if only_new {
        batch::raw_entries(
            new_data.fd().as_fd(),
            converter.layout.key_size,
            converter.layout.value_size,
        )
        .map_err(copy_error)?
    } else {
        RawEntries::new(converter.layout.key_size, converter.layout.value_size)
    };
    let room = (new_info.max_entries() as usize).saturating_sub(present.len());
    let chosen = newest_absent(
        &converted,
        &present,
        room,
        converter.layout.last_seen_offset,
    );
    batch::raw_update(new_data.fd().as_fd(), &chosen, only_new).map_err(copy_error)?;
    let kept = batch::raw_entries(
        new_data.fd().as_fd(),
        converter.layout.key_size,
        converter.layout.value_size,
    )
    .map_err(copy_error)?
    .len()
        - present.len();
    Ok(Carried::Entries {
        kept,
        dropped: converted.len().saturating_sub(kept + present.len()),
    })
}

/// At most `room` entries of `entries` whose keys `present` lacks, in the order to insert
/// them. With `last_seen_offset` (the u64 of an entry's last use), the most recently used
/// when not all fit, oldest first, so that an LRU map that evicts keeps the newest;
/// without, the first in `entries`' order (an array keeps its lowest indexes).
pub fn newest_absent(
    entries: &RawEntries,
    present: &RawEntries,
    room: usize,
    last_seen_offset: Option<usize>,
) -> RawEntries {
    let present: HashSet<&[u8]> = (0..present.len()).map(|i| present.key(i)).collect();
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| !present.contains(entries.key(i)))
        .collect();
    match last_seen_offset {
        Some(offset) => {
            let last_seen = |i: usize| {
                let bytes = &entries.value(i)[offset..offset + 8];
                u64::from_ne_bytes(bytes.try_into().unwrap_or_default())
            };
            order.sort_by_key(|&i| last_seen(i));
            order.drain(..order.len().saturating_sub(room));
        }
        None => order.truncate(room),
    }
    let mut chosen = RawEntries::new(entries.key_size, entries.value_size);
    for &i in &order {
        chosen.push(entries.key(i), entries.value(i));
    }
    chosen
}

fn rename(from: &Path, to: &Path) -> Result<(), MigrateError> {
    std::fs::rename(from, to).map_err(|source| MigrateError::Pins {
        what: "renaming",
        path: from.to_path_buf(),
        source,
    })
}

/// Removes the pins in `dir` (a map goes once no program uses it), then `dir`.
fn remove_pins(dir: &Path) -> Result<(), MigrateError> {
    let removing = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateError::Pins {
            what: "removing",
            path,
            source,
        }
    };
    for entry in std::fs::read_dir(dir).map_err(removing(dir))? {
        let path = entry.map_err(removing(dir))?.path();
        std::fs::remove_file(&path).map_err(removing(&path))?;
    }
    std::fs::remove_dir(dir).map_err(removing(dir))
}

#[cfg(test)]
mod tests {
    use lb_common::{FlowKey, FlowValue, map_names};

    use super::*;

    fn bytes<T>(value: &T) -> &[u8] {
        // SAFETY: the lb-common types are #[repr(C)] with explicit padding.
        unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }
    }

    fn flow(port: u16, last_seen_ns: u64) -> (FlowKey, FlowValue) {
        (
            FlowKey {
                src_port: port,
                proto: lb_common::PROTO_TCP,
                family: lb_common::FAMILY_IPV4,
                ..FlowKey::default()
            },
            FlowValue {
                backend_id: u32::from(port) % 3,
                last_seen_ns,
                ..FlowValue::default()
            },
        )
    }

    fn conntrack(flows: &[(FlowKey, FlowValue)]) -> RawEntries {
        let mut entries = RawEntries::new(size_of::<FlowKey>(), size_of::<FlowValue>());
        for (key, value) in flows {
            entries.push(bytes(key), bytes(value));
        }
        entries
    }

    /// Versions 0 and 1 gain a zero tick, generation and filter size, version 2 a zero
    /// filter size (the 2^15 words the loader recomputes the filter at).
    #[test]
    fn an_older_config_is_zero_extended() {
        for (version, pinned_size) in [(0, 40), (1, 40), (2, 48)] {
            let pinned_config = vec![7u8; pinned_size];
            let mut pinned = RawEntries::new(4, pinned_size);
            pinned.push(&0u32.to_ne_bytes(), &pinned_config);
            let converter = Converter::new(version, map_names::CONFIG, Path::new("/pins"))
                .expect("a known version");
            assert!(!converter.is_identity(), "version {version}: CONFIG grew");
            let converted = converter.convert(&pinned).expect("converted");
            let mut expected = RawEntries::new(4, size_of::<lb_common::Config>());
            let mut value = [0u8; 56];
            value[..pinned_size].copy_from_slice(&pinned_config);
            expected.push(&0u32.to_ne_bytes(), &value);
            assert_eq!(converted, expected, "version {version}");
        }
    }

    /// A filter pinned before version 3 (another hash, a fixed size) is not carried: the
    /// loader sets every pinned frontend's bits anew.
    #[test]
    fn an_older_frontend_filter_is_recomputed_not_carried() {
        let mut pinned = RawEntries::new(4, 8);
        pinned.push(&3u32.to_ne_bytes(), &u64::MAX.to_ne_bytes());
        for version in [0, 1, 2] {
            let converter = Converter::new(version, map_names::FRONTEND_FILTER, Path::new("/pins"))
                .expect("a known version");
            assert!(!converter.is_identity(), "version {version}");
            assert_eq!(
                converter.convert(&pinned).expect("converted").len(),
                0,
                "version {version}"
            );
        }
        assert!(
            Converter::new(
                LAYOUT_VERSION,
                map_names::FRONTEND_FILTER,
                Path::new("/pins")
            )
            .expect("this version")
            .is_identity()
        );
    }

    #[test]
    fn entries_pinned_before_layout_versions_convert_byte_for_byte() {
        let pinned = conntrack(&[flow(40000, 5), flow(40001, 7)]);
        for version in [0, 1, 2, LAYOUT_VERSION] {
            let converter = Converter::new(version, map_names::CONNTRACK, Path::new("/pins"))
                .expect("a known version");
            assert!(converter.is_identity(), "version {version}");
            assert_eq!(
                converter.convert(&pinned).expect("converted"),
                pinned,
                "version {version}"
            );
        }
    }

    #[test]
    fn entries_of_another_size_or_a_newer_layout_are_refused_by_name() {
        let converter =
            Converter::new(0, map_names::AFFINITY, Path::new("/pins")).expect("version 0");
        // CONNTRACK's entries are not AFFINITY's layout.
        let error = converter
            .convert(&conntrack(&[flow(1, 1)]))
            .expect_err("wrong sizes");
        let message = error.to_string();
        assert!(
            message.contains("AFFINITY") && message.contains("40 bytes"),
            "{message}"
        );
        let newer = Converter::new(LAYOUT_VERSION + 1, map_names::CONNTRACK, Path::new("/pins"))
            .expect_err("a layout from the future");
        assert!(
            newer.to_string().contains("newer than this slicelb"),
            "{newer}"
        );
    }

    #[test]
    fn a_smaller_map_keeps_the_most_recently_used_entries_oldest_first() {
        let entries = conntrack(&[flow(1, 30), flow(2, 10), flow(3, 40), flow(4, 20)]);
        let none = RawEntries::new(entries.key_size, entries.value_size);
        let offset = map_layout(map_names::CONNTRACK).and_then(|l| l.last_seen_offset);
        let chosen = newest_absent(&entries, &none, 2, offset);
        assert_eq!(chosen, conntrack(&[flow(1, 30), flow(3, 40)]));
        // Keys the new map holds are never written again.
        let present = conntrack(&[flow(3, 99)]);
        let chosen = newest_absent(&entries, &present, 10, offset);
        assert_eq!(chosen, conntrack(&[flow(2, 10), flow(4, 20), flow(1, 30)]));
        // Without a last use (an array's slots): the first ones, in their order.
        let chosen = newest_absent(&entries, &none, 2, None);
        assert_eq!(chosen, conntrack(&[flow(1, 30), flow(2, 10)]));
    }
}
