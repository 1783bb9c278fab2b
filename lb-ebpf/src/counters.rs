//! Per-CPU counters: why each packet got its verdict, what protocols went by, and what each
//! service carried.

use lb_common::{ProtoCounter, Reason};

use crate::maps::{PROTO_STATS, REASON_STATS, SERVICE_STATS};

#[inline(always)]
pub fn count_proto(counter: ProtoCounter) {
    if let Some(slot) = PROTO_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(slot) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn count_service(service_id: u32, bytes: u32, new_flow: bool) {
    if let Some(slot) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes as u64;
            if new_flow {
                (*slot).new_flows += 1;
            }
        }
    }
}
