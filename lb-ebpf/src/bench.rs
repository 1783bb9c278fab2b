//! Benchmark helpers, never attached by the agent: a traffic generator run with
//! `BPF_PROG_TEST_RUN` in live-frames mode, a counting sink for the backends, and a pass
//! program that turns on a veth's XDP path. Self-contained: own maps, names start `bench_`.
//!
//! Map layouts are plain byte arrays so the userspace side needs no shared type:
//! - `BENCH_GEN_CONF[0]` targets, `[1]` flows per target, `[2]` first source port.
//! - `BENCH_GEN_HDR[0]`: the frame's Ethernet, IPv4 and UDP headers (42 bytes used),
//!   copied over every packet first: a frame that went through a forwarding node comes back
//!   to the generator's page pool with that node's rewrites (MACs, TTL).
//! - `BENCH_GEN_TGTS[i]`: bytes 0..4 IPv4 address, 4..6 UDP port (network order).
//! - `BENCH_SINK_CONF[0]`: expected destination address and lowest port; `[1]`: expected
//!   source address and the port after the highest (same layout; ports in network order).
//! - `BENCH_SINK_STAT[0]`: UDP packets seen, `[1]`: those with the expected addresses.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ETH_P_IPV4_BE: [u8; 2] = [0x08, 0x00];
const IPPROTO_UDP: u8 = 17;

pub const GEN_MAX_TARGETS: u32 = 65_536;

#[map(name = "BENCH_GEN_CONF")]
static BENCH_GEN_CONFIG: Array<u32> = Array::with_max_entries(3, 0);

const HEADERS_LEN: usize = ETH_LEN + IPV4_LEN + UDP_LEN;

#[map(name = "BENCH_GEN_HDR")]
static BENCH_GEN_HEADERS: Array<[u8; 48]> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_GEN_TGTS")]
static BENCH_GEN_TARGETS: Array<[u8; 8]> = Array::with_max_entries(GEN_MAX_TARGETS, 0);

#[map(name = "BENCH_GEN_SEQ")]
static BENCH_GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "BENCH_SINK_CONF")]
static BENCH_SINK_CONFIG: Array<[u8; 8]> = Array::with_max_entries(2, 0);

#[map(name = "BENCH_SINK_STAT")]
static BENCH_SINK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
fn config(index: u32) -> u32 {
    BENCH_GEN_CONFIG.get(index).copied().unwrap_or(0)
}

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
    if start + HEADERS_LEN > ctx.data_end() {
        return None;
    }
    let targets = config(0);
    let flows = config(1);
    if targets == 0 || flows == 0 {
        return None;
    }
    let seq_ptr = BENCH_GEN_SEQ.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let seq = unsafe {
        let seq = *seq_ptr;
        *seq_ptr = seq + 1;
        seq
    };
    let target_index = (seq % u64::from(targets)) as u32;
    let flow = ((seq / u64::from(targets)) % u64::from(flows)) as u32;
    let target = BENCH_GEN_TARGETS.get(target_index)?;
    let headers = BENCH_GEN_HEADERS.get(0)?;
    let src_port = (config(2) + flow) as u16;
    let ip = (start + ETH_LEN) as *mut u8;
    let udp = (start + ETH_LEN + IPV4_LEN) as *mut u8;
    // SAFETY: 42 bytes from `start` were checked above.
    unsafe {
        core::ptr::copy_nonoverlapping(headers.as_ptr(), start as *mut u8, HEADERS_LEN);
        core::ptr::copy_nonoverlapping(target.as_ptr(), ip.add(16), 4);
        core::ptr::copy_nonoverlapping(src_port.to_be_bytes().as_ptr(), udp, 2);
        core::ptr::copy_nonoverlapping(target.as_ptr().add(4), udp.add(2), 2);
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
    if ether_type != ETH_P_IPV4_BE || version_ihl != 0x45 || proto != IPPROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    count(0);
    let (Some(expected_dst), Some(expected_src)) =
        (BENCH_SINK_CONFIG.get(0), BENCH_SINK_CONFIG.get(1))
    else {
        return xdp_action::XDP_DROP;
    };
    let port_low = u16::from_be_bytes([expected_dst[4], expected_dst[5]]);
    let port_end = u16::from_be_bytes([expected_src[4], expected_src[5]]);
    // SAFETY: as above.
    let port = unsafe { u16::from_be_bytes([*udp.add(2), *udp.add(3)]) };
    // SAFETY: as above.
    let matches = unsafe {
        *ip.add(16) == expected_dst[0]
            && *ip.add(17) == expected_dst[1]
            && *ip.add(18) == expected_dst[2]
            && *ip.add(19) == expected_dst[3]
            && port >= port_low
            && port < port_end
            && *ip.add(12) == expected_src[0]
            && *ip.add(13) == expected_src[1]
            && *ip.add(14) == expected_src[2]
            && *ip.add(15) == expected_src[3]
    };
    if matches {
        count(1);
    }
    xdp_action::XDP_DROP
}

/// Passes every packet: attached where a veth needs an XDP program for its peer to
/// `XDP_TX` into it, when no slicelb program is there.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
