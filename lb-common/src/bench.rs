//! The benchmark's own programs (crate `lb-lab-ebpf`, never in the `slicelb` binary) and
//! their maps: one layout for the kernel side and the lab's loader.
//!
//! Addresses and ports are kept in network byte order, as they sit in the packet.

/// Program names (the Rust function names in `lb-lab-ebpf`).
pub mod program_names {
    /// Traffic generator, run with `BPF_PROG_TEST_RUN` in live-frames mode.
    pub const GEN: &str = "bench_gen";
    /// Counting sink on a backend's interface.
    pub const SINK: &str = "bench_sink";
    /// Passes everything: lets a veth take `XDP_TX` frames from its peer.
    pub const PASS: &str = "bench_pass";
    /// Writes the configured frame back, then tail-calls the XDP program measured.
    pub const RESTORE_XDP: &str = "bench_restore_xdp";
    /// [`RESTORE_XDP`] for TC programs.
    pub const RESTORE_TC: &str = "bench_restore_tc";
    /// The empty TC program: what the TC restore costs on its own.
    pub const TC_EMPTY: &str = "bench_tc_empty";
    /// The XDP program that does nothing: the per-packet floor.
    pub const XDP_EMPTY: &str = "bench_xdp_empty";
    /// slicelb's parsing and protocol counting, no lookup: the per-packet baseline.
    pub const XDP_PARSE_ONLY: &str = "bench_xdp_parse_only";
    /// The throughput section's forwarding floor: each frame to a backend's device with
    /// fixed MACs, no lookup.
    pub const FORWARD_FLOOR: &str = "bench_forward_floor";
}

/// Map names as the kernel sees them (at most 15 bytes).
pub mod map_names {
    /// [`super::GenConfig`], one entry.
    pub const GEN_CONFIG: &str = "BENCH_GEN_CONF";
    /// [`super::GenHeaders`], one entry.
    pub const GEN_HEADERS: &str = "BENCH_GEN_HDR";
    /// [`super::Endpoint4`] per target, up to [`super::GEN_MAX_TARGETS`].
    pub const GEN_TARGETS: &str = "BENCH_GEN_TGTS";
    /// Per-CPU `u64`: packets generated so far on this CPU.
    pub const GEN_SEQ: &str = "BENCH_GEN_SEQ";
    /// [`super::SinkConfig`], one entry.
    pub const SINK_CONFIG: &str = "BENCH_SINK_CONF";
    /// Per-CPU `u64` at [`super::SINK_SEEN`] and [`super::SINK_CORRECT`].
    pub const SINK_STATS: &str = "BENCH_SINK_STAT";
    /// [`super::RestoreFrame`], one entry.
    pub const RESTORE_FRAME: &str = "BENCH_FRAME";
    /// [`super::RestoreConfig`], one entry.
    pub const RESTORE_CONFIG: &str = "BENCH_FRAME_CONF";
    /// `u64`: restore runs so far (never reset, so flows never repeat).
    pub const RESTORE_SEQ: &str = "BENCH_FRAME_SEQ";
    /// Program array: the XDP program measured behind the restore.
    pub const RESTORE_XDP_NEXT: &str = "BENCH_XDP_NEXT";
    /// Program array: the TC program measured behind the restore.
    pub const RESTORE_TC_NEXT: &str = "BENCH_TC_NEXT";
    /// [`super::FloorHop`] per backend, up to [`super::FLOOR_MAX_HOPS`].
    pub const FLOOR_HOPS: &str = "BENCH_FLOOR_HOP";
    /// `u32`, one entry: how many of `FLOOR_HOPS` are used.
    pub const FLOOR_COUNT: &str = "BENCH_FLOOR_N";
    /// DEVMAP: the backends' devices, by the same index as `FLOOR_HOPS`.
    pub const FLOOR_DEVICES: &str = "BENCH_FLOOR_DEV";
}

/// Most backends the forwarding floor sends to.
pub const FLOOR_MAX_HOPS: u32 = 16;

/// The MACs the forwarding floor writes for one backend (its device is in the DEVMAP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloorHop {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// Most targets the generator cycles through.
pub const GEN_MAX_TARGETS: u32 = 65_536;

/// Ethernet + IPv4 + UDP: the headers the generator copies over every packet.
pub const GEN_HEADERS_LEN: usize = 14 + 20 + 8;

/// What the generator sends: `flows` source ports from `first_port` to each of `targets`
/// targets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    pub targets: u32,
    pub flows: u32,
    pub first_port: u32,
}

/// The template frame's headers, copied over every packet first: a frame that went through
/// a forwarding node comes back to the generator's page pool with that node's rewrites (MACs,
/// TTL). Bytes past [`GEN_HEADERS_LEN`] are unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenHeaders {
    pub bytes: [u8; 48],
}

/// An IPv4 address and UDP port, in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint4 {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

impl Endpoint4 {
    pub const fn new(addr: [u8; 4], port: u16) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// What a sink counts as correct: a UDP packet from `source.addr` to `destination.addr` on
/// a port in `destination.port .. source.port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkConfig {
    /// The backend's address and its lowest port.
    pub destination: Endpoint4,
    /// The client's address and the port after the backend's highest.
    pub source: Endpoint4,
}

/// Index into `BENCH_SINK_STAT`: IPv4 UDP packets seen.
pub const SINK_SEEN: u32 = 0;
/// Index into `BENCH_SINK_STAT`: those with the expected addresses and ports.
pub const SINK_CORRECT: u32 = 1;

/// Length of the frame the restore programs write.
pub const RESTORE_FRAME_LEN: usize = 64;

/// The frame written over the packet before every restored run (zero-padded).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreFrame {
    pub bytes: [u8; RESTORE_FRAME_LEN],
}

/// Where the restore program varies the frame per run, as offsets into it; 0 keeps the
/// frame as it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreConfig {
    /// The two bytes set to the run's sequence number (a source or destination port).
    pub port_offset: u32,
    /// The two bytes set to the sequence number's next 16 bits (part of an address).
    pub addr_offset: u32,
}

const _: () = {
    assert!(core::mem::size_of::<GenConfig>() == 12);
    assert!(core::mem::size_of::<GenHeaders>() == 48);
    assert!(GEN_HEADERS_LEN <= 48);
    assert!(core::mem::size_of::<Endpoint4>() == 8);
    assert!(core::mem::size_of::<SinkConfig>() == 16);
    assert!(core::mem::size_of::<RestoreFrame>() == RESTORE_FRAME_LEN);
    assert!(core::mem::size_of::<RestoreConfig>() == 8);
    assert!(core::mem::size_of::<FloorHop>() == 12);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], has explicit padding and only integer fields,
    // so any bit pattern is valid.
    unsafe impl aya::Pod for GenConfig {}
    unsafe impl aya::Pod for GenHeaders {}
    unsafe impl aya::Pod for Endpoint4 {}
    unsafe impl aya::Pod for SinkConfig {}
    unsafe impl aya::Pod for RestoreFrame {}
    unsafe impl aya::Pod for RestoreConfig {}
    unsafe impl aya::Pod for FloorHop {}
}
