//! Diff tests: idempotence, adoption, make-before-break (checked after every op), overflow,
//! id reuse.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use super::*;
use crate::{
    dataplane::{MapWriter, memory::MemoryMaps},
    model::{BackendState, DesiredFrontend, FrontendKind, Protocol, WhenEmpty},
};

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

/// A ClusterIP service port with `backends` ready endpoints at 198.18.1.x:8080.
fn service(cluster_ip: &str, backends: &[u8]) -> DesiredService {
    let list: Vec<SocketAddr> = backends
        .iter()
        .map(|b| addr(&format!("198.18.1.{b}:8080")))
        .collect();
    DesiredService {
        protocol: Protocol::Tcp,
        frontends: vec![DesiredFrontend {
            addr: cluster_ip.parse().unwrap(),
            port: 80,
            kind: FrontendKind::ClusterIp,
            policy_local: false,
            source_ranges: false,
            selection: Arc::from(list.clone()),
            when_empty: WhenEmpty::Reject,
        }],
        backends: list
            .iter()
            .map(|a| {
                (
                    *a,
                    DesiredBackend {
                        state: BackendState::Active,
                        node_local: false,
                    },
                )
            })
            .collect(),
        affinity_timeout_secs: None,
        source_ranges: Vec::new(),
    }
}

fn state(services: &[(&str, DesiredService)]) -> DesiredState {
    DesiredState {
        services: services
            .iter()
            .map(|(name, s)| (ServicePortName::new("default", name, "http"), s.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn small_capacity() -> Capacity {
    Capacity {
        frontends: 64,
        backends: 64,
        selection_slots: 16 * 1024,
        services: 32,
        source_ranges: 16,
    }
}

/// Applies `plan` op by op, checking after every op that each frontend's table names only
/// existing backends; returns the new applied state.
fn apply_checked(maps: &mut MemoryMaps, plan: &Plan, case: &str) -> AppliedState {
    for (i, op) in plan.ops.iter().enumerate() {
        maps.apply_op(op)
            .unwrap_or_else(|e| panic!("{case}: op {i} {op:?} failed: {e}"));
        let violations = maps.check();
        assert!(
            violations.is_empty(),
            "{case}: after op {i} ({op:?}): {}",
            violations[0]
        );
    }
    maps.read().expect("memory read")
}

#[test]
fn same_desired_state_twice_gives_zero_ops() {
    let desired = state(&[
        ("a", service("198.18.100.1", &[1, 2, 3])),
        ("b", service("198.18.100.2", &[4, 5])),
    ]);
    let mut maps = MemoryMaps::new(small_capacity());
    let mut planner = Planner::default();
    let first = planner.plan(&maps.read().unwrap(), &desired, small_capacity());
    assert!(!first.ops.is_empty(), "first plan writes something");
    let applied = apply_checked(&mut maps, &first, "first apply");
    assert!(
        desired.differences(&applied).is_empty(),
        "after apply: {:?}",
        desired.differences(&applied)
    );
    let second = planner.plan(&applied, &desired, small_capacity());
    assert_eq!(
        second.ops,
        Vec::new(),
        "re-applying the same state must write nothing"
    );
    let fresh = plan(&applied, &desired, small_capacity());
    assert_eq!(
        fresh.ops,
        Vec::new(),
        "a fresh planner (restarted agent) must write nothing"
    );
}

#[test]
fn restarted_agent_adopting_the_maps_writes_only_the_difference() {
    let before = state(&[
        ("a", service("198.18.100.1", &[1, 2, 3])),
        ("b", service("198.18.100.2", &[4, 5])),
    ]);
    let mut maps = MemoryMaps::new(small_capacity());
    let applied = apply_checked(
        &mut maps,
        &plan(&AppliedState::default(), &before, small_capacity()),
        "initial",
    );

    // New agent: endpoint 6 joins b.
    let after = state(&[
        ("a", service("198.18.100.1", &[1, 2, 3])),
        ("b", service("198.18.100.2", &[4, 5, 6])),
    ]);
    let next = plan(&applied, &after, small_capacity());
    let puts_backend: Vec<_> = next
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::PutBackend { .. }))
        .collect();
    assert_eq!(
        puts_backend.len(),
        1,
        "only the new backend is written: {puts_backend:?}"
    );
    let tables = next
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::PutSelection { .. }))
        .count();
    assert_eq!(tables, 1, "only b's table is rebuilt");
    let frontends = next
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::PutFrontend { .. }))
        .count();
    assert_eq!(frontends, 1, "only b's frontend moves to the new table");
    assert!(
        !next.ops.iter().any(|op| matches!(
            op,
            MapOp::PutServiceName { .. } | MapOp::DeleteBackend { .. }
        )),
        "names and existing backends stay: {:?}",
        next.ops
    );
    let applied = apply_checked(&mut maps, &next, "adopt");
    assert!(
        after.differences(&applied).is_empty(),
        "{:?}",
        after.differences(&applied)
    );
}

