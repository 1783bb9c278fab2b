//! Section 1: per-packet cost with `BPF_PROG_TEST_RUN`, against the floor (an empty XDP
//! program) and parse-only, at growing numbers of services.
//!
//! Repeated cases (conntrack hit, miss, reverse NAT, floor, parse-only) run one 64-byte
//! frame `repeat` times in the kernel; ns/packet is the wall time of the call over
//! `repeat` (finer than the kernel's whole-nanosecond average), median of `runs` runs.
//! A new flow cannot be repeated (the second copy is a conntrack hit), so the new-flow case
//! runs a batch of distinct flows once each and takes the kernel's own time per run; the
//! floor and parse-only are timed the same way on the same batch for its ratios.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use indicatif::ProgressBar;
use lb_common::program_names;

use super::{
    error::BenchError,
    packets::{self, udp_frame},
    plot::{LineChart, Series},
    report::{Section, Table, num, ratio},
    services::{Proto, ServiceSet},
    slicelb::{RunOutcome, Slicelb, capacity_for},
    stats::median,
};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// (services, endpoints each).
    pub scales: Vec<(usize, usize)>,
    pub repeat: u32,
    pub runs: usize,
    /// Distinct flows per new-flow run.
    pub batch: usize,
}

impl Config {
    pub fn steps(&self) -> u64 {
        self.scales.len() as u64
    }
}

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
/// An address no service uses (the node's own): the miss case.
const MISS_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const MISS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn client(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::new(CLIENT_V4.into(), port),
            Family::V6 => SocketAddr::new(CLIENT_V6.into(), port),
        }
    }

    /// A distinct client address per new-flow run, so no run meets another's flows.
    fn batch_client(self, run: usize, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::new(Ipv4Addr::new(198, 18, 64, run as u8 + 1).into(), port),
            Family::V6 => SocketAddr::new(
                Ipv6Addr::new(0x2001, 2, 0, 0x40, 0, 0, 0, run as u16 + 1).into(),
                port,
            ),
        }
    }

    fn miss(self) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::new(MISS_V4.into(), 80),
            Family::V6 => SocketAddr::new(MISS_V6.into(), 80),
        }
    }
}

/// One row's numbers; NaN where a case could not be measured.
#[derive(Clone, Debug, Default, PartialEq)]
struct CaseRow {
    case: &'static str,
    ns: f64,
    floor: f64,
    parse_only: f64,
    note: String,
}

fn frame(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    udp_frame(CLIENT_MAC, NODE_MAC, src, dst)
}

/// Median wall ns/packet of `runs` runs of `repeat`.
fn repeated(
    slicelb: &Slicelb,
    program: &'static str,
    frame: &[u8],
    config: &Config,
) -> Result<(f64, RunOutcome), BenchError> {
    let mut samples = Vec::with_capacity(config.runs);
    let mut last = None;
    for _ in 0..config.runs {
        let outcome = slicelb.run(program, frame, config.repeat)?;
        samples.push(outcome.wall_ns);
        last = Some(outcome);
    }
    let last = last.ok_or_else(|| BenchError::unexpected(program, "no run"))?;
    Ok((median(&samples), last))
}

/// Mean kernel ns per run over `frames`, one run each.
fn batch(slicelb: &Slicelb, program: &'static str, frames: &[Vec<u8>]) -> Result<f64, BenchError> {
    let mut total = 0.0;
    for frame in frames {
        total += slicelb.run(program, frame, 1)?.kernel_ns;
    }
    Ok(total / frames.len().max(1) as f64)
}

pub struct Outcome {
    pub section: Section,
    /// (services, IPv4 existing-flow hit ns/packet).
    pub hit_v4: Vec<(f64, f64)>,
}

