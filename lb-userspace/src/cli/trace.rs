//! `slicelb trace`: which backend a flow would reach and why. The answer comes from the
//! real forward program, run with `BPF_PROG_TEST_RUN` on a crafted first packet against the
//! live pinned configuration; the reason comes from what the program read (conntrack,
//! affinity, the Maglev slot). The run's flow state and counters are maps of its own load,
//! given the live conntrack and affinity entries of this flow first: tracing writes nothing
//! the node uses, not even a counter. The packet arrives on the interface the agent is
//! attached to (`--iface`), with the devices the attached program's fast path may send to:
//! the XDP fast path then decides as it would live (XDP_TX, redirect, or the stack and why),
//! its next-hop lookup made in the caller's network namespace. `--socket` explains
//! socket-level balancing (pods and the node) from the maps alone.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use etherparse::PacketBuilder;
use lb_common::{
    AffinityKey, AffinityValue, Config, FAMILY_SHORT_CIRCUIT, FastPathCounter, FlowKey, FlowValue,
    FrontendKey, PROTO_SCTP, PROTO_TCP, PROTO_UDP, backend_state, config_flags, frontend_flags,
    hash::flow_hash, map_names, program_names,
};
use serde::Serialize;

use super::{
    Protocol, TraceArgs,
    commands::open_pinned,
    services::{backend_shares, ip_from_map, kind_name, state_name},
    status::{InterfaceStatus, interfaces},
};
use crate::dataplane::{
    MapWriter as _,
    loader::{ReadOnlyDatapath, interface_index},
    pins, test_run,
};
use crate::diff::encode::{backend_identity, encode_addr};

/// Source port used when `--from` gives none.
pub const DEFAULT_SOURCE_PORT: u16 = 40000;

/// `ADDR`, `ADDR:PORT` or `[ADDR]:PORT`.
pub fn parse_from(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("--from {text:?} is not ADDR, ADDR:PORT or [ADDR]:PORT"))?;
    Ok(SocketAddr::new(ip, DEFAULT_SOURCE_PORT))
}

fn proto_number(proto: Protocol) -> u8 {
    match proto {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => PROTO_SCTP,
    }
}

/// The node's MAC in a crafted packet when the arrival interface's is not known.
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// The first packet of the flow, sent to `node_mac`: a TCP SYN, a UDP datagram or an SCTP
/// INIT.
pub fn first_packet(
    from: SocketAddr,
    to: SocketAddr,
    proto: Protocol,
    node_mac: [u8; 6],
) -> anyhow::Result<Vec<u8>> {
    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    let ethernet = PacketBuilder::ethernet2(CLIENT_MAC, node_mac);
    let ip = match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("--from {from} and --to {to} are of different address families"),
    };
    let mut packet = Vec::new();
    match proto {
        Protocol::Tcp => {
            let builder = ip.tcp(from.port(), to.port(), 1, 64240).syn();
            builder.write(&mut packet, &[])?;
        }
        Protocol::Udp => {
            let builder = ip.udp(from.port(), to.port());
            builder.write(&mut packet, b"slicelb trace")?;
        }
        Protocol::Sctp => {
            // Common header (ports, verification tag 0, checksum 0 — our datapath does not
            // check it) and a minimal INIT chunk.
            let mut sctp = Vec::new();
            sctp.extend_from_slice(&from.port().to_be_bytes());
            sctp.extend_from_slice(&to.port().to_be_bytes());
            sctp.extend_from_slice(&[0; 8]);
            sctp.extend_from_slice(&[1, 0, 0, 20]);
            sctp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0xff, 0xff, 0, 1, 0, 1, 0, 0, 0, 1]);
            ip.write(&mut packet, etherparse::IpNumber(PROTO_SCTP), &sctp)?;
        }
    }
    Ok(packet)
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trace {
    pub flow: String,
    pub frontend: Option<String>,
    pub service: Option<String>,
    /// conntrack, affinity, maglev, no-frontend, reject, drop.
    pub decision: &'static str,
    pub explanation: String,
    pub backend: Option<SocketAddr>,
    pub verdict: String,
    /// What the XDP fast path did with the rewritten packet; absent when the run did not
    /// reach it (no backend chosen) and for `--socket`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathTrace>,
}

