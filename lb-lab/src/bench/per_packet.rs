//! Section 1: per-packet cost with `BPF_PROG_TEST_RUN`, against the floor (an empty XDP
//! program) and parse-only, at growing numbers of services.
//!
//! Every case runs one 64-byte frame `repeat` times in the kernel; ns/packet is the kernel's
//! own average (whole nanoseconds; its timer stops while the loop yields the CPU, so other
//! work on shared cores does not count, while the call's wall time moved in 4 ns steps
//! here), median of `runs` runs. A test run repeats on one buffer, so a program that rewrites the frame sees
//! its own output from the second run on: a repeated hit would measure a miss to the
//! backend's address after its first copy. Cases that rewrite (hits, reverse NAT) therefore
//! run behind `bench_restore_xdp` / `bench_restore_tc` (lb-lab-ebpf), which put the
//! frame back (and, for new flows, give it a source never seen before) and tail-call the
//! program measured; the restore's own cost, measured by pointing it at an empty program, is
//! subtracted. Misses, the floor and parse-only leave the frame alone and run directly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use indicatif::ProgressBar;
use lb_common::{
    Reason,
    bench::{RestoreConfig, program_names as bench_programs},
    program_names,
};

use slicelb::dataplane::MapCapacity;

use super::{
    ebpf::{PerPacketPrograms, program_fd},
    error::BenchError,
    packets::{self, TcpSegment, tcp_frame, udp_frame},
    plot::{LineChart, Series},
    report::{Section, Table, num, ratio},
    services::{Proto, ServiceSet},
    stats::median,
    under_test::{RunOutcome, Slicelb, capacity_for, run_outcome},
};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// (services, endpoints each).
    pub scales: Vec<(usize, usize)>,
    pub repeat: u32,
    pub runs: usize,
    /// New flows per new-flow run. Large enough that the test run's fixed cost (it swaps
    /// the XDP dispatcher when repeating) vanishes; CONNTRACK is sized so that every run's
    /// flows fit (no eviction: the cost of an insert into a table with room).
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

    /// Where the restore program writes a new flow's source: (UDP source port offset,
    /// offset of the last two bytes of the source address) in a frame of this family.
    fn new_flow_offsets(self) -> (u32, u32) {
        match self {
            // Ethernet 14 + IPv4 20 = 34; source address at 26..30.
            Family::V4 => (34, 28),
            // Ethernet 14 + IPv6 40 = 54; source address at 22..38.
            Family::V6 => (54, 36),
        }
    }

    /// The same for a new destination: (UDP destination port offset, offset of the last
    /// two bytes of the destination address).
    fn new_destination_offsets(self) -> (u32, u32) {
        match self {
            // Destination address at 30..34.
            Family::V4 => (36, 32),
            // Destination address at 38..54.
            Family::V6 => (56, 52),
        }
    }

    /// The masquerade service's external IP ([`masquerade`]).
    fn masquerade_target(self) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::new(masquerade::EXTERNAL_V4.into(), masquerade::PORT),
            Family::V6 => SocketAddr::new(masquerade::EXTERNAL_V6.into(), masquerade::PORT),
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

/// Median kernel ns/packet of `runs` runs of `repeat`.
fn repeated(
    ebpf: &aya::Ebpf,
    program: &'static str,
    frame: &[u8],
    config: &Config,
) -> Result<(f64, RunOutcome), BenchError> {
    let mut samples = Vec::with_capacity(config.runs);
    let mut last = None;
    for _ in 0..config.runs {
        let outcome = run_outcome(ebpf, program, frame, config.repeat)?;
        samples.push(outcome.kernel_ns);
        last = Some(outcome);
    }
    let last = last.ok_or_else(|| BenchError::unexpected(program, "no run"))?;
    Ok((median(&samples), last))
}

/// `xdp_action::XDP_PASS`.
const XDP_PASS: u32 = 2;

/// What the restore program does to the frame before each run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flows {
    /// The same frame every run: one flow.
    Same,
    /// A new source (port and two address bytes) every run.
    New(Family),
    /// A new destination port every run (and new destination address bytes every 65 536).
    NewDestination(Family),
}

