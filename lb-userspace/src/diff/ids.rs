//! Service and backend ids: allocated here, never by the model (which speaks in names).

use std::collections::BTreeSet;

/// Ids in `1..limit` (0 is never used), handed out from just after the highest one in use,
/// so that a freed id is not reused at once while stale flow state may still name it.
pub(super) struct IdAllocator<'a> {
    /// Whether the applied state uses an id: looked up, not copied, so that a plan of a
    /// few services does not copy every id in the maps.
    taken: Box<dyn Fn(u32) -> bool + 'a>,
    taken_count: usize,
    /// Ids this plan handed out.
    handed: BTreeSet<u32>,
    limit: u32,
    cursor: u32,
}

impl<'a> IdAllocator<'a> {
    /// `taken_count` ids are taken, the highest is `highest`.
    pub(super) fn new(
        taken: impl Fn(u32) -> bool + 'a,
        taken_count: usize,
        highest: Option<u32>,
        limit: u32,
    ) -> Self {
        Self {
            taken: Box::new(taken),
            taken_count,
            handed: BTreeSet::new(),
            limit,
            cursor: highest.map_or(1, |last| last + 1),
        }
    }

    pub(super) fn allocate(&mut self) -> Option<u32> {
        let usable = u64::from(self.limit.saturating_sub(1));
        if (self.taken_count + self.handed.len()) as u64 >= usable {
            return None;
        }
        let mut id = self.cursor;
        loop {
            if id == 0 || id >= self.limit {
                id = 1;
            }
            if !(self.taken)(id) && self.handed.insert(id) {
                self.cursor = id + 1;
                return Some(id);
            }
            id += 1;
        }
    }

    pub(super) fn release(&mut self, id: u32) {
        self.handed.remove(&id);
    }
}
