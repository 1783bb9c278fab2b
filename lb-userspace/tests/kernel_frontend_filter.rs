//! FRONTEND_FILTER through BPF_PROG_TEST_RUN: the forward path consults the bitmap before
//! the FRONTENDS lookup, and the map writer keeps the bitmap in step with FRONTENDS
//! (insert, delete, two frontends sharing a bit, maps adopted without a filter) and sizes
//! it for the frontends it programs (every frontend passes at each size, also while packets
//! run across a resize). Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::maps::{Array, HashMap, MapData};
use kernel::*;
use lb_common::{
    FrontendKey, FrontendValue, PROTO_UDP, Reason, backend_state::ACTIVE, frontend_filter,
    frontend_kind, map_names,
};
use packets::*;
use slicelb::dataplane::{
    MapOp, MapWriter as _,
    aya_maps::AyaMaps,
    frontend_filter::{FrontendFilter, sharing_pair, slot_of},
    loader::{Datapath, DatapathOptions},
};

const CLIENT: &str = "198.18.0.1";

fn udp_service(id: u32, addr: &str, port: u16) -> Service {
    Service::new(
        id,
        addr,
        port,
        PROTO_UDP,
        frontend_kind::CLUSTER_IP,
        0,
        &[
            (id * 10, "198.18.1.1", 8080, ACTIVE),
            (id * 10 + 1, "198.18.1.2", 8080, ACTIVE),
        ],
    )
}

fn ipv4_of(key: &FrontendKey) -> String {
    std::net::Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]).to_string()
}

fn packet_to(key: &FrontendKey, sport: u16) -> Vec<u8> {
    Spec::new(
        CLIENT,
        sport,
        &ipv4_of(key),
        u16::from_be(key.port),
        L4::Udp,
    )
    .build()
}

fn udp_key(c: u8, d: u8, port: u16) -> FrontendKey {
    let (addr, family) = addr16(&format!("198.18.{c}.{d}"));
    FrontendKey {
        addr,
        port: port.to_be(),
        proto: PROTO_UDP,
        family,
    }
}

/// Two UDP frontends whose filter masks share a bit.
/// Two UDP frontends sharing a filter bit at the size `words_log2`.
fn udp_keys_sharing_a_bit(words_log2: u32) -> (FrontendKey, FrontendKey) {
    sharing_pair(
        |i| {
            udp_key(
                100 + (i >> 16) as u8,
                (i >> 8) as u8,
                1000 + (i & 0xff) as u16,
            )
        },
        words_log2,
    )
    .expect("two frontends sharing a filter bit")
}

/// Word `word` of the kernel's FRONTEND_FILTER.
fn kernel_word(datapath: &Datapath, word: u32) -> u64 {
    let filter: Array<&MapData, u64> = Array::try_from(
        datapath
            .map(map_names::FRONTEND_FILTER)
            .expect("FRONTEND_FILTER"),
    )
    .expect("FRONTEND_FILTER is an array");
    filter.get(&word, 0).expect("reading FRONTEND_FILTER")
}

/// The filter's size in use (log2 of its words), as CONFIG says.
fn kernel_size(datapath: &Datapath) -> u32 {
    let config = datapath.config().expect("reading CONFIG");
    frontend_filter::words_log2_in_use(config.frontend_filter_words_log2)
}

/// `key`'s filter word and mask at the size in use.
fn kernel_slot(datapath: &Datapath, key: &FrontendKey) -> (u32, u64) {
    slot_of(key, kernel_size(datapath))
}

/// Are all of `key`'s filter bits set in the kernel?
fn kernel_covers(datapath: &Datapath, key: &FrontendKey) -> bool {
    let (word, mask) = kernel_slot(datapath, key);
    kernel_word(datapath, word) & mask == mask
}

fn set_kernel_word(datapath: &mut Datapath, word: u32, value: u64) {
    let mut filter: Array<&mut MapData, u64> = Array::try_from(
        datapath
            .map_mut(map_names::FRONTEND_FILTER)
            .expect("FRONTEND_FILTER"),
    )
    .expect("FRONTEND_FILTER is an array");
    filter
        .set(word, &value, 0)
        .expect("writing FRONTEND_FILTER");
}

fn zero_kernel_filter(datapath: &mut Datapath) {
    for word in 0..frontend_filter::WORDS {
        set_kernel_word(datapath, word, 0);
    }
}

