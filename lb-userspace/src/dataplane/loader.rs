//! Loading slicelb's kernel programs: the object embedded in the binary, maps sized from a
//! [`MapCapacity`], everything pinned under one directory so that a restarted agent adopts
//! the maps (flows and configuration survive) and swaps the programs in place.
//!
//! Pin layout: `<pin>/maps/NAME` for every map and `<pin>/maps/LAYOUT` for their layout
//! version (maps of another version or size are carried over: [`super::migrate`]),
//! `<pin>/links/<iface>/{xdp,tc_ingress,tc_egress}`
//! for interface attachments, `<pin>/links/cgroup-<stamp>/<program>` for the socket-level
//! hooks at the cgroup root.
//!
//! Nothing is ever unpinned before its replacement runs: a restart swaps its programs into
//! the pinned interface links (`bpf_link_update`), and attaches new socket-level links
//! before it removes the old, so an agent that dies at any moment leaves a datapath.
//! [`ReadOnlyDatapath`] loads the programs for test runs without writing anything pinned.

use std::{
    ffi::CString,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData},
    programs::{
        CgroupAttachMode, LinkOrder, ProgramError, SchedClassifier, TcAttach, TcAttachType, Xdp,
        XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
    sys::SyscallError,
};
use lb_common::{
    Config, FrontendKey, FrontendValue, Reason, config_flags, map_names, program_names,
};

use super::{
    MapCapacity,
    migrate::{self, Migration},
    pins,
};

/// The compiled `lb-ebpf` object.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Who writes a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapRole {
    /// The agent; the programs only read it. A read-only load shares it.
    Configuration,
    /// The programs (flow state, counters). A read-only load has its own.
    Datapath,
}

/// Every map of the object with who writes it, in the order they are pinned.
pub const ALL_MAPS: [(&str, MapRole); 21] = [
    (map_names::FRONTENDS, MapRole::Configuration),
    (map_names::FRONTEND_FILTER, MapRole::Configuration),
    (map_names::BACKENDS, MapRole::Configuration),
    (map_names::SELECTION, MapRole::Configuration),
    (map_names::TABLE_MEMBERS, MapRole::Configuration),
    (map_names::CONNTRACK, MapRole::Datapath),
    (map_names::HANDSHAKES, MapRole::Datapath),
    (map_names::AFFINITY, MapRole::Datapath),
    (map_names::FRAGMENTS, MapRole::Datapath),
    (map_names::SOURCE_RANGES, MapRole::Configuration),
    (map_names::REASON_STATS, MapRole::Datapath),
    (map_names::SERVICE_STATS, MapRole::Datapath),
    (map_names::PROTO_STATS, MapRole::Datapath),
    (map_names::CONFIG, MapRole::Configuration),
    (map_names::SERVICE_NAMES, MapRole::Configuration),
    (map_names::SOCK_REVERSE, MapRole::Datapath),
    (map_names::SOCK_CONNECTED, MapRole::Datapath),
    (map_names::SOCKET_STATS, MapRole::Datapath),
    (map_names::FAST_PATH_STATS, MapRole::Datapath),
    (map_names::SNAT, MapRole::Datapath),
    (map_names::SNAT_ADDRESSES, MapRole::Configuration),
];

/// Entries of each flow-state map of a read-only load: a trace writes one flow's two
/// conntrack entries and one affinity entry.
const READ_ONLY_FLOW_ENTRIES: u32 = 256;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathOptions {
    pub capacity: MapCapacity,
    /// Written to CONFIG when the maps are new; adopted maps keep theirs unless
    /// `overwrite_config` is set.
    pub config: Config,
    pub overwrite_config: bool,
}

