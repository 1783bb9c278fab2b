//! `slicelb-lab bench` (what `cargo xtask bench` runs): slicelb against the floor and against
//! kube-proxy's iptables and nftables rule sets, in one run, as ratios.
//!
//! Sections: per-packet cost ([`per_packet`]), throughput, connections and programming
//! time in the lab ([`lab_run`]), control plane ([`control_plane`]). The report goes to
//! `<out-dir>/<date>-<host>.md` with a plot per section (SVG and PNG beside it).

pub mod control_plane;
pub mod ebpf;
pub mod error;
pub mod kube_proxy;
pub mod lab_run;
pub mod packets;
pub mod per_packet;
pub mod plot;
pub mod report;
pub mod services;
pub mod stats;
pub mod under_test;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use self::{
    error::BenchError,
    lab_run::{Balancer, CaseResult, ProgramTime, Traffic},
    plot::{LineChart, Series},
    report::{Machine, Report, Section, Table, num, ratio},
};

/// The parts of a run, for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Section 1: ns/packet with BPF_PROG_TEST_RUN.
    PerPacket,
    /// Sections 2-4: throughput, connections and programming time in the lab.
    Lab,
    /// Section 5: cold sync, endpoint-change latency, memory.
    ControlPlane,
}

/// Everything a run does, sized for a quick or a full run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub per_packet: per_packet::Config,
    pub lab: lab_run::Config,
    pub control_plane: control_plane::Config,
    /// The parts to run; all of them unless `--only` narrows it.
    pub parts: Vec<Part>,
}

impl Plan {
    /// Under 2 minutes on 2 cores.
    pub fn quick() -> Self {
        Self {
            per_packet: per_packet::Config {
                scales: vec![(1, 3), (1000, 3)],
                repeat: 1_000_000,
                runs: 3,
                batch: 100_000,
            },
            lab: lab_run::Config {
                scales: vec![1, 1000],
                packets: 300_000,
                throughput_runs: 3,
                flows: 8_192,
                max_targets: 1000,
                connect_duration: Duration::from_secs(2),
                connect_workers: 4,
                max_connections: 50_000,
                program_limit: Duration::from_secs(60),
            },
            control_plane: control_plane::Config {
                scales: vec![1000],
                endpoints_each: 10,
                changes: 20,
                changes_within: Duration::from_secs(10),
            },
            parts: ALL_PARTS.to_vec(),
        }
    }

    /// Under 15 minutes on 2 cores.
    pub fn full() -> Self {
        Self {
            per_packet: per_packet::Config {
                scales: vec![(1, 3), (1000, 3), (10_000, 3), (100_000, 3), (1000, 100)],
                repeat: 1_000_000,
                runs: 5,
                batch: 100_000,
            },
            lab: lab_run::Config {
                scales: vec![1, 1000, 10_000],
                packets: 1_000_000,
                throughput_runs: 5,
                flows: 65_536,
                max_targets: 1000,
                connect_duration: Duration::from_secs(5),
                connect_workers: 4,
                max_connections: 500_000,
                program_limit: Duration::from_secs(120),
            },
            control_plane: control_plane::Config {
                scales: vec![1000, 10_000, 50_000],
                endpoints_each: 10,
                changes: 200,
                changes_within: Duration::from_secs(30),
            },
            parts: ALL_PARTS.to_vec(),
        }
    }

    /// The same plan running only `parts` (all of them when empty).
    pub fn only(mut self, parts: &[Part]) -> Self {
        if !parts.is_empty() {
            self.parts = parts.to_vec();
        }
        self
    }

    fn runs(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }

    fn steps(&self) -> u64 {
        let mut steps = 1;
        if self.runs(Part::PerPacket) {
            steps += self.per_packet.steps();
        }
        if self.runs(Part::Lab) {
            steps += self.lab.steps();
        }
        if self.runs(Part::ControlPlane) {
            steps += self.control_plane.steps();
        }
        steps
    }
}

const ALL_PARTS: [Part; 3] = [Part::PerPacket, Part::Lab, Part::ControlPlane];

/// What `slicelb-lab bench` was asked for.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// A reduced run (under 2 minutes).
    pub quick: bool,
    /// Where the report goes.
    pub out_dir: PathBuf,
    /// Only these parts; all of them when empty.
    pub only: Vec<Part>,
}

