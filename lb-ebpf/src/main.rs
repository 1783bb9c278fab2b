#![no_std]
#![no_main]

mod bench;

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, xdp_action},
    macros::{classifier, map, xdp},
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use lb_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, ProtoCounter};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

#[map(name = "PROTO_STATS")]
static PROTO_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProtoCounter::COUNT, 0);

#[inline(always)]
fn count(counter: ProtoCounter) {
    if let Some(slot) = PROTO_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

fn classify(start: usize, end: usize) -> Option<()> {
    let eth: *const EthHdr = ptr_at(start, end, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let proto = match unsafe { (*eth).ether_type() } {
        Ok(EtherType::Ipv4) => {
            count(ProtoCounter::Ipv4);
            let ip: *const Ipv4Hdr = ptr_at(start, end, EthHdr::LEN)?;
            unsafe { (*ip).proto }
        }
        Ok(EtherType::Ipv6) => {
            count(ProtoCounter::Ipv6);
            let ip: *const Ipv6Hdr = ptr_at(start, end, EthHdr::LEN)?;
            unsafe { (*ip).next_hdr }
        }
        _ => {
            count(ProtoCounter::NonIp);
            return Some(());
        }
    };
    count(match proto {
        PROTO_TCP => ProtoCounter::Tcp,
        PROTO_UDP => ProtoCounter::Udp,
        PROTO_SCTP => ProtoCounter::Sctp,
        PROTO_ICMP | PROTO_ICMPV6 => ProtoCounter::Icmp,
        _ => ProtoCounter::OtherL4,
    });
    Some(())
}

#[xdp]
pub fn slicelb_xdp(ctx: XdpContext) -> u32 {
    let _ = classify(ctx.data(), ctx.data_end());
    xdp_action::XDP_PASS
}

#[classifier]
pub fn slicelb_tc_ingress(ctx: TcContext) -> i32 {
    let _ = classify(ctx.data(), ctx.data_end());
    TC_ACT_PIPE
}

#[classifier]
pub fn slicelb_tc_egress(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