/// How the rewritten packet leaves the node: directly from XDP or through the stack.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FastPathTrace {
    /// The interface the packet was run as arriving on; `None`: none known (the fast path
    /// then finds no next hop).
    pub arrival: Option<String>,
    /// The FAST_PATH_STATS counter the run counted, as `slicelb stats` names it (`sent_tx`,
    /// `sent_redirect`, `stack_…`), or `tc_ingress` when the arrival interface is balanced at
    /// TC ingress (no fast path there).
    pub outcome: &'static str,
    pub explanation: String,
    /// Sent directly: the interface the frame leaves by and the MACs written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_mac: Option<String>,
}

impl Trace {
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "flow      {}", self.flow);
        if let (Some(frontend), Some(service)) = (&self.frontend, &self.service) {
            let _ = writeln!(out, "frontend  {frontend} ({service})");
        }
        let _ = writeln!(out, "decision  {}: {}", self.decision, self.explanation);
        let _ = writeln!(out, "verdict   {}", self.verdict);
        if let Some(fast_path) = &self.fast_path {
            let arrival = fast_path.arrival.as_deref().unwrap_or("no interface");
            let _ = writeln!(
                out,
                "fast path {} (arriving on {arrival}): {}",
                fast_path.outcome, fast_path.explanation
            );
        }
        out
    }
}

/// What each fast path outcome means, for a trace (the counters' documentation, shortened).
fn fast_path_explanation(counter: FastPathCounter) -> &'static str {
    match counter {
        FastPathCounter::Transmitted => "sent back out of the arrival interface (XDP_TX)",
        FastPathCounter::Redirected => "redirected to another interface (bpf_redirect_map)",
        FastPathCounter::StackTurnedOff => {
            "to the stack: the fast path is off (--fast-path false, or no --fast-path-iface)"
        }
        FastPathCounter::StackMasquerade => {
            "to the stack: the flow may be masqueraded (its source NAT is at TC egress)"
        }
        FastPathCounter::StackNotPlain => {
            "to the stack: a VLAN tag, IPv4 options, IPv6 extension headers or a fragment"
        }
        FastPathCounter::StackNotForThisNode => {
            "to the stack: a broadcast or multicast frame, or one for another host's MAC"
        }
        FastPathCounter::StackNoNextHop => {
            "to the stack: no usable next hop (no route, a local destination, no neighbour entry yet, forwarding off on the arrival interface, or an egress interface not in --fast-path-iface)"
        }
        FastPathCounter::StackTooBig => "to the stack: longer than the egress MTU",
        FastPathCounter::StackTtlExpiring => "to the stack: TTL or hop limit 1 or less",
        FastPathCounter::StackRefresh => {
            "to the stack: the packet that looks an expired next hop up again"
        }
        FastPathCounter::Failed => "dropped: the frame could not be rewritten",
    }
}

/// The interface a traced packet arrives on, as the attached program sees it.
struct Arrival {
    iface: String,
    ifindex: u32,
    /// Its MAC: the crafted packet is addressed to it (the fast path leaves frames for
    /// another host's MAC to the stack).
    mac: Option<[u8; 6]>,
    /// The devices the attached XDP program's fast path may send to; `None` when the
    /// interface is balanced at TC ingress (no fast path there).
    fast_path_devices: Option<Vec<u32>>,
}

