//! Counting CONNTRACK for a metrics scrape while flows come and go as fast as a CPU can
//! insert them: the work is bounded by the map's size (lookups counted, not time). A
//! key-by-key walk restarts from the first key whenever the key it stands on is evicted, so
//! under churn it counts entries again and again, one syscall each, for as long as the
//! churn lasts. Needs root.

#[path = "support/kernel.rs"]
mod kernel;

use std::{
    os::fd::AsFd as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use aya::maps::{HashMap, Map, MapData};
use kernel::{Env, test_capacity};
use lb_common::{FAMILY_IPV4, FlowKey, FlowValue, PROTO_UDP, map_names};
use slicelb::dataplane::{HASH_CHUNK, MapCapacity};

/// The churn stops by itself after this many inserts (a walk that does not end on its own
/// still ends once the churn does).
const MOST_INSERTS: u64 = 20_000_000;
const SCRAPES: u32 = 50;

fn flow(i: u64) -> FlowKey {
    let mut src_addr = [0u8; 16];
    src_addr[..8].copy_from_slice(&i.to_be_bytes());
    FlowKey {
        src_addr,
        dst_addr: [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        src_port: 40_000u16.to_be(),
        dst_port: 53u16.to_be(),
        proto: PROTO_UDP,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

#[test]
fn counting_conntrack_under_churn_stays_within_the_map() {
    let capacity = MapCapacity {
        conntrack: 16_384,
        ..test_capacity()
    };
    let env = Env::with_capacity(capacity);
    let fd = env
        .datapath
        .map_data(map_names::CONNTRACK)
        .expect("CONNTRACK")
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .expect("a second descriptor");
    let mut churn: HashMap<MapData, FlowKey, FlowValue> =
        HashMap::try_from(Map::LruHashMap(MapData::from_fd(fd).expect("map data")))
            .expect("CONNTRACK as a hash map");
    let inserted = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let value = FlowValue::default();
            for i in 0..MOST_INSERTS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                churn.insert(&flow(i), &value, 0).expect("inserting a flow");
                inserted.store(i + 1, Ordering::Relaxed);
            }
        });
        // Full, and evicting on every insert from here on.
        while inserted.load(Ordering::Relaxed) < 2 * u64::from(capacity.conntrack) {
            std::thread::yield_now();
        }
        let churn_before = inserted.load(Ordering::Relaxed);
        // Each batch but the last stops short of HASH_CHUNK by less than a bucket.
        let most_lookups = 2 * capacity.conntrack.div_ceil(HASH_CHUNK as u32) + 1;
        for scrape in 0..SCRAPES {
            let counted = env.maps.conntrack_entries().expect("counting CONNTRACK");
            assert!(
                counted.entries <= capacity.conntrack,
                "scrape {scrape}: counted {} entries in a map of {}: entries counted again",
                counted.entries,
                capacity.conntrack
            );
            assert!(
                counted.entries >= capacity.conntrack / 2,
                "scrape {scrape}: a full map counted as {} entries of {}",
                counted.entries,
                capacity.conntrack
            );
            assert!(
                counted.lookups <= most_lookups,
                "scrape {scrape}: {} lookups for a map of {} entries (at most {most_lookups}): the work grew with the churn",
                counted.lookups,
                capacity.conntrack
            );
        }
        let churn_after = inserted.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        assert!(
            churn_after > churn_before,
            "flows were inserted while the scrapes counted"
        );
    });
}
