//! Section 5: the control plane. Cold sync of many services into real maps (model -> diff
//! -> aya writer), the latency of one endpoint change, the agent's peak memory and the
//! kernel's map memory per service.

use std::time::Instant;

use indicatif::ProgressBar;

use super::{
    error::BenchError,
    plot::{LineChart, Series},
    report::{Section, Table, num},
    services::{Proto, ServiceSet, synthetic_endpoint},
    stats::percentile,
    under_test::{MapMemory, Slicelb, capacity_for},
};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub scales: Vec<usize>,
    pub endpoints_each: usize,
    /// Endpoint changes timed per scale (at most; see `changes_within`).
    pub changes: usize,
    /// Stop timing changes after this long at one scale.
    pub changes_within: std::time::Duration,
}

impl Config {
    pub fn steps(&self) -> u64 {
        self.scales.len() as u64
    }
}

/// Peak resident memory of this process since the last reset, in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Gives freed heap back to the system, then resets the peak (`VmHWM`) to the current
/// resident size (Linux 4.0+), so the next peak is the next scale's own.
fn reset_peak_rss() {
    // SAFETY: malloc_trim only releases free memory of glibc's heap.
    unsafe { libc::malloc_trim(0) };
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Current resident memory of this process, in bytes.
fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

struct ScaleResult {
    services: usize,
    cold_sync_secs: f64,
    ops: usize,
    change_p50_ms: f64,
    change_p99_ms: f64,
    changes: usize,
    peak_rss_bytes: Option<u64>,
    /// Resident memory before the scale started (the bench process itself).
    baseline_rss_bytes: Option<u64>,
    kernel_bytes_per_service: f64,
    maps: Vec<MapMemory>,
}

fn measure(services: usize, config: &Config) -> Result<ScaleResult, BenchError> {
    reset_peak_rss();
    let baseline_rss = current_rss();
    let set = ServiceSet::synthetic(services, config.endpoints_each, &[Proto::Tcp], false);
    let mut snapshot = set.snapshot();
    // The snapshot stands for the agent's reflector stores; the list it was rendered from is
    // the bench's own, which an agent does not hold.
    drop(set);
    let mut slicelb = Slicelb::load(capacity_for(services, config.endpoints_each, 1))?;
    let started = Instant::now();
    let stats = slicelb.sync(&snapshot)?;
    let cold_sync_secs = started.elapsed().as_secs_f64();
    let peak_rss_bytes = peak_rss();
    let maps = slicelb.map_memory()?;
    let kernel_bytes: f64 = maps
        .iter()
        .filter_map(|m| {
            let used = m.used_entries? as f64;
            Some(m.memlock_bytes as f64 / f64::from(m.max_entries.max(1)) * used)
        })
        .sum();

    // One endpoint of one service moves to a new address, in turn over the services; the
    // clock starts when the changed snapshot is handed over (the event has arrived).
    let mut latencies_ms = Vec::with_capacity(config.changes);
    let changes_started = Instant::now();
    for change in 0..config.changes {
        if changes_started.elapsed() > config.changes_within {
            break;
        }
        let slice_index = (change * 7919) % snapshot.endpoint_slices.len();
        let replacement = synthetic_endpoint(1_000_000 + change).ipv4.to_string();
        // A new object, as the reflector would hand over for an update.
        let slice = std::sync::Arc::make_mut(&mut snapshot.endpoint_slices[slice_index]);
        if let Some(endpoint) = slice.endpoints.first_mut() {
            endpoint.addresses = vec![replacement];
        }
        let started = Instant::now();
        let applied = slicelb.sync(&snapshot)?;
        latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if applied.ops == 0 {
            return Err(BenchError::unexpected(
                &format!("endpoint change {change} at {services} services"),
                "the change produced no map operation",
            ));
        }
    }
    Ok(ScaleResult {
        services,
        cold_sync_secs,
        ops: stats.ops,
        change_p50_ms: percentile(&latencies_ms, 50.0),
        change_p99_ms: percentile(&latencies_ms, 99.0),
        changes: latencies_ms.len(),
        peak_rss_bytes,
        baseline_rss_bytes: baseline_rss,
        kernel_bytes_per_service: kernel_bytes / services as f64,
        maps,
    })
}

/// What the agent's targets read of one measured scale.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Measured {
    services: usize,
    cold_sync_secs: f64,
    change_p99_ms: f64,
    peak_rss_bytes: Option<u64>,
}

/// One of the agent's targets (issue #15): a value measured at one scale of 10-endpoint
/// services, against a limit.
struct AgentTarget {
    /// What is wanted, as the report states it.
    wanted: &'static str,
    services: usize,
    value: fn(&Measured) -> Option<f64>,
    met: fn(f64) -> bool,
    unit: &'static str,
}

