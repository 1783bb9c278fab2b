//! The benchmark's own XDP programs (`lb-ebpf/src/bench.rs`): a generator run with
//! `BPF_PROG_TEST_RUN` in live-frames mode, a counting sink per backend, and a pass program.

use std::{
    ffi::CString,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};

use super::error::BenchError;
use crate::lab::Netns;

use crate::dataplane::loader::EBPF_OBJECT;

pub const GEN_PROGRAM: &str = "bench_gen";
pub const SINK_PROGRAM: &str = "bench_sink";
pub const PASS_PROGRAM: &str = "bench_pass";
const GEN_CONFIG: &str = "BENCH_GEN_CONF";
const GEN_TARGETS: &str = "BENCH_GEN_TGTS";
const GEN_HEADERS: &str = "BENCH_GEN_HDR";
/// Ethernet + IPv4 + UDP: what the generator restores on every packet.
const GEN_HEADERS_LEN: usize = 42;
const SINK_CONFIG: &str = "BENCH_SINK_CONF";
const SINK_STATS: &str = "BENCH_SINK_STAT";
/// Must match `GEN_MAX_TARGETS` in lb-ebpf/src/bench.rs.
pub const GEN_MAX_TARGETS: usize = 65_536;

/// Loads the embedded object for one bench program, with the datapath's own maps cut to
/// one entry (the bench programs never touch them; this keeps each copy small).
fn load_object(what: &str) -> Result<Ebpf, BenchError> {
    let mut loader = EbpfLoader::new();
    for name in crate::dataplane::loader::ALL_MAPS {
        loader.map_max_entries(name, 1);
    }
    loader.load(EBPF_OBJECT).map_err(|source| BenchError::Load {
        what: what.to_string(),
        source: Box::new(source),
    })
}

fn load_xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, BenchError> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| BenchError::MissingProgram {
            name: name.to_string(),
        })?
        .try_into()
        .map_err(|source| BenchError::Program {
            name: name.to_string(),
            action: "type check",
            source,
        })?;
    program.load().map_err(|source| BenchError::Program {
        name: name.to_string(),
        action: "load",
        source,
    })?;
    Ok(program)
}

fn map_error(name: &str, action: &'static str) -> impl FnOnce(aya::maps::MapError) -> BenchError {
    let name = name.to_string();
    move |source| BenchError::Map {
        name,
        action,
        source,
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, BenchError> {
    ebpf.take_map(name).ok_or_else(|| BenchError::MissingMap {
        name: name.to_string(),
    })
}

/// An address and port in the generator's and sink's map layout.
fn addr_port_bytes(addr: Ipv4Addr, port: u16) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&addr.octets());
    bytes[4..6].copy_from_slice(&port.to_be_bytes());
    bytes
}

/// Attaches `name` (XDP, native mode) to `iface` inside `netns`.
fn attach_in(netns: &Netns, ebpf: &mut Ebpf, name: &str, iface: &str) -> Result<(), BenchError> {
    let program = load_xdp(ebpf, name)?;
    let iface_c = CString::new(iface).map_err(|_| BenchError::unexpected(iface, "NUL in name"))?;
    netns
        .enter(|| {
            program
                .attach(iface_c.as_c_str(), XdpMode::Driver)
                .map(|_| ())
        })
        .map_err(BenchError::lab(name))?
        .map_err(|source| BenchError::Program {
            name: format!("{name} on {iface} in {}", netns.name()),
            action: "attach",
            source,
        })
}