/// Runs the benchmarks and writes the report; prints its path.
pub fn run(args: &BenchOptions) -> anyhow::Result<()> {
    crate::lab::require_root("slicelb-lab bench");
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    }
    .only(&args.only);
    let path = run_plan(&plan, args.quick, &args.out_dir)
        .with_context(|| format!("benchmark run into {}", args.out_dir.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// Runs `plan`, writes `<out_dir>/<date>-<host>.md` and its plots, returns the report path.
pub fn run_plan(plan: &Plan, quick: bool, out_dir: &Path) -> Result<PathBuf, BenchError> {
    let started = Instant::now();
    let (date, started_utc) = report::utc_now();
    let machine = Machine::detect();
    std::fs::create_dir_all(out_dir).map_err(|source| BenchError::Io {
        action: "creating",
        path: out_dir.to_path_buf(),
        source,
    })?;
    let stem = format!("{date}-{}", machine.host);
    let plot = |slug: &str| out_dir.join(format!("{stem}-{slug}"));
    let work_dir = std::env::temp_dir().join(format!("slicelb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir).map_err(|source| BenchError::Io {
        action: "creating",
        path: work_dir.clone(),
        source,
    })?;

    let progress = ProgressBar::new(plan.steps());
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));

    let path = out_dir.join(format!("{stem}.md"));
    let mut report = Report {
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_utc,
        duration_secs: 0.0,
        quick,
        sections: Vec::new(),
    };
    // Written after every section, so a run stopped halfway still leaves what it measured.
    let write = |report: &mut Report| {
        report.duration_secs = started.elapsed().as_secs_f64();
        report.write(&path).map_err(|source| BenchError::Io {
            action: "writing",
            path: path.clone(),
            source,
        })
    };
    // The control plane runs first, while the process is small, so that its peak memory
    // is its own; the report keeps the sections in their numbered order.
    if plan.runs(Part::ControlPlane) {
        let control_plane =
            control_plane::run(&plan.control_plane, &progress, &plot("control-plane"))?;
        report.sections.push(control_plane);
        write(&mut report)?;
    }

    if plan.runs(Part::PerPacket) {
        let per_packet = per_packet::run(&plan.per_packet, &progress, &plot("per-packet"))?;
        report.sections.insert(0, per_packet.section);
        write(&mut report)?;
    }

    if plan.runs(Part::Lab) {
        let lab_results = lab_run::run(&plan.lab, &progress, &work_dir);
        let lab = lab_sections(&lab_results, &plan.lab, &plot)?;
        // Before the control plane's section, when there is one (it is always last).
        let at = if plan.runs(Part::ControlPlane) {
            report.sections.len() - 1
        } else {
            report.sections.len()
        };
        report.sections.splice(at..at, lab);
    }
    progress.set_message("writing the report");
    write(&mut report)?;
    progress.inc(1);
    progress.finish_with_message(format!("report: {}", path.display()));
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(path)
}

/// The ClusterIP case of `balancer` at `services`.
fn result_of(results: &[CaseResult], balancer: Balancer, services: usize) -> Option<&CaseResult> {
    traffic_result_of(results, Traffic::ClusterIp, balancer, services)
}

fn traffic_result_of(
    results: &[CaseResult],
    traffic: Traffic,
    balancer: Balancer,
    services: usize,
) -> Option<&CaseResult> {
    results
        .iter()
        .find(|r| r.traffic == traffic && r.balancer == balancer && r.services == services)
}

fn throughput_mpps(result: &CaseResult) -> Option<f64> {
    result
        .throughput
        .as_ref()
        .and_then(|t| t.as_ref().ok())
        .map(|t| t.mpps())
}

/// The throughput table's row for `result`, if it has a throughput part.
fn throughput_row(services: usize, label: &str, result: &CaseResult) -> Option<Vec<String>> {
    Some(match result.throughput.as_ref()? {
        Ok(t) => vec![
            services.to_string(),
            label.into(),
            num(t.mpps()),
            t.sent.to_string(),
            t.delivered.to_string(),
            // The floor only forwards: its frames keep the service address, by design.
            if result.balancer == Balancer::ForwardFloor {
                "n/a (not balanced)".into()
            } else {
                format!("{:.1}%", t.correct_share() * 100.0)
            },
            format!(
                "generator: {}; the node's stack forwarded {}",
                t.generator, t.stack_forwarded
            ),
        ],
        Err(why) => not_measured_row(services, label, THROUGHPUT_HEADER.len(), why),
    })
}

/// A row of `width` cells for a case that failed: its scale and label, "n/a" and why.
fn not_measured_row(services: usize, label: &str, width: usize, why: &str) -> Vec<String> {
    let mut row = vec![services.to_string(), label.into()];
    row.resize(width - 1, "n/a".into());
    row.push(format!("not measured: {why}"));
    row
}

/// The connections table's row for `result`; `direct_rate` is the floor's connections/s.
fn connections_row(
    services: usize,
    label: &str,
    result: &CaseResult,
    direct_rate: f64,
) -> Vec<String> {
    match &result.connections {
        Ok(c) => vec![
            services.to_string(),
            label.into(),
            num(c.per_second()),
            ratio(c.per_second(), direct_rate),
            num(c.p50_us),
            num(c.p99_us),
            c.completed.to_string(),
            c.failed.to_string(),
            match (result.traffic, result.balancer, c.socket_translated) {
                (Traffic::ExternalToRemote, _, _) => format!(
                    "backends accepted {} connections from the node's address, {} from the \
                     client's",
                    c.accepted_from_node, c.accepted_from_client
                ),
                (_, Balancer::Direct, _) => {
                    "no balancer: the floor (the network path itself)".into()
                }
                (_, _, Some(n)) => {
                    format!("{n} connect() sent to a backend by the socket hooks")
                }
                (_, _, None) => String::new(),
            },
        ],
        Err(why) => not_measured_row(services, label, CONNECTIONS_HEADER.len(), why),
    }
}

