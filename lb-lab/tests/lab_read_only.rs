//! The operator commands write no kernel state a running agent keeps. Each test pins maps
//! as an agent leaves them mid-write: a service with session affinity, an established flow,
//! an affinity entry, and a frontend the agent is half-way through adding (its filter bits
//! set, the frontend not yet in FRONTENDS: make-before-break). Then it runs the commands and
//! compares every map, entry by entry. A command that rewrote the filter from its own look
//! at FRONTENDS would clear that frontend's bits for good, and blackhole it. Needs root.

#[path = "../../lb-userspace/tests/support/kernel.rs"]
mod kernel;

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::Path,
    process::{Command, Output},
};

use aya::maps::{Array, HashMap, Map, MapData, MapType};
use kernel::{Service, addr16};
use lb_common::{
    AffinityKey, AffinityValue, FlowKey, FlowValue, FrontendKey, PROTO_TCP, backend_state::ACTIVE,
    flow_direction, frontend_flags, frontend_kind, map_names, tcp_seen,
};
use slicelb::dataplane::{
    MapCapacity, MapWriter as _,
    aya_maps::AyaMaps,
    frontend_filter::slot_of,
    loader::{ALL_MAPS, Datapath, DatapathOptions},
};
use slicelb_lab::lab::{Netns, PinDir, require_root, slicelb_binary, stdout_of};

const SERVICE_VIP: &str = "198.18.100.1";
const SERVICE_PORT: u16 = 80;
const BACKEND_1: &str = "198.18.1.2";
const BACKEND_2: &str = "198.18.2.2";
const BACKEND_PORT: u16 = 8080;
/// A client with an established flow (kept on backend 2 by its conntrack entry).
const FLOW_CLIENT: &str = "198.18.0.3";
/// A client pinned to backend 1 by session affinity.
const AFFINE_CLIENT: &str = "198.18.0.4";
/// The frontend the agent is adding.
const PENDING_VIP: &str = "198.18.100.9";

fn service() -> Service {
    Service::new(
        1,
        SERVICE_VIP,
        SERVICE_PORT,
        PROTO_TCP,
        frontend_kind::CLUSTER_IP,
        frontend_flags::AFFINITY,
        &[
            (1, BACKEND_1, BACKEND_PORT, ACTIVE),
            (2, BACKEND_2, BACKEND_PORT, ACTIVE),
        ],
    )
}

/// A client port of `client` whose Maglev slot names `backend`: a trace that answers
/// otherwise followed the flow state, not the table.
fn port_where_maglev_picks(client: &str, backend: &str) -> u16 {
    (40_000..41_000)
        .find(|&port| {
            kernel::backend_addr(&service().pick(
                client,
                port,
                SERVICE_VIP,
                SERVICE_PORT,
                PROTO_TCP,
            )) == backend
        })
        .unwrap_or_else(|| panic!("no port of {client} hashes to {backend}"))
}