pub fn run(
    config: &Config,
    progress: &ProgressBar,
    plot_stem: &std::path::Path,
) -> Result<Outcome, BenchError> {
    let mut table = Table::new(
        "ns/packet (64-byte UDP), ratio to the floor and to parse-only measured in the same mode",
        &[
            "services x endpoints",
            "family",
            "case",
            "ns/packet",
            "x floor",
            "x parse-only",
            "note",
        ],
    );
    let mut notes = Vec::new();
    let mut floor_points = Vec::new();
    let mut parse_points = Vec::new();
    let mut hit_points = Vec::new();
    let mut new_points = Vec::new();
    let mut miss_points = Vec::new();

    for &(services, endpoints) in &config.scales {
        progress.set_message(format!("per-packet: {services} services x {endpoints}"));
        let set = ServiceSet::synthetic(services, endpoints, &[Proto::Udp], true);
        let loaded = Slicelb::load(capacity_for(services, endpoints, 2)).and_then(|mut lb| {
            lb.sync(&set.snapshot())?;
            Ok(lb)
        });
        for family in [Family::V4, Family::V6] {
            let rows = match &loaded {
                Ok(slicelb) => measure_family(slicelb, &set, family, config)?,
                Err(error) => CASES
                    .iter()
                    .map(|case| CaseRow {
                        case,
                        ns: f64::NAN,
                        floor: f64::NAN,
                        parse_only: f64::NAN,
                        note: format!("not measured: {error}"),
                    })
                    .collect(),
            };
            for row in rows {
                let x = services as f64;
                // The plot and the flatness check follow the 3-endpoint scales only.
                let on_curve = endpoints == 3;
                match (row.case, family) {
                    _ if !on_curve => {}
                    ("floor", Family::V4) => floor_points.push((x, row.ns)),
                    ("parse-only", Family::V4) => parse_points.push((x, row.ns)),
                    ("hit, existing flow", Family::V4) => hit_points.push((x, row.ns)),
                    ("hit, new flow", Family::V4) => new_points.push((x, row.ns)),
                    ("miss", Family::V4) => miss_points.push((x, row.ns)),
                    _ => {}
                }
                table.row(vec![
                    format!("{services} x {endpoints}"),
                    family.name().to_string(),
                    row.case.to_string(),
                    num(row.ns),
                    ratio(row.ns, row.floor),
                    ratio(row.ns, row.parse_only),
                    row.note,
                ]);
            }
        }
        progress.inc(1);
    }

    let targets = targets_against(&table, &hit_points, &miss_points);
    notes.extend(targets);
    let chart = LineChart {
        title: "Per-packet cost vs number of services (IPv4)".into(),
        x_label: "services".into(),
        y_label: "ns/packet".into(),
        series: [
            ("slicelb hit, existing flow", hit_points.clone()),
            ("slicelb hit, new flow (batch)", new_points),
            ("slicelb miss", miss_points),
            ("parse-only", parse_points),
            ("floor (empty XDP)", floor_points),
        ]
        .into_iter()
        .filter(|(_, points)| points.iter().any(|p| p.1.is_finite()))
        .map(|(name, points)| Series {
            name: name.to_string(),
            points,
        })
        .collect(),
    };
    let mut plots = Vec::new();
    chart.write(plot_stem)?;
    plots.push(file_name(plot_stem));
    Ok(Outcome {
        section: Section {
            slug: "per-packet".into(),
            title: "1. Per-packet cost (BPF_PROG_TEST_RUN)".into(),
            method: format!(
                "Each case runs a 64-byte Ethernet/IP/UDP frame through the program in the \
                 kernel with BPF_PROG_TEST_RUN. Repeated cases: repeat {} per run, wall time \
                 of the call / repeat, median of {} runs. New flow: {} distinct flows run \
                 once each (a repeated frame would be a conntrack hit after its first copy); \
                 the kernel's own per-run time, which includes its timer overhead, so its \
                 ratios are to the floor and parse-only timed the same way on the same batch. \
                 Services are dual-stack with one UDP port; endpoints are addresses in \
                 198.18.128.0/17 and 2001:2:0:fe00::/64.",
                config.repeat, config.runs, config.batch
            ),
            tables: vec![table],
            plots,
            notes,
        },
        hit_v4: hit_points,
    })
}

