//! Keeping an [`AppliedState`] in step with the ops written to the kernel, so the agent need
//! not read every map back after each sync.

use super::{AppliedState, MapOp};

impl AppliedState {
    /// Applies `ops` as the kernel maps would, then forgets selection tables that no frontend
    /// points at any more (their space is free again).
    pub fn apply(&mut self, ops: &[MapOp]) {
        for op in ops {
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
        let in_use: std::collections::BTreeSet<u32> = self
            .frontends
            .values()
            .filter(|v| v.table_size > 0)
            .map(|v| v.table_offset)
            .collect();
        self.selection.retain(|offset, _| in_use.contains(offset));
    }

    /// Selection slots in use (whole tables).
    pub fn selection_slots_used(&self) -> u64 {
        self.selection.values().map(|t| t.len() as u64).sum()
    }
}
