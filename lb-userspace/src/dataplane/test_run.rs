//! `BPF_PROG_TEST_RUN` for slicelb's programs: a packet in, the verdict and the packet out.
//! Used by the kernel tests, `slicelb trace` and the benchmarks.

use std::time::Duration;

use aya::{
    TestRunOptions, TestRunResult,
    programs::{ProgramError, TestRun},
};

/// Room for packets the program grows (ICMP errors add up to 48 bytes).
const GROWTH: usize = 512;

#[derive(Debug, thiserror::Error)]
#[error("test run of {program} failed: {source}")]
pub struct TestRunError {
    pub program: &'static str,
    #[source]
    pub source: ProgramError,
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

/// Runs `program` `repeat` times on `packet` (each run sees the original packet); the
/// duration is the kernel's average per run.
pub fn run_repeated<P>(
    program: &P,
    name: &'static str,
    packet: &[u8],
    repeat: u32,
) -> Result<RunOutput, TestRunError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + GROWTH];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|source| TestRunError {
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
