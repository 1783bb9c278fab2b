//! Keeping an [`AppliedState`] in step with the ops written to the kernel, so the agent need
//! not read every map back after each sync.

use super::{AppliedState, MapOp, members_of};

impl AppliedState {
    /// Applies `ops` as the kernel maps would, then forgets selection tables that no frontend
    /// points at any more (their space is free again).
    pub fn apply(&mut self, ops: &[MapOp]) {
        // Tables a frontend pointed at before an op replaced or removed it: the only ones
        // that may have lost their last frontend.
        let mut maybe_unused: Vec<u32> = Vec::new();
        for op in ops {
            if let MapOp::PutFrontend { key, .. } | MapOp::DeleteFrontend { key } = op
                && let Some(old) = self.frontends.get(key).filter(|v| v.table_size > 0)
            {
                maybe_unused.push(old.table_offset);
            }
            match op {
                MapOp::PutBackend { id, backend } => {
                    self.backends.insert(*id, *backend);
                }
                MapOp::DeleteBackend { id } => {
                    self.backends.remove(id);
                }
                MapOp::PutSelection { offset, slots } => {
                    self.selection.insert(*offset, slots.clone());
                }
                MapOp::PutTableMembers { offset, slots } => {
                    let count = u32::try_from(members_of(slots).len()).unwrap_or(u32::MAX);
                    self.table_members.insert(*offset, count);
                }
                MapOp::DeleteTableMembers { offset, .. } => {
                    self.table_members.remove(offset);
                }
                MapOp::PutFrontend { key, value } => {
                    self.frontends.insert(*key, *value);
                }
                MapOp::DeleteFrontend { key } => {
                    self.frontends.remove(key);
                }
                MapOp::PutServiceName { id, name } => {
                    self.service_names.insert(*id, name.clone());
                }
                MapOp::DeleteServiceName { id } => {
                    self.service_names.remove(id);
                }
                MapOp::PutSourceRange { key, prefix_len } => {
                    self.source_ranges.insert((*key, *prefix_len));
                }
                MapOp::DeleteSourceRange { key, prefix_len } => {
                    self.source_ranges.remove(&(*key, *prefix_len));
                }
            }
        }
        // A table written by these ops that no frontend points at is also unused.
        maybe_unused.extend(ops.iter().filter_map(|op| match op {
            MapOp::PutSelection { offset, .. } => Some(*offset),
            _ => None,
        }));
        maybe_unused.sort_unstable();
        maybe_unused.dedup();
        if maybe_unused.is_empty() {
            return;
        }
        let mut unused = maybe_unused;
        for value in self.frontends.values().filter(|v| v.table_size > 0) {
            if let Ok(at) = unused.binary_search(&value.table_offset) {
                unused.remove(at);
                if unused.is_empty() {
                    return;
                }
            }
        }
        for offset in unused {
            self.selection.remove(&offset);
        }
    }

    /// Selection slots in use (whole tables).
    pub fn selection_slots_used(&self) -> u64 {
        self.selection.values().map(|t| t.len() as u64).sum()
    }

    /// Entries of TABLE_MEMBERS the indexed tables hold.
    pub fn table_member_count(&self) -> u64 {
        self.table_members.values().map(|&n| u64::from(n)).sum()
    }
}