/// The arrival interface: `--iface`, else the only interface the agent is attached to.
/// With several attached, `--iface` is needed when the fast path is on (where the packet
/// arrives decides where it leaves); with it off, none is needed (`None`: the run's context
/// names no interface, as before the fast path).
fn arrival(args: &TraceArgs) -> anyhow::Result<Option<Arrival>> {
    let attached: Vec<InterfaceStatus> = interfaces(&args.pin_path)?
        .into_iter()
        .filter(|i| i.ingress_mode != "none")
        .collect();
    let names = || {
        attached
            .iter()
            .map(|i| i.interface.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (iface, status) = match &args.iface {
        Some(iface) => {
            // A pin directory names `eth0.100` as `eth0_100` (bpffs refuses dots).
            let pinned_as = iface.replace('.', "_");
            let Some(status) = attached.iter().find(|i| i.interface == pinned_as) else {
                bail!(
                    "--iface {iface}: slicelb is not attached there (attached: {})",
                    names()
                );
            };
            (iface.clone(), status)
        }
        None => match attached.as_slice() {
            [] => return Ok(None),
            [only] => (only.interface.clone(), only),
            _ if fast_path_on(&args.pin_path)? => bail!(
                "the fast path is on and slicelb is attached to {}: say which one the packet arrives on with --iface",
                names()
            ),
            _ => return Ok(None),
        },
    };
    let ifindex = interface_index(&iface)?;
    if ifindex == 0 {
        bail!(
            "no interface {iface} in this network namespace (run trace where the agent runs, or give --iface)"
        );
    }
    let fast_path_devices = match status.links.iter().find(|l| l.hook == "xdp") {
        Some(xdp) => Some(live_fast_path_devices(xdp.program_id).with_context(|| {
            format!("reading the fast path devices of the program attached to {iface}")
        })?),
        None => None,
    };
    Ok(Some(Arrival {
        mac: interface_macs()?
            .into_iter()
            .find(|(index, _, _)| *index == ifindex)
            .map(|(_, _, mac)| mac),
        iface,
        ifindex,
        fast_path_devices,
    }))
}

/// Whether the pinned CONFIG lets the fast path run.
fn fast_path_on(pin_path: &std::path::Path) -> anyhow::Result<bool> {
    let map = pins::open_read_only(pin_path, map_names::CONFIG)?;
    let config: Array<_, Config> = Array::try_from(aya::maps::Map::Array(map))?;
    Ok(config.get(&0, 0)?.flags & config_flags::FAST_PATH_OFF == 0)
}

/// FAST_PATH_DEVICES of the program `program_id`: it is never pinned, so it is found among
/// the program's maps (the kernel keeps 15 characters of a map's name).
fn live_fast_path_devices(program_id: u32) -> anyhow::Result<Vec<u32>> {
    let program = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == program_id)
        .with_context(|| format!("no loaded program {program_id}"))?;
    let kernel_name = &map_names::FAST_PATH_DEVICES[..15];
    for id in program.map_ids()?.unwrap_or_default() {
        let map = MapData::from_id(id)?;
        if map.info()?.name_as_str() != Some(kernel_name) {
            continue;
        }
        let devices: aya::maps::DevMapHash<MapData> =
            aya::maps::DevMapHash::try_from(aya::maps::Map::from_map_data(map)?)?;
        return Ok(devices.keys().collect::<Result<Vec<u32>, _>>()?);
    }
    bail!("program {program_id} has no {kernel_name} map")
}

/// (index, name, MAC) of every interface of this network namespace with a MAC.
fn interface_macs() -> anyhow::Result<Vec<(u32, String, [u8; 6])>> {
    Ok(nix::ifaddrs::getifaddrs()
        .context("listing the interfaces")?
        .filter_map(|entry| {
            let link = *entry.address?.as_link_addr()?;
            Some((link.ifindex() as u32, entry.interface_name, link.addr()?))
        })
        .collect())
}

fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The run's own FAST_PATH_STATS, summed over CPUs.
fn fast_path_counts(datapath: &mut ReadOnlyDatapath) -> anyhow::Result<Vec<u64>> {
    let map = datapath
        .own_map_mut(map_names::FAST_PATH_STATS)
        .context("the FAST_PATH_STATS map")?;
    let counters: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(&*map).context("FAST_PATH_STATS as a per-CPU array")?;
    FastPathCounter::ALL
        .iter()
        .map(|c| {
            Ok(counters
                .get(&(*c as u32), 0)
                .context("reading FAST_PATH_STATS")?
                .iter()
                .sum())
        })
        .collect()
}

/// What the fast path did in the run: the counter it counted (`before` and `after` are
/// the run's FAST_PATH_STATS) and, for a frame sent directly, where and with which MACs.
fn fast_path_trace(
    arrival: Option<&Arrival>,
    before: &[u64],
    after: &[u64],
    output: &test_run::RunOutput,
) -> anyhow::Result<Option<FastPathTrace>> {
    let arrival_name = arrival.map(|a| a.iface.clone());
    if let Some(a) = arrival
        && a.fast_path_devices.is_none()
    {
        return Ok(Some(FastPathTrace {
            arrival: arrival_name,
            outcome: "tc_ingress",
            explanation: format!(
                "{} is balanced at TC ingress, where there is no fast path: the stack forwards the packet",
                a.iface
            ),
            egress: None,
            source_mac: None,
            destination_mac: None,
        }));
    }
    let Some(counter) = FastPathCounter::ALL
        .into_iter()
        .find(|c| after[*c as usize] > before[*c as usize])
    else {
        return Ok(None);
    };
    let mut trace = FastPathTrace {
        arrival: arrival_name,
        outcome: counter.name(),
        explanation: fast_path_explanation(counter).into(),
        egress: None,
        source_mac: None,
        destination_mac: None,
    };
    if matches!(
        counter,
        FastPathCounter::Transmitted | FastPathCounter::Redirected
    ) && output.packet.len() >= 12
    {
        let (dmac, smac) = (&output.packet[0..6], &output.packet[6..12]);
        // The frame leaves by the device whose MAC the fast path wrote as the source (the
        // FIB's egress device), one of those it may send to, or the arrival device for
        // XDP_TX.
        let allowed = |index: u32| match (counter, arrival) {
            (FastPathCounter::Transmitted, Some(a)) => index == a.ifindex,
            (_, Some(a)) => a
                .fast_path_devices
                .as_ref()
                .is_some_and(|d| d.contains(&index)),
            (_, None) => false,
        };
        let egress: Vec<String> = interface_macs()?
            .into_iter()
            .filter(|(index, _, mac)| mac[..] == *smac && allowed(*index))
            .map(|(_, name, _)| name)
            .collect();
        if !egress.is_empty() {
            let egress = egress.join(" or ");
            trace.explanation = match counter {
                FastPathCounter::Redirected => {
                    format!("redirected out of {egress} (bpf_redirect_map)")
                }
                _ => format!("sent back out of {egress}, the arrival interface (XDP_TX)"),
            };
            trace.egress = Some(egress);
        }
        let _ = write!(
            trace.explanation,
            ", source MAC {}, destination MAC {}",
            mac_text(smac),
            mac_text(dmac)
        );
        trace.source_mac = Some(mac_text(smac));
        trace.destination_mac = Some(mac_text(dmac));
    }
    Ok(Some(trace))
}

fn xdp_verdict_name(verdict: u32) -> &'static str {
    match verdict {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "XDP_?",
    }
}

