//! The benchmark's own programs, never attached by the agent and never in the `slicelb`
//! binary (the lab embeds this object): a traffic generator run with `BPF_PROG_TEST_RUN` in
//! live-frames mode, a counting sink for the backends, a pass program that turns on a veth's
//! XDP path, and the restore programs the per-packet bench runs before the program measured.
//! Map layouts: `lb_common::bench`.
#![no_std]
#![no_main]
#![expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya-ebpf's #[classifier] generates a safe extern fn that takes the raw skb pointer"
)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{TC_ACT_SHOT, tcx_action_base::TCX_NEXT, xdp_action},
    helpers::generated::{bpf_skb_store_bytes, bpf_xdp_store_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, DevMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};

use lb_common::{
    PROTO_UDP,
    bench::{
        Endpoint4, FLOOR_MAX_HOPS, FloorHop, GEN_HEADERS_LEN, GEN_MAX_TARGETS, GenConfig,
        GenHeaders, RESTORE_FRAME_LEN, RestoreConfig, RestoreFrame, SINK_CORRECT, SINK_SEEN,
        SinkConfig,
    },
};

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ETH_P_IPV4_BE: [u8; 2] = [0x08, 0x00];

#[map(name = "BENCH_GEN_CONF")]
static BENCH_GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_GEN_HDR")]
static BENCH_GEN_HEADERS: Array<GenHeaders> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_GEN_TGTS")]
static BENCH_GEN_TARGETS: Array<Endpoint4> = Array::with_max_entries(GEN_MAX_TARGETS, 0);