fn connection_rate(result: &CaseResult) -> Option<f64> {
    result.connections.as_ref().ok().map(|c| c.per_second())
}

fn connect_p50(result: &CaseResult) -> Option<f64> {
    result.connections.as_ref().ok().map(|c| c.p50_us)
}

/// The scale the connection notes are given at: 1 000 services, or the largest scale of a
/// run without 1 000; with the words that say so (empty at 1 000).
fn notes_scale(scales: &[usize]) -> Option<(usize, String)> {
    const TARGET_SERVICES: usize = 1000;
    let &services = scales
        .iter()
        .find(|&&s| s == TARGET_SERVICES)
        .or_else(|| scales.iter().max())?;
    let at = if services == TARGET_SERVICES {
        String::new()
    } else {
        format!(" (this run has no 1 000 services: at {services}, its largest scale)")
    };
    Some((services, at))
}

/// The pod -> ClusterIP target (issue #12): socket-level slicelb's connections/s at least
/// 1.5x nftables' at 1 000 services, or at the largest scale of a run without 1 000; and
/// the most any balancer on this path could reach, direct / nftables.
fn socket_target(results: &[CaseResult], scales: &[usize]) -> String {
    const WANTED: f64 = 1.5;
    let head = "Target: pod → ClusterIP connections/s at 1 000 services, socket-level slicelb \
                >= 1.5x nftables";
    let Some((services, at)) = notes_scale(scales) else {
        return format!("{head} — not in this run (no lab scale).");
    };
    let rate = |balancer| result_of(results, balancer, services).and_then(connection_rate);
    let (Some(socket), Some(nftables)) = (rate(Balancer::SlicelbSocket), rate(Balancer::Nftables))
    else {
        return format!("{head} — not measured{at}: see the table.");
    };
    let iptables = rate(Balancer::Iptables).unwrap_or(f64::NAN);
    let verdict = if nftables > 0.0 && socket / nftables >= WANTED {
        "met"
    } else {
        "NOT met"
    };
    // A balancer's connections take the direct path plus its own work, so direct / nftables
    // bounds what any of them can reach here.
    let bound = match rate(Balancer::Direct) {
        Some(direct) if nftables > 0.0 => {
            let room = if direct / nftables >= WANTED {
                "the path itself leaves room for the target"
            } else {
                "below 1.5x, so no balancer whose connections take this path can meet the \
                 target unless the path itself gets cheaper (such as the node forwarding \
                 without the kernel stack)"
            };
            format!(
                " Upper bound on this path: direct (no balancer) / nftables = {} ({} conn/s): \
                 {room}.",
                ratio(direct, nftables),
                num(direct)
            )
        }
        _ => " Upper bound (direct / nftables): not measured.".into(),
    };
    format!(
        "{head} — {verdict}{at}: measured {} nftables ({} iptables; {} vs {} conn/s).{bound}",
        ratio(socket, nftables),
        ratio(socket, iptables),
        num(socket),
        num(nftables)
    )
}

/// What each balancer adds to the network path: its connections/s as a fraction of
/// direct's, and its connect() p50 above direct's, at the notes' scale.
fn against_floor(results: &[CaseResult], scales: &[usize]) -> String {
    let head = "Against the floor (direct: no balancer, the network path alone)";
    let Some((services, at)) = notes_scale(scales) else {
        return format!("{head} — not in this run (no lab scale).");
    };
    let case = |balancer| result_of(results, balancer, services);
    let Some((direct, direct_p50)) = case(Balancer::Direct)
        .and_then(|r| connection_rate(r).zip(connect_p50(r)))
        .filter(|(rate, _)| *rate > 0.0)
    else {
        return format!("{head} — not measured{at}: see the table.");
    };
    let balancers: Vec<String> = Balancer::ALL
        .iter()
        .filter(|&&b| b != Balancer::Direct && b.no_connections_because().is_none())
        .map(|&balancer| {
            let measured = case(balancer).and_then(|r| connection_rate(r).zip(connect_p50(r)));
            match measured {
                Some((rate, p50)) => format!(
                    "{} {} direct (connect() p50 {:+.1} µs)",
                    balancer.name(),
                    ratio(rate, direct),
                    p50 - direct_p50
                ),
                None => format!("{} not measured", balancer.name()),
            }
        })
        .collect();
    format!(
        "{head}{at}: direct {} conn/s, p50 {} µs; {}.",
        num(direct),
        num(direct_p50),
        balancers.join(", ")
    )
}

/// One balancer's (services, value) points for the lab plots.
#[derive(Clone, Debug, Default)]
struct Curves {
    balancer: Balancer,
    throughput: Vec<(f64, f64)>,
    connections: Vec<(f64, f64)>,
    programming: Vec<(f64, f64)>,
}

const THROUGHPUT_HEADER: [&str; 7] = [
    "services",
    "balancer",
    "Mpps (1 core)",
    "sent",
    "delivered",
    "balanced correctly",
    "note",
];

