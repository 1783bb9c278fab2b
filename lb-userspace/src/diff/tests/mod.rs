//! Diff tests: idempotence, adoption, make-before-break (checked after every op), scoped
//! plans, the way from manifests to maps; by role in the modules below.

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

mod admission;
mod drift;
mod ids;
mod tables;

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
            short_circuit: false,
        }],
        backends: list
            .iter()
            .map(|a| {
                (
                    *a,
                    DesiredBackend {
                        state: BackendState::Active,
                        node_local: false,
                        serving: true,
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
        | MapOp::PutTableMembers { .. }
        | MapOp::PutSourceRange { .. } => 0,
        MapOp::PutFrontend { .. } => 1,
        MapOp::DeleteFrontend { .. } => 2,
        MapOp::DeleteTableMembers { .. }
        | MapOp::DeleteSourceRange { .. }
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
            serving: true,
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
                    node_local: false,
                    serving: true,
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
        ..Snapshot::default()
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
    let table = applied.selection.values_mut().next().unwrap();
    let mut ids = table.ids();
    ids[0] = if ids[0] == 1 { 2 } else { 1 };
    *table = ids.into();
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
                json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32000, "sessionAffinity": "ClientIP", "loadBalancerSourceRanges": ["198.18.7.0/24"]}),
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
            ..Snapshot::default()
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