pub fn file_name(stem: &std::path::Path) -> String {
    stem.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The rows of one scale and family, in this order.
const CASES: [&str; 6] = [
    "floor",
    "parse-only",
    "hit, new flow",
    "hit, existing flow",
    "miss",
    "reverse NAT (TC egress)",
];

fn measure_family(
    slicelb: &Slicelb,
    set: &ServiceSet,
    family: Family,
    config: &Config,
) -> Result<Vec<CaseRow>, BenchError> {
    let middle = &set.services[set.services.len() / 2];
    let vip: IpAddr = match family {
        Family::V4 => middle.vip_v4.into(),
        Family::V6 => middle.vip_v6.into(),
    };
    let service = SocketAddr::new(vip, middle.port);
    let hit = frame(family.client(40_000), service);
    let (floor, _) = repeated(slicelb, program_names::XDP_EMPTY, &hit, config)?;
    let (parse_only, _) = repeated(slicelb, program_names::XDP_PARSE_ONLY, &hit, config)?;
    let row = |case: &'static str, ns: f64, note: String| CaseRow {
        case,
        ns,
        floor,
        parse_only,
        note,
    };
    let mut rows = vec![
        row("floor", floor, String::new()),
        row("parse-only", parse_only, String::new()),
    ];

    // New flows: distinct flows, once each, against the floor timed the same way.
    let mut new_flow = Vec::new();
    let mut floor_batch = Vec::new();
    let mut parse_batch = Vec::new();
    for run in 0..config.runs {
        let frames: Vec<Vec<u8>> = (0..config.batch)
            .map(|i| frame(family.batch_client(run, 1024 + i as u16), service))
            .collect();
        floor_batch.push(batch(slicelb, program_names::XDP_EMPTY, &frames)?);
        parse_batch.push(batch(slicelb, program_names::XDP_PARSE_ONLY, &frames)?);
        new_flow.push(batch(slicelb, program_names::XDP_INGRESS, &frames)?);
    }
    rows.push(CaseRow {
        case: "hit, new flow",
        ns: median(&new_flow),
        floor: median(&floor_batch),
        parse_only: median(&parse_batch),
        note: format!("batch of {} flows, kernel time per run", config.batch),
    });

    // Existing flow: the first run creates the flow; check it went to an endpoint.
    let first = slicelb.run(program_names::XDP_INGRESS, &hit, 1)?;
    let backend = packets::destination(&first.out);
    let balanced = backend.is_some_and(|dst| {
        dst.port() == middle.target_port
            && middle.endpoints.iter().any(|e| match family {
                Family::V4 => dst.ip() == IpAddr::from(e.ipv4),
                Family::V6 => dst.ip() == IpAddr::from(e.ipv6),
            })
    });
    let (existing, _) = repeated(slicelb, program_names::XDP_INGRESS, &hit, config)?;
    rows.push(row(
        "hit, existing flow",
        existing,
        if balanced {
            String::new()
        } else {
            format!(
                "WARNING: first packet left for {backend:?} (verdict {}), not an endpoint",
                first.verdict
            )
        },
    ));

    let miss_frame = frame(family.client(40_001), family.miss());
    let (miss, miss_run) = repeated(slicelb, program_names::XDP_INGRESS, &miss_frame, config)?;
    rows.push(row(
        "miss",
        miss,
        if miss_run.out == miss_frame {
            String::new()
        } else {
            "WARNING: the miss frame was modified".into()
        },
    ));

    // Reverse NAT: the backend's reply to the flow created above, through TC egress.
    rows.push(match backend.filter(|_| balanced) {
        Some(backend) => {
            let reply = udp_frame(NODE_MAC, CLIENT_MAC, backend, family.client(40_000));
            let (ns, run) = repeated(slicelb, program_names::TC_EGRESS, &reply, config)?;
            let translated = packets::endpoints(&run.out).map(|(src, _)| src) == Some(service);
            row(
                "reverse NAT (TC egress)",
                ns,
                if translated {
                    String::new()
                } else {
                    "WARNING: the reply did not leave with the service address".into()
                },
            )
        }
        None => row(
            "reverse NAT (TC egress)",
            f64::NAN,
            "not measured: no flow to reply to (the hit was not balanced)".into(),
        ),
    });
    Ok(rows)
}

/// Where we stand against the per-packet targets.
fn targets_against(
    table: &Table,
    hit_points: &[(f64, f64)],
    miss_points: &[(f64, f64)],
) -> Vec<String> {
    let value = |services: &str, family: &str, case: &str, column: usize| -> Option<String> {
        table
            .rows
            .iter()
            .find(|r| r[0].starts_with(services) && r[1] == family && r[2] == case)
            .map(|r| r[column].clone())
            .filter(|v| v != "n/a")
    };
    let mut notes = Vec::new();
    for (case, target) in [("hit, existing flow", "1.5x"), ("hit, new flow", "1.5x")] {
        match value("1000 x 3", "IPv4", case, 5) {
            Some(r) => notes.push(format!(
                "Target: {case} within {target} parse-only — measured {r} (1 000 services, IPv4)."
            )),
            None => notes.push(format!(
                "Target: {case} within {target} parse-only — not measured."
            )),
        }
    }
    match value("1000 x 3", "IPv4", "miss", 5) {
        Some(r) => notes.push(format!(
            "Target: miss within 1.1x parse-only — measured {r} (1 000 services, IPv4)."
        )),
        None => notes.push("Target: miss within 1.1x parse-only — not measured.".into()),
    }
    for (name, points) in [("hit", hit_points), ("miss", miss_points)] {
        let finite: Vec<&(f64, f64)> = points.iter().filter(|p| p.1.is_finite()).collect();
        match (finite.first(), finite.last()) {
            (Some(first), Some(last)) if finite.len() > 1 => notes.push(format!(
                "Target: flat within 10% from {} to {} services — {name} went from {} to {} ns ({:+.1}%).",
                first.0,
                last.0,
                num(first.1),
                num(last.1),
                (last.1 / first.1 - 1.0) * 100.0
            )),
            _ => notes.push(format!(
                "Target: flat within 10% across services — {name} not measured at two scales."
            )),
        }
    }
    notes
}
