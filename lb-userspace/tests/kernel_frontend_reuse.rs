//! FRONTENDS elements are recycled while packets read them (issue 14, item 6): the kernel
//! hands the element an update or delete frees to the very next update on that CPU (a
//! preallocated hash from its per-CPU spare element, a non-preallocated one from
//! bpf_mem_alloc's per-CPU free list), so a value read in place can turn into another
//! frontend's mid-packet, and a lookup walking past a recycled element can miss the key. A
//! client outside a frontend's source ranges runs through the forward program (XDP, then TC
//! ingress) a million times each while another thread rewrites, in batches, that frontend
//! (with the same value, as the agent rewrites a frontend whose table moves: that frees its
//! element) and, in turn, other frontends without source ranges (which take the freed
//! element): every packet must be dropped by the source range, none balanced with another
//! frontend's value nor passed as a miss. With FRONTENDS read in place, each of six runs on
//! a 2-core machine failed (2 to 20 packets balanced and a few missed per million). Needs
//! root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use std::{
    os::fd::AsFd as _,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::maps::{Map, MapData};
use kernel::*;
use lb_common::{
    FrontendKey, FrontendValue, PROTO_TCP, Reason, SourceRangeKey, backend_state::ACTIVE,
    frontend_flags, frontend_kind, map_names,
};
use packets::*;
use slicelb::dataplane::{MapOp, test_run, update_entries};

/// The source-ranged frontend, its allowed range, and a client outside it.
const RANGED_LB: &str = "198.18.200.1";
const ALLOWED_RANGE: &str = "198.18.7.0";
const OUTSIDE_CLIENT: &str = "198.18.0.1";
/// Frontends without source ranges whose rewrites take the freed elements.
const OPEN_FRONTENDS: u32 = 4;
/// Packets in all, in test runs of `BATCH` repeats each.
const PACKETS: u32 = 1_000_000;
const BATCH: u32 = 10_000;
/// (ranged, open) rewrites per update syscall.
const PAIRS_PER_CALL: usize = 64;

fn ranged_service() -> Service {
    Service::new(
        1,
        RANGED_LB,
        443,
        PROTO_TCP,
        frontend_kind::LOAD_BALANCER,
        frontend_flags::EXTERNAL | frontend_flags::SOURCE_RANGES,
        &[(10, "198.18.1.1", 8443, ACTIVE)],
    )
}

/// Open load-balancer frontend `n` (service `n + 2`): same port, no source ranges, a
/// backend of its own, so that a packet reading its value would be balanced.
fn open_service(n: u32) -> Service {
    let id = n + 2;
    Service::new(
        id,
        &format!("198.18.201.{}", n + 1),
        443,
        PROTO_TCP,
        frontend_kind::LOAD_BALANCER,
        frontend_flags::EXTERNAL,
        &[(id * 10, &format!("198.18.1.{}", id), 8443, ACTIVE)],
    )
}

fn allowed_range() -> MapOp {
    let (addr, family) = addr16(ALLOWED_RANGE);
    MapOp::PutSourceRange {
        key: SourceRangeKey {
            service_id_be: 1u32.to_be_bytes(),
            family,
            addr,
            _pad: [0; 3],
        },
        prefix_len: SourceRangeKey::prefix_len(24),
    }
}

/// The kernel id of FRONTENDS, so that the writer thread opens a handle of its own.
fn frontends_id(env: &Env) -> u32 {
    let Map::HashMap(data) = env.datapath.map(map_names::FRONTENDS).expect("FRONTENDS") else {
        panic!("FRONTENDS is not a hash map");
    };
    data.info().expect("FRONTENDS info").id()
}

/// Rewrites, in batches, the ranged frontend and then one open frontend, in turn, until
/// `stop`; returns the number of rewrites.
fn rewrite_until(
    stop: &AtomicBool,
    map_id: u32,
    ranged: (FrontendKey, FrontendValue),
    open: &[(FrontendKey, FrontendValue)],
) -> u64 {
    let frontends = MapData::from_id(map_id).expect("opening FRONTENDS by id");
    let (keys, values): (Vec<FrontendKey>, Vec<FrontendValue>) = open
        .iter()
        .cycle()
        .take(PAIRS_PER_CALL)
        .flat_map(|other| [ranged, *other])
        .unzip();
    let mut rewrites = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // One syscall for many updates: the writer frees and reuses elements faster than
        // with one syscall each.
        update_entries(frontends.fd().as_fd(), &keys, &values).expect("rewriting FRONTENDS");
        rewrites += keys.len() as u64;
    }
    rewrites
}

/// Runs `packet` through `program` `repeat` times in one test run.
fn run_batch(env: &Env, program: Program, packet: &[u8], repeat: u32) {
    let name = program.name();
    let run = match program {
        Program::Xdp => {
            test_run::run_repeated(env.datapath.xdp(name).expect("xdp"), name, packet, repeat)
        }
        _ => test_run::run_repeated(env.datapath.tc(name).expect("tc"), name, packet, repeat),
    };
    run.expect("test run");
}

#[test]
fn a_source_ranged_frontend_drops_every_outside_packet_while_frontends_are_rewritten() {
    let mut env = Env::new();
    let ranged = ranged_service();
    let open: Vec<Service> = (0..OPEN_FRONTENDS).map(open_service).collect();
    env.install(&ranged);
    for service in &open {
        env.install(service);
    }
    env.apply(&[allowed_range()]);
    let syn = Spec::new(OUTSIDE_CLIENT, 40000, RANGED_LB, 443, L4::Tcp(SYN)).build();
    let map_id = frontends_id(&env);
    let open_values: Vec<(FrontendKey, FrontendValue)> =
        open.iter().map(|s| (s.frontend, s.value)).collect();

    for program in [Program::Xdp, Program::TcIngress] {
        // Without a rewrite: the client is outside the ranges.
        let before = env.reasons();
        run_batch(&env, program, &syn, 1);
        assert_eq!(
            reason_deltas(&before, &env.reasons()),
            vec![(Reason::DropSourceRange, 1)],
            "{program:?}: an outside client is dropped by its source range"
        );

        let stop = AtomicBool::new(false);
        let before = env.reasons();
        let rounds = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                rewrite_until(&stop, map_id, (ranged.frontend, ranged.value), &open_values)
            });
            // A packet that got through is rewritten, and the rest of its batch (the kernel
            // reruns the same buffer) counts elsewhere too: the assertion still fails.
            for _ in 0..PACKETS / BATCH {
                run_batch(&env, program, &syn, BATCH);
            }
            stop.store(true, Ordering::Relaxed);
            writer.join().expect("writer thread")
        });
        let deltas = reason_deltas(&before, &env.reasons());
        eprintln!("{program:?}: {PACKETS} packets while the writer made {rounds} rewrites");
        // A frontend that changes under three reads drops the packet as `drop_internal`
        // (rare, by design): still a drop, never a balanced packet.
        let dropped: u64 = deltas
            .iter()
            .filter(|(reason, _)| matches!(reason, Reason::DropSourceRange | Reason::DropInternal))
            .map(|(_, count)| count)
            .sum();
        assert_eq!(
            (dropped, deltas.len() <= 2),
            (u64::from(PACKETS), true),
            "{program:?}: outside packets not dropped by the source range: {deltas:?}"
        );
    }
}
