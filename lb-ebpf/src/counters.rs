//! Per-CPU counters: why each packet got its verdict, what protocols went by, what each
//! service carried, and what socket-level balancing did.

use aya_ebpf::maps::PerCpuArray;
use lb_common::{FastPathCounter, ProtoCounter, Reason, SocketCounter};

use crate::maps::{FAST_PATH_STATS, PROTO_STATS, REASON_STATS, SERVICE_STATS, SOCKET_STATS};

/// Runs `f` on this CPU's slot `index` of `map`, when the index is in range.
#[inline(always)]
fn update_slot<T>(map: &PerCpuArray<T>, index: u32, f: impl FnOnce(&mut T)) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs; the borrow
        // ends with `f`.
        f(unsafe { &mut *slot });
    }
}

#[inline(always)]
pub fn count_proto(counter: ProtoCounter) {
    update_slot(&PROTO_STATS, counter as u32, |count| *count += 1);
}

#[inline(always)]
pub fn count_reason(reason: Reason) {
    update_slot(&REASON_STATS, reason as u32, |count| *count += 1);
}

#[inline(always)]
pub fn count_service(service_id: u32, bytes: u32, new_flow: bool) {
    update_slot(&SERVICE_STATS, service_id, |slot| {
        slot.packets += 1;
        slot.bytes += bytes as u64;
        if new_flow {
            slot.new_flows += 1;
        }
    });
}

#[inline(always)]
pub fn count_fast_path(counter: FastPathCounter) {
    update_slot(&FAST_PATH_STATS, counter as u32, |count| *count += 1);
}

#[inline(always)]
pub fn count_socket(counter: SocketCounter) {
    update_slot(&SOCKET_STATS, counter as u32, |count| *count += 1);
}

/// A connection (or unconnected UDP datagram) sent to a backend of `service_id` at socket level.
#[inline(always)]
pub fn count_socket_translation(service_id: u32) {
    update_slot(&SERVICE_STATS, service_id, |slot| {
        slot.socket_translations += 1
    });
}