/// How the forward path is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressMode {
    /// XDP in the driver (fastest; needs driver support). On a veth, rejects sent with
    /// XDP_TX reach the peer only when the peer runs an XDP program too.
    XdpNative,
    /// XDP in the stack (any interface).
    XdpGeneric,
    /// TC ingress through tcx (interfaces with partial checksums, e.g. local veths).
    Tc,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed: {source}; run as root on Linux >= 6.6 with BTF")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    /// A map pinned by another slicelb build (or with other capacities) differs from what
    /// this build needs: e.g. a SELECTION made before it became memory-mappable.
    #[error(
        "the map {map} pinned at {path} cannot be adopted: its {property} is {actual:#x}, this slicelb needs {expected:#x}; run `slicelb detach` (drops the pinned maps, flows and attachments) and start again, or keep the old version's capacities"
    )]
    IncompatiblePin {
        map: String,
        path: PathBuf,
        property: &'static str,
        expected: u64,
        actual: u64,
    },
    /// Maps pinned in another layout or with other sizes could not be carried over to new
    /// ones; the pinned maps and the programs using them were left as they were.
    #[error(
        "carrying the pinned maps over to this slicelb's layout and sizes failed: {source}; the running datapath was left as it was"
    )]
    Migrate {
        // Boxed: the error type stays small for every other variant's sake.
        #[source]
        source: Box<super::migrate::MigrateError>,
    },
    #[error("the eBPF object has no program {program}; rebuild slicelb")]
    MissingProgram { program: &'static str },
    #[error("the eBPF object has no map {map}; rebuild slicelb")]
    MissingMap { map: &'static str },
    #[error("loading program {program} into the kernel failed (verifier?): {source}")]
    Verify {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching {program} to interface {iface} failed: {source}; check the interface exists in this namespace"
    )]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching {program} at cgroup {cgroup} failed: {source}; --cgroup-root must be a cgroup v2 directory (see /proc/self/mountinfo, type cgroup2)"
    )]
    AttachCgroup {
        program: &'static str,
        cgroup: PathBuf,
        // Boxed: the error type stays small for every other variant's sake.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("cannot open the cgroup root {path}: {source}")]
    CgroupRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pinning {what} at {path} failed: {source}; is bpffs mounted there?")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the pinned maps cannot be read ({source}); is an agent running, or was --pin-path different?"
    )]
    Pinned {
        #[source]
        source: super::DataplaneError,
    },
    #[error(
        "{map} is the running datapath's: a read-only load may write only its own flow state and counters"
    )]
    SharedMap { map: &'static str },
    #[error("writing map {map} failed: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("rebuilding the frontend filter from the adopted frontends failed: {source}")]
    FrontendFilter {
        #[source]
        source: super::DataplaneError,
    },
    #[error("letting the fast path send to interface index {ifindex} failed: {source}")]
    FastPathDevice {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("interface name {iface:?} is not valid")]
    InterfaceName { iface: String },
    #[error("measuring the kernel's tick length with a test run failed: {source}")]
    ClockProbe {
        #[source]
        source: super::test_run::TestRunError,
    },
    #[error("removing {path} failed: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The loaded programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_path: Option<PathBuf>,
    capacity: MapCapacity,
    /// What opening did to maps pinned in another layout or with other sizes.
    migration: Option<Migration>,
    /// Attachments made without a pin path: they last as long as this value.
    links: Vec<FdLink>,
    /// The kernel's tick length ([`super::clock`]), written into every CONFIG.
    ns_per_jiffy: u32,
}

/// The socket-level programs, attached together at the cgroup root.
pub const SOCKET_PROGRAMS: [&str; 9] = [
    program_names::CONNECT4,
    program_names::CONNECT6,
    program_names::SENDMSG4,
    program_names::SENDMSG6,
    program_names::RECVMSG4,
    program_names::RECVMSG6,
    program_names::GETPEERNAME4,
    program_names::GETPEERNAME6,
    program_names::SOCK_RELEASE,
];

const PACKET_PROGRAMS: [&str; 3] = [
    program_names::XDP_INGRESS,
    program_names::TC_INGRESS,
    program_names::TC_EGRESS,
];

/// Loaded beside the packet programs, test-run only ([`super::clock`]).
const PROBE_PROGRAMS: [&str; 1] = [program_names::CLOCK_PROBE];

/// Prefix of the link directories of socket-level attachments (one per attach).
const CGROUP_LINKS_PREFIX: &str = "cgroup-";

