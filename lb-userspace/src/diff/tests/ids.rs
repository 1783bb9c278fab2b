//! Ids: reused by name and address, so that a restarted agent writes only the difference.

use super::*;

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
