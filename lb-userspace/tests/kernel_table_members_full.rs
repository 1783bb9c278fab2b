//! A TABLE_MEMBERS batch that the kernel stops part way (the map is full), or a plan stopped
//! later at its frontends, leaves the map holding what the agent's applied state (read back,
//! as after any failed write) accounts for: the entries written for new tables no frontend
//! points at are taken out again, and so is the index of a table a moved frontend left; a
//! table already in use keeps its live entries. The error names the map, the first entry
//! not written and the kernel's reason; once a service is deleted, the same tables fit.
//! Needs root.

#[path = "support/kernel.rs"]
mod kernel;

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData};
use kernel::*;
use lb_common::{PROTO_TCP, TableMember, backend_state::ACTIVE, frontend_kind, map_names};
use slicelb::dataplane::{AppliedState, DataplaneError, MapCapacity, MapOp, MapWriter as _};

/// Entries of TABLE_MEMBERS: the tables below need 70 with the first one, 62 without it.
const CAPACITY: u32 = 64;

/// A TCP service `id` whose table at `offset` names `members` backends (ids `id * 100..`).
fn service(id: u32, members: u32, offset: u32) -> Service {
    let backends: Vec<(u32, String)> = (0..members)
        .map(|n| (id * 100 + n, format!("198.18.{id}.{}", n + 1)))
        .collect();
    let refs: Vec<(u32, &str, u16, u8)> = backends
        .iter()
        .map(|(backend, addr)| (*backend, addr.as_str(), 8080, ACTIVE))
        .collect();
    Service::new(
        id,
        &format!("198.18.100.{id}"),
        80,
        PROTO_TCP,
        frontend_kind::CLUSTER_IP,
        0,
        &refs,
    )
    .at_offset(offset)
}

fn index(service: &Service) -> MapOp {
    MapOp::PutTableMembers {
        offset: service.value.table_offset,
        slots: service.table.as_slice().into(),
    }
}

/// A plan's ops for new services `new` (names, backends, tables, then frontends) that also
/// indexes the tables in use `reindexed`, after the new ones, as the planner orders them.
fn plan(new: &[&Service], reindexed: &[&Service]) -> Vec<MapOp> {
    let (mut heads, mut tables, mut frontends) = (Vec::new(), Vec::new(), Vec::new());
    for service in new {
        for op in service.ops() {
            match op {
                MapOp::PutServiceName { .. } | MapOp::PutBackend { .. } => heads.push(op),
                MapOp::PutSelection { .. } | MapOp::PutTableMembers { .. } => tables.push(op),
                _ => frontends.push(op),
            }
        }
    }
    tables.extend(reindexed.iter().map(|service| index(service)));
    [heads, tables, frontends].concat()
}

/// Every entry of the kernel's TABLE_MEMBERS.
fn kernel_entries(env: &Env) -> BTreeMap<(u32, u32), u32> {
    let map: HashMap<&MapData, TableMember, u32> = HashMap::try_from(
        env.datapath
            .map(map_names::TABLE_MEMBERS)
            .expect("TABLE_MEMBERS"),
    )
    .expect("TABLE_MEMBERS is a hash of TableMember to u32");
    map.iter()
        .map(|entry| {
            let (key, slot) = entry.expect("a TABLE_MEMBERS entry");
            ((key.table_offset, key.backend_id), slot)
        })
        .collect()
}

/// The entries the applied state accounts for: those of each table it holds as indexed.
fn accounted(state: &AppliedState) -> BTreeMap<(u32, u32), u32> {
    state
        .table_members
        .keys()
        .flat_map(|offset| {
            state.selection[offset]
                .first_slots()
                .into_iter()
                .map(move |(backend, slot)| ((*offset, backend), slot))
        })
        .collect()
}

/// The kernel holds exactly what the applied state (read back, as the agent does after a
/// failure) accounts for, and the tables `indexed` are among those.
fn check_accounted(env: &Env, indexed: &[&Service], case: &str) {
    let state = env.maps.read().expect("reading the maps back");
    let found = kernel_entries(env);
    assert_eq!(
        found,
        accounted(&state),
        "{case}: TABLE_MEMBERS holds the entries of the indexed tables, nothing else"
    );
    assert_eq!(
        found.len() as u64,
        state.table_member_count(),
        "{case}: the count the planner admits by"
    );
    for service in indexed {
        let offset = service.value.table_offset;
        let members: Vec<u32> = service.backends.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            state.table_members.get(&offset),
            Some(&(members.len() as u32)),
            "{case}: service {}'s table at {offset} is indexed",
            service.id
        );
        for id in members {
            let slot = found[&(offset, id)];
            assert_eq!(
                service.table[slot as usize], id,
                "{case}: backend {id}'s entry in the table at {offset} names a slot holding it"
            );
        }
    }
}

/// A datapath whose maps are the tests' sizes, but for `adjust`.
fn env_with(adjust: impl FnOnce(&mut MapCapacity)) -> Env {
    let mut capacity = test_capacity();
    adjust(&mut capacity);
    Env::with_capacity(capacity)
}

