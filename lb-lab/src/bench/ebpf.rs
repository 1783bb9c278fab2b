//! The benchmark's own programs (crate `lb-lab-ebpf`, layouts in `lb_common::bench`): a
//! generator run with `BPF_PROG_TEST_RUN` in live-frames mode, a counting sink per backend,
//! a pass program, and the restore programs of the per-packet bench.

use std::{
    ffi::CString,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, PerCpuArray, ProgramArray},
    programs::{Program, ProgramFd, TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use lb_common::bench::{
    Endpoint4, FloorHop, GEN_HEADERS_LEN, GEN_MAX_TARGETS, GenConfig, GenHeaders,
    RESTORE_FRAME_LEN, RestoreConfig, RestoreFrame, SINK_CORRECT, SINK_SEEN, SinkConfig, map_names,
    program_names,
};

use super::{
    error::BenchError,
    under_test::{RunOutcome, run_outcome},
};
use crate::lab::Netns;

/// The object `lb-lab-ebpf` builds to (lb-lab's build.rs); the `slicelb` binary has none of
/// these programs.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-lab-ebpf"));

/// Loads a fresh copy of the bench object (each user gets its own maps).
pub fn load_object(what: &str) -> Result<Ebpf, BenchError> {
    EbpfLoader::new()
        .load(BENCH_OBJECT)
        .map_err(|source| BenchError::Load {
            what: what.to_string(),
            source: Box::new(source),
        })
}

/// Loads program `name` (XDP or TC) of `ebpf` into the kernel: the one program lookup of
/// the bench programs.
fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<(), BenchError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| BenchError::MissingProgram {
            name: name.to_string(),
        })?;
    let loaded = match program {
        Program::Xdp(program) => program.load(),
        Program::SchedClassifier(program) => program.load(),
        _ => return Err(BenchError::unexpected(name, "not an XDP or TC program")),
    };
    loaded.map_err(|source| BenchError::Program {
        name: name.to_string(),
        action: "load",
        source,
    })
}