/// Runs `packet` through XDP and checks the one reason it was counted under, and whether
/// it left rewritten.
fn expect(env: &Env, case: &str, packet: &[u8], reason: Reason, rewritten: bool) {
    let before = env.reasons();
    let out = env.run(Program::Xdp, packet);
    let after = env.reasons();
    assert_eq!(out.verdict, XDP_PASS, "{case}: verdict");
    assert_eq!(
        reason_deltas(&before, &after),
        vec![(reason, 1)],
        "{case}: counted reason"
    );
    assert_eq!(
        out.packet != packet,
        rewritten,
        "{case}: packet rewritten? (expected {rewritten})"
    );
}

#[test]
fn filter_gates_the_frontend_lookup() {
    let mut env = Env::new();
    let service = udp_service(1, "198.18.100.1", 53);
    env.install(&service);
    assert!(
        kernel_covers(&env.datapath, &service.frontend),
        "the writer set the bit of {:?}",
        service.frontend
    );
    expect(
        &env,
        "a frontend whose bit is set",
        &packet_to(&service.frontend, 40_000),
        Reason::LbNewFlow,
        true,
    );

    // A frontend written around the writer (its bit clear): the filter turns its packets
    // away before the lookup. This is why the writer sets the bit first.
    let hidden = udp_service(2, "198.18.100.2", 53);
    assert!(
        !kernel_covers(&env.datapath, &hidden.frontend),
        "nothing set the bits of the hidden frontend"
    );
    {
        let mut frontends: HashMap<&mut MapData, FrontendKey, FrontendValue> = HashMap::try_from(
            env.datapath
                .map_mut(map_names::FRONTENDS)
                .expect("FRONTENDS"),
        )
        .expect("FRONTENDS is a hash map");
        frontends
            .insert(&hidden.frontend, &hidden.value, 0)
            .expect("inserting around the writer");
    }
    expect(
        &env,
        "a frontend in FRONTENDS whose filter bit is clear",
        &packet_to(&hidden.frontend, 40_001),
        Reason::PassNoFrontend,
        false,
    );

    // A destination whose bits are all set (as if by other frontends) passes the filter;
    // the exact lookup then finds nothing.
    let absent = udp_key(100, 3, 53);
    let word = kernel_slot(&env.datapath, &absent).0;
    set_kernel_word(&mut env.datapath, word, u64::MAX);
    expect(
        &env,
        "no frontend, but its filter bits set by others",
        &packet_to(&absent, 40_002),
        Reason::PassNoFrontend,
        false,
    );
}

#[test]
fn writer_keeps_the_filter_in_step() {
    let mut env = Env::new();
    // Two frontends keep the smallest size.
    let (a, b) = udp_keys_sharing_a_bit(frontend_filter::WORDS_LOG2_MIN);
    let first = udp_service(1, &ipv4_of(&a), u16::from_be(a.port));
    let second = udp_service(2, &ipv4_of(&b), u16::from_be(b.port));
    env.install(&first);
    env.install(&second);
    assert_eq!(kernel_size(&env.datapath), frontend_filter::WORDS_LOG2_MIN);
    assert!(
        kernel_covers(&env.datapath, &first.frontend),
        "first's bits set"
    );
    assert!(
        kernel_covers(&env.datapath, &second.frontend),
        "second's bits set"
    );

    env.apply(&[MapOp::DeleteFrontend {
        key: first.frontend,
    }]);
    assert!(
        kernel_covers(&env.datapath, &second.frontend),
        "the shared bit stays while {:?} uses it",
        second.frontend
    );
    expect(
        &env,
        "the frontend left on a shared bit",
        &packet_to(&second.frontend, 40_010),
        Reason::LbNewFlow,
        true,
    );
    expect(
        &env,
        "the deleted frontend",
        &packet_to(&first.frontend, 40_011),
        Reason::PassNoFrontend,
        false,
    );

    env.apply(&[MapOp::DeleteFrontend {
        key: second.frontend,
    }]);
    assert_eq!(
        kernel_word(
            &env.datapath,
            kernel_slot(&env.datapath, &second.frontend).0
        ),
        0,
        "the word is cleared after its last frontend"
    );
    expect(
        &env,
        "both deleted",
        &packet_to(&second.frontend, 40_012),
        Reason::PassNoFrontend,
        false,
    );

    // Put again after delete: the bit comes back before the frontend.
    env.install(&first);
    assert!(
        kernel_covers(&env.datapath, &first.frontend),
        "bit set again"
    );
    expect(
        &env,
        "re-added frontend",
        &packet_to(&first.frontend, 40_013),
        Reason::LbNewFlow,
        true,
    );
}