fn monotonic_coarse_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn pinned(pin: &Path, name: &str) -> MapData {
    MapData::from_pin(pin.join("maps").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The pending frontend's filter word and mask at the size in use (pinned CONFIG's).
fn pending_slot(pin: &Path) -> (u32, u64) {
    let config: Array<MapData, lb_common::Config> =
        Array::try_from(Map::Array(pinned(pin, map_names::CONFIG))).expect("CONFIG");
    let config = config.get(&0, 0).expect("reading CONFIG");
    let words_log2 =
        lb_common::frontend_filter::words_log2_in_use(config.frontend_filter_words_log2);
    slot_of(&pending_frontend(), words_log2)
}

/// The pending frontend, whose filter bits the agent has set.
fn pending_frontend() -> FrontendKey {
    let (addr, family) = addr16(PENDING_VIP);
    FrontendKey {
        addr,
        port: SERVICE_PORT.to_be(),
        proto: PROTO_TCP,
        family,
    }
}

fn filter_word(pin: &Path, word: u32) -> u64 {
    let filter: Array<MapData, u64> =
        Array::try_from(Map::Array(pinned(pin, map_names::FRONTEND_FILTER))).expect("filter");
    filter.get(&word, 0).expect("reading FRONTEND_FILTER")
}

/// Pins the maps (default sizes, as every command opens them) and writes what an agent in
/// the middle of its work leaves there.
fn pin_agent_state(pin: &Path) {
    drop(Datapath::open(pin, &DatapathOptions::default()).expect("pinning the maps"));
    let mut writer = AyaMaps::from_pin(pin, MapCapacity::default()).expect("opening the maps");
    writer.apply(&service().ops()).expect("writing the service");

    let (vip, family) = addr16(SERVICE_VIP);
    let (flow_client, _) = addr16(FLOW_CLIENT);
    let (backend_2, _) = addr16(BACKEND_2);
    let now = monotonic_coarse_ns();
    let mut conntrack: HashMap<MapData, FlowKey, FlowValue> =
        HashMap::try_from(Map::LruHashMap(pinned(pin, map_names::CONNTRACK))).expect("conntrack");
    let flow = FlowKey {
        src_addr: flow_client,
        dst_addr: vip,
        src_port: port_where_maglev_picks(FLOW_CLIENT, BACKEND_1).to_be(),
        dst_port: SERVICE_PORT.to_be(),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    };
    let on_backend_2 = FlowValue {
        backend_id: 2,
        service_id: 1,
        last_seen_ns: now,
        nat_addr: backend_2,
        nat_port: BACKEND_PORT.to_be(),
        direction: flow_direction::FORWARD,
        tcp_flags_seen: tcp_seen::SYN | tcp_seen::ESTABLISHED,
        _pad: [0; 4],
    };
    conntrack
        .insert(&flow, &on_backend_2, 0)
        .expect("an established flow");

    let (affine_client, _) = addr16(AFFINE_CLIENT);
    let mut affinity: HashMap<MapData, AffinityKey, AffinityValue> =
        HashMap::try_from(Map::LruHashMap(pinned(pin, map_names::AFFINITY))).expect("affinity");
    let key = AffinityKey {
        client_addr: affine_client,
        service_id: 1,
        family,
        _pad: [0; 3],
    };
    let on_backend_1 = AffinityValue {
        backend_id: 1,
        // No slot known: the program finds backend 1 in the table through TABLE_MEMBERS.
        slot: u32::MAX,
        last_seen_ns: now,
    };
    affinity
        .insert(&key, &on_backend_1, 0)
        .expect("an affinity entry");

    let (word, mask) = pending_slot(pin);
    let mut filter: Array<MapData, u64> =
        Array::try_from(Map::Array(pinned(pin, map_names::FRONTEND_FILTER))).expect("filter");
    let value = filter.get(&word, 0).expect("reading FRONTEND_FILTER");
    filter
        .set(word, &(value | mask), 0)
        .expect("setting the pending frontend's bits");
}

/// `union bpf_attr` for the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

fn map_command(command: libc::c_long, attr: &ElemAttr) -> std::io::Result<()> {
    // SAFETY: `attr` points at live key and value buffers of the map's sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const ElemAttr,
            size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// Every entry of a map, raw, read through the syscalls (which leave LRU order alone).
/// Arrays hold every index: all-zero values are left out.
fn entries(fd: BorrowedFd<'_>, key_size: usize, value_size: usize, array: bool) -> Entries {
    let mut out = Entries::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; key_size];
        let attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ref().map_or(0, |k| k.as_ptr() as u64),
            value_or_next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        match map_command(BPF_MAP_GET_NEXT_KEY, &attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => panic!("walking a map: {e}"),
        }
        let mut value = vec![0u8; value_size];
        let attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: next.as_ptr() as u64,
            value_or_next_key: value.as_mut_ptr() as u64,
            flags: 0,
        };
        map_command(BPF_MAP_LOOKUP_ELEM, &attr).expect("reading a map entry");
        if !(array && value.iter().all(|&b| b == 0)) {
            out.insert(next.clone(), value);
        }
        key = Some(next);
    }
    out
}