#[test]
fn ids_are_reused_by_name_and_address() {
    let first = state(&[("a", service("198.18.100.1", &[1, 2]))]);
    let mut maps = MemoryMaps::new(small_capacity());
    let applied = apply_checked(
        &mut maps,
        &plan(&AppliedState::default(), &first, small_capacity()),
        "first",
    );
    assert_eq!(
        applied.service_names.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "service ids start at 1"
    );
    assert_eq!(
        applied.backends.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "backend ids start at 1"
    );

    // b arrives (before a by name) and a loses backend 1: a keeps id 1, backend 2 keeps id 2.
    let second = state(&[
        ("0b", service("198.18.100.2", &[2, 3])),
        ("a", service("198.18.100.1", &[2])),
    ]);
    let applied = apply_checked(
        &mut maps,
        &plan(&applied, &second, small_capacity()),
        "second",
    );
    let id_of = |name: &str| {
        applied
            .service_names
            .iter()
            .find(|(_, n)| n.contains(name))
            .map(|(id, _)| *id)
    };
    assert_eq!(id_of("default/a:"), Some(1), "a keeps its id");
    assert_eq!(
        id_of("default/0b:"),
        Some(2),
        "new service takes the next id"
    );
    let backend_id = |b: u8| {
        applied
            .backends
            .iter()
            .find(|(_, e)| {
                crate::model::encode::backend_identity(e)
                    == Some(addr(&format!("198.18.1.{b}:8080")))
            })
            .map(|(id, _)| *id)
    };
    assert_eq!(backend_id(2), Some(2), "backend 2 keeps its id");
    assert_eq!(backend_id(1), None, "backend 1 is gone");
    assert_eq!(
        backend_id(3),
        Some(3),
        "new backend takes a fresh id, not the one just freed"
    );
}

#[test]
fn ops_are_ordered_make_before_break() {
    let first = state(&[
        ("a", service("198.18.100.1", &[1, 2, 3])),
        ("gone", service("198.18.100.9", &[7])),
    ]);
    let mut maps = MemoryMaps::new(small_capacity());
    let applied = apply_checked(
        &mut maps,
        &plan(&AppliedState::default(), &first, small_capacity()),
        "first",
    );
    let second = state(&[
        ("a", service("198.18.100.1", &[3, 4])),
        ("new", service("198.18.100.3", &[5])),
    ]);
    let next = plan(&applied, &second, small_capacity());
    let rank = |op: &MapOp| match op {
        MapOp::PutServiceName { .. }
        | MapOp::PutBackend { .. }
        | MapOp::PutSelection { .. }
        | MapOp::PutSourceRange { .. } => 0,
        MapOp::PutFrontend { .. } => 1,
        MapOp::DeleteFrontend { .. } => 2,
        MapOp::DeleteSourceRange { .. }
        | MapOp::DeleteBackend { .. }
        | MapOp::DeleteServiceName { .. } => 3,
    };
    let ranks: Vec<u8> = next.ops.iter().map(rank).collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "ops out of order: {:?}",
        next.ops
    );
    for op in &next.ops {
        if let MapOp::PutSelection { offset, slots } = op {
            for (old_offset, old) in &applied.selection {
                let (a, b) = (*offset as usize, *old_offset as usize);
                assert!(
                    a + slots.len() <= b || b + old.len() <= a,
                    "new table at {a} overlaps a table in use at {b}"
                );
            }
        }
    }
    let applied = apply_checked(&mut maps, &next, "second");
    assert!(
        second.differences(&applied).is_empty(),
        "{:?}",
        second.differences(&applied)
    );
    // And everything away again.
    let empty = DesiredState::default();
    let applied = apply_checked(
        &mut maps,
        &plan(&applied, &empty, small_capacity()),
        "delete all",
    );
    assert_eq!(
        applied,
        AppliedState::default(),
        "deleting every service leaves empty maps"
    );
}

