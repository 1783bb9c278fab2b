//! A selection table as the agent keeps it in memory: the distinct backend ids it names and,
//! per slot, an index into them, as narrow as the member count allows (one byte for up to
//! 256 members, two up to 65 536, four beyond). A 1 021-slot table of 10 backends takes
//! about 1 KiB instead of 4; the kernel's SELECTION still holds a `u32` backend id per slot,
//! written from [`SelectionTable::ids`].
//!
//! Cloning shares the table (an `Arc` inside): the planner's cache, the ops of a plan and
//! the applied state hold one copy between them.

use std::{fmt, sync::Arc};

use rustc_hash::FxHashMap;

/// The backend id of each slot of one Maglev table, stored compactly (see the module).
#[derive(Clone)]
pub struct SelectionTable(Arc<Compact>);

struct Compact {
    /// The distinct backend ids the slots name, each named by at least one slot.
    members: Box<[u32]>,
    slots: Indices,
}

/// Per slot, an index into `members`.
enum Indices {
    Narrow(Box<[u8]>),
    Wide(Box<[u16]>),
    Full(Box<[u32]>),
}

impl Indices {
    /// Indices of the width `member_count` needs.
    fn new(member_count: usize, indices: impl ExactSizeIterator<Item = u32>) -> Self {
        if member_count <= 1 << u8::BITS {
            Indices::Narrow(indices.map(|index| index as u8).collect())
        } else if member_count <= 1 << u16::BITS {
            Indices::Wide(indices.map(|index| index as u16).collect())
        } else {
            Indices::Full(indices.collect())
        }
    }

    fn len(&self) -> usize {
        match self {
            Indices::Narrow(slots) => slots.len(),
            Indices::Wide(slots) => slots.len(),
            Indices::Full(slots) => slots.len(),
        }
    }

    fn get(&self, slot: usize) -> Option<u32> {
        match self {
            Indices::Narrow(slots) => slots.get(slot).map(|&i| u32::from(i)),
            Indices::Wide(slots) => slots.get(slot).map(|&i| u32::from(i)),
            Indices::Full(slots) => slots.get(slot).copied(),
        }
    }

    /// Calls `each(slot, index)` for every slot in order.
    fn for_each(&self, mut each: impl FnMut(usize, u32)) {
        match self {
            Indices::Narrow(slots) => slots
                .iter()
                .enumerate()
                .for_each(|(slot, &i)| each(slot, u32::from(i))),
            Indices::Wide(slots) => slots
                .iter()
                .enumerate()
                .for_each(|(slot, &i)| each(slot, u32::from(i))),
            Indices::Full(slots) => slots
                .iter()
                .enumerate()
                .for_each(|(slot, &i)| each(slot, i)),
        }
    }

    /// The bytes each slot takes.
    fn width(&self) -> usize {
        match self {
            Indices::Narrow(_) => 1,
            Indices::Wide(_) => 2,
            Indices::Full(_) => 4,
        }
    }
}

impl SelectionTable {
    /// The table whose slot `s` names `candidates[indices[s]]`: how the planner builds one
    /// from a Maglev table over `candidates`. Candidates no slot names are left out.
    ///
    /// # Panics
    /// If an index is out of `candidates`' range.
    pub fn from_indices(candidates: &[u32], indices: &[u32]) -> Self {
        let mut named = vec![false; candidates.len()];
        for &index in indices {
            named[index as usize] = true;
        }
        // Members in the candidates' order, so the same table built twice is the same bytes.
        let mut position = vec![u32::MAX; candidates.len()];
        let mut members = Vec::with_capacity(candidates.len());
        for ((id, named), position) in candidates.iter().zip(named).zip(&mut position) {
            if named {
                *position = members.len() as u32;
                members.push(*id);
            }
        }
        let slots = Indices::new(
            members.len(),
            indices.iter().map(|&index| position[index as usize]),
        );
        SelectionTable(Arc::new(Compact {
            members: members.into_boxed_slice(),
            slots,
        }))
    }