impl Datapath {
    /// Loads the programs with maps pinned under `pin_path`, adopting maps already pinned
    /// there (a restarted agent keeps flows and configuration).
    ///
    /// Maps pinned in another layout ([`lb_common::LAYOUT_VERSION`]) or with other sizes
    /// than `options.capacity` are made anew with their entries carried over (see
    /// [`super::migrate`]; [`Datapath::migration`] says what happened); the programs
    /// already attached keep the old ones until [`Datapath::attach`] swaps them, and
    /// [`Datapath::retire_replaced_maps`] then removes those.
    pub fn open(pin_path: &Path, options: &DatapathOptions) -> Result<Self, LoadError> {
        let maps_dir = pin_path.join("maps");
        let migrate_error = |source| LoadError::Migrate {
            source: Box::new(source),
        };
        migrate::recover(pin_path).map_err(migrate_error)?;
        std::fs::create_dir_all(&maps_dir).map_err(|source| LoadError::Pin {
            what: "the maps directory".into(),
            path: maps_dir.clone(),
            source,
        })?;
        unpin_resized_reason_counters(&maps_dir)?;
        let adopting = maps_dir.join(map_names::CONFIG).exists();
        let frontends_without_filter = maps_dir.join(map_names::FRONTENDS).exists()
            && !maps_dir.join(map_names::FRONTEND_FILTER).exists();
        let plan = migrate::Plan::new(pin_path, &options.capacity).map_err(migrate_error)?;
        let rebuilding = plan.as_ref().filter(|plan| plan.rebuilds());
        let load_dir = match rebuilding {
            Some(plan) => plan.stage(pin_path).map_err(migrate_error)?,
            None => maps_dir.clone(),
        };
        let mut loader = EbpfLoader::new();
        set_capacity(&mut loader, &options.capacity);
        let paths: Vec<(&'static str, PathBuf)> = ALL_MAPS
            .iter()
            .map(|(name, _)| (*name, load_dir.join(name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|source| load_error(&load_dir, source))?;
        let migration = match (&plan, rebuilding) {
            (_, Some(plan)) => Some(plan.carry_over(pin_path).map_err(migrate_error)?),
            (Some(plan), None) => plan.record_version().map_err(migrate_error)?,
            (None, None) => {
                migrate::pin_version(&maps_dir).map_err(migrate_error)?;
                None
            }
        };
        let mut datapath = Self {
            ebpf,
            pin_path: Some(pin_path.to_path_buf()),
            capacity: options.capacity,
            migration,
            links: Vec::new(),
            ns_per_jiffy: 0,
        };
        datapath.load_programs()?;
        let filter_recomputed = datapath.migration.as_ref().is_some_and(|migration| {
            migration
                .rebuilt
                .iter()
                .any(|map| map.map == map_names::FRONTEND_FILTER)
        });
        if frontends_without_filter || filter_recomputed {
            // FRONTENDS pinned by a datapath without the filter, or with another filter
            // layout (a migration made it anew, empty): set their bits before anything is
            // attached. An adopted filter is left alone: its writer keeps it in
            // step with FRONTENDS, and a rewrite from a look at FRONTENDS would clear the bits
            // of a frontend a running agent is adding (bits first, then the frontend), which
            // would then be turned away for good.
            datapath.rebuild_frontend_filter()?;
        }
        if !adopting || options.overwrite_config {
            datapath.write_config(&options.config)?;
        } else {
            // An adopted CONFIG is left as its agent wrote it (a running agent may own it; a
            // new program starts with an empty flow cache, so no new generation is needed),
            // unless it lacks this kernel's tick (pinned by layout version 0 or 1).
            let adopted = datapath.config()?;
            if adopted.ns_per_jiffy != datapath.ns_per_jiffy {
                datapath.write_config(&adopted)?;
            }
        }
        Ok(datapath)
    }

    /// Loads the programs with fresh, unpinned maps (tests and benchmarks).
    pub fn load_unpinned(options: &DatapathOptions) -> Result<Self, LoadError> {
        let mut loader = EbpfLoader::new();
        set_capacity(&mut loader, &options.capacity);
        let ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|source| LoadError::Load { source })?;
        let mut datapath = Self {
            ebpf,
            pin_path: None,
            capacity: options.capacity,
            migration: None,
            links: Vec::new(),
            ns_per_jiffy: 0,
        };
        datapath.load_programs()?;
        datapath.write_config(&options.config)?;
        Ok(datapath)
    }

    /// Loads every program into the kernel and measures the tick with the probe.
    fn load_programs(&mut self) -> Result<(), LoadError> {
        load_programs(
            &mut self.ebpf,
            PACKET_PROGRAMS
                .into_iter()
                .chain(SOCKET_PROGRAMS)
                .chain(PROBE_PROGRAMS),
        )?;
        self.ns_per_jiffy = super::clock::ns_per_jiffy(&self.ebpf)
            .map_err(|source| LoadError::ClockProbe { source })?;
        Ok(())
    }

    /// Rewrites FRONTEND_FILTER from the frontends in FRONTENDS.
    fn rebuild_frontend_filter(&self) -> Result<(), LoadError> {
        let frontends: aya::maps::HashMap<&MapData, FrontendKey, FrontendValue> =
            aya::maps::HashMap::try_from(self.map(map_names::FRONTENDS)?).map_err(|source| {
                LoadError::Map {
                    map: map_names::FRONTENDS,
                    source,
                }
            })?;
        let keys = frontends
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| LoadError::Map {
                map: map_names::FRONTENDS,
                source,
            })?;
        let words_log2 = lb_common::frontend_filter::words_log2_in_use(
            self.config()?.frontend_filter_words_log2,
        );
        let filter = self.map_data(map_names::FRONTEND_FILTER)?;
        super::frontend_filter::rebuild(filter.fd().as_fd(), keys, words_log2)
            .map(|_| ())
            .map_err(|source| LoadError::FrontendFilter { source })
    }

    /// Writes the CONFIG entry, with this kernel's tick length and the next flow generation
    /// (whatever `config` says of them): flow cache slots filled under the old entry are not
    /// used again.
    pub fn write_config(&mut self, config: &Config) -> Result<(), LoadError> {
        let pinned = self.config()?;
        let config = &Config {
            ns_per_jiffy: self.ns_per_jiffy,
            flow_generation: pinned.flow_generation.wrapping_add(1),
            // The filter's writer owns its size: the filter's words are laid out for the
            // pinned one.
            frontend_filter_words_log2: pinned.frontend_filter_words_log2,
            ..*config
        };
        let map = self
            .ebpf
            .map_mut(map_names::CONFIG)
            .ok_or(LoadError::MissingMap {
                map: map_names::CONFIG,
            })?;
        let mut array: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(|source| LoadError::Map {
                map: map_names::CONFIG,
                source,
            })?;
        array.set(0, config, 0).map_err(|source| LoadError::Map {
            map: map_names::CONFIG,
            source,
        })
    }

    /// The CONFIG entry.
    pub fn config(&self) -> Result<Config, LoadError> {
        let failed = |source| LoadError::Map {
            map: map_names::CONFIG,
            source,
        };
        let array: Array<&MapData, Config> =
            Array::try_from(self.map(map_names::CONFIG)?).map_err(failed)?;
        array.get(&0, 0).map_err(failed)
    }

    /// Turns masquerade on with `ports` (off with None), keeping CONFIG's other fields, and
    /// writes the addresses each interface masquerades with (by interface index).
    pub fn set_masquerade(
        &mut self,
        ports: Option<super::masquerade::PortRange>,
        interfaces: &[(u32, lb_common::SnatAddresses)],
    ) -> Result<(), LoadError> {
        let failed = |source| LoadError::Map {
            map: map_names::SNAT_ADDRESSES,
            source,
        };
        let mut addresses: aya::maps::HashMap<&mut MapData, u32, lb_common::SnatAddresses> =
            aya::maps::HashMap::try_from(self.map_mut(map_names::SNAT_ADDRESSES)?)
                .map_err(failed)?;
        // Addresses first: a flow masqueraded once the range is on must find them.
        for (ifindex, value) in interfaces {
            addresses.insert(ifindex, value, 0).map_err(failed)?;
        }
        let mut config = self.config()?;
        (config.masquerade_port_min, config.masquerade_port_max) =
            super::masquerade::PortRange::config_fields(ports);
        self.write_config(&config)
    }

    /// Turns the XDP fast path on or off (CONFIG's `FAST_PATH_OFF`, other fields kept), and
    /// lets it send frames out of the devices `ifindexes` (FAST_PATH_DEVICES, not pinned:
    /// each load starts empty). Only devices that take redirected XDP frames belong there:
    /// a NIC whose driver transmits XDP frames, a veth whose peer runs an XDP program or
    /// has GRO on; a frame sent to any other is lost. With no device it is off: a balanced
    /// packet then skips the next-hop reads instead of finding no device to use.
    pub fn set_fast_path(&mut self, on: bool, ifindexes: &[u32]) -> Result<(), LoadError> {
        add_fast_path_devices(self.map_mut(map_names::FAST_PATH_DEVICES)?, ifindexes)?;
        let mut config = self.config()?;
        if on && !ifindexes.is_empty() {
            config.flags &= !config_flags::FAST_PATH_OFF;
        } else {
            config.flags |= config_flags::FAST_PATH_OFF;
        }
        self.write_config(&config)
    }

    /// The loaded object, e.g. for `aya_log::EbpfLogger::init` (per-packet log lines, sent
    /// only while CONFIG has `config_flags::DEBUG_LOG`).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The loaded object, e.g. to test-run a program by name ([`super::test_run::run_program`]).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn capacity(&self) -> MapCapacity {
        self.capacity
    }

