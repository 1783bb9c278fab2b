//! Diff tests: idempotence, adoption, make-before-break (checked after every op), overflow,
//! id reuse.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use lb_common::{FrontendKey, FrontendValue};

use super::{encode::backend_identity, tables::table_size, *};
use crate::{
    dataplane::{MapWriter, memory::MemoryMaps},
    model::{
        BackendState, DesiredBackend, DesiredFrontend, DesiredService, FrontendKind, Protocol,
        WhenEmpty,
    },
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

fn small_capacity() -> MapCapacity {
    MapCapacity {
        frontends: 64,
        backends: 64,
        selection_slots: 16 * 1024,
        services: 32,
        source_ranges: 16,
        ..MapCapacity::default()
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
        differences(&applied, &desired, small_capacity()).is_empty(),
        "after apply: {:?}",
        differences(&applied, &desired, small_capacity())
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
        differences(&applied, &after, small_capacity()).is_empty(),
        "{:?}",
        differences(&applied, &after, small_capacity())
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
                super::encode::backend_identity(e) == Some(addr(&format!("198.18.1.{b}:8080")))
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
        differences(&applied, &second, small_capacity()).is_empty(),
        "{:?}",
        differences(&applied, &second, small_capacity())
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
    let capacity = MapCapacity {
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
    let capacity = MapCapacity {
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
    let capacity = MapCapacity {
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
            backend: super::encode::backend_entry(
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

/// Plans stay right at scale: 2 000 services x 10 endpoints in a debug build (what `cargo
/// xtask test` runs), 10 000 with `--release`. Prints timings (never asserted: `cargo xtask
/// bench` measures them): `cargo test --release -p lb-userspace --lib scale -- --nocapture`.
#[test]
fn scale_services_with_10_endpoints() {
    let count: u32 = if cfg!(debug_assertions) {
        2_000
    } else {
        10_000
    };
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

    let services: Vec<Service> = (0..count)
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
    let slices: Vec<EndpointSlice> = (0..count).map(|i| slice_for(i, 0)).collect();
    let mut snapshot = Snapshot {
        services: services.into_iter().map(Arc::new).collect(),
        endpoint_slices: slices.into_iter().map(Arc::new).collect(),
        node: NodeInfo::default(),
    };
    let capacity = MapCapacity::default();

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

    snapshot.endpoint_slices[1234] = Arc::new(slice_for(1234, 1)); // one endpoint replaced
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
        "{count} services x 10 endpoints (thread CPU time): model {model_time:?}, first plan {plan_time:?} ({} ops), \
         re-plan unchanged {replan_time:?}, model after one change {remodel_time:?}, \
         plan one change (warm cache) {one_time:?} ({} ops), plan one change (fresh planner) {fresh_time:?}",
        first.ops.len(),
        one.ops.len()
    );
}

fn lb_service(
    lb_ip: &str,
    backends: &[u8],
    ranges: &[&str],
    affinity: Option<u32>,
) -> DesiredService {
    let mut svc = service("198.18.100.50", backends);
    let mut lb = svc.frontends[0].clone();
    lb.addr = lb_ip.parse().unwrap();
    lb.kind = FrontendKind::LoadBalancer;
    lb.source_ranges = !ranges.is_empty();
    svc.frontends.push(lb);
    svc.source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
    svc.affinity_timeout_secs = affinity;
    svc
}

#[test]
fn source_ranges_and_affinity_follow_the_service() {
    let mut maps = MemoryMaps::new(small_capacity());
    let mut planner = Planner::default();
    let steps = [
        (
            "ranges added",
            lb_service("198.18.150.1", &[1, 2], &["198.18.7.0/24"], Some(60)),
        ),
        (
            "ranges changed",
            lb_service(
                "198.18.150.1",
                &[1, 2],
                &["198.18.8.0/24", "2001:2::/48"],
                Some(60),
            ),
        ),
        (
            "ranges dropped, affinity off",
            lb_service("198.18.150.1", &[1, 2], &[], None),
        ),
    ];
    let mut applied = AppliedState::default();
    for (case, svc) in steps {
        let desired = state(&[("lb", svc)]);
        let result = planner.plan(&applied, &desired, small_capacity());
        let put_range = result
            .ops
            .iter()
            .position(|op| matches!(op, MapOp::PutSourceRange { .. }));
        let put_frontend = result
            .ops
            .iter()
            .position(|op| matches!(op, MapOp::PutFrontend { .. }));
        if let (Some(range), Some(frontend)) = (put_range, put_frontend) {
            assert!(
                range < frontend,
                "{case}: ranges before the frontend that checks them"
            );
        }
        applied = apply_checked(&mut maps, &result, case);
        assert!(
            differences(&applied, &desired, small_capacity()).is_empty(),
            "{case}: {:?}",
            differences(&applied, &desired, small_capacity())
        );
        let service = &desired.services.values().next().unwrap();
        let expected_ranges = if service.source_ranges.is_empty() {
            0
        } else {
            service.source_ranges.len()
        };
        assert_eq!(
            applied.source_ranges.len(),
            expected_ranges,
            "{case}: SOURCE_RANGES entries"
        );
        for value in applied.frontends.values() {
            assert_eq!(
                value.affinity_timeout_secs,
                service.affinity_timeout_secs.unwrap_or(0),
                "{case}: affinity timeout"
            );
        }
        assert!(
            planner
                .plan(&applied, &desired, small_capacity())
                .ops
                .is_empty(),
            "{case}: idempotent"
        );
    }
}

#[test]
fn a_partly_applied_plan_is_completed_by_the_next_one() {
    // The agent applies ops in order and stops at the first error; whatever prefix made it,
    // the next plan (same planner, with its table memory) must finish the job.
    let before = state(&[
        ("a", service("198.18.100.1", &[1, 2, 3])),
        ("b", service("198.18.100.2", &[4, 5])),
    ]);
    let after = state(&[
        ("a", service("198.18.100.1", &[2, 3, 6])),
        ("c", service("198.18.100.3", &[4, 7])),
    ]);
    let mut base_maps = MemoryMaps::new(small_capacity());
    let base = apply_checked(
        &mut base_maps,
        &plan(&AppliedState::default(), &before, small_capacity()),
        "base",
    );
    let full = plan(&base, &after, small_capacity());
    for prefix in 0..=full.ops.len() {
        let case = format!("stopped after {prefix} of {} ops", full.ops.len());
        let mut maps = base_maps.clone();
        let mut planner = Planner::default();
        let first = planner.plan(&base, &after, small_capacity());
        let mut partial = first.clone();
        partial.ops.truncate(prefix);
        let applied = apply_checked(&mut maps, &partial, &case);
        let rest = planner.plan(&applied, &after, small_capacity());
        let applied = apply_checked(&mut maps, &rest, &case);
        assert!(
            differences(&applied, &after, small_capacity()).is_empty(),
            "{case}: {:?}",
            differences(&applied, &after, small_capacity())
        );
    }
}

#[test]
fn forget_tables_makes_the_planner_reread_selection() {
    let desired = state(&[("a", service("198.18.100.1", &[1, 2]))]);
    let mut maps = MemoryMaps::new(small_capacity());
    let mut planner = Planner::default();
    let mut applied = apply_checked(
        &mut maps,
        &planner.plan(&AppliedState::default(), &desired, small_capacity()),
        "first",
    );
    // Someone else scribbles over the table.
    let table = Arc::make_mut(applied.selection.values_mut().next().unwrap());
    table[0] = if table[0] == 1 { 2 } else { 1 };
    assert!(
        !differences(&applied, &desired, small_capacity()).is_empty(),
        "the comparison sees the damage"
    );
    planner.forget_tables();
    let repair = planner.plan(&applied, &desired, small_capacity());
    assert!(
        repair
            .ops
            .iter()
            .any(|op| matches!(op, MapOp::PutSelection { .. })),
        "table rewritten: {:?}",
        repair.ops
    );
    let fresh = plan(&applied, &desired, small_capacity());
    assert_eq!(
        fresh.ops, repair.ops,
        "a fresh planner repairs it the same way"
    );
}

/// From manifests to maps: each step of a service's life is built by the model, planned,
/// applied op by op (checking every frontend after every op), compared, and re-planned to
/// zero ops.
#[test]
fn snapshots_through_model_diff_and_maps() {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use serde_json::json;

    use crate::model::{ModelConfig, NodeInfo, Snapshot, build};

    let web = |spec_patch: serde_json::Value| -> Service {
        let mut spec = json!({
            "type": "LoadBalancer",
            "clusterIPs": ["198.18.100.1", "2001:2::100:1"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        });
        for (k, v) in spec_patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.150.1"}]}},
        }))
        .unwrap()
    };
    let slice = |name: &str, family: &str, endpoints: serde_json::Value| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": family,
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    };
    let ep = |ip: &str, node: &str, ready: bool, terminating: bool| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready, "serving": true, "terminating": terminating}});
    let node = NodeInfo {
        name: Some("node-a".into()),
        zone: None,
        nodeport_addresses: vec![
            "198.18.0.10".parse().unwrap(),
            "2001:2::10".parse().unwrap(),
        ],
    };
    let steps: Vec<(&str, Vec<Service>, Vec<EndpointSlice>)> = vec![
        ("empty", vec![], vec![]),
        ("service without endpoints", vec![web(json!({}))], vec![]),
        (
            "endpoints arrive",
            vec![web(json!({}))],
            vec![
                slice(
                    "web-v4",
                    "IPv4",
                    json!([
                        ep("10.0.0.1", "node-a", true, false),
                        ep("10.0.0.2", "node-b", true, false)
                    ]),
                ),
                slice(
                    "web-v6",
                    "IPv6",
                    json!([ep("fd00::1", "node-b", true, false)]),
                ),
            ],
        ),
        (
            "one terminates, one joins",
            vec![web(json!({}))],
            vec![
                slice(
                    "web-v4",
                    "IPv4",
                    json!([
                        ep("10.0.0.1", "node-a", false, true),
                        ep("10.0.0.2", "node-b", true, false),
                        ep("10.0.0.3", "node-b", true, false)
                    ]),
                ),
                slice(
                    "web-v6",
                    "IPv6",
                    json!([ep("fd00::1", "node-b", true, false)]),
                ),
            ],
        ),
        (
            "externalTrafficPolicy Local, affinity, source ranges",
            vec![web(
                json!({"externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP", "loadBalancerSourceRanges": ["198.18.7.0/24"]}),
            )],
            vec![
                slice(
                    "web-v4",
                    "IPv4",
                    json!([
                        ep("10.0.0.1", "node-a", true, false),
                        ep("10.0.0.2", "node-b", true, false)
                    ]),
                ),
                slice(
                    "web-v6",
                    "IPv6",
                    json!([ep("fd00::1", "node-b", true, false)]),
                ),
            ],
        ),
        (
            "service deleted",
            vec![],
            vec![slice(
                "web-v4",
                "IPv4",
                json!([ep("10.0.0.1", "node-a", true, false)]),
            )],
        ),
    ];
    let mut maps = MemoryMaps::new(small_capacity());
    let mut planner = Planner::default();
    let mut applied = AppliedState::default();
    for (case, services, endpoint_slices) in steps {
        let snapshot = Snapshot {
            services: services.into_iter().map(Arc::new).collect(),
            endpoint_slices: endpoint_slices.into_iter().map(Arc::new).collect(),
            node: node.clone(),
        };
        let built = build(&snapshot, &ModelConfig::default());
        assert!(built.warnings.is_empty(), "{case}: {:?}", built.warnings);
        let result = planner.plan(&applied, &built.state, small_capacity());
        assert!(result.rejected.is_empty(), "{case}: {:?}", result.rejected);
        applied = apply_checked(&mut maps, &result, case);
        assert_eq!(
            differences(&applied, &built.state, small_capacity()),
            Vec::new(),
            "{case}: maps differ from the model"
        );
        assert!(
            planner
                .plan(&applied, &built.state, small_capacity())
                .ops
                .is_empty(),
            "{case}: not idempotent"
        );
        assert!(
            plan(&applied, &built.state, small_capacity())
                .ops
                .is_empty(),
            "{case}: fresh planner disagrees"
        );
    }
    assert_eq!(
        applied,
        AppliedState::default(),
        "everything removed at the end"
    );
}