/// The destination of an IPv4/IPv6 packet after the program (its rewritten backend): the
/// ports are the first 4 bytes of TCP, UDP and SCTP alike.
fn destination_of(packet: &[u8]) -> Option<SocketAddr> {
    let sliced = etherparse::SlicedPacket::from_ethernet(packet).ok()?;
    let (ip, l4): (IpAddr, &[u8]) = match sliced.net? {
        etherparse::NetSlice::Ipv4(v4) => {
            (v4.header().destination_addr().into(), v4.payload().payload)
        }
        etherparse::NetSlice::Ipv6(v6) => {
            (v6.header().destination_addr().into(), v6.payload().payload)
        }
        _ => return None,
    };
    let port = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    Some(SocketAddr::new(ip, port))
}

pub fn trace(args: &TraceArgs) -> anyhow::Result<Trace> {
    let Some(from) = &args.from else {
        return trace_socket(args);
    };
    let from = parse_from(from)?;
    let to = args.to;
    let proto = proto_number(args.proto);
    let flow = format!(
        "{from} -> {to}/{}",
        format!("{:?}", args.proto).to_uppercase()
    );
    let arrival = arrival(args)?;
    let node_mac = arrival.as_ref().and_then(|a| a.mac).unwrap_or(NODE_MAC);
    let packet = first_packet(from, to, args.proto, node_mac)?;

    let maps = open_pinned(&args.pin_path)?;
    let applied = maps.read().context("reading the maps")?;
    let (src, family) = encode_addr(from.ip());
    let (dst, _) = encode_addr(to.ip());
    let frontend_key = FrontendKey {
        addr: dst,
        port: to.port().to_be(),
        proto,
        family,
    };
    let flow_key = FlowKey {
        src_addr: src,
        dst_addr: dst,
        src_port: from.port().to_be(),
        dst_port: to.port().to_be(),
        proto,
        family,
        _pad: [0; 2],
    };
    let existing_flow = maps
        .conntrack_entry(&flow_key)
        .context("reading CONNTRACK")?;

    let frontend = applied.frontends.get(&frontend_key).copied();
    let service = frontend.map(|f| {
        applied
            .service_names
            .get(&f.service_id)
            .cloned()
            .unwrap_or_else(|| format!("service id {}", f.service_id))
    });
    let affinity_key = frontend.map(|f| AffinityKey {
        client_addr: src,
        service_id: f.service_id,
        family,
        _pad: [0; 3],
    });
    let existing_affinity = match affinity_key {
        Some(key) => maps.affinity_entry(&key).context("reading AFFINITY")?,
        None => None,
    };

    // The real program, with the live configuration and flow state of its own (a separate
    // load: the attached one and its maps are untouched).
    let mut datapath = ReadOnlyDatapath::open(&args.pin_path)
        .context("loading the programs against the pinned maps")?;
    if let Some(flow) = existing_flow {
        conntrack_map(&mut datapath)?
            .insert(&flow_key, &flow, 0)
            .context("giving the run this flow's conntrack entry")?;
    }
    if let (Some(key), Some(value)) = (affinity_key, existing_affinity) {
        affinity_map(&mut datapath)?
            .insert(&key, &value, 0)
            .context("giving the run this client's affinity entry")?;
    }
    if let Some(devices) = arrival.as_ref().and_then(|a| a.fast_path_devices.as_ref()) {
        datapath
            .allow_fast_path_devices(devices)
            .context("giving the run the attached program's fast path devices")?;
    }
    let fast_path_before = fast_path_counts(&mut datapath)?;
    let program = datapath.forward().context("the forward program")?;
    let output = test_run::run_xdp_arriving_on(
        program,
        program_names::XDP_INGRESS,
        &packet,
        arrival.as_ref().map_or(0, |a| a.ifindex),
    )
    .context("running the forward program on the crafted packet")?;
    let verdict_name = xdp_verdict_name(output.verdict);
    let fast_path = fast_path_trace(
        arrival.as_ref(),
        &fast_path_before,
        &fast_path_counts(&mut datapath)?,
        &output,
    )?;

    // Whom the client's affinity entry names: the run followed it only if that is where
    // the packet went (a backend the frontend may no longer use is not followed).
    let pinned = existing_affinity
        .and_then(|value| applied.backends.get(&value.backend_id))
        .and_then(backend_identity);

    // The rewritten packet is the run's output when it passes to the stack and when the
    // fast path sends it (XDP_TX or XDP_REDIRECT); another XDP_TX is a reject.
    let sent_directly = fast_path.as_ref().is_some_and(|f| {
        f.outcome == FastPathCounter::Transmitted.name()
            || f.outcome == FastPathCounter::Redirected.name()
    });
    let backend = (output.verdict == 2 || sent_directly)
        .then(|| destination_of(&output.packet))
        .flatten()
        .filter(|b| *b != to);
    // The fast path's verdict follows a rewrite only: without a backend there is none.
    let fast_path = fast_path.filter(|_| backend.is_some());
    let describe_backend = |addr: SocketAddr| -> String {
        let state = applied
            .backends
            .values()
            .find(|b| SocketAddr::new(ip_from_map(&b.addr, b.family), u16::from_be(b.port)) == addr)
            .map(|b| state_name(b.state))
            .unwrap_or("unknown");
        format!("{addr} ({state})")
    };
    let Some(frontend) = frontend else {
        // An established flow is followed before the frontend is looked up, so a flow whose
        // frontend is gone may still go to its backend (until it ends or the backend goes).
        if let (Some(b), Some(_)) = (backend, existing_flow) {
            return Ok(Trace {
                flow,
                frontend: None,
                service: None,
                decision: "conntrack",
                explanation: format!(
                    "no frontend any more, but an existing flow: its conntrack entry keeps it on {}",
                    describe_backend(b)
                ),
                backend: Some(b),
                verdict: verdict_name.into(),
                fast_path,
            });
        }
        return Ok(Trace {
            flow,
            frontend: None,
            service: None,
            decision: "no-frontend",
            explanation: "no frontend for this address, port and protocol: passed untouched".into(),
            backend: None,
            verdict: verdict_name.into(),
            fast_path: None,
        });
    };
    let frontend_text = format!(
        "{} {to}/{}",
        kind_name(frontend.kind),
        format!("{:?}", args.proto).to_uppercase()
    );
    let (decision, explanation) = match (backend, existing_flow) {
        (Some(b), Some(flow)) if flow.backend_id != 0 && applied.backends.get(&flow.backend_id).is_some_and(|x| x.state != backend_state::EMPTY) => (
            "conntrack",
            format!("an existing flow: its conntrack entry keeps it on {}", describe_backend(b)),
        ),
        (Some(b), _) if frontend.flags & frontend_flags::AFFINITY != 0 && pinned == Some(b) => (
            "affinity",
            format!(
                "session affinity (ClientIP, {} s): this client's backend is {}",
                frontend.affinity_timeout_secs,
                describe_backend(b)
            ),
        ),
        (Some(b), _) => {
            let slot = flow_hash(&src, &dst, from.port().to_be(), to.port().to_be(), proto)
                % frontend.table_size.max(1);
            (
                "maglev",
                format!(
                    "a new flow: Maglev slot {slot} of {} names {}",
                    frontend.table_size,
                    describe_backend(b)
                ),
            )
        }
        (None, _) if output.verdict == 3 => (
            "reject",
            "no usable backend: answered at once (TCP RST or ICMP port unreachable), like kube-proxy's REJECT".into(),
        ),
        (None, _) if output.verdict == 1 => (
            "drop",
            if frontend.flags & frontend_flags::DROP_WHEN_EMPTY != 0 && frontend.table_size == 0 {
                "no endpoint on this node under a Local traffic policy: dropped".into()
            } else {
                "dropped (source outside loadBalancerSourceRanges?)".into()
            },
        ),
        (None, _) => ("pass", "passed untouched".into()),
    };
    Ok(Trace {
        flow,
        frontend: Some(frontend_text),
        service,
        decision,
        explanation,
        backend,
        verdict: match backend {
            Some(b) => format!("{verdict_name}, destination rewritten to {b}"),
            None => verdict_name.into(),
        },
        fast_path,
    })
}

