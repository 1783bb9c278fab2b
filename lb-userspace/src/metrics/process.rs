//! The process's own numbers under the names every Prometheus client library gives them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …), read from /proc at
//! each scrape. prometheus-client has no process collector, and `procfs` is already what
//! the agent reads /proc with.

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;

use super::ErrorLabels;

/// The `kind` counted in `slicelb_errors_total` when /proc/self cannot be read.
pub const ERROR_KIND_PROC_READ: &str = "proc_read";

/// What /proc/self says at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// `None` when unlimited.
    pub max_fds: Option<u64>,
    /// Unix time.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    pub(super) fn read() -> procfs::ProcResult<Self> {
        let me = Process::myself()?;
        let stat = me.stat()?;
        // Clock ticks, as the kernel counts CPU time and the start time since boot.
        let ticks = procfs::ticks_per_second() as f64;
        let max_fds = match me.limits()?.max_open_files.soft_limit {
            LimitValue::Value(limit) => Some(limit),
            LimitValue::Unlimited => None,
        };
        Ok(Self {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: stat.rss * procfs::page_size(),
            virtual_bytes: stat.vsize,
            open_fds: me.fd_count()? as u64,
            max_fds,
            start_time_seconds: procfs::boot_time_secs()? as f64 + stat.starttime as f64 / ticks,
        })
    }
}

pub(super) struct ProcessCollector {
    errors: Family<ErrorLabels, Counter>,
}

impl std::fmt::Debug for ProcessCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCollector").finish_non_exhaustive()
    }
}

impl ProcessCollector {
    pub(super) fn new(errors: Family<ErrorLabels, Counter>) -> Self {
        Self { errors }
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match ProcessStats::read() {
            Ok(stats) => stats,
            Err(error) => {
                // Left out of this scrape (a gap, not a false zero), as the kernel's counters.
                tracing::warn!(%error, "metrics: could not read /proc/self; skipped");
                self.errors
                    .get_or_create(&ErrorLabels {
                        kind: ERROR_KIND_PROC_READ.into(),
                    })
                    .inc();
                return Ok(());
            }
        };
        let cpu = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.cpu_seconds).encode(cpu)?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            stats.resident_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            stats.virtual_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            stats.open_fds,
        )?;
        if let Some(max_fds) = stats.max_fds {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max_fds,
            )?;
        }
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            stats.start_time_seconds,
        )
    }
}