#[test]
fn differences_name_the_service_the_frontend_and_what_differs() {
    let desired = state(&[("a", service("198.18.100.1", &[1, 2]))]);
    let mut maps = MemoryMaps::new(small_capacity());
    let good = apply_checked(
        &mut maps,
        &plan(&AppliedState::default(), &desired, small_capacity()),
        "setup",
    );
    let tamper = |f: &dyn Fn(&mut AppliedState)| {
        let mut applied = good.clone();
        f(&mut applied);
        differences(&applied, &desired, small_capacity())
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let key = *good.frontends.keys().next().unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "frontend missing",
            tamper(&|a| {
                a.frontends.clear();
            }),
            "default/a:http 198.18.100.1:80/TCP: ClusterIP frontend missing from FRONTENDS",
        ),
        (
            "backend missing",
            tamper(&|a| {
                a.backends.remove(&2);
            }),
            "default/a:http: backend 198.18.1.2:8080 missing from BACKENDS",
        ),
        (
            "wrong flags",
            tamper(&|a| {
                a.frontends.get_mut(&key).unwrap().flags = lb_common::frontend_flags::EXTERNAL;
            }),
            "default/a:http 198.18.100.1:80/TCP: flags are 0x0001, expected 0x0000",
        ),
        (
            "extra frontend",
            tamper(&|a| {
                let mut other = key;
                other.port = 81u16.to_be();
                let value = a.frontends[&key];
                a.frontends.insert(other, value);
            }),
            "default/a:http 198.18.100.1:81/TCP: frontend is not desired",
        ),
        (
            "name missing",
            tamper(&|a| {
                a.service_names.clear();
            }),
            "default/a:http: not in SERVICE_NAMES",
        ),
        (
            "backend not in table",
            tamper(&|a| {
                let table = Arc::make_mut(a.selection.values_mut().next().unwrap());
                table.iter_mut().for_each(|slot| *slot = 1);
            }),
            "default/a:http 198.18.100.1:80/TCP: backend 198.18.1.2:8080 is not in the selection table",
        ),
    ];
    assert!(
        differences(&good, &desired, small_capacity()).is_empty(),
        "untouched maps match"
    );
    for (case, found, expected) in cases {
        assert!(
            found.iter().any(|d| d == expected),
            "{case}: expected {expected:?} in {found:#?}"
        );
    }
}

