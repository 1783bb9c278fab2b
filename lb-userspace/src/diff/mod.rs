//! The diff: what is in the maps (applied) versus what should be (desired) -> the ordered map
//! operations that get from one to the other without a packet ever seeing a half-written
//! service (make-before-break):
//!
//! 1. service names, backends, new selection tables (written into free space, never over a
//!    table in use) and source ranges;
//! 2. frontends, which then point at complete tables;
//! 3. deletions: frontends, then source ranges, backends and names nobody uses any more.
//!    Old table blocks need no write: once no frontend points at them they are free.
//!
//! Ids are allocated here: a service keeps the id its name has in the applied state, a
//! backend the id its address has, so a restarted agent adopting the maps writes only the
//! difference. Applying the same desired state twice gives no operation.
//!
//! A service port whose frontends, backends, table or ranges would not fit is rejected whole
//! (and named in [`Plan::rejected`]); if it was applied before, it stays exactly as it was.
//!
//! By role: `ids` hands out ids; `tables` sizes and places selection tables (built by
//! `maglev`); `admission` decides whether a service port fits and what it adds; `planner`
//! runs whole and scoped plans and orders the ops; `stale` lists the UDP service ports whose
//! flows to endpoints that stopped serving go once the ops are written; `encode` lays the
//! desired state out as the maps' types; `drift` describes a plan for a person (`slicelb check`).

mod admission;
mod buddy;
mod drift;
pub mod encode;
mod ids;
mod maglev;
mod planner;
mod stale;
mod tables;

#[cfg(test)]
mod tests;

pub use admission::RejectReason;
pub use buddy::BuddyAllocator;
pub use drift::{Difference, differences};
pub use planner::{Planner, unindexed_tables};
#[cfg(test)]
pub(crate) use tables::free_selection;

use crate::{
    dataplane::{AppliedState, MapCapacity, MapOp, StaleFlows},
    model::{DesiredState, ServicePortName},
};

/// The operations to apply, in order, the services that did not fit, and the flows to
/// delete once the operations are written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<MapOp>,
    pub rejected: Vec<(ServicePortName, RejectReason)>,
    /// UDP flows to endpoints that stopped serving (see `stale`); not a difference of the
    /// configuration maps, so `slicelb check` does not show it.
    pub stale_flows: StaleFlows,
}

/// Plans with a fresh [`Planner`]: what a restarted agent does.
pub fn plan(applied: &AppliedState, desired: &DesiredState, capacity: MapCapacity) -> Plan {
    Planner::default().plan(applied, desired, capacity)
}
