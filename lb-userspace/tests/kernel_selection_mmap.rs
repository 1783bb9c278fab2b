//! SELECTION is a memory-mappable array and `AyaMaps` copies Maglev tables into its
//! mapping: the tables must be what a plain map lookup sees, what the XDP program balances
//! by, and what a restarted agent reads back from the pinned map. A SELECTION pinned by an
//! older build (no `BPF_F_MMAPABLE`) is refused on load with a message naming it, and a
//! writer over it falls back to the batch syscalls. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData};
use kernel::*;
use lb_common::{PROTO_UDP, backend_state::ACTIVE, frontend_kind, map_names};
use packets::*;
use slicelb::dataplane::{
    MapOp, MapWriter as _,
    aya_maps::AyaMaps,
    loader::{Datapath, DatapathOptions, LoadError},
    mapped_array::BPF_F_MMAPABLE,
};

const CLIENT: &str = "198.18.0.1";

/// Pinned maps removed on drop, also after a panic.
struct PinDir(PathBuf);

impl PinDir {
    fn new(case: &str) -> Self {
        require_root();
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/slicelb-test-{}-{case}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(error) = Datapath::detach(&self.0) {
            eprintln!("cleaning up {}: {error}", self.0.display());
        }
    }
}

/// The writer maps SELECTION in 2 MiB windows of 8-byte elements: this is the first element
/// of the second window.
const WINDOW_EDGE: u32 = 2 * 1024 * 1024 / 8;

fn options() -> DatapathOptions {
    let mut capacity = test_capacity();
    // Room for a table across the first window edge.
    capacity.selection_slots = WINDOW_EDGE + 4096;
    DatapathOptions {
        capacity,
        ..DatapathOptions::default()
    }
}

/// A UDP service with four backends and a table that is not round-robin (each backend
/// owns a run of slots chosen by `seed`), placed right after the previous service's table
/// so that a wrong element stride in the mapping would overwrite a neighbour.
fn service(id: u32, seed: u32) -> Service {
    let first_backend = id * 10;
    let backends: Vec<(u32, String)> = (0..4)
        .map(|n| (first_backend + n, format!("198.18.{id}.{}", n + 1)))
        .collect();
    let backend_refs: Vec<(u32, &str, u16, u8)> = backends
        .iter()
        .map(|(bid, addr)| (*bid, addr.as_str(), 8080, ACTIVE))
        .collect();
    let mut service = Service::new(
        id,
        &format!("198.18.100.{id}"),
        53,
        PROTO_UDP,
        frontend_kind::CLUSTER_IP,
        0,
        &backend_refs,
    )
    .at_offset(id * TABLE_SIZE);
    service.table = (0..TABLE_SIZE)
        .map(|slot| first_backend + (slot.wrapping_mul(seed) / 7 + seed) % 4)
        .collect();
    service
}

/// Three neighbouring tables, and one across the edge between two mapping windows.
fn services() -> Vec<Service> {
    vec![
        service(1, 3),
        service(2, 11),
        service(3, 29),
        service(4, 17).at_offset(WINDOW_EDGE - 100),
    ]
}

/// Every slot of each service's table, read with a plain lookup of the kernel's array.
fn check_lookups(selection: &Array<&MapData, u32>, services: &[Service], case: &str) {
    for service in services {
        for (slot, expected) in service.table.iter().enumerate() {
            let index = service.value.table_offset + slot as u32;
            let got = selection
                .get(&index, 0)
                .unwrap_or_else(|e| panic!("{case}: looking up SELECTION[{index}]: {e}"));
            assert_eq!(
                got, *expected,
                "{case}: SELECTION[{index}] (service {} slot {slot})",
                service.id
            );
        }
    }
}