#[test]
fn a_service_that_does_not_fit_is_drift_naming_why() {
    let desired = state(&[
        ("a", service("198.18.100.1", &[1])),
        ("b", service("198.18.100.2", &[2])),
    ]);
    let capacity = MapCapacity {
        frontends: 1,
        ..small_capacity()
    };
    let mut maps = MemoryMaps::new(capacity);
    let applied = apply_checked(
        &mut maps,
        &plan(&AppliedState::default(), &desired, capacity),
        "only a fits",
    );
    let found: Vec<String> = differences(&applied, &desired, capacity)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        [
            "default/b:http: does not fit: FRONTENDS has room for 0 more entries, the service needs 1 (capacity 1)"
        ],
        "only the rejected service, with the reason"
    );
}

#[test]
fn memory_maps_enforce_kernel_capacities() {
    let capacity = MapCapacity {
        frontends: 1,
        backends: 3,
        selection_slots: 512,
        services: 2,
        source_ranges: 1,
        ..MapCapacity::default()
    };
    let mut maps = MemoryMaps::new(capacity);
    let key = |port: u16| FrontendKey {
        addr: [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        port: port.to_be(),
        proto: 6,
        family: 4,
    };
    let full = |r: Result<(), crate::dataplane::DataplaneError>| {
        matches!(r, Err(crate::dataplane::DataplaneError::MapFull { .. }))
    };
    assert!(
        maps.apply_op(&MapOp::PutFrontend {
            key: key(80),
            value: FrontendValue::default()
        })
        .is_ok()
    );
    assert!(
        maps.apply_op(&MapOp::PutFrontend {
            key: key(80),
            value: FrontendValue::default()
        })
        .is_ok(),
        "update in place"
    );
    assert!(
        full(maps.apply_op(&MapOp::PutFrontend {
            key: key(81),
            value: FrontendValue::default()
        })),
        "FRONTENDS full"
    );
    let backend = super::encode::backend_entry(
        addr("198.18.1.1:80"),
        DesiredBackend {
            state: BackendState::Active,
            node_local: false,
        },
    );
    assert!(maps.apply_op(&MapOp::PutBackend { id: 2, backend }).is_ok());
    assert!(
        full(maps.apply_op(&MapOp::PutBackend { id: 3, backend })),
        "BACKENDS has ids 0..3"
    );
    assert!(
        full(maps.apply_op(&MapOp::PutSelection {
            offset: 256,
            slots: vec![2; 257].into()
        })),
        "SELECTION bound"
    );
    assert!(
        full(maps.apply_op(&MapOp::PutServiceName {
            id: 2,
            name: "x".into()
        })),
        "service ids 1..2"
    );
    assert!(
        maps.apply_op(&MapOp::DeleteFrontend { key: key(99) })
            .is_err(),
        "deleting what is not there is a bug"
    );
}

#[test]
fn plans_are_deterministic_across_agents() {
    // Two agents with the same maps and the same snapshot write the same ops in the same
    // order: ids, table offsets and op order depend on nothing else.
    let first = state(&[
        ("a", service("198.18.100.1", &[1, 2, 3])),
        ("b", service("198.18.100.2", &[4, 5])),
    ]);
    let mut maps = MemoryMaps::new(small_capacity());
    let applied = apply_checked(
        &mut maps,
        &plan(&AppliedState::default(), &first, small_capacity()),
        "setup",
    );
    let second = state(&[
        ("a", service("198.18.100.1", &[2, 3, 9])),
        ("c", service("198.18.100.3", &[4, 8])),
        ("d", service("198.18.100.4", &[1])),
    ]);
    let one = plan(&applied, &second, small_capacity());
    let other = Planner::default().plan(&applied, &second, small_capacity());
    assert_eq!(one, other);
    let mut warm = Planner::default();
    warm.plan(&AppliedState::default(), &first, small_capacity());
    assert_eq!(
        warm.plan(&applied, &second, small_capacity()).ops,
        one.ops,
        "a planner with history plans the same"
    );
}

/// The backend owning each slot of the only frontend's table.
fn table_owners(applied: &AppliedState) -> Vec<SocketAddr> {
    let value = applied.frontends.values().next().expect("one frontend");
    applied.selection[&value.table_offset]
        .iter()
        .map(|id| backend_identity(&applied.backends[id]).expect("a backend address"))
        .collect()
}

fn share_moved(before: &[SocketAddr], after: &[SocketAddr]) -> f64 {
    assert_eq!(before.len(), after.len(), "the table kept its size");
    let moved = before.iter().zip(after).filter(|(a, b)| a != b).count();
    moved as f64 / before.len() as f64
}

/// The Maglev bounds, end to end through the planner: when one of ten backends goes,
/// only its slots move (1/N); when one comes, only the newcomer's share (1/(N+1)), each
/// within 1% — and every table is still a valid one for `check`.
#[test]
fn a_backend_leaving_or_joining_moves_only_its_share_of_the_table() {
    let ten: Vec<u8> = (1..=10).collect();
    let mut maps = MemoryMaps::new(small_capacity());
    let mut planner = Planner::default();
    let mut applied = maps.read().unwrap();
    let mut apply = |desired: &DesiredState, case: &str| {
        let plan = planner.plan(&applied, desired, small_capacity());
        applied = apply_checked(&mut maps, &plan, case);
        assert!(
            differences(&applied, desired, small_capacity()).is_empty(),
            "{case}: {:?}",
            differences(&applied, desired, small_capacity())
        );
        table_owners(&applied)
    };
    let before = apply(&state(&[("web", service("198.18.100.1", &ten))]), "ten");

    let nine: Vec<u8> = ten.iter().copied().filter(|b| *b != 5).collect();
    let after_removal = apply(&state(&[("web", service("198.18.100.1", &nine))]), "nine");
    let removed = addr("198.18.1.5:8080");
    let its_slots = before.iter().filter(|owner| **owner == removed).count();
    assert_eq!(
        share_moved(&before, &after_removal),
        its_slots as f64 / before.len() as f64,
        "only the removed backend's slots move"
    );
    assert!(share_moved(&before, &after_removal) <= 1.0 / 10.0 + 0.01);

    let mut joined = nine.clone();
    joined.push(11);
    let after_addition = apply(
        &state(&[("web", service("198.18.100.1", &joined))]),
        "ten again",
    );
    assert!(
        share_moved(&after_removal, &after_addition) <= 1.0 / 10.0 + 0.01,
        "adding the tenth backend moved {:.2}% of the slots",
        share_moved(&after_removal, &after_addition) * 100.0
    );
    let newcomer = addr("198.18.1.11:8080");
    assert!(
        after_removal
            .iter()
            .zip(&after_addition)
            .all(|(old, new)| old == new || *new == newcomer),
        "every slot that moved went to the newcomer"
    );
}

/// `check` accepts any table in which every backend owns its exact share (tables depend on
/// their history) and names one that does not.
#[test]
fn a_table_off_its_shares_is_reported_and_one_in_another_order_is_not() {
    let desired = state(&[("web", service("198.18.100.1", &[1, 2, 3]))]);
    let mut maps = MemoryMaps::new(small_capacity());
    let plan = Planner::default().plan(&maps.read().unwrap(), &desired, small_capacity());
    let applied = apply_checked(&mut maps, &plan, "three");
    let offset = applied.frontends.values().next().unwrap().table_offset;
    let table = applied.selection[&offset].clone();
    let first = table[0];
    let other = *table.iter().find(|id| **id != first).unwrap();
    let other_at = table.iter().position(|id| *id == other).unwrap();

    let mut swapped = applied.clone();
    let mut slots = table.to_vec();
    slots.swap(0, other_at);
    swapped.selection.insert(offset, slots.into());
    assert!(
        differences(&swapped, &desired, small_capacity()).is_empty(),
        "two slots swapped keep every share: {:?}",
        differences(&swapped, &desired, small_capacity())
    );

    let mut skewed = applied.clone();
    let mut slots = table.to_vec();
    slots[0] = other;
    skewed.selection.insert(offset, slots.into());
    let differences = differences(&skewed, &desired, small_capacity());
    assert!(
        differences
            .iter()
            .any(|d| d.what.contains("beyond their backend's share")),
        "one slot given to another backend must be reported: {differences:?}"
    );
}
