//! Selection tables: shared between frontends with equal backends, sized to keep small
//! changes small, and moving only the changed backend's share.

use super::*;

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

/// The backend owning each slot of the only frontend's table.
fn table_owners(applied: &AppliedState) -> Vec<SocketAddr> {
    let value = applied.frontends.values().next().expect("one frontend");
    applied.selection[&value.table_offset]
        .ids()
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

/// A service of `count` backends 198.18.2.0/23 port 8080 onwards, behind one ClusterIP.
fn wide_service(count: u16) -> DesiredService {
    let list: Vec<SocketAddr> = (0..count)
        .map(|i| SocketAddr::from(([198, 18, 2 + (i / 250) as u8, (i % 250 + 1) as u8], 8080)))
        .collect();
    let mut svc = service("198.18.100.1", &[1]);
    let template = svc.backends.values().next().copied().expect("one backend");
    svc.frontends[0].selection = Arc::from(list.clone());
    svc.backends = list.iter().map(|a| (*a, template)).collect();
    svc
}

/// Past 256 backends a table's slots take two bytes each; removing one backend still moves
/// only its slots, read back through the compact table as through SELECTION.
#[test]
fn a_table_of_more_than_256_backends_is_kept_wide_and_rebalances_in_place() {
    let capacity = MapCapacity {
        backends: 512,
        selection_slots: 64 * 1024,
        table_members: 1024,
        ..small_capacity()
    };
    let mut maps = MemoryMaps::new(capacity);
    let mut planner = Planner::default();
    let empty = maps.read().unwrap();
    let plan = planner.plan(&empty, &state(&[("web", wide_service(300))]), capacity);
    let applied = apply_checked(&mut maps, &plan, "300 backends");
    let table = applied.selection.values().next().expect("one table");
    assert_eq!(table.slot_width(), 2, "300 members need two bytes per slot");
    assert_eq!(table.members().len(), 300, "every backend owns slots");
    let before = table_owners(&applied);

    let mut fewer = wide_service(300);
    let removed = *fewer.backends.keys().nth(150).expect("300 backends");
    fewer.backends.remove(&removed);
    let selection: Vec<SocketAddr> = fewer.backends.keys().copied().collect();
    fewer.frontends[0].selection = Arc::from(selection);
    let plan = planner.plan(&applied, &state(&[("web", fewer)]), capacity);
    let applied = apply_checked(&mut maps, &plan, "299 backends");
    let after = table_owners(&applied);
    for (slot, (old, new)) in before.iter().zip(&after).enumerate() {
        assert!(
            old == new || *old == removed,
            "slot {slot} moved from {old} to {new}, though {old} stayed"
        );
    }
    assert!(
        !after.contains(&removed),
        "the removed backend owns no slot"
    );
}