const CONNECTIONS_HEADER: [&str; 9] = [
    "services",
    "balancer",
    "connections/s",
    "x direct",
    "p50 (µs)",
    "p99 (µs)",
    "completed",
    "failed",
    "note",
];

/// The masquerade cases' tables (sections 2, 3 and 4) and the verdicts under section 4.
struct MasqueradeTables {
    throughput: Table,
    connections: Table,
    side: Table,
    notes: Vec<String>,
}

/// The throughput targets at 1 000 services (issue #15), one line each, with whether the
/// measured ratio meets it: slicelb's packet path against iptables, nftables and the
/// forwarding floor (Mpps), and its connections per second against iptables.
fn throughput_targets(
    slicelb_mpps: f64,
    iptables_mpps: f64,
    nftables_mpps: f64,
    floor_mpps: f64,
    slicelb_conn: f64,
    iptables_conn: f64,
) -> Vec<String> {
    let line = |what: &str, measured: f64, wanted: f64, shown: String| {
        let verdict = if !measured.is_finite() {
            "not measured"
        } else if measured >= wanted {
            "met"
        } else {
            "NOT met"
        };
        format!("Target at 1 000 services: {what} — measured {shown}: {verdict}.")
    };
    let share = |a: f64, b: f64| a / b;
    let floor_share = share(slicelb_mpps, floor_mpps);
    vec![
        line(
            "throughput >= 2.5x kube-proxy's iptables shape",
            share(slicelb_mpps, iptables_mpps),
            2.5,
            ratio(slicelb_mpps, iptables_mpps),
        ),
        line(
            "throughput >= 2x its nftables shape",
            share(slicelb_mpps, nftables_mpps),
            2.0,
            ratio(slicelb_mpps, nftables_mpps),
        ),
        line(
            "throughput >= 80% of the forwarding floor",
            floor_share,
            0.8,
            format!("{:.0}%", floor_share * 100.0),
        ),
        line(
            "connections/s >= 2x iptables",
            share(slicelb_conn, iptables_conn),
            2.0,
            ratio(slicelb_conn, iptables_conn),
        ),
    ]
}

/// "beats it" when slicelb / other is above 1.
fn beats(slicelb: f64, other: f64) -> &'static str {
    if !slicelb.is_finite() || !other.is_finite() || other == 0.0 {
        "not measured"
    } else if slicelb > other {
        "slicelb beats it"
    } else {
        "slicelb does NOT beat it"
    }
}

/// External traffic to endpoints on another node: slicelb, iptables and nftables
/// masquerading it, side by side.
fn masquerade_tables(results: &[CaseResult], scales: &[usize]) -> MasqueradeTables {
    let mut tables = MasqueradeTables {
        throughput: Table::new(
            "External → remote endpoint (masquerade): 64-byte UDP to the services' external \
             IPs, balanced correctly = arrived from the node's address on the backend's link",
            &THROUGHPUT_HEADER,
        ),
        connections: Table::new(
            "External → remote endpoint (masquerade): new TCP connections to the services' \
             external IPs (x direct: over the ClusterIP table's direct row)",
            &CONNECTIONS_HEADER,
        ),
        side: Table::new(
            "External → remote endpoint (masquerade): ratios are slicelb / other (higher is \
             better for slicelb)",
            &[
                "services",
                "Mpps: slicelb",
                "iptables",
                "nftables",
                "throughput x iptables",
                "throughput x nftables",
                "conn/s: slicelb",
                "iptables",
                "nftables",
                "conn/s x iptables",
                "conn/s x nftables",
            ],
        ),
        notes: Vec::new(),
    };
    for &services in scales {
        let direct_rate = result_of(results, Balancer::Direct, services)
            .and_then(connection_rate)
            .unwrap_or(f64::NAN);
        let case =
            |balancer| traffic_result_of(results, Traffic::ExternalToRemote, balancer, services);
        for balancer in Balancer::MASQUERADING {
            let Some(result) = case(balancer) else {
                continue;
            };
            if let Some(row) = throughput_row(services, balancer.name(), result) {
                tables.throughput.row(row);
            }
            tables.connections.row(connections_row(
                services,
                balancer.name(),
                result,
                direct_rate,
            ));
        }
        let measured = |balancer, f: fn(&CaseResult) -> Option<f64>| {
            case(balancer).and_then(f).unwrap_or(f64::NAN)
        };
        let [t_s, t_i, t_n] = [Balancer::Slicelb, Balancer::Iptables, Balancer::Nftables]
            .map(|b| measured(b, throughput_mpps));
        let [c_s, c_i, c_n] = [Balancer::Slicelb, Balancer::Iptables, Balancer::Nftables]
            .map(|b| measured(b, connection_rate));
        tables.side.row(vec![
            services.to_string(),
            num(t_s),
            num(t_i),
            num(t_n),
            ratio(t_s, t_i),
            ratio(t_s, t_n),
            num(c_s),
            num(c_i),
            num(c_n),
            ratio(c_s, c_i),
            ratio(c_s, c_n),
        ]);
        for (other, t_o, c_o) in [("iptables", t_i, c_i), ("nftables", t_n, c_n)] {
            tables.notes.push(format!(
                "Masquerade path (external → remote endpoint) at {services} services, slicelb \
                 vs kube-proxy {other} with masquerade: throughput {} ({}), connections/s {} \
                 ({}).",
                ratio(t_s, t_o),
                beats(t_s, t_o),
                ratio(c_s, c_o),
                beats(c_s, c_o)
            ));
        }
    }
    tables
}

