//! Upgrades across a change of the pinned maps: maps pinned in an older layout (a fixture:
//! the pins a release before layout versions left, which have no LAYOUT pin) or with other
//! sizes than the agent's flags are made anew with their entries carried over, and a held
//! connection keeps its backend through the upgrade. Also: the states a migration that
//! stopped half-way leaves are recovered, a layout from a newer release is refused by name,
//! and reason counters pinned by a build with fewer reasons are replaced.

use std::{collections::BTreeSet, fs::File, path::Path, time::Duration};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    Config, FAMILY_IPV4, FlowKey, FlowValue, FrontendKey, FrontendValue, LAYOUT_VERSION, PROTO_TCP,
    Reason, frontend_filter, hash::frontend_filter_slot, map_names,
};
use slicelb::dataplane::{
    MapCapacity,
    loader::{Datapath, DatapathOptions, LoadError},
    migrate::{self, Carried, LAYOUT_PIN, RETIRED_DIR, RebuiltMap, STAGING_DIR},
};
use slicelb_lab::lab::{
    ChildGuard, PinDir,
    agent_lab::{AgentLab, Frontend, agent_command},
    require_root,
};

fn with_conntrack(conntrack: u32) -> DatapathOptions {
    DatapathOptions {
        capacity: MapCapacity {
            conntrack,
            ..MapCapacity::default()
        },
        ..DatapathOptions::default()
    }
}

fn conntrack_at(dir: &Path) -> HashMap<MapData, FlowKey, FlowValue> {
    let data = MapData::from_pin(dir.join(map_names::CONNTRACK)).expect("the pinned CONNTRACK");
    HashMap::try_from(Map::LruHashMap(data)).expect("CONNTRACK as a hash map")
}

/// A forward entry of a TCP flow from client port `port`, last used at `last_seen_ns`.
fn write_flow(dir: &Path, port: u16, last_seen_ns: u64) {
    let key = FlowKey {
        src_port: port,
        proto: PROTO_TCP,
        family: FAMILY_IPV4,
        ..FlowKey::default()
    };
    let value = FlowValue {
        backend_id: 1,
        last_seen_ns,
        ..FlowValue::default()
    };
    conntrack_at(dir)
        .insert(&key, &value, 0)
        .unwrap_or_else(|e| panic!("writing the flow of port {port}: {e}"));
}

/// The client ports of the flows in the CONNTRACK pinned in `dir`.
fn flow_ports(dir: &Path) -> BTreeSet<u16> {
    conntrack_at(dir)
        .keys()
        .map(|key| key.expect("a CONNTRACK key").src_port)
        .collect()
}

/// CONFIG's value in layout version 1 (and 0): this build's without the fields version 2
/// added at its end (`ns_per_jiffy`, `flow_generation`).
const VERSION_1_CONFIG_SIZE: usize = 40;

fn pinned_config(dir: &Path) -> Config {
    let data = MapData::from_pin(dir.join(map_names::CONFIG)).expect("the pinned CONFIG");
    let config: Array<MapData, Config> =
        Array::try_from(Map::Array(data)).expect("CONFIG as an array");
    config.get(&0, 0).expect("CONFIG's entry")
}

/// Turns the maps pinned in `dir` into those of a release before layout versions: no
/// LAYOUT pin, and CONFIG with version 1's (shorter) value, holding the same settings.
/// Returns the CONFIG it held.
fn pin_as_version_0(dir: &Path) -> Config {
    std::fs::remove_file(dir.join(LAYOUT_PIN)).expect("unpinning LAYOUT");
    let config = pinned_config(dir);
    // SAFETY: Config is #[repr(C)] with explicit padding and integer fields only.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts((&raw const config).cast(), size_of::<Config>()) };
    let mut older = [0u8; VERSION_1_CONFIG_SIZE];
    older.copy_from_slice(&bytes[..VERSION_1_CONFIG_SIZE]);
    std::fs::remove_file(dir.join(map_names::CONFIG)).expect("unpinning CONFIG");
    let mut array =
        Array::<MapData, [u8; VERSION_1_CONFIG_SIZE]>::create(1, 0).expect("a version-1 CONFIG");
    array
        .set(0, &older, 0)
        .expect("writing the version-1 CONFIG");
    array
        .pin(dir.join(map_names::CONFIG))
        .expect("pinning the version-1 CONFIG");
    config
}