    /// What [`Datapath::open`] did to maps pinned in another layout or with other sizes;
    /// `None` when it adopted them as they were (or made new ones).
    pub fn migration(&self) -> Option<&Migration> {
        self.migration.as_ref()
    }

    /// Once this load's programs run in every link (after [`Datapath::attach`] and
    /// [`Datapath::attach_cgroup`]): carries over the flow entries the replaced programs
    /// wrote during the switch and removes the maps a migration replaced. `None` when
    /// nothing was replaced.
    pub fn retire_replaced_maps(&self) -> Result<Option<migrate::CaughtUp>, LoadError> {
        match &self.pin_path {
            Some(pin_path) => migrate::retire(pin_path).map_err(|source| LoadError::Migrate {
                source: Box::new(source),
            }),
            None => Ok(None),
        }
    }

    pub fn pin_path(&self) -> Option<&Path> {
        self.pin_path.as_deref()
    }

    /// A map of the object (typed access: `HashMap::try_from(datapath.map(NAME)?)`).
    pub fn map(&self, map: &'static str) -> Result<&aya::maps::Map, LoadError> {
        self.ebpf.map(map).ok_or(LoadError::MissingMap { map })
    }

    pub fn map_mut(&mut self, map: &'static str) -> Result<&mut aya::maps::Map, LoadError> {
        self.ebpf.map_mut(map).ok_or(LoadError::MissingMap { map })
    }

    /// The raw map data of a map of the object.
    pub fn map_data(&self, map: &'static str) -> Result<&MapData, LoadError> {
        match self.ebpf.map(map) {
            Some(
                aya::maps::Map::HashMap(m)
                | aya::maps::Map::LruHashMap(m)
                | aya::maps::Map::Array(m)
                | aya::maps::Map::PerCpuArray(m)
                | aya::maps::Map::LpmTrie(m),
            ) => Ok(m),
            _ => Err(LoadError::MissingMap { map }),
        }
    }

    pub fn map_data_mut(&mut self, map: &'static str) -> Result<&mut MapData, LoadError> {
        match self.ebpf.map_mut(map) {
            Some(
                aya::maps::Map::HashMap(m)
                | aya::maps::Map::LruHashMap(m)
                | aya::maps::Map::Array(m)
                | aya::maps::Map::PerCpuArray(m)
                | aya::maps::Map::LpmTrie(m),
            ) => Ok(m),
            _ => Err(LoadError::MissingMap { map }),
        }
    }

