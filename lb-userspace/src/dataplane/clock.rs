//! The kernel's tick length, for CONFIG's `ns_per_jiffy` (the flow cache times its slots in
//! jiffies: `bpf_jiffies64` is inlined by the JIT, a clock read is a helper call).
//!
//! Measured by test-running `slicelb_clock_probe`, which reads `bpf_jiffies64()` and
//! `bpf_ktime_get_ns()` side by side, twice ~100 ms apart; the ratio is rounded to the
//! nearest HZ a kernel is built with. The same BPF calls the datapath makes, so it holds
//! wherever the programs load: /proc/timer_list and /proc/config.gz are not on every host,
//! and /proc/schedstat (which Cilium's `pkg/probes/kernel_hz.go` reads jiffies from) is
//! not on this one.

use std::{sync::OnceLock, thread, time::Duration};

use lb_common::program_names;

use super::test_run::{self, TestRunError};

/// The `CONFIG_HZ` choices of the kernel's Kconfig (kernel/Kconfig.hz).
pub const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];
/// Between the two readings: 10 ticks at 100 Hz, so that one tick more or less still
/// rounds to the right HZ.
const SPAN: Duration = Duration::from_millis(100);
const NS_PER_SECOND: u64 = 1_000_000_000;

/// One reading of the probe: (jiffies, monotonic ns).
fn read_clocks(ebpf: &aya::Ebpf) -> Result<(u64, u64), TestRunError> {
    let packet = [0u8; 64];
    let out = test_run::run_program(ebpf, program_names::CLOCK_PROBE, &packet, 1)?;
    let word = |at: usize| {
        out.packet
            .get(at..at + 8)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_ne_bytes)
            .unwrap_or_default()
    };
    Ok((word(0), word(8)))
}

/// The known HZ nearest to `ticks` jiffies in `elapsed_ns`; None when no time passed.
pub fn nearest_hz(ticks: u64, elapsed_ns: u64) -> Option<u64> {
    if elapsed_ns == 0 {
        return None;
    }
    let measured = ticks as f64 * NS_PER_SECOND as f64 / elapsed_ns as f64;
    KNOWN_HZ.into_iter().min_by(|a, b| {
        (*a as f64 - measured)
            .abs()
            .total_cmp(&(*b as f64 - measured).abs())
    })
}

/// Nanoseconds per jiffy of the running kernel, measured once per process (it takes
/// [`SPAN`]) with the probe program of `ebpf` (loaded).
pub fn ns_per_jiffy(ebpf: &aya::Ebpf) -> Result<u32, TestRunError> {
    static MEASURED: OnceLock<u32> = OnceLock::new();
    if let Some(ns) = MEASURED.get() {
        return Ok(*ns);
    }
    let (jiffies_before, ns_before) = read_clocks(ebpf)?;
    thread::sleep(SPAN);
    let (jiffies_after, ns_after) = read_clocks(ebpf)?;
    let hz = nearest_hz(
        jiffies_after.wrapping_sub(jiffies_before),
        ns_after.saturating_sub(ns_before),
    )
    .unwrap_or(KNOWN_HZ[0]);
    let ns = (NS_PER_SECOND / hz) as u32;
    Ok(*MEASURED.get_or_init(|| ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_more_or_less_still_rounds_to_the_kernels_hz() {
        let span = SPAN.as_nanos() as u64;
        for hz in KNOWN_HZ {
            let ticks = hz * span / NS_PER_SECOND;
            for measured in [ticks - 1, ticks, ticks + 1] {
                assert_eq!(
                    nearest_hz(measured, span),
                    Some(hz),
                    "{measured} ticks in {span} ns"
                );
            }
        }
        assert_eq!(nearest_hz(5, 0), None, "no time passed");
    }
}