/// Sections 2, 3 and 4 from the lab cases.
fn lab_sections(
    results: &[CaseResult],
    config: &lab_run::Config,
    plot: &dyn Fn(&str) -> PathBuf,
) -> Result<Vec<Section>, BenchError> {
    let mut throughput = Table::new(
        "64-byte UDP through the node to counting sinks on 3 backends",
        &THROUGHPUT_HEADER,
    );
    let mut connections = Table::new(
        "new TCP connections from the client to the services (direct: to the backends), \
         through the node",
        &CONNECTIONS_HEADER,
    );
    let mut side = Table::new(
        "ratios are slicelb / other (higher is better for slicelb; for programming time, other / slicelb); socket: slicelb-socket / other",
        &[
            "services",
            "program: slicelb (ms)",
            "iptables-restore (ms)",
            "nft -f (ms)",
            "programming x iptables",
            "programming x nftables",
            "throughput x iptables",
            "throughput x nftables",
            "conn/s x iptables",
            "conn/s x nftables",
            "socket conn/s x iptables",
            "socket conn/s x nftables",
        ],
    );
    let value = |r: Option<&CaseResult>, f: &dyn Fn(&CaseResult) -> Option<f64>| {
        r.and_then(f).unwrap_or(f64::NAN)
    };
    let mpps = throughput_mpps;
    let rate = connection_rate;
    // Milliseconds; a tool stopped at the limit counts as the limit (a lower bound).
    let program_ms = |r: &CaseResult| match r.program {
        Some(Ok(ProgramTime::Took(d) | ProgramTime::StoppedAfter(d))) => {
            Some(d.as_secs_f64() * 1e3)
        }
        Some(Err(_)) | None => None,
    };
    let stopped = |r: Option<&CaseResult>| {
        r.is_some_and(|r| matches!(r.program, Some(Ok(ProgramTime::StoppedAfter(_)))))
    };
    // "> limit" and ">= ratio" where the tool was stopped.
    let program_cell = |r: Option<&CaseResult>, ms: f64| {
        if stopped(r) {
            format!("> {} (stopped)", num(ms))
        } else {
            num(ms)
        }
    };
    let program_ratio = |r: Option<&CaseResult>, other: f64, slicelb: f64| {
        if stopped(r) {
            format!(">= {}", ratio(other, slicelb))
        } else {
            ratio(other, slicelb)
        }
    };
    let mut series: Vec<Curves> = Balancer::ALL
        .iter()
        .map(|&balancer| Curves {
            balancer,
            ..Curves::default()
        })
        .collect();
    let mut notes_throughput = Vec::new();
    let mut notes_side = Vec::new();
    for &services in &config.scales {
        let direct_rate = value(result_of(results, Balancer::Direct, services), &rate);
        for curves in &mut series {
            let balancer = curves.balancer;
            let Some(result) = result_of(results, balancer, services) else {
                continue;
            };
            let x = services as f64;
            if result.throughput.is_some() {
                curves.throughput.push((x, value(Some(result), &mpps)));
            }
            if balancer.no_connections_because().is_none() {
                curves.connections.push((x, value(Some(result), &rate)));
                connections.row(connections_row(
                    services,
                    balancer.name(),
                    result,
                    direct_rate,
                ));
            }
            if result.program.is_some() {
                curves
                    .programming
                    .push((x, value(Some(result), &program_ms)));
            }
            // No throughput part: said once, in a note under the table.
            if let Some(row) = throughput_row(services, balancer.name(), result) {
                throughput.row(row);
            }
        }
        let slicelb = result_of(results, Balancer::Slicelb, services);
        let socket = result_of(results, Balancer::SlicelbSocket, services);
        let iptables = result_of(results, Balancer::Iptables, services);
        let nftables = result_of(results, Balancer::Nftables, services);
        let (p_s, p_i, p_n) = (
            value(slicelb, &program_ms),
            value(iptables, &program_ms),
            value(nftables, &program_ms),
        );
        let (t_s, t_i, t_n) = (
            value(slicelb, &mpps),
            value(iptables, &mpps),
            value(nftables, &mpps),
        );
        let (c_s, c_k, c_i, c_n) = (
            value(slicelb, &rate),
            value(socket, &rate),
            value(iptables, &rate),
            value(nftables, &rate),
        );
        side.row(vec![
            services.to_string(),
            program_cell(slicelb, p_s),
            program_cell(iptables, p_i),
            program_cell(nftables, p_n),
            program_ratio(iptables, p_i, p_s),
            program_ratio(nftables, p_n, p_s),
            ratio(t_s, t_i),
            ratio(t_s, t_n),
            ratio(c_s, c_i),
            ratio(c_s, c_n),
            ratio(c_k, c_i),
            ratio(c_k, c_n),
        ]);
        if services == 1000 {
            let floor = value(result_of(results, Balancer::ForwardFloor, services), &mpps);
            notes_throughput.extend(throughput_targets(t_s, t_i, t_n, floor, c_s, c_i));
        }
        if services == 10_000 {
            notes_side.push(format!(
                "Target: programming 10 000 services >= 10x faster than iptables-restore — \
                 measured {}.",
                program_ratio(iptables, p_i, p_s)
            ));
        }
    }
    if !config.scales.contains(&10_000) {
        notes_side.push(
            "Target: programming 10 000 services >= 10x faster than iptables-restore — \
             not in this run (the full run programs 10 000)."
                .into(),
        );
    }
    let iptables_version = crate::lab::run("iptables-restore", &["--version"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let nft_version = crate::lab::run("nft", &["--version"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());

    let chart = |title: &str, y: &str, pick: &dyn Fn(&Curves) -> Vec<(f64, f64)>| LineChart {
        title: title.into(),
        x_label: "services".into(),
        y_label: y.into(),
        series: series
            .iter()
            .map(|s| Series {
                name: s.balancer.name().into(),
                points: pick(s),
            })
            .filter(|s| s.points.iter().any(|p| p.1.is_finite()))
            .collect(),
    };
    let write_plot = |chart: LineChart,
                      slug: &str,
                      notes: &mut Vec<String>|
     -> Result<Vec<String>, BenchError> {
        if chart.series.is_empty() {
            notes.push("No plot: nothing was measured.".into());
            return Ok(Vec::new());
        }
        let stem = plot(slug);
        chart.write(&stem)?;
        Ok(vec![per_packet::file_name(&stem)])
    };
    for balancer in Balancer::ALL {
        if let Some(why) = balancer.no_throughput_because() {
            notes_throughput.push(format!("No row for {}: {why}.", balancer.name()));
        }
    }
    notes_throughput.push(
        "Every row is measured into the same sinks: bench_sink in native XDP on each \
         backend's eth0 (it counts and drops), so frames the node redirects from XDP reach \
         them as frames it forwards through its stack do. forward-floor is the forwarding \
         floor: bench_forward_floor on the node's veth sends each frame to a backend's \
         device with fixed MACs, no lookup and no address rewrite (so none counts as \
         balanced correctly); slicelb forwards from XDP (its fast path, the backends' links \
         allowed), iptables and nftables through the node's stack."
            .into(),
    );
    let mut notes_connections = vec![
        socket_target(results, &config.scales),
        against_floor(results, &config.scales),
    ];
    let masquerade = masquerade_tables(results, &config.scales);
    notes_side.extend(masquerade.notes);
    let throughput_plots = write_plot(
        chart("Throughput (64-byte UDP)", "Mpps", &|s| {
            s.throughput.clone()
        }),
        "throughput",
        &mut notes_throughput,
    )?;
    let connection_plots = write_plot(
        chart("New TCP connections per second", "connections/s", &|s| {
            s.connections.clone()
        }),
        "connections",
        &mut notes_connections,
    )?;
    let side_plots = write_plot(
        chart("Time to program N services", "ms", &|s| {
            s.programming.clone()
        }),
        "programming",
        &mut notes_side,
    )?;
    Ok(vec![
        Section {
            slug: "throughput".into(),
            title: "2. Throughput".into(),
            method: format!(
                "No pktgen module here: the generator is an XDP program (bench_gen) run with \
                 BPF_PROG_TEST_RUN in live-frames mode on the client's veth, pinned to CPU 0; \
                 it rewrites a 64-byte UDP frame per packet to cycle over {} service \
                 addresses (at most) and {} source ports in all, and XDP_TX sends it to the \
                 node. Native-XDP sinks (bench_sink) on the backends count and drop; a packet \
                 is balanced correctly when it arrives with the backend's address and port \
                 from the client's address. Mpps = delivered / wall time of the generator \
                 call, median of {} runs of {} packets; the node's veth processing runs on \
                 the sending CPU, so this is one core's worth (generator, node and sinks \
                 together). A warm-up pass over every flow comes first. Each service has its \
                 own target port on the 3 backend hosts, so no two services share endpoints \
                 (nor, in slicelb, a selection table). For iptables and \
                 nftables, an XDP_PASS program (bench_pass) sits on the node's veth so that \
                 it accepts XDP_TX frames. IPv4 only.",
                config.max_targets, config.flows, config.throughput_runs, config.packets
            ),
            tables: vec![throughput, masquerade.throughput],
            plots: throughput_plots,
            notes: notes_throughput,
        },
        Section {
            slug: "connections".into(),
            title: "3. Connections".into(),
            method: format!(
                "{} client threads in the client namespace open TCP connections to the \
                 services in turn for {:.0} s (bounded to {} connections), closing each with \
                 a reset; backends accept on each service's target port, each backend's \
                 end of its link with an XDP_PASS program (bench_pass) for every balancer, \
                 so that it takes the frames slicelb's fast path redirects. Latency is \
                 connect(): SYN out to SYN-ACK back, i.e. the first packet's trip through \
                 the balancer and back. direct is no balancer: the same clients connect to \
                 the backends' own addresses on the same target ports (each service's port \
                 on each backend in turn), through the same node, which only routes (with \
                 the same XDP_PASS program on its veth as for iptables and nftables): the \
                 floor, what the network path itself costs; x direct is a balancer's \
                 connections/s over direct's at the same scale. slicelb, iptables and \
                 nftables balance on the node \
                 (XDP on its veth; DNAT with conntrack in its nat table): what kube-proxy \
                 does to a pod's connection to a ClusterIP. slicelb-socket is the client as \
                 a pod under slicelb's cgroup v2 socket hooks (the same maps, the hooks at a \
                 fresh cgroup the bench process joins for the load): connect() is sent to a \
                 backend before the SYN is built, so the node only routes (no DNAT, no \
                 conntrack) and the decision is in connect()'s own time; the case fails \
                 unless SOCKET_STATS counted every completed connection as translated.",
                config.connect_workers,
                config.connect_duration.as_secs_f64(),
                config.max_connections
            ),
            tables: vec![connections, masquerade.connections],
            plots: connection_plots,
            notes: notes_connections,
        },
        Section {
            slug: "side-by-side".into(),
            title: "4. Side by side: slicelb, kube-proxy iptables, kube-proxy nftables".into(),
            method: format!(
                "The same service list (each service: TCP and UDP port 80, 3 endpoints on \
                 the lab's backends, on its own target port from 8080 up) programmed three ways in a fresh lab each: \
                 slicelb's cold sync (model, diff, map writer; slicelb-socket programs the \
                 same maps the same way, its time is in the plot); kube-proxy's iptables shape \
                 (KUBE-SERVICES -> KUBE-SVC-* with statistic random picks -> KUBE-SEP-* DNAT, \
                 nat table) with one `iptables-restore --noflush`; kube-proxy's nftables \
                 shape (service-ips verdict map -> per-service numgen random mod N vmap -> \
                 per-endpoint DNAT chains) with one `nft -f`. Programming time includes \
                 starting the tool; a tool still running after {} s is stopped (nothing is \
                 then programmed; its time shows as a lower bound). Tools: \
                 {iptables_version}; {nft_version}. The masquerade tables (here and in \
                 sections 2 and 3) run the same load in a fresh lab each to the same services \
                 made external: each service address is an externalIP (its ClusterIP moves \
                 to 198.18.128.0/17), `externalTrafficPolicy: Cluster`, its EndpointSlice \
                 endpoints on another node (nodeName {remote} != the bench's {node}), so that \
                 the node balances and source-NATs to its address on the backend's link and \
                 the backends' replies come back through it. slicelb: the same programs also \
                 on the node's links to the backends (TC egress masquerades, ingress takes \
                 replies back), masquerade on with the node's address per link and source \
                 ports 1024-65535 (netfilter's range; the lab node has no local connections). \
                 kube-proxy: the external IP goes to KUBE-EXT-* (nftables: external-* via \
                 service-ips), which jumps to KUBE-MARK-MASQ (mark-for-masquerade) before the \
                 service chain; KUBE-POSTROUTING (masquerading) masquerades marked packets \
                 with --random-fully (fully-random). A masquerade case fails unless the \
                 backends accepted its connections from the node's address and none from \
                 the client's; its throughput counts as balanced correctly only packets \
                 from the node's address.",
                config.program_limit.as_secs(),
                remote = services::REMOTE_NODE_NAME,
                node = services::NODE_NAME,
            ),
            tables: vec![side, masquerade.side],
            plots: side_plots,
            notes: notes_side,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_run::Connections;

    fn case(balancer: Balancer, services: usize, completed: usize) -> CaseResult {
        timed_case(balancer, services, completed, 0.0)
    }

    /// A case that made `completed` connections in one second, with connect() p50 `p50_us`.
    fn timed_case(
        balancer: Balancer,
        services: usize,
        completed: usize,
        p50_us: f64,
    ) -> CaseResult {
        CaseResult {
            balancer,
            traffic: Traffic::ClusterIp,
            services,
            program: balancer
                .programs_services()
                .then_some(Ok(ProgramTime::Took(Duration::from_millis(1)))),
            throughput: None,
            connections: Ok(Connections {
                completed,
                seconds: 1.0,
                p50_us,
                ..Connections::default()
            }),
        }
    }

    #[test]
    fn a_failed_case_fills_its_row_with_n_a_and_says_why() {
        let row = not_measured_row(1000, "slicelb", CONNECTIONS_HEADER.len(), "no lab");
        assert_eq!(row.len(), CONNECTIONS_HEADER.len());
        assert_eq!(&row[..3], ["1000", "slicelb", "n/a"]);
        assert_eq!(row[row.len() - 2], "n/a");
        assert_eq!(row[row.len() - 1], "not measured: no lab");
    }

    #[test]
    fn masquerade_cases_get_their_own_rows_ratios_and_verdicts() {
        let masqueraded = |balancer, completed| CaseResult {
            traffic: Traffic::ExternalToRemote,
            ..case(balancer, 1000, completed)
        };
        let results = [
            case(Balancer::Slicelb, 1000, 999),
            masqueraded(Balancer::Slicelb, 300),
            masqueraded(Balancer::Iptables, 100),
            masqueraded(Balancer::Nftables, 600),
        ];
        let tables = masquerade_tables(&results, &[1000]);
        let slicelb: Vec<&Vec<String>> = tables
            .connections
            .rows
            .iter()
            .filter(|r| r[1] == "slicelb")
            .collect();
        assert_eq!(slicelb.len(), 1, "only the masquerade case");
        assert_eq!(slicelb[0][2], "300");
        let side = &tables.side.rows[0];
        assert_eq!((side[9].as_str(), side[10].as_str()), ("3.00x", "0.50x"));
        let verdict = |other: &str| {
            tables
                .notes
                .iter()
                .find(|n| n.contains(&format!("kube-proxy {other} ")))
                .cloned()
                .expect("a verdict")
        };
        assert!(
            verdict("iptables").contains("connections/s 3.00x (slicelb beats it)"),
            "{}",
            verdict("iptables")
        );
        assert!(
            verdict("nftables").contains("connections/s 0.50x (slicelb does NOT beat it)"),
            "{}",
            verdict("nftables")
        );
        assert!(verdict("nftables").contains("throughput n/a (not measured)"));
    }

    #[test]
    fn socket_target_is_judged_against_nftables_at_1000_services() {
        let results = [
            case(Balancer::SlicelbSocket, 1, 100),
            case(Balancer::Nftables, 1, 100),
            case(Balancer::SlicelbSocket, 1000, 300),
            case(Balancer::Iptables, 1000, 100),
            case(Balancer::Nftables, 1000, 200),
        ];
        let met = socket_target(&results, &[1, 1000]);
        assert!(
            met.contains("— met: measured 1.50x nftables (3.00x iptables"),
            "{met}"
        );
        let results = [
            case(Balancer::SlicelbSocket, 1000, 290),
            case(Balancer::Nftables, 1000, 200),
        ];
        let not_met = socket_target(&results, &[1000]);
        assert!(
            not_met.contains("— NOT met: measured 1.45x nftables (n/a iptables"),
            "{not_met}"
        );
    }

    #[test]
    fn socket_target_falls_back_to_the_largest_scale_and_says_so() {
        let results = [
            case(Balancer::SlicelbSocket, 100, 400),
            case(Balancer::Nftables, 100, 200),
        ];
        let note = socket_target(&results, &[1, 100]);
        assert!(
            note.contains("— met (this run has no 1 000 services: at 100, its largest scale)"),
            "{note}"
        );
        let missing = socket_target(&[case(Balancer::Nftables, 1000, 1)], &[1000]);
        assert!(missing.contains("not measured"), "{missing}");
    }

    #[test]
    fn socket_target_states_direct_over_nftables_as_the_upper_bound() {
        let below = [
            case(Balancer::Direct, 1000, 260),
            case(Balancer::SlicelbSocket, 1000, 250),
            case(Balancer::Nftables, 1000, 200),
        ];
        let note = socket_target(&below, &[1000]);
        assert!(
            note.contains(
                "Upper bound on this path: direct (no balancer) / nftables = 1.30x (260 \
                 conn/s): below 1.5x, so no balancer whose connections take this path can \
                 meet the target unless the path itself gets cheaper"
            ),
            "{note}"
        );
        let above = [
            case(Balancer::Direct, 1000, 400),
            case(Balancer::SlicelbSocket, 1000, 250),
            case(Balancer::Nftables, 1000, 200),
        ];
        let note = socket_target(&above, &[1000]);
        assert!(
            note.contains("— NOT met: measured 1.25x nftables")
                && note.contains("nftables = 2.00x (400 conn/s): the path itself leaves room"),
            "{note}"
        );
        let without_direct = socket_target(&above[1..], &[1000]);
        assert!(
            without_direct.contains("Upper bound (direct / nftables): not measured."),
            "{without_direct}"
        );
    }

    #[test]
    fn against_floor_gives_each_balancer_as_a_fraction_of_direct() {
        let results = [
            timed_case(Balancer::Direct, 1000, 300, 10.0),
            timed_case(Balancer::SlicelbSocket, 1000, 291, 10.5),
            timed_case(Balancer::Iptables, 1000, 150, 25.0),
            timed_case(Balancer::Nftables, 1000, 240, 13.0),
        ];
        let note = against_floor(&results, &[1, 1000]);
        assert!(
            note.contains(
                ": direct 300 conn/s, p50 10.0 µs; slicelb not measured, \
                 slicelb-socket 0.97x direct (connect() p50 +0.5 µs), iptables 0.50x direct \
                 (connect() p50 +15.0 µs), nftables 0.80x direct (connect() p50 +3.0 µs)."
            ),
            "{note}"
        );
        let missing = against_floor(&results[1..], &[1000]);
        assert!(missing.contains("— not measured"), "{missing}");
    }
}