/// Median kernel ns/packet of `target` run behind the restore program on `frame`.
fn restored(
    slicelb: &Slicelb,
    restore: &mut PerPacketPrograms,
    target: &'static str,
    frame: &[u8],
    flows: Flows,
    repeat: u32,
    runs: usize,
) -> Result<(f64, RunOutcome), BenchError> {
    let (tc, target_fd) = match target {
        bench_programs::TC_EMPTY => (true, program_fd(restore.ebpf(), target)?),
        bench_programs::XDP_EMPTY => (false, program_fd(restore.ebpf(), target)?),
        program_names::TC_EGRESS => (true, program_fd(slicelb.datapath().ebpf(), target)?),
        _ => (false, program_fd(slicelb.datapath().ebpf(), target)?),
    };
    let (port_offset, addr_offset) = match flows {
        Flows::Same => (0, 0),
        Flows::New(family) => family.new_flow_offsets(),
        Flows::NewDestination(family) => family.new_destination_offsets(),
    };
    let flows = RestoreConfig {
        port_offset,
        addr_offset,
    };
    let mut samples = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let outcome = restore.run(&target_fd, tc, frame, flows, repeat)?;
        samples.push(outcome.kernel_ns);
        last = Some(outcome);
    }
    let last = last.ok_or_else(|| BenchError::unexpected(target, "no run"))?;
    Ok((median(&samples), last))
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
    let mut measured = Vec::new();

    for &(services, endpoints) in &config.scales {
        progress.set_message(format!("per-packet: {services} services x {endpoints}"));
        let mut set = ServiceSet::synthetic(services, endpoints, &[Proto::Udp], true);
        // The handshake cases' service: the middle one, on TCP too.
        let middle = set.services.len() / 2;
        set.services[middle].protocols.push(Proto::Tcp);
        // Two entries per new flow (UDP, and TCP once its handshake completes) and per
        // handshake, for both families' runs, with room to spare.
        let flows_per_protocol = 2 * 2 * config.batch * config.runs;
        let room = |entries: usize, default: u32| {
            (entries + 1024).next_power_of_two().max(default as usize) as u32
        };
        let capacity = MapCapacity {
            conntrack: room(2 * flows_per_protocol, lb_common::capacity::CONNTRACK),
            handshakes: room(flows_per_protocol, lb_common::capacity::HANDSHAKES),
            ..capacity_for(services, endpoints, 2)
        };
        let mut loaded = Slicelb::load(capacity).and_then(|mut lb| {
            lb.sync(&masquerade::add_service(set.snapshot()))?;
            lb.set_masquerade(masquerade::PORTS, &masquerade::addresses())?;
            // The agent's default (no `--fast-path-iface`): what is measured here is the
            // balancing; section 2 measures the fast path sending frames on.
            lb.fast_path_off()?;
            Ok((lb, PerPacketPrograms::load()?))
        });
        if let Err(error) = &loaded {
            progress.println(format!(
                "per-packet: {services} services x {endpoints} not measured: {error:#}"
            ));
        }
        for family in [Family::V4, Family::V6] {
            let rows = match &mut loaded {
                Ok((slicelb, restore)) => measure_family(slicelb, restore, &set, family, config)?,
                Err(error) => CASES
                    .iter()
                    .map(|case| CaseRow {
                        case,
                        ns: f64::NAN,
                        floor: f64::NAN,
                        parse_only: f64::NAN,
                        // One line: a table cell (the full error went to the terminal).
                        note: format!(
                            "not measured: {}",
                            error.to_string().lines().next().unwrap_or_default()
                        ),
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
                    ("miss, many destinations", Family::V4) => miss_points.push((x, row.ns)),
                    _ => {}
                }
                measured.push(Measured {
                    services,
                    endpoints,
                    family,
                    case: row.case,
                    ns: row.ns,
                    parse_only: row.parse_only,
                    floor: row.floor,
                });
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

    notes.extend(targets_against(&measured));
    let chart = LineChart {
        title: "Per-packet cost vs number of services (IPv4)".into(),
        x_label: "services".into(),
        y_label: "ns/packet".into(),
        series: [
            ("slicelb hit, existing flow", hit_points.clone()),
            ("slicelb hit, new flow", new_points),
            ("slicelb miss (many destinations)", miss_points),
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
    // Nothing measured (the programs did not load, say): the report still comes out, with
    // the reason in every row, instead of failing on an empty plot.
    if chart.series.is_empty() {
        notes.push("No plot: no case was measured (each row says why).".into());
    } else {
        chart.write(plot_stem)?;
        plots.push(file_name(plot_stem));
    }
    Ok(Outcome {
        section: Section {
            slug: "per-packet".into(),
            title: "1. Per-packet cost (BPF_PROG_TEST_RUN)".into(),
            method: format!(
                "Each case runs a 64-byte Ethernet/IP/UDP frame through the program in the \
                 kernel with BPF_PROG_TEST_RUN, repeat {} per run (new flows: see below); \
                 ns/packet is the kernel's own average per run, median of {} runs. A test run repeats on one buffer, \
                 so cases that rewrite the frame (hits, reverse NAT) run behind a restore \
                 program that puts the frame back and tail-calls the program measured \
                 (new flow: with a source never seen before, {} flows per run, in a \
                 CONNTRACK with room for all of them; TCP: a SYN (64 bytes, 74 for \
                 IPv6) from a new source, then the ACK completing each of those \
                 handshakes, the same sources replayed, to the middle service, which \
                 listens on TCP too); the \
                 restore's own cost (restore then an empty program) is subtracted and the \
                 floor added. Misses leave the frame alone and run directly. The XDP fast \
                 path is off, as without `--fast-path-iface` (section 2 measures it). \
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
const CASES: [&str; 11] = [
    "floor",
    "parse-only",
    "hit, new flow",
    "hit, new flow (TCP SYN)",
    "hit, handshake's ACK (TCP)",
    "hit, existing flow",
    "miss",
    "miss, many destinations",
    "reverse NAT (TC egress)",
    "masquerade, existing flow (TC egress)",
    "masqueraded reply (XDP ingress)",
];

fn measure_family(
    slicelb: &Slicelb,
    restore: &mut PerPacketPrograms,
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
    let (floor, _) = repeated(restore.ebpf(), bench_programs::XDP_EMPTY, &hit, config)?;
    let (parse_only, _) = repeated(restore.ebpf(), bench_programs::XDP_PARSE_ONLY, &hit, config)?;
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
    let is_endpoint = |dst: Option<SocketAddr>| {
        dst.is_some_and(|dst| {
            dst.port() == middle.target_port
                && middle.endpoints.iter().any(|e| match family {
                    Family::V4 => dst.ip() == IpAddr::from(e.ipv4),
                    Family::V6 => dst.ip() == IpAddr::from(e.ipv6),
                })
        })
    };
    let (repeat, runs) = (config.repeat, config.runs);
    // A program's cost behind the restore, less the restore's own (restore -> empty), on the
    // floor: what the program costs run directly on a fresh frame.
    let net = |behind: f64, restore_only: f64| floor + (behind - restore_only);

    // New flows: a new source every run.
    let new_repeat = config.batch as u32;
    let new_flows = Flows::New(family);
    let (restore_new, _) = restored(
        slicelb,
        restore,
        bench_programs::XDP_EMPTY,
        &hit,
        new_flows,
        new_repeat,
        runs,
    )?;
    let (new_flow, new_run) = restored(
        slicelb,
        restore,
        program_names::XDP_INGRESS,
        &hit,
        new_flows,
        new_repeat,
        runs,
    )?;
    rows.push(row(
        "hit, new flow",
        net(new_flow, restore_new),
        if is_endpoint(packets::destination(&new_run.out)) {
            format!("{new_repeat} new flows per run")
        } else {
            format!(
                "WARNING: the last new flow left for {:?}, not an endpoint",
                packets::destination(&new_run.out)
            )
        },
    ));

    rows.extend(measure_handshake(
        slicelb,
        restore,
        (family.client(40_000), service),
        &is_endpoint,
        config,
        restore_new,
        (floor, parse_only),
    )?);

    // Existing flow: the first run creates the flow; then the same frame behind the restore.
    let first = slicelb.run(program_names::XDP_INGRESS, &hit, 1)?;
    let backend = packets::destination(&first.out);
    let balanced = is_endpoint(backend);
    let (restore_same, _) = restored(
        slicelb,
        restore,
        bench_programs::XDP_EMPTY,
        &hit,
        Flows::Same,
        repeat,
        runs,
    )?;
    let (existing, existing_run) = restored(
        slicelb,
        restore,
        program_names::XDP_INGRESS,
        &hit,
        Flows::Same,
        repeat,
        runs,
    )?;
    rows.push(row(
        "hit, existing flow",
        net(existing, restore_same),
        if !balanced {
            format!(
                "WARNING: first packet left for {backend:?} (verdict {}), not an endpoint",
                first.verdict
            )
        } else if packets::destination(&existing_run.out) != backend {
            "WARNING: repeated packets did not follow the flow's backend".into()
        } else {
            String::new()
        },
    ));

    // Misses leave the frame alone: run directly. The restore method must agree.
    let miss_frame = frame(family.client(40_001), family.miss());
    let (miss, miss_run) = repeated(
        slicelb.datapath().ebpf(),
        program_names::XDP_INGRESS,
        &miss_frame,
        config,
    )?;
    let (miss_behind, _) = restored(
        slicelb,
        restore,
        program_names::XDP_INGRESS,
        &miss_frame,
        Flows::Same,
        repeat,
        runs,
    )?;
    rows.push(row(
        "miss",
        miss,
        if miss_run.out == miss_frame {
            format!(
                "one destination; behind the restore: {}",
                num(net(miss_behind, restore_same))
            )
        } else {
            "WARNING: the miss frame was modified".into()
        },
    ));
    // One address says little once the frontend filter has many bits set (it may share
    // one): the average over 65 536 destination ports is what misses cost.
    let spread = Flows::NewDestination(family);
    let (restore_spread, _) = restored(
        slicelb,
        restore,
        bench_programs::XDP_EMPTY,
        &miss_frame,
        spread,
        repeat,
        runs,
    )?;
    let (spread_behind, spread_run) = restored(
        slicelb,
        restore,
        program_names::XDP_INGRESS,
        &miss_frame,
        spread,
        repeat,
        runs,
    )?;
    rows.push(row(
        "miss, many destinations",
        net(spread_behind, restore_spread),
        if spread_run.verdict == XDP_PASS {
            "65 536 destination ports, each run a new one".into()
        } else {
            format!(
                "WARNING: verdict {} instead of XDP_PASS",
                spread_run.verdict
            )
        },
    ));

    // Reverse NAT: the backend's reply to the flow created above, through TC egress, less
    // the TC restore's own cost (restore -> empty TC program).
    rows.push(match backend.filter(|_| balanced) {
        Some(backend) => {
            let reply = udp_frame(NODE_MAC, CLIENT_MAC, backend, family.client(40_000));
            let (restore_tc, _) = restored(
                slicelb,
                restore,
                bench_programs::TC_EMPTY,
                &reply,
                Flows::Same,
                repeat,
                runs,
            )?;
            let (behind, run) = restored(
                slicelb,
                restore,
                program_names::TC_EGRESS,
                &reply,
                Flows::Same,
                repeat,
                runs,
            )?;
            let translated = packets::endpoints(&run.out).map(|(src, _)| src) == Some(service);
            row(
                "reverse NAT (TC egress)",
                net(behind, restore_tc),
                if translated {
                    "cost above an empty TC program, on the XDP floor".into()
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
    rows.extend(measure_masquerade(
        slicelb,
        restore,
        family,
        config,
        (floor, parse_only),
    )?);
    Ok(rows)
}

/// Makes the rows of one scale and family, measured against `floor` and `parse_only`.
fn rows_against(floor: f64, parse_only: f64) -> impl Fn(&'static str, f64, String) -> CaseRow {
    move |case, ns, note| CaseRow {
        case,
        ns,
        floor,
        parse_only,
        note,
    }
}

/// A TCP connection's first two packets from a client: its SYN, a new flow (a source never
/// seen before, as for UDP), then the ACK that completes the handshake, replaying the
/// SYNs' sources (the restore's sequence set back): the flow found in its handshake and
/// confirmed. `restore_new` is the restore's own cost with new flows.
fn measure_handshake(
    slicelb: &Slicelb,
    restore: &mut PerPacketPrograms,
    (client, service): (SocketAddr, SocketAddr),
    is_endpoint: &dyn Fn(Option<SocketAddr>) -> bool,
    config: &Config,
    restore_new: f64,
    (floor, parse_only): (f64, f64),
) -> Result<Vec<CaseRow>, BenchError> {
    let family = if client.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let syn = tcp_frame(CLIENT_MAC, NODE_MAC, client, service, TcpSegment::Syn);
    let ack = tcp_frame(CLIENT_MAC, NODE_MAC, client, service, TcpSegment::Ack);
    let batch = config.batch as u32;
    let (mut syn_samples, mut ack_samples) = (Vec::new(), Vec::new());
    let (mut syn_out, mut ack_out) = (None, None);
    // Every packet of every run: the SYNs balanced afresh, the ACKs following their flows.
    let (new_before, followed_before) = (
        slicelb.reason_count(Reason::LbNewFlow)?,
        slicelb.reason_count(Reason::LbConntrack)?,
    );
    for _ in 0..config.runs {
        // The SYNs' sources, then the same again for the ACKs.
        let first_source = restore.sequence()?;
        for (frame, samples, out) in [
            (&syn, &mut syn_samples, &mut syn_out),
            (&ack, &mut ack_samples, &mut ack_out),
        ] {
            restore.set_sequence(first_source)?;
            let (ns, run) = restored(
                slicelb,
                restore,
                program_names::XDP_INGRESS,
                frame,
                Flows::New(family),
                batch,
                1,
            )?;
            samples.push(ns);
            *out = Some(run.out);
        }
    }
    let expected = u64::from(batch) * config.runs as u64;
    let counted = [
        slicelb.reason_count(Reason::LbNewFlow)? - new_before,
        slicelb.reason_count(Reason::LbConntrack)? - followed_before,
    ];
    let net = |behind: f64| floor + (behind - restore_new);
    let note = |out: Option<Vec<u8>>, what: &str, counted: u64, reason: Reason| {
        let destination = out.as_deref().and_then(packets::destination);
        if !is_endpoint(destination) {
            format!("WARNING: the last {what} left for {destination:?}, not an endpoint")
        } else if counted != expected {
            format!("WARNING: {counted} of {expected} {what} counted {reason:?}")
        } else {
            format!("{batch} {what} per run")
        }
    };
    let row = rows_against(floor, parse_only);
    Ok(vec![
        row(
            CASES[3],
            net(median(&syn_samples)),
            note(syn_out, "connections' SYNs", counted[0], Reason::LbNewFlow),
        ),
        row(
            CASES[4],
            net(median(&ack_samples)),
            note(
                ack_out,
                "handshakes completed",
                counted[1],
                Reason::LbConntrack,
            ),
        ),
    ])
}

/// The masquerade path: a flow from outside to an external IP whose endpoint is on another
/// node. Its DNATed packet through TC egress (source NAT, an existing mapping), and the
/// endpoint's reply to the node's address and port through XDP ingress (given back to the
/// client), each behind the restore like the other rewriting cases; `floor` and
/// `parse_only` as measured for the family's other cases.
fn measure_masquerade(
    slicelb: &Slicelb,
    restore: &mut PerPacketPrograms,
    family: Family,
    config: &Config,
    (floor, parse_only): (f64, f64),
) -> Result<Vec<CaseRow>, BenchError> {
    let (repeat, runs) = (config.repeat, config.runs);
    let row = |case: &'static str, ns: f64, note: String| CaseRow {
        case,
        ns,
        floor,
        parse_only,
        note,
    };
    let net = |behind: f64, restore_only: f64| floor + (behind - restore_only);
    let client = family.client(40_002);
    let dnat = slicelb
        .run(
            program_names::XDP_INGRESS,
            &frame(client, family.masquerade_target()),
            1,
        )?
        .out;
    // The first packet out allocates the flow's port.
    let first_out = slicelb.run(program_names::TC_EGRESS, &dnat, 1)?.out;
    let masqueraded = packets::endpoints(&first_out);
    let endpoint = packets::destination(&dnat);
    let (Some((node_side, _)), Some(endpoint)) = (masqueraded, endpoint) else {
        return Ok(masquerade::CASES
            .iter()
            .map(|case| {
                row(
                    case,
                    f64::NAN,
                    "not measured: the flow was not balanced".into(),
                )
            })
            .collect());
    };
    let (restore_tc, _) = restored(
        slicelb,
        restore,
        bench_programs::TC_EMPTY,
        &dnat,
        Flows::Same,
        repeat,
        runs,
    )?;
    let (egress, egress_run) = restored(
        slicelb,
        restore,
        program_names::TC_EGRESS,
        &dnat,
        Flows::Same,
        repeat,
        runs,
    )?;
    let reply = udp_frame(NODE_MAC, CLIENT_MAC, endpoint, node_side);
    let (restore_xdp, _) = restored(
        slicelb,
        restore,
        bench_programs::XDP_EMPTY,
        &reply,
        Flows::Same,
        repeat,
        runs,
    )?;
    let (ingress, ingress_run) = restored(
        slicelb,
        restore,
        program_names::XDP_INGRESS,
        &reply,
        Flows::Same,
        repeat,
        runs,
    )?;
    let masqueraded_ok = node_side.ip() != client.ip()
        && packets::endpoints(&egress_run.out).map(|(src, _)| src) == Some(node_side);
    let given_back = packets::destination(&ingress_run.out) == Some(client);
    Ok(vec![
        row(
            masquerade::CASES[0],
            net(egress, restore_tc),
            if masqueraded_ok {
                format!("leaves as {node_side}; cost above an empty TC program, on the XDP floor")
            } else {
                format!(
                    "WARNING: the packet left as {:?}, not masqueraded",
                    packets::endpoints(&egress_run.out)
                )
            },
        ),
        row(
            masquerade::CASES[1],
            net(ingress, restore_xdp),
            if given_back {
                "destination back to the client".into()
            } else {
                "WARNING: the reply was not given back to the client".into()
            },
        ),
    ])
}

/// The service the masquerade cases use: an external IP with one endpoint on another node.
mod masquerade {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        sync::Arc,
    };

    use k8s_openapi::{
        api::{
            core::v1::{Service, ServicePort, ServiceSpec},
            discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
        },
        apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
    };
    use lb_common::SnatAddresses;
    use slicelb::{dataplane::masquerade::PortRange, model::Snapshot};

    pub const CASES: [&str; 2] = [super::CASES[9], super::CASES[10]];
    pub const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 1);
    pub const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x99, 0, 0, 0, 1);
    pub const PORT: u16 = 80;
    const ENDPOINT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 97, 1);
    const ENDPOINT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x97, 0, 0, 0, 1);
    const TARGET_PORT: u16 = 8080;
    pub const PORTS: Option<PortRange> = Some(PortRange {
        min: 61000,
        max: 65535,
    });
    /// The node's addresses: 198.18.10.10 and 2001:2:0:10::10.
    const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 10);
    const NODE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, 0x10);
    /// A TC test run's packet is on the loopback device of the namespace (ifindex 1).
    const TEST_RUN_IFINDEX: u32 = 1;

    pub fn addresses() -> Vec<(u32, SnatAddresses)> {
        let mut value = SnatAddresses::default();
        value.ipv4[..4].copy_from_slice(&NODE_V4.octets());
        value.ipv6 = NODE_V6.octets();
        value.has_ipv4 = 1;
        value.has_ipv6 = 1;
        vec![(TEST_RUN_IFINDEX, value)]
    }

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("bench".into()),
            ..ObjectMeta::default()
        }
    }

    /// `snapshot` and the masquerade service: `externalIPs` with the default
    /// `externalTrafficPolicy: Cluster`, its endpoint on node "remote".
    pub fn add_service(mut snapshot: Snapshot) -> Snapshot {
        let service = Service {
            metadata: meta("masquerade"),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: Some("198.18.99.100".into()),
                cluster_ips: Some(vec!["198.18.99.100".into(), "2001:2:0:99::100".into()]),
                ip_families: Some(vec!["IPv4".into(), "IPv6".into()]),
                ip_family_policy: Some("RequireDualStack".into()),
                external_ips: Some(vec![EXTERNAL_V4.to_string(), EXTERNAL_V6.to_string()]),
                ports: Some(vec![ServicePort {
                    name: Some("udp".into()),
                    port: PORT.into(),
                    protocol: Some("UDP".into()),
                    target_port: Some(IntOrString::Int(TARGET_PORT.into())),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        snapshot.services.push(Arc::new(service));
        for (family, address) in [
            ("IPv4", ENDPOINT_V4.to_string()),
            ("IPv6", ENDPOINT_V6.to_string()),
        ] {
            let mut slice_meta = meta(&format!("masquerade-{}", family.to_lowercase()));
            slice_meta.labels = Some(
                [(
                    "kubernetes.io/service-name".to_string(),
                    "masquerade".to_string(),
                )]
                .into(),
            );
            snapshot.endpoint_slices.push(Arc::new(EndpointSlice {
                metadata: slice_meta,
                address_type: family.into(),
                endpoints: vec![Endpoint {
                    addresses: vec![address],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some("remote".into()),
                    ..Endpoint::default()
                }],
                ports: Some(vec![EndpointPort {
                    name: Some("udp".into()),
                    port: Some(TARGET_PORT.into()),
                    protocol: Some("UDP".into()),
                    ..EndpointPort::default()
                }]),
            }));
        }
        snapshot
    }
}

/// One measured case, kept as numbers for the target checks.
struct Measured {
    services: usize,
    endpoints: usize,
    family: Family,
    case: &'static str,
    ns: f64,
    parse_only: f64,
    floor: f64,
}

/// The scale at which the per-packet targets are judged (issue #15).
const TARGET_SERVICES: usize = 1000;

/// An upper bound on ns/packet for one case: relative to parse-only, or absolute.
enum Bound {
    TimesParseOnly(f64),
    Nanoseconds(f64),
}

/// Where we stand against the per-packet targets: each line says met or NOT met, with the
/// numbers it was judged on.
fn targets_against(measured: &[Measured]) -> Vec<String> {
    const JUDGED: [(&str, Bound); 4] = [
        ("hit, existing flow", Bound::TimesParseOnly(2.0)),
        ("miss, many destinations", Bound::TimesParseOnly(1.2)),
        ("reverse NAT (TC egress)", Bound::TimesParseOnly(3.0)),
        // The old design is not kept reachable, so "half of today's" is stated as the
        // absolute the issue gives for this machine, with the floor beside it.
        ("hit, new flow", Bound::Nanoseconds(700.0)),
    ];
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let mut notes = Vec::new();
    for (case, bound) in &JUDGED {
        for family in [Family::V4, Family::V6] {
            let found = measured.iter().find(|m| {
                m.services == TARGET_SERVICES
                    && m.endpoints == 3
                    && m.family == family
                    && m.case == *case
                    && m.ns.is_finite()
            });
            let where_ = format!("{TARGET_SERVICES} services, {}", family.name());
            notes.push(match (bound, found) {
                (Bound::TimesParseOnly(times), Some(m)) => {
                    let x = m.ns / m.parse_only;
                    format!(
                        "Target: {case} <= {times}x parse-only ({where_}) — {}: {} ns = {x:.2}x \
                         parse-only ({} ns).",
                        verdict(x <= *times),
                        num(m.ns),
                        num(m.parse_only)
                    )
                }
                (Bound::Nanoseconds(limit), Some(m)) => format!(
                    "Target: {case} <= {} ns ({where_}) — {}: {} ns (floor {} ns, parse-only {} ns).",
                    num(*limit),
                    verdict(m.ns <= *limit),
                    num(m.ns),
                    num(m.floor),
                    num(m.parse_only)
                ),
                (_, None) => format!("Target: {case} ({where_}) — not measured."),
            });
        }
    }
    for case in ["hit, existing flow", "miss, many destinations"] {
        for family in [Family::V4, Family::V6] {
            let curve: Vec<&Measured> = measured
                .iter()
                .filter(|m| {
                    m.endpoints == 3 && m.family == family && m.case == case && m.ns.is_finite()
                })
                .collect();
            let (Some(first), Some(last)) = (curve.first(), curve.last()) else {
                notes.push(format!(
                    "Target: {case} flat within 10% across services ({}) — not measured.",
                    family.name()
                ));
                continue;
            };
            if curve.len() < 2 {
                notes.push(format!(
                    "Target: {case} flat within 10% across services ({}) — measured at one scale only.",
                    family.name()
                ));
                continue;
            }
            let change = last.ns / first.ns - 1.0;
            notes.push(format!(
                "Target: {case} flat within 10% from {} to {} services ({}) — {}: {} to {} ns ({:+.1}%).",
                first.services,
                last.services,
                family.name(),
                // A hair of slack: 10% measured must read as met, not lose to float rounding.
                verdict(change.abs() <= 0.10 + 1e-9),
                num(first.ns),
                num(last.ns),
                change * 100.0
            ));
        }
    }
    notes
}

#[cfg(test)]
mod target_tests {
    use super::*;

    fn measured(services: usize, family: Family, case: &'static str, ns: f64) -> Measured {
        Measured {
            services,
            endpoints: 3,
            family,
            case,
            ns,
            parse_only: 30.0,
            floor: 20.0,
        }
    }

    #[test]
    fn each_target_says_met_or_not_met_with_its_numbers() {
        let rows = vec![
            measured(1, Family::V4, "hit, existing flow", 50.0),
            measured(1000, Family::V4, "hit, existing flow", 55.0),
            measured(1000, Family::V6, "hit, existing flow", 61.0),
            measured(1000, Family::V4, "hit, new flow", 650.0),
            measured(1000, Family::V6, "hit, new flow", 900.0),
            measured(1000, Family::V4, "miss, many destinations", 33.0),
        ];
        let notes = targets_against(&rows);
        let line = |start: &str| {
            notes
                .iter()
                .find(|n| n.starts_with(start))
                .unwrap_or_else(|| panic!("no line starting {start:?} in {notes:#?}"))
                .clone()
        };
        assert!(
            line("Target: hit, existing flow <= 2x parse-only (1000 services, IPv4) — met: 55")
                .contains("1.83x")
        );
        assert!(
            line("Target: hit, existing flow <= 2x parse-only (1000 services, IPv6) — NOT met")
                .contains("2.03x")
        );
        assert!(
            line("Target: hit, new flow <= 700 ns (1000 services, IPv4) — met")
                .contains("floor 20")
        );
        assert!(
            line("Target: hit, new flow <= 700 ns (1000 services, IPv6) — NOT met").contains("900")
        );
        assert!(
            line("Target: miss, many destinations <= 1.2x parse-only (1000 services, IPv4) — met")
                .contains("1.10x")
        );
        line("Target: reverse NAT (TC egress) (1000 services, IPv4) — not measured.");
        assert!(
            line("Target: hit, existing flow flat within 10% from 1 to 1000 services (IPv4) — met")
                .contains("+10.0%")
        );
        line(
            "Target: miss, many destinations flat within 10% across services (IPv4) — measured at one scale only.",
        );
    }
}