    /// An XDP program by name (forward path, parse-only, empty).
    pub fn xdp(&self, program: &'static str) -> Result<&Xdp, LoadError> {
        xdp_program(&self.ebpf, program)
    }

    /// A TC program by name (ingress or egress).
    pub fn tc(&self, program: &'static str) -> Result<&SchedClassifier, LoadError> {
        self.ebpf
            .program(program)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .ok_or(LoadError::MissingProgram { program })
    }

    /// Attaches the forward path (XDP or TC ingress) and the reverse path (TC egress) to
    /// `iface`. With a pin path, an attachment pinned by an earlier run is updated in place
    /// (the old program runs until the new one replaces it: no gap) and the link is pinned.
    pub fn attach(&mut self, iface: &str, mode: IngressMode) -> Result<(), LoadError> {
        let name = CString::new(iface).map_err(|_| LoadError::InterfaceName {
            iface: iface.into(),
        })?;
        let ifindex = interface_index(iface)?;
        if ifindex == 0 {
            return Err(LoadError::Attach {
                program: program_names::TC_EGRESS,
                iface: iface.into(),
                source: aya::programs::ProgramError::UnknownInterface { name: name.clone() },
            });
        }
        self.attach_index(iface, ifindex, mode)
    }

    /// [`Datapath::attach`] by interface index; `iface` names the pins. The kernel resolves
    /// the index in the calling thread's network namespace.
    pub fn attach_index(
        &mut self,
        iface: &str,
        ifindex: u32,
        mode: IngressMode,
    ) -> Result<(), LoadError> {
        match mode {
            IngressMode::XdpNative | IngressMode::XdpGeneric => {
                let xdp_mode = if mode == IngressMode::XdpNative {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                self.attach_xdp(iface, ifindex, xdp_mode)?;
            }
            IngressMode::Tc => self.attach_tc(iface, ifindex, TcAttachType::Ingress)?,
        }
        self.attach_tc(iface, ifindex, TcAttachType::Egress)
    }

    /// `<pin>/links/<iface>/<kind>`. bpffs refuses names with a dot (reserved by the
    /// kernel), so dots in interface names (`eth0.100`) become underscores.
    fn link_path(&self, iface: &str, kind: &str) -> Option<PathBuf> {
        let dir = iface.replace('.', "_");
        self.pin_path
            .as_ref()
            .map(|pin| pin.join("links").join(dir).join(kind))
    }

    /// Pins an attachment under the pin path, or keeps it in `self` when there is none.
    fn keep_link(&mut self, link: FdLink, path: Option<PathBuf>) -> Result<(), LoadError> {
        match path {
            Some(path) => Self::pin_link(link, &path),
            None => {
                self.links.push(link);
                Ok(())
            }
        }
    }

    fn pin_link(link: FdLink, path: &Path) -> Result<(), LoadError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LoadError::Pin {
                what: "the links directory".into(),
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let pinned = link.pin(path).map_err(|error| LoadError::Pin {
            what: format!("link {}", path.display()),
            path: path.to_path_buf(),
            source: match error {
                aya::pin::PinError::SyscallError(e) => e.io_error,
                other => io::Error::other(other.to_string()),
            },
        })?;
        // The pin keeps the attachment alive; our descriptor is not needed.
        drop(pinned);
        Ok(())
    }

    /// Runs `program` on `iface`: inside the link pinned at `<pin>/links/<iface>/<kind>`
    /// when there is one (`swap`, through `bpf_link_update`: the pin holds the link attached
    /// throughout, so no moment leaves the interface without a program, whatever happens to
    /// this process), else in a new link (`attach`), pinned there.
    fn attach_interface<P>(
        &mut self,
        iface: &str,
        kind: &str,
        program: &'static str,
        swap: impl FnOnce(&mut P, FdLink) -> Result<(), ProgramError>,
        attach: impl FnOnce(&mut P) -> Result<FdLink, ProgramError>,
    ) -> Result<(), LoadError>
    where
        for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program>,
    {
        let attach_err = |source| LoadError::Attach {
            program,
            iface: iface.into(),
            source,
        };
        let link_path = self.link_path(iface, kind);
        let prog: &mut P = self
            .ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram { program })?;
        if let Some(path) = &link_path
            && let Some(pinned) = pinned_link(path)
        {
            match swap(prog, pinned) {
                Ok(()) => return Ok(()),
                // The link's interface is gone (perhaps made again under its name): that
                // link runs nowhere, and a new one takes its pin.
                Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.raw_os_error() == Some(libc::ENOLINK) =>
                {
                    std::fs::remove_file(path).map_err(|source| LoadError::Remove {
                        path: path.clone(),
                        source,
                    })?;
                }
                Err(error) => return Err(attach_err(error)),
            }
        }
        let link = attach(prog).map_err(attach_err)?;
        self.keep_link(link, link_path)
    }

