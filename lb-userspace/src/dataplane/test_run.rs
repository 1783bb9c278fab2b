//! `BPF_PROG_TEST_RUN` for slicelb's programs: a packet in, the verdict and the packet out.
//! Used by the kernel tests, `slicelb trace` and the benchmarks.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use aya::{
    TestRunOptions, TestRunResult,
    programs::{ProgramError, SchedClassifier, TestRun},
};

/// Room for packets the program grows (ICMP errors add up to 48 bytes).
const GROWTH: usize = 512;

/// `BPF_F_TEST_SKB_CHECKSUM_COMPLETE` (uapi `linux/bpf.h`, Linux 6.15): the test skb
/// carries `CHECKSUM_COMPLETE`, and the run fails with EBADMSG when the program leaves
/// `skb->csum` disagreeing with the packet.
const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error("the object has no XDP or TC program named {program}")]
    NoSuchProgram { program: &'static str },
    #[error("test run of {program} failed: {source}")]
    Run {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "test run of {program} (CHECKSUM_COMPLETE) failed: {source}; EBADMSG means skb->csum no longer matches the packet"
    )]
    Syscall {
        program: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What one test run gave back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutput {
    /// The program's return value (XDP action or TC action).
    pub verdict: u32,
    /// The packet after the program.
    pub packet: Vec<u8>,
    /// Average time per run as the kernel measured it.
    pub duration: Duration,
}

/// Runs `program` once on `packet`.
pub fn run<P>(program: &P, name: &'static str, packet: &[u8]) -> Result<RunOutput, TestRunError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    run_repeated(program, name, packet, 1)
}

/// Runs `program` `repeat` times on `packet`; the duration is the kernel's average per run.
/// The kernel runs the program on the same buffer each time, so a program that rewrites the
/// packet sees its own output from the second run on.
pub fn run_repeated<P>(
    program: &P,
    name: &'static str,
    packet: &[u8],
    repeat: u32,
) -> Result<RunOutput, TestRunError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    run_with_context(program, name, packet, repeat, None)
}

/// [`run_repeated`] with the program's context (`struct xdp_md`, `struct __sk_buff`) given.
fn run_with_context<P>(
    program: &P,
    name: &'static str,
    packet: &[u8],
    repeat: u32,
    context: Option<&[u8]>,
) -> Result<RunOutput, TestRunError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + GROWTH];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: context,
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|source| TestRunError::Run {
            program: name,
            source,
        })?;
    out.truncate(result.data_size_out as usize);
    Ok(RunOutput {
        verdict: result.return_value,
        packet: out,
        duration: result.duration,
    })
}

/// Runs the XDP or TC program `name` of `ebpf` `repeat` times on `packet` (see
/// [`run_repeated`]).
pub fn run_program(
    ebpf: &aya::Ebpf,
    name: &'static str,
    packet: &[u8],
    repeat: u32,
) -> Result<RunOutput, TestRunError> {
    match ebpf.program(name) {
        Some(aya::programs::Program::Xdp(program)) => run_repeated(program, name, packet, repeat),
        Some(aya::programs::Program::SchedClassifier(program)) => {
            run_repeated(program, name, packet, repeat)
        }
        _ => Err(TestRunError::NoSuchProgram { program: name }),
    }
}

/// Runs an XDP `program` once on `packet` as if it arrived on interface `ingress_ifindex`
/// of the calling thread's network namespace (the context's `ingress_ifindex`: what the
/// fast path's FIB lookup routes from and compares with the next hop's device).
pub fn run_xdp_arriving_on(
    program: &aya::programs::Xdp,
    name: &'static str,
    packet: &[u8],
    ingress_ifindex: u32,
) -> Result<RunOutput, TestRunError> {
    // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex; the kernel wants data 0 and data_end the packet's length.
    let context: [u32; 6] = [0, packet.len() as u32, 0, ingress_ifindex, 0, 0];
    let context_bytes: Vec<u8> = context.iter().flat_map(|word| word.to_ne_bytes()).collect();
    run_with_context(program, name, packet, 1, Some(&context_bytes))
}

/// The `test` member of `union bpf_attr` (uapi layout).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs a TC program once on an skb marked `CHECKSUM_COMPLETE` (aya's options cannot set
/// this flag, so the syscall is made here). Fails with EBADMSG when the program's rewrites
/// leave `skb->csum` stale.
pub fn run_checksum_complete(
    program: &SchedClassifier,
    name: &'static str,
    packet: &[u8],
) -> Result<RunOutput, TestRunError> {
    let fd = program.fd().map_err(|source| TestRunError::Run {
        program: name,
        source,
    })?;
    let mut out = vec![0u8; packet.len() + GROWTH];
    let mut attr = TestAttr {
        prog_fd: fd.as_fd().as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        flags: BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
        ..TestAttr::default()
    };
    // SAFETY: a `test` attribute whose pointers refer to live buffers of the given sizes.
    unsafe { super::sys::bpf(BPF_PROG_TEST_RUN, &mut attr) }.map_err(|source| {
        TestRunError::Syscall {
            program: name,
            source,
        }
    })?;
    out.truncate(attr.data_size_out as usize);
    Ok(RunOutput {
        verdict: attr.retval,
        packet: out,
        duration: Duration::from_nanos(u64::from(attr.duration)),
    })
}