/// What every pinned map holds, by name. SELECTION (16 M slots) is compared through the
/// tables the frontends use, read as the agent reads them.
fn snapshot(
    pin: &Path,
) -> (
    BTreeMap<&'static str, Entries>,
    slicelb::dataplane::AppliedState,
) {
    let cpus = aya::util::nr_cpus().expect("possible CPUs").get() as usize;
    let mut maps = BTreeMap::new();
    for (name, _) in ALL_MAPS {
        if name == map_names::SELECTION {
            continue;
        }
        let data = pinned(pin, name);
        let info = data.info().expect("map info");
        let map_type = info.map_type().expect("map type");
        let value_size = match map_type {
            MapType::PerCpuArray => (info.value_size() as usize).next_multiple_of(8) * cpus,
            _ => info.value_size() as usize,
        };
        let array = matches!(map_type, MapType::Array | MapType::PerCpuArray);
        maps.insert(
            name,
            entries(
                data.fd().as_fd(),
                info.key_size() as usize,
                value_size,
                array,
            ),
        );
    }
    let applied = AyaMaps::from_pin(pin, MapCapacity::default())
        .expect("opening the maps")
        .read()
        .expect("reading the configuration");
    (maps, applied)
}

/// What changed in each map, at most a few entries per map.
fn changes(
    before: &BTreeMap<&'static str, Entries>,
    after: &BTreeMap<&'static str, Entries>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, old) in before {
        let new = &after[name];
        let changed: Vec<String> = old
            .keys()
            .chain(new.keys())
            .filter(|key| old.get(*key) != new.get(*key))
            .take(3)
            .map(|key| {
                format!(
                    "{name}[{key:02x?}]: {:02x?} -> {:02x?}",
                    old.get(key),
                    new.get(key)
                )
            })
            .collect();
        out.extend(changed);
    }
    out
}

fn assert_unchanged(
    pin: &Path,
    before: &(
        BTreeMap<&'static str, Entries>,
        slicelb::dataplane::AppliedState,
    ),
    what: &str,
) {
    let (word, mask) = pending_slot(pin);
    assert_eq!(
        filter_word(pin, word) & mask,
        mask,
        "{what} cleared the filter bits of the frontend the agent is adding: once inserted, it would be blackholed"
    );
    let after = snapshot(pin);
    assert_eq!(before.1, after.1, "{what} changed the configuration maps");
    let changed = changes(&before.0, &after.0);
    assert!(
        changed.is_empty(),
        "{what} wrote maps:\n{}",
        changed.join("\n")
    );
}

fn slicelb(args: &[&str]) -> Output {
    Command::new(slicelb_binary().expect("the slicelb binary"))
        .args(args)
        .output()
        .expect("running slicelb")
}