/// CONFIG's settings carried over from version 1: the fields versions 2 and 3 added are
/// the loader's (this kernel's tick, a new generation) and the filter writer's (its size).
fn assert_config_carried(dir: &Path, before: &Config) {
    let after = pinned_config(dir);
    assert_eq!(
        Config {
            ns_per_jiffy: before.ns_per_jiffy,
            flow_generation: before.flow_generation,
            frontend_filter_words_log2: before.frontend_filter_words_log2,
            ..after
        },
        *before,
        "CONFIG's settings carried over"
    );
    assert_ne!(after.ns_per_jiffy, 0, "the tick measured and written");
}

fn pinned_info(dir: &Path, map: &str) -> aya::maps::MapInfo {
    MapData::from_pin(dir.join(map))
        .and_then(|data| data.info())
        .unwrap_or_else(|e| panic!("{map} in {}: {e}", dir.display()))
}

fn carried(migration: &migrate::Migration, map: &str) -> Carried {
    migration
        .rebuilt
        .iter()
        .find(|rebuilt| rebuilt.map == map)
        .unwrap_or_else(|| panic!("{map} not rebuilt: {migration}"))
        .carried
}

#[test]
fn maps_of_another_size_or_an_older_layout_are_rebuilt_with_their_entries() {
    require_root("maps_of_another_size_or_an_older_layout");
    let pin = PinDir::new("upgrade_maps");
    let maps = pin.0.join("maps");
    let retired = pin.0.join(RETIRED_DIR);
    let staging = pin.0.join(STAGING_DIR);
    drop(Datapath::open(&pin.0, &with_conntrack(1024)).expect("loading, pinned"));
    assert_eq!(
        migrate::pinned_version(&maps).expect("the LAYOUT pin"),
        Some(LAYOUT_VERSION),
        "new maps are pinned with this build's layout version"
    );
    for port in 0..600u16 {
        write_flow(&maps, port, u64::from(port) + 1);
    }
    let affinity = pinned_info(&maps, map_names::AFFINITY).id();
    // A frontend whose filter bits are not where this build's hash puts them (an older
    // filter layout).
    let frontend = FrontendKey {
        addr: [198, 18, 100, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        port: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_IPV4,
    };
    let mut frontends: HashMap<MapData, FrontendKey, FrontendValue> = HashMap::try_from(
        Map::HashMap(MapData::from_pin(maps.join(map_names::FRONTENDS)).expect("FRONTENDS")),
    )
    .expect("FRONTENDS as a hash map");
    frontends
        .insert(&frontend, &FrontendValue::default(), 0)
        .expect("writing a frontend");
    // Where a CONFIG without the size (zero) has it: 2^15 words.
    let (word, mask) = frontend_filter_slot(
        &frontend.addr,
        frontend.port,
        frontend.proto,
        frontend.family,
        frontend_filter::WORDS_LOG2_UNSET,
    );
    let filter_at = |dir: &Path| -> Array<MapData, u64> {
        Array::try_from(Map::Array(
            MapData::from_pin(dir.join(map_names::FRONTEND_FILTER)).expect("FRONTEND_FILTER"),
        ))
        .expect("FRONTEND_FILTER as an array")
    };
    filter_at(&maps)
        .set(word, &0, 0)
        .expect("clearing the frontend's filter word");

    // The fixture: the pins of a release before layout versions (no LAYOUT pin, CONFIG
    // of version 1), opened with a larger table.
    let config = pin_as_version_0(&maps);
    let datapath = Datapath::open(&pin.0, &with_conntrack(2048)).expect("migrating");
    let migration = datapath.migration().expect("a migration").clone();
    assert_eq!(
        (migration.from_version, migration.to_version),
        (0, LAYOUT_VERSION)
    );
    assert_eq!(
        migration.rebuilt,
        vec![
            RebuiltMap {
                map: map_names::FRONTEND_FILTER,
                pinned_entries: frontend_filter::WORDS,
                entries: frontend_filter::WORDS,
                carried: Carried::Recomputed,
            },
            RebuiltMap {
                map: map_names::CONNTRACK,
                pinned_entries: 1024,
                entries: 2048,
                carried: Carried::Entries {
                    kept: 600,
                    dropped: 0
                },
            },
            RebuiltMap {
                map: map_names::CONFIG,
                pinned_entries: 1,
                entries: 1,
                carried: Carried::Entries {
                    kept: 1,
                    dropped: 0
                },
            }
        ],
        "CONNTRACK (its size), CONFIG and FRONTEND_FILTER (their layouts) change: {migration}"
    );
    assert_eq!(
        filter_at(&maps)
            .get(&word, 0)
            .expect("the frontend's filter word")
            & mask,
        mask,
        "the filter is recomputed from FRONTENDS (at the size of a CONFIG without one)"
    );
    assert_config_carried(&maps, &config);
    assert_eq!(pinned_info(&maps, map_names::CONNTRACK).max_entries(), 2048);
    assert_eq!(
        flow_ports(&maps),
        (0..600).collect(),
        "every flow carried over"
    );
    assert_eq!(
        pinned_info(&maps, map_names::AFFINITY).id(),
        affinity,
        "a map that did not change is kept as it is"
    );
    assert_eq!(
        migrate::pinned_version(&maps).expect("the LAYOUT pin"),
        Some(LAYOUT_VERSION)
    );
    // The replaced programs still run until the new ones are swapped in: a flow they write
    // meanwhile is carried over when the replaced maps are retired.
    write_flow(&retired, 700, 10_000);
    let caught_up = datapath
        .retire_replaced_maps()
        .expect("retiring")
        .expect("replaced maps to retire");
    assert_eq!(caught_up.entries, 1, "the flow written during the switch");
    assert!(flow_ports(&maps).contains(&700));
    assert!(!retired.exists(), "the replaced maps are unpinned");
    drop(datapath);

    // Smaller than the live flows: the most recently used are kept, the rest counted.
    let datapath = Datapath::open(&pin.0, &with_conntrack(256)).expect("shrinking");
    let migration = datapath.migration().expect("a migration").clone();
    let Carried::Entries { kept, dropped } = carried(&migration, map_names::CONNTRACK) else {
        panic!("CONNTRACK's entries are carried: {migration}");
    };
    let ports = flow_ports(&maps);
    assert_eq!(ports.len(), kept, "the count says what the map holds");
    assert_eq!(kept + dropped, 601, "{migration}");
    // An LRU map may evict before it is full (per-CPU free lists), never a newer entry
    // for an older one: entries go in oldest first.
    assert!(kept > 128, "{migration}");
    let newest: BTreeSet<u16> = (345..600).chain([700]).collect();
    assert!(
        ports.is_subset(&newest),
        "kept flows that are not among the 256 most recent: {:?}",
        ports.difference(&newest).collect::<Vec<_>>()
    );
    datapath.retire_replaced_maps().expect("retiring");
    drop(datapath);
    let datapath = Datapath::open(&pin.0, &with_conntrack(256)).expect("adopting");
    assert_eq!(datapath.migration(), None, "the same sizes are adopted");
    drop(datapath);

    // A migration that stopped between its renames: the complete new set is put in place.
    std::fs::rename(&maps, &staging).expect("moving the maps to the staging directory");
    drop(Datapath::open(&pin.0, &with_conntrack(256)).expect("recovering"));
    assert_eq!(
        flow_ports(&maps),
        ports,
        "the staged set is the one in place"
    );
    assert!(!staging.exists());
    // A migration that stopped while staging: the incomplete set is removed.
    std::fs::create_dir(&staging).expect("a staging directory");
    MapData::from_pin(maps.join(map_names::CONFIG))
        .expect("CONFIG")
        .pin(staging.join(map_names::CONFIG))
        .expect("a staged pin");
    drop(Datapath::open(&pin.0, &with_conntrack(256)).expect("recovering"));
    assert!(!staging.exists(), "an incomplete staging set is removed");
    assert_eq!(flow_ports(&maps), ports);

    // Maps of a newer layout: refused by name, nothing touched.
    let layout = MapData::from_pin(maps.join(LAYOUT_PIN)).expect("LAYOUT");
    let mut layout: aya::maps::Array<MapData, u32> =
        aya::maps::Array::try_from(Map::Array(layout)).expect("LAYOUT as an array");
    layout
        .set(0, &(LAYOUT_VERSION + 1), 0)
        .expect("a newer version");
    match Datapath::open(&pin.0, &with_conntrack(2048)) {
        Err(error @ LoadError::Migrate { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains("newer than this slicelb") && message.contains("slicelb detach"),
                "{message}"
            );
        }
        Err(other) => panic!("a newer layout: wrong error {other}"),
        Ok(_) => panic!("maps of a newer layout must be refused"),
    }
    assert_eq!(
        flow_ports(&maps),
        ports,
        "a refused upgrade changes nothing"
    );
    layout.set(0, &LAYOUT_VERSION, 0).expect("this version");

    // REASON_STATS as a build with one reason fewer pinned it: replaced, not refused.
    let reasons = maps.join(map_names::REASON_STATS);
    std::fs::remove_file(&reasons).expect("unpinning REASON_STATS");
    let older: PerCpuArray<MapData, u64> =
        PerCpuArray::create(Reason::COUNT - 1, 0).expect("an older REASON_STATS");
    older.pin(&reasons).expect("pinning the older REASON_STATS");
    drop(Datapath::open(&pin.0, &with_conntrack(256)).expect("adopting with older counters"));
    assert_eq!(
        pinned_info(&maps, map_names::REASON_STATS).max_entries(),
        Reason::COUNT,
        "the reason counters have room for every reason"
    );
}

/// Waits until the agent's log at `path` has every one of `lines`; returns the log.
fn wait_for_log(path: &Path, lines: &[&str]) -> String {
    let started = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if lines.iter().all(|line| log.contains(line)) {
            return log;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never logged {lines:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_upgrade_across_a_layout_and_size_change_keeps_a_held_connection_on_its_backend() {
    let (lab, mut agent) = AgentLab::with_synced_agent_args(
        "lab_upgrade",
        &["--conntrack-max", "1024", "--affinity-max", "256"],
    );
    let (mut kept, first) = lab.open_kept_connection();
    // Its backend stops being ready: from now on only the flow's conntrack entry keeps the
    // connection there (its Maglev slot names another backend, which would reset it).
    lab.make_unready(&first);
    let expected = first.clone();
    kept = lab.in_client(move || {
        assert_eq!(kept.get().expect("before the upgrade"), expected);
        kept
    });
    let lost_before = lab.reason("lb_conntrack_lost");

    agent
        .signal_and_wait(libc::SIGTERM)
        .expect("stop the agent");
    // The pinned state as a release before layout versions left it: no LAYOUT pin, CONFIG
    // of version 1.
    let maps = lab.pin_path.join("maps");
    let config = pin_as_version_0(&maps);

    let logs = tempfile::tempdir().expect("a log directory");
    let log_path = logs.path().join("agent.log");
    let mut command = agent_command(&lab.lab, &lab.slicelb, lab.manifests.path(), &lab.pin_path);
    command
        .args(["--conntrack-max", "4096", "--affinity-max", "512"])
        .env("RUST_LOG", "info")
        .stderr(File::create(&log_path).expect("the agent's log"));
    let _upgraded = ChildGuard::spawn(command, "upgraded agent").expect("start the agent");
    let log = wait_for_log(
        &log_path,
        &[
            &format!("pinned maps migrated from layout version 0 to {LAYOUT_VERSION}"),
            "replaced maps removed",
            "first full sync done",
        ],
    );
    // HANDSHAKES follows --conntrack-max (a quarter of it, at least 256).
    for line in [
        "CONNTRACK rebuilt (1024 -> 4096 entries",
        "HANDSHAKES rebuilt (256 -> 1024 entries",
        "AFFINITY rebuilt (256 -> 512 entries",
        "CONFIG rebuilt (1 -> 1 entries",
        "FRONTEND_FILTER rebuilt (131072 -> 131072 entries, recomputed)",
    ] {
        assert!(log.contains(line), "{line:?} missing from the log:\n{log}");
    }
    assert_eq!(
        log.matches(", 0 dropped)").count(),
        4,
        "nothing dropped growing the tables:\n{log}"
    );

    for round in 0..3 {
        let expected = first.clone();
        kept = lab.in_client(move || {
            let answer = kept.get().unwrap_or_else(|e| {
                panic!("round {round}: the held connection after the upgrade: {e}")
            });
            assert_eq!(answer, expected, "round {round}: the held connection moved");
            kept
        });
    }
    assert_eq!(
        lab.reason("lb_conntrack_lost"),
        lost_before,
        "the held flow found its entry in the new table"
    );
    assert_config_carried(&maps, &config);
    assert_eq!(pinned_info(&maps, map_names::CONNTRACK).max_entries(), 4096);
    assert_eq!(pinned_info(&maps, map_names::AFFINITY).max_entries(), 512);
    assert_eq!(
        migrate::pinned_version(&maps).expect("the LAYOUT pin"),
        Some(LAYOUT_VERSION)
    );
    assert!(!lab.pin_path.join(RETIRED_DIR).exists());
    lab.wait_until(
        "new connections still avoid the not-ready endpoint",
        Frontend::ClusterIpV4,
        Duration::from_secs(10),
        |answers| answers.len() == 2 && !answers.contains(&first),
    );
    drop(kept);
}