#[map(name = "BENCH_GEN_SEQ")]
static BENCH_GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "BENCH_SINK_CONF")]
static BENCH_SINK_CONFIG: Array<SinkConfig> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_SINK_STAT")]
static BENCH_SINK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The IPv4 header checksum over 20 bytes at `ip` (checksum field taken as zero).
#[inline(always)]
fn ipv4_checksum(ip: *const u8) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IPV4_LEN {
        if i != 10 {
            // SAFETY: the caller checked that 20 bytes from `ip` are inside the packet.
            let word = unsafe { u16::from_be_bytes([*ip.add(i), *ip.add(i + 1)]) };
            sum += u32::from(word);
        }
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites the template IPv4/UDP frame to the next flow and sends it back out of the
/// device it was "received" on (`XDP_TX` in live-frames mode transmits on that device).
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    match try_bench_gen(&ctx) {
        Some(action) => action,
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn try_bench_gen(ctx: &XdpContext) -> Option<u32> {
    let start = ctx.data();
    if start + GEN_HEADERS_LEN > ctx.data_end() {
        return None;
    }
    let config = BENCH_GEN_CONFIG.get(0)?;
    if config.targets == 0 || config.flows == 0 {
        return None;
    }
    let seq_ptr = BENCH_GEN_SEQ.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let seq = unsafe {
        let seq = *seq_ptr;
        *seq_ptr = seq + 1;
        seq
    };
    let target_index = (seq % u64::from(config.targets)) as u32;
    let flow = ((seq / u64::from(config.targets)) % u64::from(config.flows)) as u32;
    let target = BENCH_GEN_TARGETS.get(target_index)?;
    let headers = BENCH_GEN_HEADERS.get(0)?;
    let src_port = (config.first_port + flow) as u16;
    let ip = (start + ETH_LEN) as *mut u8;
    let udp = (start + ETH_LEN + IPV4_LEN) as *mut u8;
    // SAFETY: 42 bytes from `start` were checked above.
    unsafe {
        core::ptr::copy_nonoverlapping(headers.bytes.as_ptr(), start as *mut u8, GEN_HEADERS_LEN);
        core::ptr::copy_nonoverlapping(target.addr.as_ptr(), ip.add(16), 4);
        core::ptr::copy_nonoverlapping(src_port.to_be_bytes().as_ptr(), udp, 2);
        core::ptr::copy_nonoverlapping(target.port.as_ptr(), udp.add(2), 2);
        // UDP over IPv4 may carry no checksum.
        *udp.add(6) = 0;
        *udp.add(7) = 0;
        let checksum = ipv4_checksum(ip).to_be_bytes();
        *ip.add(10) = checksum[0];
        *ip.add(11) = checksum[1];
    }
    Some(xdp_action::XDP_TX)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = BENCH_SINK_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Counts and drops IPv4 UDP packets on a backend, noting those that arrive rewritten to
/// this backend's address and one of its ports from the client's address; passes everything else
/// (ARP must reach the stack so the node can resolve the backend).
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_LEN + IPV4_LEN + UDP_LEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *const u8;
    let ip = (start + ETH_LEN) as *const u8;
    let udp = (start + ETH_LEN + IPV4_LEN) as *const u8;
    // SAFETY: 42 bytes from `start` were checked above.
    let (ether_type, version_ihl, proto) =
        unsafe { ([*eth.add(12), *eth.add(13)], *ip, *ip.add(9)) };
    if ether_type != ETH_P_IPV4_BE || version_ihl != 0x45 || proto != PROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    count(SINK_SEEN);
    let Some(expected) = BENCH_SINK_CONFIG.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let (dst, src) = (expected.destination.addr, expected.source.addr);
    let (port_low, port_end) = (expected.destination.port(), expected.source.port());
    // SAFETY: as above.
    let port = unsafe { u16::from_be_bytes([*udp.add(2), *udp.add(3)]) };
    // SAFETY: as above.
    let matches = unsafe {
        *ip.add(16) == dst[0]
            && *ip.add(17) == dst[1]
            && *ip.add(18) == dst[2]
            && *ip.add(19) == dst[3]
            && port >= port_low
            && port < port_end
            && *ip.add(12) == src[0]
            && *ip.add(13) == src[1]
            && *ip.add(14) == src[2]
            && *ip.add(15) == src[3]
    };
    if matches {
        count(SINK_CORRECT);
    }
    xdp_action::XDP_DROP
}

#[map(name = "BENCH_FLOOR_HOP")]
static BENCH_FLOOR_HOPS: Array<FloorHop> = Array::with_max_entries(FLOOR_MAX_HOPS, 0);

#[map(name = "BENCH_FLOOR_N")]
static BENCH_FLOOR_COUNT: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_FLOOR_DEV")]
static BENCH_FLOOR_DEVICES: DevMap = DevMap::with_max_entries(FLOOR_MAX_HOPS, 0);

/// The throughput section's forwarding floor: sends each IPv4 UDP frame to a backend's
/// device (by its source port, so every backend gets its share) with that backend's fixed
/// MACs: what forwarding from XDP costs with no lookup at all. Passes everything else
/// (ARP must reach the node's stack).
#[xdp]
pub fn bench_forward_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_LEN + IPV4_LEN + UDP_LEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *mut u8;
    let ip = (start + ETH_LEN) as *const u8;
    let udp = (start + ETH_LEN + IPV4_LEN) as *const u8;
    // SAFETY: 42 bytes from `start` were checked above.
    let (ether_type, proto, source_port) = unsafe {
        (
            [*eth.add(12), *eth.add(13)],
            *ip.add(9),
            u16::from_be_bytes([*udp, *udp.add(1)]),
        )
    };
    if ether_type != ETH_P_IPV4_BE || proto != PROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    let Some(&count) = BENCH_FLOOR_COUNT.get(0) else {
        return xdp_action::XDP_PASS;
    };
    if count == 0 {
        return xdp_action::XDP_PASS;
    }
    let index = u32::from(source_port) % count;
    let Some(hop) = BENCH_FLOOR_HOPS.get(index) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: as above (12 bytes of MACs).
    unsafe {
        core::ptr::copy_nonoverlapping(hop.dst_mac.as_ptr(), eth, 6);
        core::ptr::copy_nonoverlapping(hop.src_mac.as_ptr(), eth.add(6), 6);
    }
    BENCH_FLOOR_DEVICES
        .redirect(index, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

/// Passes every packet: attached where a veth needs an XDP program for its peer to
/// `XDP_TX` into it, when no slicelb program is there.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[map(name = "BENCH_FRAME")]
static BENCH_FRAME: Array<RestoreFrame> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_FRAME_CONF")]
static BENCH_FRAME_CONFIG: Array<RestoreConfig> = Array::with_max_entries(1, 0);

/// A plain array, not per-CPU: a test run may move between CPUs from one call to the next,
/// and its flows must still never repeat (test runs of one program do not overlap).
#[map(name = "BENCH_FRAME_SEQ")]
static BENCH_FRAME_SEQ: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_XDP_NEXT")]
static BENCH_XDP_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map(name = "BENCH_TC_NEXT")]
static BENCH_TC_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The next flow's source port and address bytes when the frame varies per run.
#[inline(always)]
fn next_flow() -> Option<(u32, u32, [u8; 2], [u8; 2])> {
    let config = BENCH_FRAME_CONFIG.get(0)?;
    if config.port_offset == 0 {
        return None;
    }
    let seq_ptr = BENCH_FRAME_SEQ.get_ptr_mut(0)?;
    // SAFETY: a map value pointer; test runs of one program do not overlap.
    let seq = unsafe {
        let seq = *seq_ptr;
        *seq_ptr = seq + 1;
        seq
    };
    Some((
        config.port_offset,
        config.addr_offset,
        (seq as u16).to_be_bytes(),
        ((seq >> 16) as u16).to_be_bytes(),
    ))
}

/// Writes two bytes at `offset` of the packet, when inside it.
#[inline(always)]
fn put2(data: usize, end: usize, offset: u32, bytes: [u8; 2]) {
    let at = data + (offset as usize & 0xff);
    if at + 2 <= end {
        // SAFETY: bounds checked just above.
        unsafe {
            *(at as *mut u8) = bytes[0];
            *((at + 1) as *mut u8) = bytes[1];
        }
    }
}

/// The per-packet floor: does nothing.
#[xdp]
pub fn bench_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The per-packet baseline: slicelb's own parsing and protocol counting (this object's
/// copy of its maps), no lookup.
#[xdp]
pub fn bench_xdp_parse_only(ctx: XdpContext) -> u32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let _ = lb_ebpf::parse::parse(lb_ebpf::packet::Packet::xdp(&ctx), 0, true, &mut slot);
    xdp_action::XDP_PASS
}

/// Benchmark wrapper: puts the configured frame back over the packet (a test run repeats
/// on one buffer, so the program measured would otherwise see its own rewrite from the
/// second run on), optionally as a new flow, then tail-calls the program measured. Its own
/// cost is measured by pointing it at the empty program.
#[xdp]
pub fn bench_restore_xdp(ctx: XdpContext) -> u32 {
    let Some(frame) = BENCH_FRAME.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: helper call with a FRAME_LEN-byte map value as the source.
    let stored = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, frame.cast(), RESTORE_FRAME_LEN as u32) };
    if stored != 0 {
        return xdp_action::XDP_ABORTED;
    }
    if let Some((port_offset, addr_offset, port, addr)) = next_flow() {
        put2(ctx.data(), ctx.data_end(), port_offset, port);
        put2(ctx.data(), ctx.data_end(), addr_offset, addr);
    }
    // SAFETY: tail call into a program of the same type; on failure we fall through.
    unsafe { BENCH_XDP_NEXT.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// [`bench_restore_xdp`] for TC programs.
#[classifier]
pub fn bench_restore_tc(ctx: TcContext) -> i32 {
    let Some(frame) = BENCH_FRAME.get_ptr(0) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: helper call with a FRAME_LEN-byte map value as the source.
    let stored = unsafe {
        bpf_skb_store_bytes(
            ctx.as_ptr().cast(),
            0,
            frame.cast(),
            RESTORE_FRAME_LEN as u32,
            0,
        )
    };
    if stored != 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: tail call into a program of the same type; on failure we fall through.
    unsafe { BENCH_TC_NEXT.tail_call(&ctx, 0) };
    TC_ACT_SHOT
}

/// The empty TC program: what the TC restore costs on its own.
#[classifier]
pub fn bench_tc_empty(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