/// A run of frontends is written in batches (filter words, then entries): afterwards each
/// is in FRONTENDS and balanced, and each word holds exactly the bits of the frontends on it,
/// also for two sharing a bit and for one put again.
#[test]
fn a_run_of_frontends_is_written_with_their_filter_words() {
    let mut env = Env::new();
    let (a, b) = udp_keys_sharing_a_bit(frontend_filter::WORDS_LOG2_MIN);
    let mut services = vec![
        udp_service(1, &ipv4_of(&a), u16::from_be(a.port)),
        udp_service(2, &ipv4_of(&b), u16::from_be(b.port)),
    ];
    services.extend((3..8).map(|id| udp_service(id, &format!("198.18.50.{id}"), 53)));
    // The first is there already: the run puts it again.
    env.install(&services[0]);
    let (frontends, others): (Vec<MapOp>, Vec<MapOp>) = services
        .iter()
        .flat_map(Service::ops)
        .partition(|op| matches!(op, MapOp::PutFrontend { .. }));
    env.apply(&others);
    assert!(frontends.len() > 2, "a run the writer batches");
    env.apply(&frontends);

    let keys: Vec<FrontendKey> = services.iter().map(|s| s.frontend).collect();
    let size = kernel_size(&env.datapath);
    assert_eq!(size, frontend_filter::WORDS_LOG2_MIN, "seven frontends");
    let wanted = FrontendFilter::from_keys(keys.iter().copied(), size);
    for (i, key) in keys.iter().enumerate() {
        let word = slot_of(key, size).0;
        assert_eq!(
            kernel_word(&env.datapath, word),
            wanted.word_value(word),
            "word {word} of frontend {i}"
        );
        expect(
            &env,
            &format!("frontend {i} of the run"),
            &packet_to(key, 40_100 + i as u16),
            Reason::LbNewFlow,
            true,
        );
    }
}

/// A fresh writer over maps whose filter is empty (maps pinned by a datapath without the
/// filter) rewrites the whole filter from FRONTENDS on its first write.
#[test]
fn new_writer_rebuilds_the_filter_from_frontends() {
    let mut env = Env::new();
    let service = udp_service(1, "198.18.100.1", 53);
    env.install(&service);
    zero_kernel_filter(&mut env.datapath);
    expect(
        &env,
        "filter emptied behind the writer's back",
        &packet_to(&service.frontend, 40_020),
        Reason::PassNoFrontend,
        false,
    );
    let mut writer = AyaMaps::from_datapath(&env.datapath).expect("opening the maps");
    let other = udp_service(2, "198.18.100.2", 53);
    writer.apply(&other.ops()).expect("writing another service");
    for (what, key, port) in [
        ("adopted frontend", &service.frontend, 40_021),
        (
            "frontend written by the new writer",
            &other.frontend,
            40_022,
        ),
    ] {
        assert!(kernel_covers(&env.datapath, key), "{what}: bit set");
        expect(&env, what, &packet_to(key, port), Reason::LbNewFlow, true);
    }
}

/// A writer that read the maps (as the agent does at start) builds its filter from the
/// frontends that read found, without walking FRONTENDS again: a frontend that another
/// writer added after the read is not in it (only one writer is ever live).
#[test]
fn a_writer_builds_its_filter_from_its_read_of_frontends_without_a_second_walk() {
    let mut env = Env::new();
    let adopted = udp_service(1, "198.18.100.1", 53);
    env.install(&adopted);
    let mut writer = AyaMaps::from_datapath(&env.datapath).expect("opening the maps");
    let read = writer.read().expect("reading the maps");
    assert!(read.frontends.contains_key(&adopted.frontend), "the read");
    let behind = udp_service(2, "198.18.100.2", 53);
    env.install(&behind);
    zero_kernel_filter(&mut env.datapath);
    let written = udp_service(3, "198.18.100.3", 53);
    writer.apply(&written.ops()).expect("writing a service");
    for (what, key) in [
        ("frontend of the read", &adopted.frontend),
        ("frontend written", &written.frontend),
    ] {
        assert!(kernel_covers(&env.datapath, key), "{what}: bit set");
    }
    let slot = |key| kernel_slot(&env.datapath, key);
    let (word, mask) = slot(&behind.frontend);
    assert!(
        [&adopted.frontend, &written.frontend]
            .into_iter()
            .all(|key| slot(key).0 != word || slot(key).1 & mask != mask),
        "the other frontends' bits do not cover this one's"
    );
    assert!(
        !kernel_covers(&env.datapath, &behind.frontend),
        "a frontend added after the read is not in the filter: no second walk"
    );
}