/// Packets from 16 source ports from `first_port` land on the backend the service's table
/// names. Each case uses new ports: an existing flow keeps its backend (conntrack), whatever
/// the table says.
fn check_packets(datapath: &Datapath, services: &[Service], first_port: u16, case: &str) {
    let xdp = datapath.xdp(Program::Xdp.name()).expect("xdp program");
    for service in services {
        let dst = format!("198.18.100.{}", service.id);
        let mut seen = std::collections::BTreeSet::new();
        for sport in first_port..first_port + 16 {
            let packet = Spec::new(CLIENT, sport, &dst, 53, L4::Udp).build();
            let out = slicelb::dataplane::test_run::run(xdp, "slicelb_xdp", &packet)
                .unwrap_or_else(|e| panic!("{case}: test run: {e:?}"));
            let expected = backend_addr(&service.pick(CLIENT, sport, &dst, 53, PROTO_UDP));
            // Ethernet 14 + IPv4 destination at 16.
            let d = &out.packet[30..34];
            let got = std::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]).to_string();
            assert_eq!(
                got, expected,
                "{case}: service {} flow from port {sport} goes to the backend its table names",
                service.id
            );
            seen.insert(got);
        }
        assert!(
            seen.len() > 1,
            "{case}: service {}: 16 flows all on one backend ({seen:?}); the check would not see a wrong table",
            service.id
        );
    }
}

fn check_read_back(writer: &AyaMaps, services: &[Service], case: &str) {
    let state = writer
        .read()
        .unwrap_or_else(|e| panic!("{case}: reading back: {e}"));
    assert_eq!(
        state.selection.len(),
        services.len(),
        "{case}: one table per frontend"
    );
    for service in services {
        let table = state
            .selection
            .get(&service.value.table_offset)
            .unwrap_or_else(|| panic!("{case}: no table at {}", service.value.table_offset));
        assert_eq!(
            table.ids(),
            service.table,
            "{case}: table of service {} read back",
            service.id
        );
    }
}

fn selection_array(datapath: &Datapath) -> Array<&MapData, u32> {
    Array::try_from(datapath.map(map_names::SELECTION).expect("SELECTION"))
        .expect("SELECTION is an array of u32")
}

#[test]
fn tables_written_through_the_mapping_are_seen_by_lookups_packets_and_adoption() {
    let pin = PinDir::new("mmap");
    let mut services = services();
    {
        let datapath = Datapath::open(&pin.0, &options()).expect("loading, pinned");
        let flags = datapath
            .map_data(map_names::SELECTION)
            .expect("SELECTION")
            .info()
            .expect("SELECTION info")
            .map_flags();
        assert_ne!(
            flags & BPF_F_MMAPABLE,
            0,
            "SELECTION is created memory-mappable (flags {flags:#x})"
        );
        let mut writer = AyaMaps::from_datapath(&datapath).expect("opening the maps");
        // One batch, as a cold sync writes it: the writer moves its window along.
        let ops: Vec<MapOp> = services.iter().flat_map(Service::ops).collect();
        writer.apply(&ops).expect("writing the services");
        check_lookups(&selection_array(&datapath), &services, "fresh maps");
        check_packets(&datapath, &services, 40_000, "fresh maps");
        check_read_back(&writer, &services, "fresh maps");
    }

    // A restarted agent: the pinned maps are adopted and mapped again.
    let adopted = Datapath::open(&pin.0, &options()).expect("adopting the pinned maps");
    check_lookups(&selection_array(&adopted), &services, "adopted maps");
    check_packets(&adopted, &services, 41_000, "adopted maps");
    let mut writer = AyaMaps::from_datapath(&adopted).expect("opening the adopted maps");
    check_read_back(&writer, &services, "adopted maps, writer from the datapath");
    let from_pin = AyaMaps::from_pin(&pin.0, adopted.capacity()).expect("opening the pinned maps");
    check_read_back(&from_pin, &services, "adopted maps, writer from the pins");
    let read_only = slicelb::dataplane::aya_maps::ReadOnlyMaps::open(&pin.0)
        .expect("opening the pinned maps read-only");
    check_read_back(&read_only, &services, "adopted maps, read-only descriptors");
    assert_eq!(
        slicelb::dataplane::pins::pinned_capacity(&pin.0).expect("reading the pinned maps' sizes"),
        adopted.capacity(),
        "the pinned maps have the sizes they were created with (`slicelb check` plans within them)"
    );

    // The adopted writer replaces a table make-before-break: new table in free space, then
    // the frontend pointing at it.
    let replaced = service(2, 5).at_offset(10 * TABLE_SIZE);
    writer
        .apply(&[
            MapOp::PutSelection {
                offset: replaced.value.table_offset,
                slots: replaced.table.as_slice().into(),
            },
            MapOp::PutFrontend {
                key: replaced.frontend,
                value: replaced.value,
            },
        ])
        .expect("replacing service 2's table");
    services[1] = replaced;
    check_lookups(&selection_array(&adopted), &services, "replaced table");
    check_packets(&adopted, &services, 42_000, "replaced table");
}