/// The error's message holds every one of `parts`.
fn assert_names(error: &DataplaneError, parts: &[&str]) {
    let message = error.to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "the error names {part:?}: {message}"
        );
    }
}

#[test]
fn a_table_members_batch_stopped_by_a_full_map_leaves_only_what_the_agent_accounts_for() {
    let mut env = env_with(|capacity| capacity.table_members = CAPACITY);
    // In use: `live`, indexed, and `unindexed`, whose frontend points at a table that an
    // older agent left without its index.
    let live = service(1, 8, 0);
    let unindexed = service(4, 12, 2048);
    env.install(&live);
    let without_index: Vec<MapOp> = unindexed
        .ops()
        .into_iter()
        .filter(|op| !matches!(op, MapOp::PutTableMembers { .. }))
        .collect();
    env.apply(&without_index);
    check_accounted(&env, &[&live], "before");

    // New tables of 20 and 30 members fit beside `live`'s 8; indexing `unindexed` (12)
    // then runs out after 6 of its entries. One batch: 20 + 30 + 8 rewritten + 6 written.
    let (first, second) = (service(2, 20, 512), service(3, 30, 1024));
    let error = env
        .maps
        .apply(&plan(&[&first, &second], &[&live, &unindexed]))
        .expect_err("TABLE_MEMBERS overflows");
    assert!(
        matches!(error, DataplaneError::EntryRefused { .. }) && error.kind() == "map_full",
        "a refused entry of a full map: {error:?}"
    );
    assert_names(
        &error,
        &[
            "TABLE_MEMBERS is full (64 entries)",
            // Backends 400.. in id order, each first at the slot of its rank.
            "backend 406 (first slot 6) of the selection table at 2048 (service test/svc-4:p) was not written",
            "Argument list too long",
        ],
    );
    check_accounted(&env, &[&live], "after the failed batch");

    // Room for the rest once `live` goes. The planner places the new tables anew, maybe
    // elsewhere: entries left by the failed batch would now take their room.
    let mut remove_live = vec![
        MapOp::DeleteFrontend { key: live.frontend },
        MapOp::DeleteTableMembers {
            offset: live.value.table_offset,
            slots: live.table.as_slice().into(),
        },
        MapOp::DeleteServiceName { id: live.id },
    ];
    remove_live.extend(
        live.backends
            .iter()
            .map(|(id, _)| MapOp::DeleteBackend { id: *id }),
    );
    env.apply(&remove_live);
    let (first, second) = (first.at_offset(3072), second.at_offset(3584));
    env.maps
        .apply(&plan(&[&first, &second], &[&unindexed]))
        .unwrap_or_else(|e| panic!("the same tables fit once a service is gone: {e}"));
    check_accounted(
        &env,
        &[&first, &second, &unindexed],
        "after deleting a service",
    );
}

/// A plan that fails later, at its frontends: the tables whose frontends went in are the
/// applied state's, indexed; the entries of the one whose frontend the kernel refused go.
#[test]
fn a_plan_stopped_at_its_frontends_keeps_only_the_indexes_of_tables_in_use() {
    let mut env = env_with(|capacity| capacity.frontends = 2);
    let services = [service(1, 4, 0), service(2, 5, 512), service(3, 6, 1024)];
    let error = env
        .maps
        .apply(&plan(&services.iter().collect::<Vec<_>>(), &[]))
        .expect_err("FRONTENDS overflows");
    assert_names(
        &error,
        &[
            "FRONTENDS is full (2 entries)",
            "frontend 198.18.100.3:80/TCP of service id 3 was not written",
            "Argument list too long",
        ],
    );
    check_accounted(
        &env,
        &[&services[0], &services[1]],
        "after the refused frontend",
    );
}

/// A plan that moved a frontend to a new table and then failed, before it deleted the old
/// table's index: that index is taken out too (the applied state read back no longer holds
/// the table, so it would never be deleted).
#[test]
fn a_plan_stopped_after_moving_a_frontend_drops_the_index_of_the_table_it_left() {
    let mut env = env_with(|capacity| capacity.frontends = 2);
    let before = service(1, 4, 0);
    env.install(&before);
    // One more backend: a new table, and the frontend moves to it.
    let moved = service(1, 5, 512);
    let (second, third) = (service(2, 5, 1024), service(3, 6, 1536));
    let mut ops = plan(&[&moved, &second, &third], &[]);
    ops.push(MapOp::DeleteTableMembers {
        offset: before.value.table_offset,
        slots: before.table.as_slice().into(),
    });
    let error = env
        .maps
        .apply(&ops)
        .expect_err("FRONTENDS overflows at the third frontend");
    assert_names(&error, &["frontend 198.18.100.3:80/TCP"]);
    check_accounted(
        &env,
        &[&moved, &second],
        "after the move and the refused frontend",
    );
}