    fn attach_xdp(&mut self, iface: &str, ifindex: u32, mode: XdpMode) -> Result<(), LoadError> {
        self.attach_interface(
            iface,
            "xdp",
            program_names::XDP_INGRESS,
            |prog: &mut Xdp, pinned| {
                let id = prog.attach_to_link(XdpLink::try_from(pinned)?)?;
                // The pin holds the link; this descriptor is not needed.
                prog.take_link(id).map(drop)
            },
            // Kernels since 5.9 attach XDP through a bpf_link, which can be pinned.
            |prog| {
                let id = prog.attach(ifindex, mode)?;
                Ok(FdLink::try_from(prog.take_link(id)?)?)
            },
        )
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        ifindex: u32,
        attach_type: TcAttachType,
    ) -> Result<(), LoadError> {
        let (program, kind) = match attach_type {
            TcAttachType::Egress => (program_names::TC_EGRESS, "tc_egress"),
            _ => (program_names::TC_INGRESS, "tc_ingress"),
        };
        self.attach_interface(
            iface,
            kind,
            program,
            |prog: &mut SchedClassifier, pinned| {
                let id = prog.attach_to_link(SchedClassifierLink::try_from(pinned)?)?;
                prog.take_link(id).map(drop)
            },
            |prog| {
                let order = LinkOrder::default();
                let id = prog.attach(ifindex, TcAttach::Tcx { attach_type, order })?;
                Ok(FdLink::try_from(prog.take_link(id)?)?)
            },
        )
    }

    /// Attaches the socket-level programs at `cgroup` (a cgroup v2 directory): every process
    /// below it is balanced at `connect()` / `sendmsg()`. With a pin path the links are
    /// pinned under `<pin>/links/cgroup-<stamp>/`, and the links an earlier run pinned (at
    /// this or another cgroup) are removed only once the new ones are in place: for that
    /// moment both run, which is harmless (the second finds the address already translated).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), LoadError> {
        let attach_err = |program, source| LoadError::AttachCgroup {
            program,
            cgroup: cgroup.to_path_buf(),
            source: Box::new(source),
        };
        let dir = std::fs::File::open(cgroup).map_err(|source| LoadError::CgroupRoot {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let links_dir = self.pin_path.as_ref().map(|pin| {
            pin.join("links")
                .join(format!("{CGROUP_LINKS_PREFIX}{stamp}"))
        });
        for program in SOCKET_PROGRAMS {
            let prog = self
                .ebpf
                .program_mut(program)
                .ok_or(LoadError::MissingProgram { program })?;
            // Cgroup links always allow several programs; the kernel wants no mode flag.
            let link = match prog {
                aya::programs::Program::CgroupSockAddr(p) => p
                    .attach(&dir, CgroupAttachMode::Single)
                    .and_then(|id| p.take_link(id))
                    .and_then(|link| FdLink::try_from(link).map_err(Into::into)),
                aya::programs::Program::CgroupSock(p) => p
                    .attach(&dir, CgroupAttachMode::Single)
                    .and_then(|id| p.take_link(id))
                    .and_then(|link| FdLink::try_from(link).map_err(Into::into)),
                _ => return Err(LoadError::MissingProgram { program }),
            }
            .map_err(|source| attach_err(program, source))?;
            let path = links_dir.as_ref().map(|dir| dir.join(program));
            self.keep_link(link, path)?;
        }
        if let (Some(pin), Some(current)) = (&self.pin_path, &links_dir) {
            for old in cgroup_link_dirs(pin)?.into_iter().filter(|d| d != current) {
                remove_dir_of_pins(&old)?;
            }
        }
        Ok(())
    }

    /// Removes every attachment, link and map pinned under `pin_path` (the programs go
    /// when their last link does).
    pub fn detach(pin_path: &Path) -> Result<(), LoadError> {
        let links = pin_path.join("links");
        match std::fs::read_dir(&links) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|source| LoadError::Remove {
                        path: links.clone(),
                        source,
                    })?;
                    remove_dir_of_pins(&entry.path())?;
                }
                std::fs::remove_dir(&links).map_err(|source| LoadError::Remove {
                    path: links.clone(),
                    source,
                })?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LoadError::Remove {
                    path: links,
                    source,
                });
            }
        }
        for dir in ["maps", migrate::STAGING_DIR, migrate::RETIRED_DIR] {
            let maps = pin_path.join(dir);
            if maps.exists() {
                remove_dir_of_pins(&maps)?;
            }
        }
        match std::fs::remove_dir(pin_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LoadError::Remove {
                path: pin_path.to_path_buf(),
                source,
            }),
        }
    }
}

/// slicelb's programs loaded against the pinned configuration maps, for test runs that
/// change nothing the running datapath uses (`slicelb trace`): the maps the programs write
/// (flow state, counters) belong to this load, with room for a few entries, and nothing is
/// written to a pinned map, pinned, or attached.
pub struct ReadOnlyDatapath {
    ebpf: Ebpf,
}