#[test]
fn a_service_too_big_is_rejected_by_name_and_the_others_are_applied() {
    // 16 Ki slots: room for 16 tables of 1 Ki, but a 200-backend table needs 32 Ki.
    let big: Vec<u8> = (1..=200).collect();
    let desired = state(&[
        ("a", service("198.18.100.1", &[1, 2])),
        ("big", service("198.18.100.2", &big)),
        ("c", service("198.18.100.3", &[3])),
    ]);
    let capacity = Capacity {
        backends: 1024,
        ..small_capacity()
    };
    let mut maps = MemoryMaps::new(capacity);
    let result = plan(&maps.read().unwrap(), &desired, capacity);
    assert_eq!(
        result.rejected.len(),
        1,
        "exactly one rejection: {:?}",
        result.rejected
    );
    let (name, reason) = &result.rejected[0];
    assert_eq!(name.to_string(), "default/big:http");
    assert!(
        matches!(reason, RejectReason::SelectionFull { .. }),
        "reason: {reason}"
    );
    let applied = apply_checked(&mut maps, &result, "overflow");
    assert!(
        !applied.service_names.values().any(|n| n.contains("big")),
        "nothing of big is written"
    );
    assert_eq!(applied.frontends.len(), 2, "a and c are applied");
    assert_eq!(
        applied.backends.len(),
        3,
        "big's backends are not written: {:?}",
        applied.backends.keys()
    );
    let again = plan(&applied, &desired, capacity);
    assert!(
        again.ops.is_empty(),
        "a rejected service does not cause churn: {:?}",
        again.ops
    );
}

#[test]
fn an_applied_service_that_grows_too_big_stays_as_it_was() {
    let capacity = Capacity {
        frontends: 2,
        ..small_capacity()
    };
    let first = state(&[
        ("a", service("198.18.100.1", &[1])),
        ("b", service("198.18.100.2", &[2])),
    ]);
    let mut maps = MemoryMaps::new(capacity);
    let applied = apply_checked(
        &mut maps,
        &plan(&AppliedState::default(), &first, capacity),
        "first",
    );

    // b gains a second frontend (and a backend): FRONTENDS is full, so b is kept as it was.
    let mut grown = service("198.18.100.2", &[2, 3]);
    let mut extra = grown.frontends[0].clone();
    extra.addr = "198.18.100.22".parse().unwrap();
    grown.frontends.push(extra);
    let second = state(&[("a", service("198.18.100.1", &[1])), ("b", grown)]);
    let result = plan(&applied, &second, capacity);
    assert_eq!(result.rejected.len(), 1, "{:?}", result.rejected);
    assert!(
        matches!(
            result.rejected[0].1,
            RejectReason::FrontendsFull {
                needed: 1,
                free: 0,
                ..
            }
        ),
        "{}",
        result.rejected[0].1
    );
    let after = apply_checked(&mut maps, &result, "grown");
    assert_eq!(
        after, applied,
        "b keeps exactly what it had; a did not change"
    );
}

#[test]
fn backend_and_service_capacity_reject_whole_services() {
    let capacity = Capacity {
        backends: 4,
        services: 3,
        ..small_capacity()
    };
    let desired = state(&[
        ("a", service("198.18.100.1", &[1, 2])),
        ("b", service("198.18.100.2", &[3, 4])),
        ("c", service("198.18.100.3", &[1])),
        ("d", service("198.18.100.4", &[2])),
    ]);
    let mut maps = MemoryMaps::new(capacity);
    let result = plan(&maps.read().unwrap(), &desired, capacity);
    let rejected: Vec<String> = result
        .rejected
        .iter()
        .map(|(n, r)| format!("{n}: {r}"))
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected[0].starts_with("default/b:http: BACKENDS"),
        "{rejected:?}"
    );
    assert!(
        rejected[1].starts_with("default/d:http: no free service id"),
        "{rejected:?}"
    );
    apply_checked(&mut maps, &result, "capacity");
}

#[test]
fn terminating_backend_state_is_updated_in_place() {
    let first = state(&[("a", service("198.18.100.1", &[1, 2]))]);
    let mut maps = MemoryMaps::new(small_capacity());
    let applied = apply_checked(
        &mut maps,
        &plan(&AppliedState::default(), &first, small_capacity()),
        "first",
    );
    let mut draining = service("198.18.100.1", &[1]);
    draining.backends.insert(
        addr("198.18.1.2:8080"),
        DesiredBackend {
            state: BackendState::Terminating,
            node_local: false,
        },
    );
    let second = state(&[("a", draining)]);
    let next = plan(&applied, &second, small_capacity());
    assert!(
        next.ops.contains(&MapOp::PutBackend {
            id: 2,
            backend: crate::model::encode::backend_entry(
                addr("198.18.1.2:8080"),
                DesiredBackend {
                    state: BackendState::Terminating,
                    node_local: false
                }
            )
        }),
        "backend 2 keeps id 2 and becomes terminating: {:?}",
        next.ops
    );
    assert!(
        !next
            .ops
            .iter()
            .any(|op| matches!(op, MapOp::DeleteBackend { .. })),
        "kept for its flows"
    );
    apply_checked(&mut maps, &next, "draining");
}

