//! What a failed write leaves in TABLE_MEMBERS, and how the writers take it out again, so
//! that after a failure the map holds what the applied state read back says: the entries of
//! the tables frontends point at, and none of the tables no frontend points at that the
//! failed plan wrote or meant to delete.

use lb_common::TableMember;
use rustc_hash::FxHashSet;

use super::{MapOp, SelectionTable};

/// The TABLE_MEMBERS keys and values of the table at `offset` holding `slots`.
pub fn member_entries(offset: u32, slots: &SelectionTable) -> (Vec<TableMember>, Vec<u32>) {
    slots
        .first_slots()
        .into_iter()
        .map(|(backend_id, slot)| {
            (
                TableMember {
                    table_offset: offset,
                    backend_id,
                },
                slot,
            )
        })
        .unzip()
}

/// The TABLE_MEMBERS entries one `apply` wrote for tables it placed in free space. Until a
/// frontend points at such a table, only the writer knows them: the applied state read back
/// after a failure ([`super::MapWriter::read`], read-only for `slicelb check`) holds only
/// the tables frontends point at, so nothing else would ever delete them.
#[derive(Default)]
pub struct NewTables {
    /// Offsets of the tables this apply wrote into SELECTION.
    placed: FxHashSet<u32>,
    /// Each placed table whose entries were written, with how many of them (in
    /// [`member_entries`] order: all, or those before a batch stopped).
    indexed: Vec<(u32, SelectionTable, usize)>,
}

impl NewTables {
    /// A table is written at `offset`, into free space: no entry there is in use.
    pub fn place(&mut self, offset: u32) {
        self.placed.insert(offset);
    }

    /// Whether this apply placed a table at `offset`.
    pub fn placed(&self, offset: u32) -> bool {
        self.placed.contains(&offset)
    }

    /// The first `written` entries of the table at `offset` holding `slots` went in.
    pub fn wrote(&mut self, offset: u32, slots: &SelectionTable, written: usize) {
        if written > 0 && self.placed(offset) {
            self.indexed.push((offset, slots.clone(), written));
        }
    }

    /// Whether a failure of the apply that wrote `ops` can leave entries no table owns:
    /// some were written for a placed table, or `ops` delete an index.
    pub fn may_leave_orphans(&self, ops: &[MapOp]) -> bool {
        !self.indexed.is_empty()
            || ops
                .iter()
                .any(|op| matches!(op, MapOp::DeleteTableMembers { .. }))
    }

    /// After `ops` failed, the entries that the applied state read back will not own, given
    /// the tables frontends point at now (`referenced`): those written for placed tables,
    /// and those of the tables whose index `ops` delete (a plan deletes an index once the
    /// frontends have left its table, so a failure in between leaves it; some may be gone).
    pub fn orphans(&self, ops: &[MapOp], referenced: &FxHashSet<u32>) -> Vec<TableMember> {
        let written = self.indexed.iter().map(|(offset, slots, written)| {
            let (mut keys, _) = member_entries(*offset, slots);
            keys.truncate(*written);
            (*offset, keys)
        });
        let deleted = ops.iter().filter_map(|op| match op {
            MapOp::DeleteTableMembers { offset, slots } => {
                Some((*offset, member_entries(*offset, slots).0))
            }
            _ => None,
        });
        written
            .chain(deleted)
            .filter(|(offset, _)| !referenced.contains(offset))
            .flat_map(|(_, keys)| keys)
            .collect()
    }
}

/// How to put back the entries of tables in use that a stopped batch wrote: `written`, the
/// keys the kernel took (with `slots`, the whole batch's values), and `in_use`, each
/// such key's index in the batch with the value it held before (none: absent). Returns the
/// keys to delete (new to the map) and the entries to write back (changed).
pub fn undo_in_use(
    written: &[TableMember],
    slots: &[u32],
    in_use: &[(usize, Option<u32>)],
) -> (Vec<TableMember>, Vec<(TableMember, u32)>) {
    let mut doomed = Vec::new();
    let mut restored = Vec::new();
    for &(index, before) in in_use {
        let Some(key) = written.get(index) else {
            continue;
        };
        match before {
            None => doomed.push(*key),
            Some(old) if slots.get(index) != Some(&old) => restored.push((*key, old)),
            Some(_) => {}
        }
    }
    (doomed, restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(table_offset: u32, backend_id: u32) -> TableMember {
        TableMember {
            table_offset,
            backend_id,
        }
    }

    #[test]
    fn orphans_are_the_written_entries_of_placed_tables_and_deleted_indexes_no_frontend_uses() {
        let mut tables = NewTables::default();
        let table = SelectionTable::from_ids(&[7, 5, 9, 5]);
        tables.place(0);
        tables.place(100);
        tables.wrote(0, &table, 3);
        // Stopped after two of its three entries (5 and 7, in id order).
        tables.wrote(100, &table, 2);
        // Not placed by this apply: a table in use, indexed again.
        tables.wrote(200, &table, 3);
        let old = SelectionTable::from_ids(&[3]);
        let ops = [
            MapOp::DeleteTableMembers {
                offset: 300,
                slots: old.clone(),
            },
            MapOp::DeleteTableMembers {
                offset: 400,
                slots: old,
            },
        ];
        assert!(tables.may_leave_orphans(&[]));
        assert_eq!(
            tables.orphans(&ops, &FxHashSet::from_iter([0, 400])),
            vec![member(100, 5), member(100, 7), member(300, 3)],
            "tables a frontend points at keep their entries; of the others, those written go, \
             and the index of a table the plan left"
        );
        assert_eq!(tables.orphans(&[], &FxHashSet::from_iter([0, 100])), vec![]);
        assert!(!NewTables::default().may_leave_orphans(&[]));
        assert!(NewTables::default().may_leave_orphans(&ops));
    }

    #[test]
    fn entries_of_tables_in_use_are_deleted_when_new_and_put_back_when_changed() {
        let keys = [member(0, 1), member(0, 2), member(0, 3), member(0, 4)];
        let slots = [10, 11, 12, 13];
        // Before the batch: key 1 absent, key 2 the same, key 3 another slot; key 4 was
        // never written (the batch stopped at it).
        let in_use = [(0, None), (1, Some(11)), (2, Some(99)), (3, None)];
        let (doomed, restored) = undo_in_use(&keys[..3], &slots, &in_use);
        assert_eq!(
            doomed,
            vec![member(0, 1)],
            "only the new key written is deleted"
        );
        assert_eq!(
            restored,
            vec![(member(0, 3), 99)],
            "a changed entry gets its old slot back"
        );
    }
}