impl ReadOnlyDatapath {
    /// Loads the forward program (the one `trace` runs) against the maps pinned under
    /// `pin_path`, which must all be there (nothing is created in their place).
    pub fn open(pin_path: &Path) -> Result<Self, LoadError> {
        let maps_dir = pin_path.join("maps");
        let pinned =
            pins::pinned_capacity(pin_path).map_err(|source| LoadError::Pinned { source })?;
        let mut loader = EbpfLoader::new();
        set_capacity(
            &mut loader,
            &MapCapacity {
                conntrack: READ_ONLY_FLOW_ENTRIES,
                handshakes: READ_ONLY_FLOW_ENTRIES,
                affinity: READ_ONLY_FLOW_ENTRIES,
                fragments: READ_ONLY_FLOW_ENTRIES,
                socket_flows: READ_ONLY_FLOW_ENTRIES,
                snat: READ_ONLY_FLOW_ENTRIES,
                ..pinned
            },
        );
        // Nobody reads this load's service counters; a service id past the end is not
        // counted.
        loader.map_max_entries(map_names::SERVICE_STATS, 1);
        for (name, role) in ALL_MAPS {
            if role == MapRole::Configuration {
                // Adopt, never create: aya would pin a new map where none is.
                pins::open_read_only(pin_path, name)
                    .map_err(|source| LoadError::Pinned { source })?;
                loader.map_pin_path(name, maps_dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|source| load_error(&maps_dir, source))?;
        load_programs(&mut ebpf, [program_names::XDP_INGRESS])?;
        Ok(Self { ebpf })
    }

    /// The forward program.
    pub fn forward(&self) -> Result<&Xdp, LoadError> {
        xdp_program(&self.ebpf, program_names::XDP_INGRESS)
    }

    /// Lets this load's fast path send to the devices `ifindexes` (its own FAST_PATH_DEVICES:
    /// the map is never pinned, each load has one), e.g. the devices the attached program
    /// may send to, so that a test run decides as it does. A test run never sends a frame.
    pub fn allow_fast_path_devices(&mut self, ifindexes: &[u32]) -> Result<(), LoadError> {
        let map = map_names::FAST_PATH_DEVICES;
        let devices = self
            .ebpf
            .map_mut(map)
            .ok_or(LoadError::MissingMap { map })?;
        add_fast_path_devices(devices, ifindexes)
    }

    /// A map this load owns (flow state, counters), e.g. to give a test run the flow state
    /// the live maps hold for its packet. The configuration maps are refused: they are the
    /// running datapath's.
    pub fn own_map_mut(&mut self, map: &'static str) -> Result<&mut Map, LoadError> {
        let own = ALL_MAPS
            .iter()
            .any(|&(name, role)| name == map && role == MapRole::Datapath);
        if !own {
            return Err(LoadError::SharedMap { map });
        }
        self.ebpf.map_mut(map).ok_or(LoadError::MissingMap { map })
    }
}

/// Puts the devices `ifindexes` into a FAST_PATH_DEVICES map (interface index -> itself).
fn add_fast_path_devices(map: &mut Map, ifindexes: &[u32]) -> Result<(), LoadError> {
    let mut devices: aya::maps::DevMapHash<&mut MapData> = aya::maps::DevMapHash::try_from(map)
        .map_err(|source| LoadError::Map {
            map: map_names::FAST_PATH_DEVICES,
            source,
        })?;
    for ifindex in ifindexes {
        devices
            .insert(*ifindex, *ifindex, None, 0)
            .map_err(|source| LoadError::FastPathDevice {
                ifindex: *ifindex,
                source,
            })?;
    }
    Ok(())
}

/// What a failed load means: a pinned map of another layout is named with its path.
fn load_error(maps_dir: &Path, source: aya::EbpfError) -> LoadError {
    match source {
        aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap {
            name,
            property,
            expected,
            actual,
        }) => LoadError::IncompatiblePin {
            path: maps_dir.join(&name),
            map: name,
            property,
            expected,
            actual,
        },
        source => LoadError::Load { source },
    }
}

/// Unpins REASON_STATS when a build with fewer reasons made it (a reason was added since):
/// counters may restart, so the new array replaces it instead of refusing the upgrade.
/// Programs still attached keep counting into the old array until they are replaced.
fn unpin_resized_reason_counters(maps_dir: &Path) -> Result<(), LoadError> {
    let path = maps_dir.join(map_names::REASON_STATS);
    let Ok(pinned) = aya::maps::MapData::from_pin(&path) else {
        return Ok(());
    };
    let size = pinned.info().map(|info| info.max_entries()).ok();
    if size.is_some_and(|size| size != Reason::COUNT) {
        std::fs::remove_file(&path).map_err(|source| LoadError::Remove { path, source })?;
    }
    Ok(())
}

/// Loads `programs` of `ebpf` into the kernel (the verifier runs here).
fn load_programs(
    ebpf: &mut Ebpf,
    programs: impl IntoIterator<Item = &'static str>,
) -> Result<(), LoadError> {
    for program in programs {
        let prog = ebpf
            .program_mut(program)
            .ok_or(LoadError::MissingProgram { program })?;
        let result = match prog {
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            aya::programs::Program::CgroupSockAddr(p) => p.load(),
            aya::programs::Program::CgroupSock(p) => p.load(),
            _ => return Err(LoadError::MissingProgram { program }),
        };
        result.map_err(|source| LoadError::Verify { program, source })?;
    }
    Ok(())
}

fn xdp_program<'a>(ebpf: &'a Ebpf, program: &'static str) -> Result<&'a Xdp, LoadError> {
    ebpf.program(program)
        .and_then(|p| <&Xdp>::try_from(p).ok())
        .ok_or(LoadError::MissingProgram { program })
}

/// The socket-level link directories pinned under `pin_path`.
pub fn cgroup_link_dirs(pin_path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let links = pin_path.join("links");
    let entries = match std::fs::read_dir(&links) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LoadError::Remove {
                path: links,
                source,
            });
        }
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Remove {
            path: links.clone(),
            source,
        })?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(CGROUP_LINKS_PREFIX)
        {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Removes the pins in `dir` (unpinning a link detaches it once nothing else holds it;
/// unpinning a map frees it once no program uses it), then `dir` itself.
fn remove_dir_of_pins(dir: &Path) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Remove {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Remove {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        std::fs::remove_file(&path).map_err(|source| LoadError::Remove {
            path: path.clone(),
            source,
        })?;
    }
    std::fs::remove_dir(dir).map_err(|source| LoadError::Remove {
        path: dir.to_path_buf(),
        source,
    })
}

/// The link an earlier run pinned at `path`, left pinned (this run swaps its program in);
/// `None` when there is none.
fn pinned_link(path: &Path) -> Option<FdLink> {
    PinnedLink::from_pin(path).ok().map(FdLink::from)
}

/// The index of interface `iface` in this network namespace; 0 when there is none.
pub fn interface_index(iface: &str) -> Result<u32, LoadError> {
    let name = CString::new(iface).map_err(|_| LoadError::InterfaceName {
        iface: iface.into(),
    })?;
    // if_nametoindex fails only with ENODEV (no such interface) here.
    Ok(nix::net::if_::if_nametoindex(name.as_c_str()).unwrap_or(0))
}

/// The size `capacity` gives `map`; `None` for the maps the object sizes itself (the
/// frontend filter, CONFIG and the reason, protocol and socket counters).
pub(crate) fn max_entries(capacity: &MapCapacity, map: &str) -> Option<u32> {
    match map {
        map_names::FRONTENDS => Some(capacity.frontends),
        // Fixed, and a size pinned by layout version 2 (2^15) makes it anew.
        map_names::FRONTEND_FILTER => Some(lb_common::frontend_filter::WORDS),
        map_names::BACKENDS => Some(capacity.backends),
        map_names::SELECTION => Some(capacity.selection_slots),
        map_names::TABLE_MEMBERS => Some(capacity.table_members),
        map_names::CONNTRACK => Some(capacity.conntrack),
        map_names::HANDSHAKES => Some(capacity.handshakes),
        map_names::AFFINITY => Some(capacity.affinity),
        map_names::FRAGMENTS => Some(capacity.fragments),
        map_names::SOCK_CONNECTED | map_names::SOCK_REVERSE => Some(capacity.socket_flows),
        map_names::SNAT => Some(capacity.snat),
        map_names::SOURCE_RANGES => Some(capacity.source_ranges),
        map_names::SERVICE_STATS | map_names::SERVICE_NAMES => Some(capacity.services),
        _ => None,
    }
}

fn set_capacity<'a>(loader: &mut EbpfLoader<'a>, capacity: &MapCapacity) {
    for (map, _) in ALL_MAPS {
        if let Some(entries) = max_entries(capacity, map) {
            loader.map_max_entries(map, entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned_mismatch(map: &str, property: &'static str) -> aya::EbpfError {
        aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap {
            name: map.to_string(),
            property,
            expected: 1024,
            actual: 524_288,
        })
    }

    #[test]
    fn a_pinned_map_of_another_layout_is_named_with_its_path() {
        let maps = Path::new("/sys/fs/bpf/slicelb/maps");
        let error = load_error(maps, pinned_mismatch(map_names::SELECTION, "map_flags"));
        let message = error.to_string();
        for expected in [
            "SELECTION",
            "/sys/fs/bpf/slicelb/maps/SELECTION",
            "map_flags",
            "slicelb detach",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} missing: {message}"
            );
        }
    }

    #[test]
    fn every_sized_map_is_sized_from_the_capacity() {
        let capacity = MapCapacity {
            conntrack: 1024,
            affinity: 512,
            socket_flows: 256,
            ..MapCapacity::default()
        };
        for (map, entries) in [
            (map_names::CONNTRACK, Some(1024)),
            (map_names::AFFINITY, Some(512)),
            (map_names::SOCK_REVERSE, Some(256)),
            (map_names::SOCK_CONNECTED, Some(256)),
            (map_names::CONFIG, None),
        ] {
            assert_eq!(max_entries(&capacity, map), entries, "{map}");
        }
    }
}