#[test]
fn read_only_commands_write_no_map() {
    require_root("lab_read_only");
    let pin = PinDir::new("ro-commands");
    pin_agent_state(&pin.0);
    let before = snapshot(&pin.0);
    let pin_arg = pin.arg();
    let to = format!("{SERVICE_VIP}:{SERVICE_PORT}");
    let backend = |addr: &str| format!("{addr}:{BACKEND_PORT}");
    let new_client = format!(
        "198.18.0.2:{}",
        port_where_maglev_picks("198.18.0.2", BACKEND_1)
    );
    let flow_client = format!(
        "{FLOW_CLIENT}:{}",
        port_where_maglev_picks(FLOW_CLIENT, BACKEND_1)
    );
    let affine_client = format!(
        "{AFFINE_CLIENT}:{}",
        port_where_maglev_picks(AFFINE_CLIENT, BACKEND_2)
    );
    // Each trace must still tell the truth: the flow state it reads decides, not the table.
    let traces: [(&str, Vec<&str>, &str, Option<String>); 5] = [
        (
            "a new flow",
            vec!["--from", &new_client, "--to", &to],
            "maglev",
            Some(backend(BACKEND_1)),
        ),
        (
            "an established flow",
            vec!["--from", &flow_client, "--to", &to],
            "conntrack",
            Some(backend(BACKEND_2)),
        ),
        (
            "a client with affinity",
            vec!["--from", &affine_client, "--to", &to],
            "affinity",
            Some(backend(BACKEND_1)),
        ),
        (
            "no frontend",
            vec!["--from", "198.18.0.2", "--to", "198.18.100.99:80"],
            "no-frontend",
            None,
        ),
        (
            "socket level",
            vec!["--socket", "--to", &to],
            "socket",
            None,
        ),
    ];
    for (case, args, decision, reached) in &traces {
        let mut full = vec!["trace", "--pin-path", &pin_arg, "-o", "json"];
        full.extend(args.iter().copied());
        let json = stdout_of(&slicelb(&full), &format!("trace of {case}"));
        let trace: serde_json::Value = serde_json::from_str(&json).expect("trace JSON");
        assert_eq!(trace["decision"], *decision, "trace of {case}: {trace}");
        if let Some(reached) = reached {
            assert_eq!(
                trace["backend"],
                reached.as_str(),
                "trace of {case}: {trace}"
            );
        }
    }
    let flow_client_ip = FLOW_CLIENT.to_string();
    for args in [
        vec!["stats"],
        vec!["stats", "-o", "json"],
        vec!["stats", "-o", "yaml", "--no-headers"],
        vec!["services"],
        vec!["services", "-o", "json"],
        vec!["services", "-o", "wide", "--port", "80"],
        vec!["services", "-o", "yaml", "--address", BACKEND_1],
        vec!["status"],
        vec!["status", "-o", "wide"],
        vec!["status", "-o", "yaml"],
        vec!["conntrack"],
        vec!["conntrack", "-o", "wide", "--client", &flow_client_ip],
        vec!["conntrack", "--count", "-o", "yaml"],
    ] {
        let mut full = args.clone();
        full.extend(["--pin-path", &pin_arg]);
        stdout_of(&slicelb(&full), &args.join(" "));
    }
    // What a user checks: the established flow, on the backend its entry names.
    let json = |args: &[&str]| -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["--pin-path", &pin_arg, "-o", "json"]);
        serde_json::from_str(&stdout_of(&slicelb(&full), &args.join(" "))).expect("JSON")
    };
    let flows = json(&["conntrack", "--backend", &backend(BACKEND_2)]);
    let flows = flows.as_array().expect("a list of flows");
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0]["client"], flow_client);
    assert_eq!(flows[0]["frontend"], to.as_str());
    assert_eq!(
        flows[0]["tcp_state"],
        serde_json::json!(["SYN", "ESTABLISHED"])
    );
    let status = json(&["status"]);
    let fill = |map: &str| {
        status["maps"]
            .as_array()
            .expect("maps")
            .iter()
            .find(|m| m["map"] == map)
            .and_then(|m| m["entries"].as_u64())
            .unwrap_or_else(|| panic!("{map} has no count: {status}"))
    };
    assert_eq!(
        (fill(map_names::CONNTRACK), fill(map_names::AFFINITY)),
        (1, 1),
        "{status}"
    );
    assert_eq!(status["agent"]["running"], false, "{status}");
    let empty_source = tempfile::tempdir().expect("an empty manifest directory");
    let source_arg = empty_source.path().display().to_string();
    let check = slicelb(&[
        "check",
        "--manifest-dir",
        &source_arg,
        "--pin-path",
        &pin_arg,
    ]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "check against an empty source reports the service as drift: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_unchanged(
        &pin.0,
        &before,
        "trace, stats, services, status, conntrack and check",
    );
}

#[test]
fn attach_keeps_the_maps_a_running_agent_writes() {
    require_root("lab_read_only");
    let pin = PinDir::new("ro-attach");
    pin_agent_state(&pin.0);
    let node = Netns::new("roattach").expect("a namespace");
    // A veth pair with both ends inside, left down.
    node.ip(&[
        "link", "add", "slb-ro0", "type", "veth", "peer", "name", "slb-ro1",
    ])
    .expect("an interface to attach to");
    let before = snapshot(&pin.0);
    let slicelb = slicelb_binary().expect("the slicelb binary");
    let output = node
        .command(&slicelb.display().to_string())
        .args(["attach", "--iface", "slb-ro0", "--pin-path", &pin.arg()])
        .args(["--duration", "1"])
        .output()
        .expect("running slicelb attach");
    stdout_of(&output, "attach");
    for kind in ["tc_ingress", "tc_egress"] {
        let link = pin.0.join("links").join("slb-ro0").join(kind);
        assert!(link.exists(), "attach pinned no link at {}", link.display());
    }
    // The interface is down: no packet reaches the programs, so even the counters stay.
    assert_unchanged(&pin.0, &before, "attach");
}
