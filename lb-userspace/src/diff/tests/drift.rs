//! Drift as `slicelb check` reports it: the planner's operations in words.

use super::*;

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
                let table = a.selection.values_mut().next().unwrap();
                *table = vec![1; table.len()].into();
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

/// `check` accepts any table in which every backend owns its exact share (tables depend on
/// their history) and names one that does not.
#[test]
fn a_table_off_its_shares_is_reported_and_one_in_another_order_is_not() {
    let desired = state(&[("web", service("198.18.100.1", &[1, 2, 3]))]);
    let mut maps = MemoryMaps::new(small_capacity());
    let plan = Planner::default().plan(&maps.read().unwrap(), &desired, small_capacity());
    let applied = apply_checked(&mut maps, &plan, "three");
    let offset = applied.frontends.values().next().unwrap().table_offset;
    let table = applied.selection[&offset].ids();
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