/// What socket-level balancing does with a `connect()` (or unconnected UDP `sendmsg()`) to
/// `--to` from below the cgroup root. The kernel cannot test-run cgroup socket programs, so
/// this reads the maps the program reads, in the order it reads them (read-only: nothing is
/// loaded or written).
fn trace_socket(args: &TraceArgs) -> anyhow::Result<Trace> {
    let to = args.to;
    let proto_name = format!("{:?}", args.proto).to_uppercase();
    let flow = format!("connect() from a pod or the node -> {to}/{proto_name}");
    let applied = open_pinned(&args.pin_path)?
        .read()
        .context("reading the maps")?;
    let (dst, family) = encode_addr(to.ip());
    let key = FrontendKey {
        addr: dst,
        port: to.port().to_be(),
        proto: proto_number(args.proto),
        family,
    };
    let Some(found) = applied.frontends.get(&key).copied() else {
        return Ok(Trace {
            flow,
            frontend: None,
            service: None,
            decision: "no-frontend",
            explanation:
                "no frontend for this address, port and protocol: the call goes on untouched".into(),
            backend: None,
            verdict: "untranslated".into(),
            fast_path: None,
        });
    };
    let external_local = frontend_flags::EXTERNAL | frontend_flags::TRAFFIC_POLICY_LOCAL;
    let twin = (found.flags & external_local == external_local)
        .then(|| {
            let mut twin = key;
            twin.family |= FAMILY_SHORT_CIRCUIT;
            applied.frontends.get(&twin).copied()
        })
        .flatten();
    let frontend = twin.unwrap_or(found);
    let service = applied
        .service_names
        .get(&frontend.service_id)
        .cloned()
        .unwrap_or_else(|| format!("service id {}", frontend.service_id));
    let frontend_text = format!("{} {to}/{proto_name}", kind_name(frontend.kind));
    let trace = |decision, explanation: String, verdict: &str| Trace {
        flow: flow.clone(),
        frontend: Some(frontend_text.clone()),
        service: Some(service.clone()),
        decision,
        explanation,
        backend: None,
        verdict: verdict.into(),
        fast_path: None,
    };
    if frontend.flags & frontend_flags::SOURCE_RANGES != 0 {
        return Ok(trace(
            "source-ranges",
            "loadBalancerSourceRanges: left to the packet path (the socket's source address is not known at connect())".into(),
            "untranslated",
        ));
    }
    if frontend.table_size == 0 {
        return Ok(trace(
            "reject",
            "no usable backend: connect() fails with ECONNREFUSED at once".into(),
            "ECONNREFUSED",
        ));
    }
    let choices: Vec<String> = backend_shares(&applied, &frontend)
        .iter()
        .map(|b| format!("{} ({}, {:.1}%)", b.address, b.state, b.share_percent))
        .collect();
    let mut explanation = String::new();
    if twin.is_some() {
        explanation.push_str(
            "externalTrafficPolicy: Local, but pods and the node use every endpoint (kube-proxy's short-circuit); ",
        );
    }
    if frontend.flags & frontend_flags::AFFINITY != 0 {
        let _ = write!(
            explanation,
            "session affinity (ClientIP, {} s) per pod network namespace, else ",
            frontend.affinity_timeout_secs
        );
    }
    let _ = write!(
        explanation,
        "a random slot of the {}-slot table, once per connection: {}",
        frontend.table_size,
        choices.join(", ")
    );
    Ok(trace(
        "socket",
        explanation,
        "connect() goes to the chosen backend; getpeername() and received datagrams show the service",
    ))
}