fn load_xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, BenchError> {
    load_program(ebpf, name)?;
    ebpf.program_mut(name)
        .ok_or_else(|| BenchError::MissingProgram {
            name: name.to_string(),
        })?
        .try_into()
        .map_err(|source| BenchError::Program {
            name: name.to_string(),
            action: "type check",
            source,
        })
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
/// through `targets` and `flows` source ports each. It sends with `bench_gen` in
/// live-frames mode; where the kernel refuses live frames (EPERM: some hosts forbid
/// injecting frames that way), it builds the same frames in userspace and sends them
/// through a packet socket instead, slower but the same traffic for every balancer.
pub struct Generator {
    ebpf: Ebpf,
    targets: Vec<(Ipv4Addr, u16)>,
    flows: u32,
    first_port: u16,
    live_frames_refused: std::sync::atomic::AtomicBool,
}

impl Generator {
    /// `template` is a 64-byte IPv4/UDP frame with the right MAC addresses and source.
    pub fn new(
        template: &[u8],
        targets: &[(Ipv4Addr, u16)],
        flows: u32,
        first_port: u16,
    ) -> Result<Self, BenchError> {
        if targets.is_empty() || targets.len() > GEN_MAX_TARGETS as usize {
            return Err(BenchError::unexpected(
                "generator",
                format!("{} targets (1..={GEN_MAX_TARGETS} allowed)", targets.len()),
            ));
        }
        let mut ebpf = load_object(program_names::GEN)?;
        load_xdp(&mut ebpf, program_names::GEN)?;
        let mut config: Array<_, GenConfig> =
            Array::try_from(take_map(&mut ebpf, map_names::GEN_CONFIG)?)
                .map_err(map_error(map_names::GEN_CONFIG, "open"))?;
        let gen_config = GenConfig {
            targets: targets.len() as u32,
            flows: flows.max(1),
            first_port: u32::from(first_port),
        };
        config
            .set(0, &gen_config, 0)
            .map_err(map_error(map_names::GEN_CONFIG, "write"))?;
        let mut headers = GenHeaders { bytes: [0u8; 48] };
        let header_bytes = template.get(..GEN_HEADERS_LEN).ok_or_else(|| {
            BenchError::unexpected(
                "generator",
                "the template frame is shorter than its headers",
            )
        })?;
        headers.bytes[..GEN_HEADERS_LEN].copy_from_slice(header_bytes);
        let mut header_map: Array<_, GenHeaders> =
            Array::try_from(take_map(&mut ebpf, map_names::GEN_HEADERS)?)
                .map_err(map_error(map_names::GEN_HEADERS, "open"))?;
        header_map
            .set(0, &headers, 0)
            .map_err(map_error(map_names::GEN_HEADERS, "write"))?;
        let mut table: Array<_, Endpoint4> =
            Array::try_from(take_map(&mut ebpf, map_names::GEN_TARGETS)?)
                .map_err(map_error(map_names::GEN_TARGETS, "open"))?;
        for (index, (addr, port)) in targets.iter().enumerate() {
            table
                .set(index as u32, &Endpoint4::new(addr.octets(), *port), 0)
                .map_err(map_error(map_names::GEN_TARGETS, "write"))?;
        }
        Ok(Self {
            ebpf,
            targets: targets.to_vec(),
            flows: gen_config.flows,
            first_port,
            live_frames_refused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// How the frames went out: `bench_gen` live frames, or the packet socket fallback.
    pub fn method(&self) -> &'static str {
        if self
            .live_frames_refused
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            "packet socket (the kernel refused live-frames test runs)"
        } else {
            "XDP live frames"
        }
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
            .program(program_names::GEN)
            .ok_or_else(|| BenchError::MissingProgram {
                name: program_names::GEN.to_string(),
            })?
            .try_into()
            .map_err(|source| BenchError::Program {
                name: program_names::GEN.to_string(),
                action: "type check",
                source,
            })?;
        let iface = iface.to_string();
        netns
            .enter(|| {
                pin_to_cpu(cpu);
                let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).map_err(|_| {
                    BenchError::unexpected(
                        "generator",
                        format!("no interface {iface} in {}", netns.name()),
                    )
                })?;
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex.
                let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|v| v.to_ne_bytes())
                    .collect();
                if self
                    .live_frames_refused
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    return send_with_packet_socket(self, ifindex, frame, packets);
                }
                let started = Instant::now();
                let result = program.test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: packets,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..TestRunOptions::new()
                });
                let result = match result {
                    Err(aya::programs::ProgramError::SyscallError(error))
                        if error.io_error.raw_os_error() == Some(libc::EPERM) =>
                    {
                        self.live_frames_refused
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        return send_with_packet_socket(self, ifindex, frame, packets);
                    }
                    other => other,
                }
                .map_err(|source| BenchError::Program {
                    name: program_names::GEN.to_string(),
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

/// The fallback generator: the frames `bench_gen` would make (target `seq % targets`,
/// source port `first_port + (seq / targets) % flows`), built here and sent in batches
/// with `sendmmsg` on a packet socket bound to `ifindex`, bypassing the qdisc.
fn send_with_packet_socket(
    generator: &Generator,
    ifindex: u32,
    template: &[u8],
    packets: u32,
) -> Result<Duration, BenchError> {
    const BATCH: usize = 64;
    let fail = |what: &str| {
        BenchError::unexpected(
            "generator (packet socket)",
            format!("{what}: {}", std::io::Error::last_os_error()),
        )
    };
    let ip = GEN_HEADERS_LEN - 28;
    let udp = GEN_HEADERS_LEN - 8;
    if template.len() < GEN_HEADERS_LEN {
        return Err(BenchError::unexpected(
            "generator",
            "the template frame is shorter than its headers",
        ));
    }
    // SAFETY: plain socket call; the descriptor is owned below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if raw < 0 {
        return Err(fail("socket(AF_PACKET)"));
    }
    // SAFETY: `raw` is a descriptor we just opened and nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are the ones bind reads.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound != 0 {
        return Err(fail("bind"));
    }
    let bypass: libc::c_int = 1;
    // SAFETY: setsockopt with an int, as PACKET_QDISC_BYPASS takes; failure only slows us.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&bypass as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let targets = generator.targets.len() as u64;
    let flows = u64::from(generator.flows.max(1));
    let mut frames = vec![template.to_vec(); BATCH];
    let mut seq: u64 = 0;
    let started = Instant::now();
    while seq < u64::from(packets) {
        let batch = (u64::from(packets) - seq).min(BATCH as u64) as usize;
        for frame in frames.iter_mut().take(batch) {
            let (addr, port) = generator.targets[(seq % targets) as usize];
            let source_port = generator.first_port + ((seq / targets) % flows) as u16;
            frame[ip + 16..ip + 20].copy_from_slice(&addr.octets());
            frame[udp..udp + 2].copy_from_slice(&source_port.to_be_bytes());
            frame[udp + 2..udp + 4].copy_from_slice(&port.to_be_bytes());
            frame[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
            let (header, _) = etherparse::Ipv4Header::from_slice(&frame[ip..])
                .map_err(|e| BenchError::unexpected("generator", format!("template: {e}")))?;
            frame[ip + 10..ip + 12].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
            seq += 1;
        }
        let mut iovecs: Vec<libc::iovec> = frames
            .iter_mut()
            .take(batch)
            .map(|frame| libc::iovec {
                iov_base: frame.as_mut_ptr().cast(),
                iov_len: frame.len(),
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iovec| {
                // SAFETY: a zeroed msghdr is valid; it points at one iovec below.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        let mut sent = 0;
        while sent < batch {
            // SAFETY: `messages[sent..]` are valid mmsghdrs whose buffers live in `frames`.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    messages[sent..].as_mut_ptr(),
                    (batch - sent) as u32,
                    0,
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::ENOBUFS) {
                    std::thread::yield_now();
                    continue;
                }
                return Err(fail("sendmmsg"));
            }
            sent += n as usize;
        }
    }
    Ok(started.elapsed())
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
        let mut ebpf = load_object(program_names::SINK)?;
        let mut config: Array<_, SinkConfig> =
            Array::try_from(ebpf.map_mut(map_names::SINK_CONFIG).ok_or_else(|| {
                BenchError::MissingMap {
                    name: map_names::SINK_CONFIG.to_string(),
                }
            })?)
            .map_err(map_error(map_names::SINK_CONFIG, "open"))?;
        let expected = SinkConfig {
            destination: Endpoint4::new(backend.octets(), ports.start),
            source: Endpoint4::new(expected_src.octets(), ports.end),
        };
        config
            .set(0, &expected, 0)
            .map_err(map_error(map_names::SINK_CONFIG, "write"))?;
        attach_in(netns, &mut ebpf, program_names::SINK, iface)?;
        Ok(Self { ebpf })
    }

    pub fn counts(&self) -> Result<SinkCounts, BenchError> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map_names::SINK_STATS).ok_or_else(|| {
                BenchError::MissingMap {
                    name: map_names::SINK_STATS.to_string(),
                }
            })?)
            .map_err(map_error(map_names::SINK_STATS, "open"))?;
        let sum = |index: u32| -> Result<u64, BenchError> {
            Ok(stats
                .get(&index, 0)
                .map_err(map_error(map_names::SINK_STATS, "read"))?
                .iter()
                .sum())
        };
        Ok(SinkCounts {
            seen: sum(SINK_SEEN)?,
            correct: sum(SINK_CORRECT)?,
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
        let mut ebpf = load_object(program_names::PASS)?;
        attach_in(netns, &mut ebpf, program_names::PASS, iface)?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// One backend of the forwarding floor: the node's device towards it (a name in the
/// node's namespace) and the MACs its frames get.
pub struct FloorBackend {
    pub iface: String,
    pub hop: FloorHop,
}

/// `bench_forward_floor` on the node's client-facing interface: every UDP frame straight to
/// a backend's device with fixed MACs, no lookup (the throughput section's floor).
pub struct ForwardFloor {
    _ebpf: Ebpf,
}

impl ForwardFloor {
    pub fn attach(
        netns: &Netns,
        iface: &str,
        backends: &[FloorBackend],
    ) -> Result<Self, BenchError> {
        let what = program_names::FORWARD_FLOOR;
        let mut ebpf = load_object(what)?;
        let open = |ebpf: &mut Ebpf, name: &str| -> Result<aya::maps::Map, BenchError> {
            take_map(ebpf, name)
        };
        let mut hops: Array<_, FloorHop> = Array::try_from(open(&mut ebpf, map_names::FLOOR_HOPS)?)
            .map_err(map_error(map_names::FLOOR_HOPS, "open"))?;
        let mut count: Array<_, u32> = Array::try_from(open(&mut ebpf, map_names::FLOOR_COUNT)?)
            .map_err(map_error(map_names::FLOOR_COUNT, "open"))?;
        let mut devices = DevMap::try_from(open(&mut ebpf, map_names::FLOOR_DEVICES)?)
            .map_err(map_error(map_names::FLOOR_DEVICES, "open"))?;
        for (index, backend) in backends.iter().enumerate() {
            let index = index as u32;
            hops.set(index, &backend.hop, 0)
                .map_err(map_error(map_names::FLOOR_HOPS, "write"))?;
            let name = CString::new(backend.iface.as_str())
                .map_err(|_| BenchError::unexpected(&backend.iface, "NUL in name"))?;
            // Interface indexes and the DEVMAP's devices are the node namespace's.
            netns
                .enter(|| -> Result<(), BenchError> {
                    let ifindex = nix::net::if_::if_nametoindex(name.as_c_str())
                        .map_err(|e| BenchError::unexpected(&backend.iface, e.to_string()))?;
                    devices.set(index, ifindex, None, 0).map_err(|e| {
                        BenchError::unexpected(map_names::FLOOR_DEVICES, e.to_string())
                    })
                })
                .map_err(BenchError::lab(what))??;
        }
        count
            .set(0, &(backends.len() as u32), 0)
            .map_err(map_error(map_names::FLOOR_COUNT, "write"))?;
        attach_in(netns, &mut ebpf, what, iface)?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// The per-packet bench's own programs: the floor, parse-only, and the restore programs,
/// which write the configured frame back over the packet before each run (a test run
/// repeats on one buffer, so the program measured would otherwise see its own rewrite from
/// the second run on), optionally varied into a new flow, then tail-call the program
/// measured.
pub struct PerPacketPrograms {
    ebpf: Ebpf,
}

impl PerPacketPrograms {
    pub fn load() -> Result<Self, BenchError> {
        let mut ebpf = load_object("the per-packet programs")?;
        for name in [
            program_names::RESTORE_XDP,
            program_names::RESTORE_TC,
            program_names::TC_EMPTY,
            program_names::XDP_EMPTY,
            program_names::XDP_PARSE_ONLY,
        ] {
            load_program(&mut ebpf, name)?;
        }
        Ok(Self { ebpf })
    }

    /// The loaded object (its floor and parse-only programs run directly).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Restore runs so far: the sequence number the next new flow's source is made of.
    pub fn sequence(&mut self) -> Result<u64, BenchError> {
        let seq: Array<_, u64> = Array::try_from(map_mut(&mut self.ebpf, map_names::RESTORE_SEQ)?)
            .map_err(map_error(map_names::RESTORE_SEQ, "open"))?;
        seq.get(&0, 0)
            .map_err(map_error(map_names::RESTORE_SEQ, "read"))
    }

    /// Sets the sequence back (or on), so that the next runs replay the sources of runs
    /// made from `seq` on (a handshake's second packet after its SYN).
    pub fn set_sequence(&mut self, seq: u64) -> Result<(), BenchError> {
        let mut map: Array<_, u64> =
            Array::try_from(map_mut(&mut self.ebpf, map_names::RESTORE_SEQ)?)
                .map_err(map_error(map_names::RESTORE_SEQ, "open"))?;
        map.set(0, &seq, 0)
            .map_err(map_error(map_names::RESTORE_SEQ, "write"))
    }

    /// Runs `target` (a TC program when `tc`) behind the restore, `repeat` times: the
    /// restore writes `frame` (zero-padded to 64 bytes) back before every run, varied as
    /// `flows` says.
    pub fn run(
        &mut self,
        target: &ProgramFd,
        tc: bool,
        frame: &[u8],
        flows: RestoreConfig,
        repeat: u32,
    ) -> Result<RunOutcome, BenchError> {
        let (wrapper, next) = if tc {
            (program_names::RESTORE_TC, map_names::RESTORE_TC_NEXT)
        } else {
            (program_names::RESTORE_XDP, map_names::RESTORE_XDP_NEXT)
        };
        let mut next_map: ProgramArray<_> = ProgramArray::try_from(map_mut(&mut self.ebpf, next)?)
            .map_err(map_error(next, "open"))?;
        next_map
            .set(0, target, 0)
            .map_err(map_error(next, "write"))?;
        let mut padded = RestoreFrame {
            bytes: [0u8; RESTORE_FRAME_LEN],
        };
        let len = frame.len().min(RESTORE_FRAME_LEN);
        padded.bytes[..len].copy_from_slice(&frame[..len]);
        let mut frame_map: Array<_, RestoreFrame> =
            Array::try_from(map_mut(&mut self.ebpf, map_names::RESTORE_FRAME)?)
                .map_err(map_error(map_names::RESTORE_FRAME, "open"))?;
        frame_map
            .set(0, &padded, 0)
            .map_err(map_error(map_names::RESTORE_FRAME, "write"))?;
        let mut config: Array<_, RestoreConfig> =
            Array::try_from(map_mut(&mut self.ebpf, map_names::RESTORE_CONFIG)?)
                .map_err(map_error(map_names::RESTORE_CONFIG, "open"))?;
        config
            .set(0, &flows, 0)
            .map_err(map_error(map_names::RESTORE_CONFIG, "write"))?;
        run_outcome(&self.ebpf, wrapper, frame, repeat)
    }
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map, BenchError> {
    ebpf.map_mut(name).ok_or_else(|| BenchError::MissingMap {
        name: name.to_string(),
    })
}

/// A copy of the fd of program `name` of `ebpf` (to put in a program array).
pub fn program_fd(ebpf: &Ebpf, name: &str) -> Result<ProgramFd, BenchError> {
    ebpf.program(name)
        .ok_or_else(|| BenchError::MissingProgram {
            name: name.to_string(),
        })?
        .fd()
        .map_err(|source| BenchError::Program {
            name: name.to_string(),
            action: "fd",
            source,
        })?
        .try_clone()
        .map_err(|e| BenchError::unexpected(name, format!("cloning its fd: {e}")))
}