/// The traffic generator: a 64-byte IPv4/UDP template rewritten per packet to cycle
/// through `targets` and `flows` source ports each.
pub struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    /// `template` is a 64-byte IPv4/UDP frame with the right MAC addresses and source.
    pub fn new(
        template: &[u8],
        targets: &[(Ipv4Addr, u16)],
        flows: u32,
        first_port: u16,
    ) -> Result<Self, BenchError> {
        if targets.is_empty() || targets.len() > GEN_MAX_TARGETS {
            return Err(BenchError::unexpected(
                "generator",
                format!("{} targets (1..={GEN_MAX_TARGETS} allowed)", targets.len()),
            ));
        }
        let mut ebpf = load_object(GEN_PROGRAM)?;
        load_xdp(&mut ebpf, GEN_PROGRAM)?;
        let mut config: Array<_, u32> = Array::try_from(take_map(&mut ebpf, GEN_CONFIG)?)
            .map_err(map_error(GEN_CONFIG, "open"))?;
        for (index, value) in [targets.len() as u32, flows.max(1), u32::from(first_port)]
            .into_iter()
            .enumerate()
        {
            config
                .set(index as u32, &value, 0)
                .map_err(map_error(GEN_CONFIG, "write"))?;
        }
        let mut headers = [0u8; 48];
        let header_bytes = template.get(..GEN_HEADERS_LEN).ok_or_else(|| {
            BenchError::unexpected(
                "generator",
                "the template frame is shorter than its headers",
            )
        })?;
        headers[..GEN_HEADERS_LEN].copy_from_slice(header_bytes);
        let mut header_map: Array<_, [u8; 48]> = Array::try_from(take_map(&mut ebpf, GEN_HEADERS)?)
            .map_err(map_error(GEN_HEADERS, "open"))?;
        header_map
            .set(0, &headers, 0)
            .map_err(map_error(GEN_HEADERS, "write"))?;
        let mut table: Array<_, [u8; 8]> = Array::try_from(take_map(&mut ebpf, GEN_TARGETS)?)
            .map_err(map_error(GEN_TARGETS, "open"))?;
        for (index, (addr, port)) in targets.iter().enumerate() {
            table
                .set(index as u32, &addr_port_bytes(*addr, *port), 0)
                .map_err(map_error(GEN_TARGETS, "write"))?;
        }
        Ok(Self { ebpf })
    }

    /// Sends `packets` frames out of `iface` in `netns` (transmitted by `XDP_TX` in
    /// live-frames mode), on the CPU this call runs on; returns the wall time.
    pub fn send(
        &self,
        netns: &Netns,
        iface: &str,
        frame: &[u8],
        packets: u32,
        cpu: usize,
    ) -> Result<Duration, BenchError> {
        let program: &Xdp = self
            .ebpf
            .program(GEN_PROGRAM)
            .ok_or_else(|| BenchError::MissingProgram {
                name: GEN_PROGRAM.to_string(),
            })?
            .try_into()
            .map_err(|source| BenchError::Program {
                name: GEN_PROGRAM.to_string(),
                action: "type check",
                source,
            })?;
        let iface = iface.to_string();
        netns
            .enter(|| {
                pin_to_cpu(cpu);
                let iface_c = CString::new(iface.as_str()).expect("interface names have no NUL");
                // SAFETY: if_nametoindex reads a NUL-terminated string.
                let ifindex = unsafe { libc::if_nametoindex(iface_c.as_ptr()) };
                if ifindex == 0 {
                    return Err(BenchError::unexpected(
                        "generator",
                        format!("no interface {iface} in {}", netns.name()),
                    ));
                }
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex.
                let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|v| v.to_ne_bytes())
                    .collect();
                let started = Instant::now();
                let result = program
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&ctx),
                        repeat: packets,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..TestRunOptions::new()
                    })
                    .map_err(|source| BenchError::Program {
                        name: GEN_PROGRAM.to_string(),
                        action: "live-frames test run",
                        source,
                    })?;
                let elapsed = started.elapsed();
                if result.return_value != 0 {
                    return Err(BenchError::unexpected(
                        "generator",
                        format!("test run returned {}", result.return_value),
                    ));
                }
                Ok(elapsed)
            })
            .map_err(BenchError::lab("generator"))?
    }
}

/// Pins the calling thread to one CPU, so "per core" means one core.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; sched_setaffinity
    // with pid 0 affects the calling thread only. Failure leaves the thread unpinned.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A counting sink on one backend's interface.
pub struct Sink {
    ebpf: Ebpf,
}

/// What a sink saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    pub seen: u64,
    /// Rewritten to this backend's address and one of its ports, from the client's address.
    pub correct: u64,
}

impl Sink {
    /// Counts on `iface` in `netns`; a packet is correct when it comes from `expected_src`
    /// to `backend` on a port in `ports`.
    pub fn attach(
        netns: &Netns,
        iface: &str,
        backend: Ipv4Addr,
        ports: std::ops::Range<u16>,
        expected_src: Ipv4Addr,
    ) -> Result<Self, BenchError> {
        let mut ebpf = load_object(SINK_PROGRAM)?;
        let mut config: Array<_, [u8; 8]> = Array::try_from(ebpf.map_mut(SINK_CONFIG).ok_or_else(
            || BenchError::MissingMap {
                name: SINK_CONFIG.to_string(),
            },
        )?)
        .map_err(map_error(SINK_CONFIG, "open"))?;
        config
            .set(0, &addr_port_bytes(backend, ports.start), 0)
            .map_err(map_error(SINK_CONFIG, "write"))?;
        config
            .set(1, &addr_port_bytes(expected_src, ports.end), 0)
            .map_err(map_error(SINK_CONFIG, "write"))?;
        attach_in(netns, &mut ebpf, SINK_PROGRAM, iface)?;
        Ok(Self { ebpf })
    }

    pub fn counts(&self) -> Result<SinkCounts, BenchError> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(SINK_STATS).ok_or_else(|| {
                BenchError::MissingMap {
                    name: SINK_STATS.to_string(),
                }
            })?)
            .map_err(map_error(SINK_STATS, "open"))?;
        let sum = |index: u32| -> Result<u64, BenchError> {
            Ok(stats
                .get(&index, 0)
                .map_err(map_error(SINK_STATS, "read"))?
                .iter()
                .sum())
        };
        Ok(SinkCounts {
            seen: sum(0)?,
            correct: sum(1)?,
        })
    }
}

/// `bench_pass` attached to an interface (a veth takes `XDP_TX` frames from its peer
/// only while an XDP program is attached to it).
pub struct Pass {
    _ebpf: Ebpf,
}

impl Pass {
    pub fn attach(netns: &Netns, iface: &str) -> Result<Self, BenchError> {
        let mut ebpf = load_object(PASS_PROGRAM)?;
        attach_in(netns, &mut ebpf, PASS_PROGRAM, iface)?;
        Ok(Self { _ebpf: ebpf })
    }
}