/// Ops in a plan's order (names, backends, tables, frontends) come in runs the writer
/// writes in batches: what it wrote reads back as the applied state the ops describe, every
/// table fully indexed, and packets follow the tables.
#[test]
fn a_plans_runs_of_names_and_tables_are_written_in_batches_and_read_back_as_applied() {
    require_root();
    let services = services();
    let datapath = Datapath::load_unpinned(&options()).expect("loading the datapath (unpinned)");
    let mut ops: Vec<MapOp> = services.iter().flat_map(Service::ops).collect();
    // Stable: each table's members stay after its slots.
    ops.sort_by_key(|op| match op {
        MapOp::PutServiceName { .. } => 0,
        MapOp::PutBackend { .. } => 1,
        MapOp::PutSelection { .. } | MapOp::PutTableMembers { .. } => 2,
        _ => 3,
    });
    let mut writer = AyaMaps::from_datapath(&datapath).expect("opening the maps");
    writer.apply(&ops).expect("writing the services");
    let mut expected = slicelb::dataplane::AppliedState::default();
    expected.apply(&ops);
    let read = writer.read().expect("reading back");
    assert_eq!(read.service_names, expected.service_names, "names");
    assert_eq!(read.selection, expected.selection, "tables");
    assert_eq!(
        read.table_members, expected.table_members,
        "every table fully indexed"
    );
    check_packets(&datapath, &services, 43_000, "plan order");
}

/// Replaces the pinned SELECTION with one made the old way (same size, no mmap flag).
fn pin_old_style_selection(pin: &Path) {
    let path = pin.join("maps").join(map_names::SELECTION);
    std::fs::remove_file(&path).expect("unpinning SELECTION");
    let old: Array<MapData, u32> =
        Array::create(options().capacity.selection_slots, 0).expect("creating an old SELECTION");
    old.pin(&path).expect("pinning the old SELECTION");
}

#[test]
fn selection_pinned_without_the_mmap_flag() {
    let pin = PinDir::new("oldsel");
    drop(Datapath::open(&pin.0, &options()).expect("loading, pinned"));
    pin_old_style_selection(&pin.0);

    match Datapath::open(&pin.0, &options()) {
        Err(error @ LoadError::IncompatiblePin { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains("SELECTION") && message.contains("slicelb detach"),
                "the refusal names the map and the way out: {message}"
            );
        }
        Err(other) => panic!("adopting an old SELECTION: wrong error {other}"),
        Ok(_) => panic!("adopting a SELECTION without BPF_F_MMAPABLE must be refused"),
    }

    // A writer over the old pins (e.g. the CLI of a new build) still works, by syscalls.
    let mut writer = AyaMaps::from_pin(&pin.0, options().capacity)
        .expect("opening the pinned maps with the old SELECTION");
    let services = services();
    for service in &services {
        writer
            .apply(&service.ops())
            .expect("writing a service through the batch fallback");
    }
    check_read_back(&writer, &services, "old SELECTION");
    let old = MapData::from_pin(pin.0.join("maps").join(map_names::SELECTION))
        .expect("opening the old SELECTION");
    let old = aya::maps::Map::Array(old);
    let array: Array<&MapData, u32> = Array::try_from(&old).expect("an array");
    check_lookups(&array, &services, "old SELECTION");
}