#[test]
fn frontends_with_equal_backends_share_one_table() {
    let mut svc = service("198.18.100.1", &[1, 2]);
    let mut node_port = svc.frontends[0].clone();
    node_port.addr = "198.18.0.10".parse().unwrap();
    node_port.port = 30080;
    node_port.kind = FrontendKind::NodePort;
    svc.frontends.push(node_port);
    let result = plan(
        &AppliedState::default(),
        &state(&[("a", svc)]),
        small_capacity(),
    );
    let tables = result
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::PutSelection { .. }))
        .count();
    assert_eq!(
        tables, 1,
        "ClusterIP and NodePort with the same backends share a table"
    );
}

#[test]
fn table_size_keeps_its_size_across_small_changes() {
    assert_eq!(table_size(3, None), 509);
    assert_eq!(
        table_size(2, Some(509)),
        509,
        "shrinking by one keeps the size"
    );
    assert_eq!(
        table_size(3, Some(251)),
        251,
        "251 slots still give 3 backends 83 each"
    );
    assert_eq!(
        table_size(6, Some(251)),
        1021,
        "too few slots per backend: grow"
    );
    assert_eq!(table_size(1, Some(16381)), 251, "far too large: shrink");
}

/// Scale check, run by hand: `cargo test --release -p lb-userspace --lib scale -- --ignored
/// --nocapture`. Prints timings (never asserted) and checks the plans are right.
#[test]
#[ignore = "scale measurement; run with --release --ignored"]
fn scale_10k_services_with_10_endpoints() {
    /// CPU time of this thread: other processes on a loaded machine do not count.
    #[derive(Clone, Copy)]
    struct Instant(std::time::Duration);
    impl Instant {
        fn now() -> Self {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec into the valid pointer given.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            Self(std::time::Duration::new(
                ts.tv_sec as u64,
                ts.tv_nsec as u32,
            ))
        }
        fn elapsed(self) -> std::time::Duration {
            Self::now().0 - self.0
        }
    }

    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use serde_json::json;

    use crate::model::{ModelConfig, NodeInfo, Snapshot, build};

    let services: Vec<Service> = (0..10_000u32)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                "spec": {"clusterIP": format!("198.18.{}.{}", 100 + i / 250, i % 250 + 1), "ports": [{"name": "http", "port": 80}]},
            }))
            .unwrap()
        })
        .collect();
    let slice_for = |i: u32, shift: u32| -> EndpointSlice {
        let endpoints: Vec<_> = (0..10u32)
            .map(|e| json!({"addresses": [format!("10.{}.{}.{}", i / 250, i % 250, e + 1 + shift)], "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}-1"), "namespace": "bench", "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints,
        }))
        .unwrap()
    };
    let slices: Vec<EndpointSlice> = (0..10_000u32).map(|i| slice_for(i, 0)).collect();
    let mut snapshot = Snapshot {
        services,
        endpoint_slices: slices,
        node: NodeInfo::default(),
    };
    let capacity = Capacity::default();

    let start = Instant::now();
    let built = build(&snapshot, &ModelConfig::default());
    let model_time = start.elapsed();
    let mut planner = Planner::default();
    let start = Instant::now();
    let first = planner.plan(&AppliedState::default(), &built.state, capacity);
    let plan_time = start.elapsed();
    assert!(first.rejected.is_empty(), "{:?}", &first.rejected[..1]);
    let mut maps = MemoryMaps::new(capacity);
    maps.apply(&first.ops).expect("apply");
    let applied = maps.read().unwrap();

    let start = Instant::now();
    let again = planner.plan(&applied, &built.state, capacity);
    let replan_time = start.elapsed();
    assert!(again.ops.is_empty(), "same state twice: zero ops");

    snapshot.endpoint_slices[4242] = slice_for(4242, 1); // one endpoint replaced
    let start = Instant::now();
    let changed = build(&snapshot, &ModelConfig::default());
    let remodel_time = start.elapsed();
    let start = Instant::now();
    let one = planner.plan(&applied, &changed.state, capacity);
    let one_time = start.elapsed();
    let tables = one
        .ops
        .iter()
        .filter(|op| matches!(op, MapOp::PutSelection { .. }))
        .count();
    assert_eq!(tables, 1, "one service's table is rebuilt");
    let start = Instant::now();
    let fresh = plan(&applied, &changed.state, capacity);
    let fresh_time = start.elapsed();
    assert_eq!(
        fresh.ops.len(),
        one.ops.len(),
        "a fresh planner finds the same difference"
    );
    println!(
        "10k services x 10 endpoints (thread CPU time): model {model_time:?}, first plan {plan_time:?} ({} ops), \
         re-plan unchanged {replan_time:?}, model after one change {remodel_time:?}, \
         plan one change (warm cache) {one_time:?} ({} ops), plan one change (fresh planner) {fresh_time:?}",
        first.ops.len(),
        one.ops.len()
    );
}