/// `count` more frontends of `service` (its backends and table), UDP ports `first_port..`
/// on `c.d` of 198.18.0.0/15.
fn more_frontends(service: &Service, c: u8, first_port: u16, count: u16) -> Vec<MapOp> {
    (0..count)
        .map(|i| MapOp::PutFrontend {
            key: udp_key(c, (i / 1000) as u8, first_port + i % 1000),
            value: service.value,
        })
        .collect()
}

fn deletes_of(puts: &[MapOp]) -> Vec<MapOp> {
    puts.iter()
        .filter_map(|op| match op {
            MapOp::PutFrontend { key, .. } => Some(MapOp::DeleteFrontend { key: *key }),
            _ => None,
        })
        .collect()
}

fn keys_of(puts: &[MapOp]) -> Vec<FrontendKey> {
    puts.iter()
        .filter_map(|op| match op {
            MapOp::PutFrontend { key, .. } => Some(*key),
            _ => None,
        })
        .collect()
}

/// Runs one packet to each of `keys` (source port by position: a flow each) and checks
/// it was balanced (rewritten), then a packet to no frontend, which passes untouched.
fn every_frontend_is_balanced(env: &Env, keys: &[FrontendKey], case: &str) {
    for (i, key) in keys.iter().enumerate() {
        let packet = packet_to(key, 20_000 + i as u16);
        let out = env.run(Program::Xdp, &packet);
        assert!(
            out.verdict == XDP_PASS && out.packet != packet,
            "{case}: {key:?} not balanced (filter of 2^{} words)",
            kernel_size(&env.datapath)
        );
    }
    expect(
        env,
        &format!("{case}: a miss"),
        &packet_to(&udp_key(100, 250, 9), 40_100),
        Reason::PassNoFrontend,
        false,
    );
}

/// The writer sizes the filter from the frontends it programs, up as they are added and
/// down as they go; at every size it picks, every frontend is balanced and a miss passes.
#[test]
fn every_frontend_passes_at_each_size_the_writer_picks() {
    let mut env = Env::new();
    let service = udp_service(1, "198.18.100.1", 53);
    env.install(&service);
    assert_eq!(
        kernel_size(&env.datapath),
        frontend_filter::WORDS_LOG2_MIN,
        "one frontend: the smallest size"
    );
    let mut batches = Vec::new();
    let mut keys = vec![service.frontend];
    let mut sizes = vec![kernel_size(&env.datapath)];
    // 2^6 words hold 128 frontends at 32 bits each; 700 more reach 2^9.
    for batch in 0..7u16 {
        let puts = more_frontends(&service, 101, 1000 + batch * 100, 100);
        env.apply(&puts);
        keys.extend(keys_of(&puts));
        batches.push(puts);
        sizes.push(kernel_size(&env.datapath));
        every_frontend_is_balanced(&env, &keys, &format!("{} frontends", keys.len()));
    }
    while let Some(puts) = batches.pop() {
        env.apply(&deletes_of(&puts));
        keys.truncate(keys.len() - puts.len());
        sizes.push(kernel_size(&env.datapath));
        every_frontend_is_balanced(&env, &keys, &format!("down to {} frontends", keys.len()));
    }
    assert_eq!(
        sizes,
        [6, 6, 7, 8, 8, 8, 9, 9, 9, 9, 9, 9, 7, 7, 7],
        "sizes after each batch: up at once, down once four times too large"
    );
}