const TARGET_ENDPOINTS_EACH: usize = 10;

const AGENT_TARGETS: [AgentTarget; 3] = [
    AgentTarget {
        wanted: "agent peak RSS < 150 MiB at 10 000 services x 10 endpoints (100 000 endpoints)",
        services: 10_000,
        value: |m| m.peak_rss_bytes.map(|bytes| bytes as f64 / 1_048_576.0),
        met: |mib| mib < 150.0,
        unit: "MiB",
    },
    AgentTarget {
        wanted: "cold sync of 50 000 services x 10 endpoints < 1 s",
        services: 50_000,
        value: |m| Some(m.cold_sync_secs),
        met: |secs| secs < 1.0,
        unit: "s",
    },
    AgentTarget {
        wanted: "one endpoint change p99 <= 1 ms at 50 000 services x 10 endpoints",
        services: 50_000,
        value: |m| Some(m.change_p99_ms).filter(|ms| ms.is_finite()),
        met: |ms| ms <= 1.0,
        unit: "ms",
    },
];

/// The report's line for each of the agent's targets: met or NOT met with the measured
/// number, or why there is none.
fn agent_targets(measured: &[Measured], config: &Config) -> Vec<String> {
    AGENT_TARGETS
        .iter()
        .map(|target| {
            let head = format!("Target: {}", target.wanted);
            if config.endpoints_each != TARGET_ENDPOINTS_EACH
                || !config.scales.contains(&target.services)
            {
                return format!("{head} — not in this run (the full run measures it).");
            }
            let value = measured
                .iter()
                .find(|m| m.services == target.services)
                .and_then(target.value);
            match value {
                Some(value) => {
                    let verdict = if (target.met)(value) {
                        "met"
                    } else {
                        "NOT met"
                    };
                    format!(
                        "{head} — {verdict}: measured {} {}.",
                        num(value),
                        target.unit
                    )
                }
                None => format!("{head} — not measured: see the table."),
            }
        })
        .collect()
}

