//! Admission: a service port that does not fit is rejected whole, and one applied before
//! stays as it was; the writer enforces the kernel maps' sizes.

use super::*;

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
            serving: true,
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
fn a_service_whose_table_index_does_not_fit_is_rejected_by_name() {
    // Room for 4 (table, backend) pairs: a's 2, not c's 3 more.
    let capacity = MapCapacity {
        table_members: 4,
        ..small_capacity()
    };
    let desired = state(&[
        ("a", service("198.18.100.1", &[1, 2])),
        ("c", service("198.18.100.3", &[3, 4, 5])),
    ]);
    let mut maps = MemoryMaps::new(capacity);
    let result = plan(&maps.read().unwrap(), &desired, capacity);
    let rejected: Vec<(String, &RejectReason)> = result
        .rejected
        .iter()
        .map(|(name, reason)| (name.to_string(), reason))
        .collect();
    assert!(
        matches!(
            rejected.as_slice(),
            [(name, RejectReason::TableMembersFull { needed: 3, free: 2, capacity: 4 })]
                if name == "default/c:http"
        ),
        "{rejected:?}"
    );
    apply_checked(&mut maps, &result, "index full");
    assert_eq!(
        maps.table_member_entries(),
        2,
        "a's table is indexed, nothing of c"
    );
}