    /// The table holding `ids`, one backend id per slot (as read back from SELECTION).
    pub fn from_ids(ids: &[u32]) -> Self {
        let mut index_of: FxHashMap<u32, u32> = FxHashMap::default();
        let mut members = Vec::new();
        let indices: Vec<u32> = ids
            .iter()
            .map(|id| {
                *index_of.entry(*id).or_insert_with(|| {
                    members.push(*id);
                    members.len() as u32 - 1
                })
            })
            .collect();
        let slots = Indices::new(members.len(), indices.into_iter());
        SelectionTable(Arc::new(Compact {
            members: members.into_boxed_slice(),
            slots,
        }))
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.0.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend id in `slot`.
    pub fn get(&self, slot: usize) -> Option<u32> {
        let index = self.0.slots.get(slot)?;
        Some(self.0.members[index as usize])
    }

    /// The backend id of every slot, in slot order: what SELECTION holds.
    pub fn ids(&self) -> Vec<u32> {
        self.map_members(|id| id)
    }

    /// `each` of every slot's backend id, in slot order, calling `each` once per member.
    pub fn map_members<T: Clone>(&self, each: impl FnMut(u32) -> T) -> Vec<T> {
        let mapped: Vec<T> = self.0.members.iter().copied().map(each).collect();
        let mut slots = Vec::with_capacity(self.len());
        self.0
            .slots
            .for_each(|_, index| slots.push(mapped[index as usize].clone()));
        slots
    }

    /// The distinct backend ids the slots name (each at least once), in no particular order.
    pub fn members(&self) -> &[u32] {
        &self.0.members
    }

    /// Each backend the table names with the first slot naming it, in id order: the
    /// table's TABLE_MEMBERS entries.
    pub fn first_slots(&self) -> Vec<(u32, u32)> {
        let members = &self.0.members;
        let mut first = vec![u32::MAX; members.len()];
        self.0.slots.for_each(|slot, index| {
            let found = &mut first[index as usize];
            if *found == u32::MAX {
                *found = slot as u32;
            }
        });
        let mut pairs: Vec<(u32, u32)> = members.iter().copied().zip(first).collect();
        pairs.sort_unstable();
        pairs
    }

    /// Whether both are the same allocation (a clone of one another): equal without a look.
    pub fn shares(&self, other: &SelectionTable) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The bytes each slot takes in memory (1, 2 or 4).
    pub fn slot_width(&self) -> usize {
        self.0.slots.width()
    }
}

impl PartialEq for SelectionTable {
    /// Slot by slot, the same backend ids (however the two are stored).
    fn eq(&self, other: &Self) -> bool {
        if self.shares(other) {
            return true;
        }
        if self.len() != other.len() {
            return false;
        }
        // Same members in the same order: compare the indices alone.
        let same_members = self.0.members == other.0.members;
        let mut same = true;
        self.0.slots.for_each(|slot, index| {
            same &= if same_members {
                other.0.slots.get(slot) == Some(index)
            } else {
                other.get(slot) == Some(self.0.members[index as usize])
            }
        });
        same
    }
}

impl Eq for SelectionTable {}

impl fmt::Debug for SelectionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

impl From<Vec<u32>> for SelectionTable {
    fn from(ids: Vec<u32>) -> Self {
        SelectionTable::from_ids(&ids)
    }
}

impl From<&[u32]> for SelectionTable {
    fn from(ids: &[u32]) -> Self {
        SelectionTable::from_ids(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_as_written() {
        let ids: Vec<u32> = (0..1021).map(|slot| 100 + (slot * 7) % 10).collect();
        let table = SelectionTable::from_ids(&ids);
        assert_eq!(table.ids(), ids);
        assert_eq!(table.len(), 1021);
        assert_eq!(table.get(3), Some(ids[3]));
        assert_eq!(table.get(1021), None);
        let mut members = table.members().to_vec();
        members.sort_unstable();
        assert_eq!(members, (100..110).collect::<Vec<_>>());
    }

    #[test]
    fn planner_indices_map_to_the_candidates_ids_and_skip_unnamed_ones() {
        let candidates = [40, 10, 30, 20];
        // Candidate 30 (index 2) owns no slot.
        let indices = [3, 0, 1, 3, 0];
        let table = SelectionTable::from_indices(&candidates, &indices);
        assert_eq!(table.ids(), vec![20, 40, 10, 20, 40]);
        assert_eq!(table.first_slots(), vec![(10, 2), (20, 0), (40, 1)]);
        assert!(
            !table.members().contains(&30),
            "a candidate without a slot is no member"
        );
        assert_eq!(
            table,
            SelectionTable::from_ids(&[20, 40, 10, 20, 40]),
            "equal to the same ids read back, whatever the members' order"
        );
    }

    #[test]
    fn index_width_follows_the_member_count() {
        for (members, width) in [(1, 1), (256, 1), (257, 2), (65_536, 2), (65_537, 4)] {
            let ids: Vec<u32> = (0..members as u32).map(|i| i * 3 + 1).collect();
            let table = SelectionTable::from_ids(&ids);
            assert_eq!(
                table.slot_width(),
                width,
                "{members} members: {width} byte(s) per slot"
            );
            assert_eq!(table.ids(), ids, "{members} members read back");
            let indices: Vec<u32> = (0..members as u32).rev().collect();
            let planned = SelectionTable::from_indices(&ids, &indices);
            assert_eq!(planned.slot_width(), width, "{members} members, planned");
            assert_eq!(
                planned.ids(),
                ids.iter().rev().copied().collect::<Vec<_>>(),
                "{members} members, planned, read back"
            );
        }
    }

    #[test]
    fn equality_is_slot_by_slot() {
        let a = SelectionTable::from_ids(&[1, 2, 1, 2]);
        assert_eq!(a, SelectionTable::from_indices(&[2, 1], &[1, 0, 1, 0]));
        assert_ne!(a, SelectionTable::from_ids(&[2, 1, 2, 1]));
        assert_ne!(a, SelectionTable::from_ids(&[1, 2, 1]));
        assert!(a.shares(&a.clone()));
        assert!(!a.shares(&SelectionTable::from_ids(&[1, 2, 1, 2])));
        assert!(SelectionTable::from_ids(&[]).is_empty());
    }

    #[test]
    fn map_members_maps_each_slot_through_its_member() {
        let table = SelectionTable::from_ids(&[7, 3, 7, 7, 3]);
        let mut calls = 0;
        let names = table.map_members(|id| {
            calls += 1;
            format!("b{id}")
        });
        assert_eq!(names, ["b7", "b3", "b7", "b7", "b3"]);
        assert_eq!(calls, 2, "once per member, not per slot");
    }
}