pub fn run(
    config: &Config,
    progress: &ProgressBar,
    plot_stem: &std::path::Path,
) -> Result<Section, BenchError> {
    let mut table = Table::new(
        &format!(
            "services x {} endpoints: cold sync, one endpoint change, memory",
            config.endpoints_each
        ),
        &[
            "services",
            "cold sync (s)",
            "map ops",
            "services/s",
            "change p50 (ms)",
            "change p99 (ms)",
            "peak RSS (MiB)",
            "RSS before (MiB)",
            "kernel KiB/service",
            "note",
        ],
    );
    let mut maps_table = Table::new(
        "kernel accounting per map at the largest scale (fdinfo memlock)",
        &["map", "max entries", "memlock (MiB)", "used entries"],
    );
    let mut notes = Vec::new();
    let mut sync_points = Vec::new();
    let mut largest: Option<Vec<MapMemory>> = None;
    let mut at_1000_kib = None;
    let mut measured = Vec::new();
    for &services in &config.scales {
        progress.set_message(format!("control plane: {services} services"));
        match measure(services, config) {
            Ok(result) => {
                sync_points.push((services as f64, result.cold_sync_secs));
                measured.push(Measured {
                    services,
                    cold_sync_secs: result.cold_sync_secs,
                    change_p99_ms: result.change_p99_ms,
                    peak_rss_bytes: result.peak_rss_bytes,
                });
                table.row(vec![
                    result.services.to_string(),
                    num(result.cold_sync_secs),
                    result.ops.to_string(),
                    num(result.services as f64 / result.cold_sync_secs),
                    num(result.change_p50_ms),
                    num(result.change_p99_ms),
                    result
                        .peak_rss_bytes
                        .map(|b| num(b as f64 / 1_048_576.0))
                        .unwrap_or_else(|| "n/a".into()),
                    result
                        .baseline_rss_bytes
                        .map(|b| num(b as f64 / 1_048_576.0))
                        .unwrap_or_else(|| "n/a".into()),
                    num(result.kernel_bytes_per_service / 1024.0),
                    format!("{} changes timed", result.changes),
                ]);
                if services == 1000 || at_1000_kib.is_none() {
                    at_1000_kib = Some(result.kernel_bytes_per_service / 1024.0);
                }
                largest = Some(result.maps);
            }
            Err(error) => {
                table.row(vec![
                    services.to_string(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    "n/a".into(),
                    format!("not measured: {error}"),
                ]);
            }
        }
        progress.inc(1);
    }
    for map in largest.unwrap_or_default() {
        maps_table.row(vec![
            map.name.to_string(),
            map.max_entries.to_string(),
            num(map.memlock_bytes as f64 / 1_048_576.0),
            map.used_entries.map_or_else(
                || "flow state or fixed counters (not per service)".to_string(),
                |used| used.to_string(),
            ),
        ]);
    }
    if maps_table.rows.is_empty() {
        maps_table.row(vec![
            "n/a".into(),
            "n/a".into(),
            "n/a".into(),
            "not measured".into(),
        ]);
    }
    notes.push(match at_1000_kib {
        Some(kib) => format!(
            "Target: kernel map memory under 10 KiB per {}-endpoint service — measured {} KiB.",
            config.endpoints_each,
            num(kib)
        ),
        None => {
            "Target: kernel map memory under 10 KiB per 10-endpoint service — not measured.".into()
        }
    });
    notes.extend(agent_targets(&measured, config));
    let mut plots = Vec::new();
    if !sync_points.is_empty() {
        LineChart {
            title: "slicelb cold sync time".into(),
            x_label: "services".into(),
            y_label: "seconds".into(),
            series: vec![Series {
                name: format!("cold sync, {} endpoints each", config.endpoints_each),
                points: sync_points,
            }],
        }
        .write(plot_stem)?;
        plots.push(super::per_packet::file_name(plot_stem));
    } else {
        notes.push("No plot: nothing was measured.".into());
    }
    Ok(Section {
        slug: "control-plane".into(),
        title: "5. Control plane".into(),
        method: format!(
            "Cold sync: a snapshot of N services x {} endpoints (Services and \
             EndpointSlices as the Kubernetes source delivers them) through the model, the \
             diff and the aya map writer into freshly created maps. Endpoint change: one \
             endpoint of one service moves, {} times in turn over the services; the time \
             from handing over the changed snapshot to the maps being written (p50/p99). \
             Peak memory: the process's VmHWM during the scale (freed heap returned and \
             the peak reset before each; this section runs first, before the others grow \
             the process), beside its RSS before the scale. Kernel memory per \
             service: for each map, the kernel's memlock (fdinfo) divided by its max \
             entries, times the entries the services use, summed, over N.",
            config.endpoints_each, config.changes
        ),
        tables: vec![table, maps_table],
        plots,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_scales() -> Config {
        Config {
            scales: vec![1000, 10_000, 50_000],
            endpoints_each: 10,
            changes: 200,
            changes_within: std::time::Duration::from_secs(30),
        }
    }

    fn measured(services: usize, cold_sync_secs: f64, change_p99_ms: f64, mib: u64) -> Measured {
        Measured {
            services,
            cold_sync_secs,
            change_p99_ms,
            peak_rss_bytes: Some(mib * 1_048_576),
        }
    }

    #[test]
    fn each_agent_target_says_met_or_not_with_the_number_measured_at_its_scale() {
        let lines = agent_targets(
            &[
                measured(1000, 0.05, 0.2, 20),
                measured(10_000, 0.4, 0.5, 142),
                measured(50_000, 3.26, 1.0, 900),
            ],
            &full_scales(),
        );
        assert_eq!(
            lines,
            [
                "Target: agent peak RSS < 150 MiB at 10 000 services x 10 endpoints (100 000 \
                 endpoints) — met: measured 142 MiB.",
                "Target: cold sync of 50 000 services x 10 endpoints < 1 s — NOT met: measured \
                 3.26 s.",
                "Target: one endpoint change p99 <= 1 ms at 50 000 services x 10 endpoints — \
                 met: measured 1.00 ms.",
            ]
        );
    }

    #[test]
    fn an_agent_target_outside_the_run_or_unmeasured_says_so() {
        let quick = Config {
            scales: vec![1000],
            ..full_scales()
        };
        let lines = agent_targets(&[measured(1000, 0.05, 0.2, 20)], &quick);
        assert!(
            lines[0].ends_with("— not in this run (the full run measures it)."),
            "{lines:?}"
        );
        assert!(
            lines.iter().all(|l| l.contains("not in this run")),
            "{lines:?}"
        );

        // 10 000 failed to load, and 50 000 timed no change.
        let lines = agent_targets(&[measured(50_000, 0.9, f64::NAN, 140)], &full_scales());
        assert!(
            lines[0].ends_with("— not measured: see the table."),
            "{lines:?}"
        );
        assert!(lines[1].ends_with("— met: measured 0.90 s."), "{lines:?}");
        assert!(
            lines[2].ends_with("— not measured: see the table."),
            "{lines:?}"
        );
    }
}