/// Packets run without a pause while another writer grows and shrinks the filter: not one
/// packet to a frontend that exists throughout is turned away, whichever size it read.
#[test]
fn frontends_pass_while_the_writer_resizes_under_packets() {
    let mut env = Env::new();
    let service = udp_service(1, "198.18.100.1", 53);
    env.install(&service);
    let steady = more_frontends(&service, 101, 1000, 50);
    env.apply(&steady);
    let mut keys = keys_of(&steady);
    keys.push(service.frontend);
    let mut writer = AyaMaps::from_datapath(&env.datapath).expect("a second writer");
    let resizing = AtomicBool::new(true);
    let mut sizes_seen = BTreeSet::new();
    let mut rounds = 0u32;
    std::thread::scope(|scope| {
        let resizer = scope.spawn(|| {
            for round in 0..6 {
                // 1 000 more frontends: 2^6 -> 2^10 words and back.
                let extra = more_frontends(&service, 102, 2000, 1000);
                let grown = writer.apply(&extra);
                let shrunk = writer.apply(&deletes_of(&extra));
                if let Err(error) = grown.and(shrunk) {
                    resizing.store(false, Ordering::SeqCst);
                    panic!("round {round}: {error}");
                }
            }
            resizing.store(false, Ordering::SeqCst);
        });
        while resizing.load(Ordering::SeqCst) {
            sizes_seen.insert(kernel_size(&env.datapath));
            for (i, key) in keys.iter().enumerate() {
                let packet = packet_to(key, 30_000 + i as u16);
                let out = env.run(Program::Xdp, &packet);
                assert!(
                    out.verdict == XDP_PASS && out.packet != packet,
                    "pass {rounds}: {key:?} turned away during a resize"
                );
            }
            rounds += 1;
        }
        resizer.join().expect("the resizing writer");
    });
    assert!(
        sizes_seen.contains(&frontend_filter::WORDS_LOG2_MIN) && sizes_seen.contains(&10),
        "packets ran under both sizes: {sizes_seen:?} in {rounds} passes"
    );
}

/// Pinned maps removed on drop, also after a panic.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(error) = Datapath::detach(&self.0) {
            eprintln!("cleaning up {}: {error}", self.0.display());
        }
    }
}

/// An agent restart adopting FRONTENDS pinned by a datapath without the filter builds the
/// filter before anything is attached; a filter pinned with them is adopted as it is (its
/// writer keeps it: bits set ahead of a frontend being inserted must stay).
#[test]
fn adopting_pinned_maps_builds_a_missing_filter_and_keeps_a_pinned_one() {
    require_root();
    let pin = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/slicelb-test-{}-filter",
        std::process::id()
    )));
    let options = DatapathOptions {
        capacity: test_capacity(),
        ..DatapathOptions::default()
    };
    let service = udp_service(1, "198.18.100.1", 53);
    let pending = udp_key(100, 9, 53);
    {
        let datapath = Datapath::open(&pin.0, &options).expect("loading, pinned");
        let mut writer = AyaMaps::from_datapath(&datapath).expect("opening the maps");
        writer.apply(&service.ops()).expect("writing the service");
        // As if pinned by a datapath that had no filter.
        std::fs::remove_file(pin.0.join("maps").join(map_names::FRONTEND_FILTER))
            .expect("unpinning the filter");
    }
    let mut adopted = Datapath::open(&pin.0, &options).expect("adopting the pinned maps");
    assert!(
        kernel_covers(&adopted, &service.frontend),
        "adoption built the bit of {:?}",
        service.frontend
    );
    let out = slicelb::dataplane::test_run::run(
        adopted.xdp(Program::Xdp.name()).expect("xdp program"),
        "slicelb_xdp",
        &packet_to(&service.frontend, 40_030),
    )
    .expect("test run");
    // Ethernet 14 + IPv4 destination at 16.
    let dst = &out.packet[30..34];
    assert!(
        dst == [198, 18, 1, 1] || dst == [198, 18, 1, 2],
        "the adopted frontend is balanced to a backend, got {dst:?}"
    );

    // A writer is adding `pending`: its bits are set, the frontend not inserted yet.
    let (word, mask) = kernel_slot(&adopted, &pending);
    let value = kernel_word(&adopted, word);
    set_kernel_word(&mut adopted, word, value | mask);
    drop(adopted);
    let again = Datapath::open(&pin.0, &options).expect("adopting the maps and their filter");
    assert!(
        kernel_covers(&again, &pending),
        "adopting a pinned filter cleared the bits of a frontend being added"
    );
    assert!(kernel_covers(&again, &service.frontend));
}