/// The run's own CONNTRACK.
fn conntrack_map(
    datapath: &mut ReadOnlyDatapath,
) -> anyhow::Result<HashMap<&mut MapData, FlowKey, FlowValue>> {
    let map = datapath
        .own_map_mut(map_names::CONNTRACK)
        .context("the CONNTRACK map")?;
    HashMap::try_from(map).context("CONNTRACK as a hash map")
}

/// The run's own AFFINITY.
fn affinity_map(
    datapath: &mut ReadOnlyDatapath,
) -> anyhow::Result<HashMap<&mut MapData, AffinityKey, AffinityValue>> {
    let map = datapath
        .own_map_mut(map_names::AFFINITY)
        .context("the AFFINITY map")?;
    HashMap::try_from(map).context("AFFINITY as a hash map")
}

pub fn run(args: &TraceArgs) -> anyhow::Result<()> {
    let trace = trace(args)?;
    let output = super::OutputArgs {
        output: args.output,
        no_headers: false,
    };
    print!(
        "{}",
        output
            .serialized(&trace)
            .unwrap_or_else(|| trace.render_table())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_accepts_address_with_or_without_port() {
        assert_eq!(
            parse_from("198.18.0.2").expect("v4"),
            "198.18.0.2:40000".parse().expect("lit")
        );
        assert_eq!(
            parse_from("198.18.0.2:1234").expect("v4 port"),
            "198.18.0.2:1234".parse().expect("lit")
        );
        assert_eq!(
            parse_from("[2001:2::2]:99").expect("v6 port"),
            "[2001:2::2]:99".parse().expect("lit")
        );
        assert_eq!(
            parse_from("2001:2::2").expect("v6"),
            "[2001:2::2]:40000".parse().expect("lit")
        );
        assert!(parse_from("nonsense").is_err());
    }

    fn counted(counter: Option<FastPathCounter>) -> Vec<u64> {
        let mut counts = vec![0; FastPathCounter::COUNT as usize];
        if let Some(counter) = counter {
            counts[counter as usize] = 1;
        }
        counts
    }

    fn arriving_on_eth0(fast_path_devices: Option<Vec<u32>>) -> Arrival {
        Arrival {
            iface: "eth0".into(),
            ifindex: 2,
            mac: None,
            fast_path_devices,
        }
    }

    #[test]
    fn the_fast_path_outcome_is_the_counter_the_run_counted() {
        let output = test_run::RunOutput {
            verdict: 2,
            packet: Vec::new(),
            duration: std::time::Duration::ZERO,
        };
        let arrival = arriving_on_eth0(Some(vec![3]));
        let before = counted(None);
        let to_stack = fast_path_trace(
            Some(&arrival),
            &before,
            &counted(Some(FastPathCounter::StackNoNextHop)),
            &output,
        )
        .expect("trace")
        .expect("the fast path counted");
        assert_eq!(to_stack.outcome, "stack_no_next_hop");
        assert_eq!(to_stack.arrival.as_deref(), Some("eth0"));
        assert!(to_stack.explanation.contains("no neighbour entry yet"));
        assert_eq!((to_stack.egress, to_stack.source_mac), (None, None));
        // A run that never reached the fast path (no backend) counted nothing.
        assert_eq!(
            fast_path_trace(Some(&arrival), &before, &before, &output).expect("trace"),
            None
        );
    }

    #[test]
    fn an_interface_balanced_at_tc_ingress_has_no_fast_path() {
        let output = test_run::RunOutput {
            verdict: 2,
            packet: Vec::new(),
            duration: std::time::Duration::ZERO,
        };
        let tc = fast_path_trace(
            Some(&arriving_on_eth0(None)),
            &counted(None),
            &counted(Some(FastPathCounter::StackTurnedOff)),
            &output,
        )
        .expect("trace")
        .expect("a TC interface is reported");
        assert_eq!(tc.outcome, "tc_ingress");
        assert!(tc.explanation.starts_with("eth0 is balanced at TC ingress"));
    }

    #[test]
    fn crafted_packets_are_addressed_to_the_arrival_interface() {
        let mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let packet = first_packet(
            "198.18.0.2:40001".parse().expect("lit"),
            "198.18.100.10:80".parse().expect("lit"),
            Protocol::Udp,
            mac,
        )
        .expect("build");
        assert_eq!(packet[..6], mac);
    }

    #[test]
    fn crafted_packets_parse_back_with_their_ports() {
        let from: SocketAddr = "198.18.0.2:40001".parse().expect("lit");
        let to: SocketAddr = "198.18.100.10:80".parse().expect("lit");
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let packet = first_packet(from, to, proto, NODE_MAC).expect("build");
            assert_eq!(destination_of(&packet), Some(to), "{proto:?}");
        }
        let sctp = first_packet(from, to, Protocol::Sctp, NODE_MAC).expect("build sctp");
        assert_eq!(sctp[14 + 9], PROTO_SCTP, "IPv4 protocol field");
        assert!(
            first_packet(
                from,
                "[2001:2::1]:80".parse().expect("lit"),
                Protocol::Tcp,
                NODE_MAC
            )
            .is_err()
        );
    }
}
