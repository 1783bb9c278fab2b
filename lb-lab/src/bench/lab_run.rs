//! Sections 2 to 4: throughput, connections and programming time in the lab, for slicelb
//! (its packet path on the node, and its socket-level hooks around the client) and for the
//! same services as kube-proxy's iptables and nftables rule sets; connections also without
//! any balancer (direct), as the floor.
//!
//! The masquerade cases ([`Traffic::ExternalToRemote`]) send the same load to the services'
//! external IPs, their endpoints on another node: slicelb, iptables and nftables then
//! source-NAT it to the node's address on the backend's link, as for a pod elsewhere.
//!
//! Each (balancer, services) case gets a fresh lab (client ─ node ─ 3 backends), so no
//! conntrack entry or rule of one case is seen by the next.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use indicatif::ProgressBar;
use lb_common::{SocketCounter, bench::FloorHop};
use slicelb::dataplane::{MapCapacity, masquerade::PortRange, masquerade::snat_addresses};

use super::{
    ebpf::{FloorBackend, ForwardFloor, Generator, Pass, Sink, SinkCounts},
    error::BenchError,
    kube_proxy,
    packets::udp_frame,
    services::{BenchEndpoint, Proto, ServiceSet, host_ports},
    stats::{median, percentile},
    under_test::{Slicelb, capacity_for},
};
use crate::lab::{Lab, LabBackend, Netns, cgroup::Cgroup};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Balancer {
    /// No balancer: the client connects straight to the backends' own addresses, through
    /// the same node (which only routes, with the same XDP_PASS program on its veth as the
    /// kube-proxy cases). Not a balancer but the floor: what the network path itself costs.
    Direct,
    /// Not a balancer but the throughput section's floor: an XDP program on the node's veth
    /// that sends each frame to a backend's device with fixed MACs, no lookup
    /// (`bench_forward_floor`): what forwarding from XDP costs.
    ForwardFloor,
    /// slicelb's packet path: XDP on the node's veth towards the client.
    #[default]
    Slicelb,
    /// slicelb's socket-level hooks at a cgroup holding the client: a pod's connect() to a
    /// ClusterIP goes to a backend address from the first packet; the node only routes.
    SlicelbSocket,
    /// kube-proxy's iptables DNAT on the node.
    Iptables,
    /// kube-proxy's nftables DNAT on the node.
    Nftables,
}

impl Balancer {
    pub const ALL: [Balancer; 6] = [
        Balancer::Direct,
        Balancer::ForwardFloor,
        Balancer::Slicelb,
        Balancer::SlicelbSocket,
        Balancer::Iptables,
        Balancer::Nftables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Balancer::Direct => "direct",
            Balancer::ForwardFloor => "forward-floor",
            Balancer::Slicelb => "slicelb",
            Balancer::SlicelbSocket => "slicelb-socket",
            Balancer::Iptables => "iptables",
            Balancer::Nftables => "nftables",
        }
    }

    /// Why the throughput section has no row for this case, or `None` when it has one.
    pub fn no_throughput_because(self) -> Option<&'static str> {
        match self {
            Balancer::ForwardFloor
            | Balancer::Slicelb
            | Balancer::Iptables
            | Balancer::Nftables => None,
            Balancer::Direct => Some("it is the connections section's floor only"),
            Balancer::SlicelbSocket => Some(
                "socket-level balancing has no per-packet work (it decides once per \
                 connect(), and the generator's frames come from no socket); section 3 \
                 measures it",
            ),
        }
    }

    /// Whether the balancer does work per packet, which the throughput section measures.
    pub fn works_per_packet(self) -> bool {
        self.no_throughput_because().is_none()
    }

    /// The balancers of the masquerade cases: the node balances and masquerades (the floor
    /// is the same path as for ClusterIPs; socket-level balancing sees no external traffic).
    pub const MASQUERADING: [Balancer; 3] =
        [Balancer::Slicelb, Balancer::Iptables, Balancer::Nftables];

    /// Why the connections section has no row for this case, or `None` when it has one.
    pub fn no_connections_because(self) -> Option<&'static str> {
        match self {
            Balancer::ForwardFloor => Some(
                "the forwarding floor rewrites no address, so no connection to a service \
                 reaches a backend's socket",
            ),
            Balancer::Direct
            | Balancer::Slicelb
            | Balancer::SlicelbSocket
            | Balancer::Iptables
            | Balancer::Nftables => None,
        }
    }

    /// Whether there are services to program: every case but the floors.
    pub fn programs_services(self) -> bool {
        match self {
            Balancer::Direct | Balancer::ForwardFloor => false,
            Balancer::Slicelb
            | Balancer::SlicelbSocket
            | Balancer::Iptables
            | Balancer::Nftables => true,
        }
    }
}

/// Where the load goes and how the node treats it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Traffic {
    /// To the services' ClusterIPs, endpoints on this node: DNAT only.
    #[default]
    ClusterIp,
    /// From outside to the services' external IPs (`externalTrafficPolicy: Cluster`), their
    /// endpoints on another node: DNAT and masquerade to the node's address, so that the
    /// backends' replies come back through the node.
    ExternalToRemote,
}

impl Traffic {
    pub fn balancers(self) -> &'static [Balancer] {
        match self {
            Traffic::ClusterIp => &Balancer::ALL,
            Traffic::ExternalToRemote => &Balancer::MASQUERADING,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub scales: Vec<usize>,
    /// Packets the generator sends per throughput run.
    pub packets: u32,
    /// Throughput runs per case; the median counts.
    pub throughput_runs: usize,
    /// Distinct flows (source ports) the generator cycles through, over all targets.
    pub flows: u32,
    /// Most services the generator and the connection clients spread over.
    pub max_targets: usize,
    pub connect_duration: Duration,
    pub connect_workers: usize,
    /// Hard bound on connections per case, whatever the duration.
    pub max_connections: usize,
    /// `iptables-restore` or `nft -f` still running after this long is stopped.
    pub program_limit: Duration,
}

impl Config {
    pub fn steps(&self) -> u64 {
        (self.scales.len() * (Balancer::ALL.len() + Balancer::MASQUERADING.len())) as u64
    }
}

/// What one (balancer, services) case measured; `Err` text where a part failed.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseResult {
    pub balancer: Balancer,
    pub traffic: Traffic,
    pub services: usize,
    /// `None` where nothing is programmed ([`Balancer::programs_services`]).
    pub program: Option<Result<ProgramTime, String>>,
    /// `None` for a balancer with no per-packet work ([`Balancer::works_per_packet`]).
    pub throughput: Option<Result<Throughput, String>>,
    pub connections: Result<Connections, String>,
}

/// Totals over the runs of one case, and each run's rate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Throughput {
    pub sent: u64,
    pub delivered: u64,
    pub correct: u64,
    /// Delivered Mpps of each run.
    pub runs_mpps: Vec<f64>,
    /// How the generator sent ([`Generator::method`]).
    pub generator: &'static str,
    /// Datagrams the node's own stack forwarded during the timed runs (its `Ip:
    /// ForwDatagrams`): the sent packets that did not leave from XDP.
    pub stack_forwarded: u64,
}

impl Throughput {
    /// The median run's delivered Mpps.
    pub fn mpps(&self) -> f64 {
        median(&self.runs_mpps)
    }

    /// Share of sent packets that reached a backend rewritten correctly.
    pub fn correct_share(&self) -> f64 {
        self.correct as f64 / self.sent.max(1) as f64
    }
}

/// How long programming the services took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramTime {
    Took(Duration),
    /// The tool was still running at the limit and was stopped: nothing was programmed.
    StoppedAfter(Duration),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Connections {
    pub completed: usize,
    pub failed: usize,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// connect() calls the socket-level hooks sent to a backend (SOCKET_STATS
    /// `connect_translated`), for slicelb-socket.
    pub socket_translated: Option<u64>,
    /// Connections the backends accepted from the client's own address, and from the
    /// node's address on their link (masqueraded).
    pub accepted_from_client: usize,
    pub accepted_from_node: usize,
}

impl Connections {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.seconds
    }
}

const GENERATOR_CPU: usize = 0;
const FIRST_SOURCE_PORT: u16 = 1024;

pub fn run(config: &Config, progress: &ProgressBar, work_dir: &Path) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for &services in &config.scales {
        for traffic in [Traffic::ClusterIp, Traffic::ExternalToRemote] {
            for &balancer in traffic.balancers() {
                let masquerade = match traffic {
                    Traffic::ClusterIp => "",
                    Traffic::ExternalToRemote => " (masquerade)",
                };
                progress.set_message(format!(
                    "lab: {}{masquerade} with {services} services",
                    balancer.name()
                ));
                results.push(run_case(config, balancer, traffic, services, work_dir));
                progress.inc(1);
            }
        }
    }
    results
}

fn run_case(
    config: &Config,
    balancer: Balancer,
    traffic: Traffic,
    services: usize,
    work_dir: &Path,
) -> CaseResult {
    let case = format!("{} with {services} services ({traffic:?})", balancer.name());
    let failed = |error: BenchError| CaseResult {
        balancer,
        traffic,
        services,
        program: balancer.programs_services().then(|| Err(error.to_string())),
        throughput: balancer.works_per_packet().then(|| Err(error.to_string())),
        connections: Err(error.to_string()),
    };
    let lab = match Lab::new(3).map_err(BenchError::lab(&case)) {
        Ok(lab) => lab,
        Err(error) => return failed(error),
    };
    // Full checksums from the client, as from a wire: native XDP on the node's veth is then
    // correct (it cannot see a partial checksum). The same for all three balancers.
    if let Err(error) = lab
        .set_client_tx_offload(false)
        .map_err(BenchError::lab(&case))
    {
        return failed(error);
    }
    let hosts: Vec<BenchEndpoint> = lab
        .backends
        .iter()
        .map(|b| BenchEndpoint {
            ipv4: b.ipv4,
            ipv6: b.ipv6,
        })
        .collect();
    let set = ServiceSet::on_hosts(services, &hosts, &[Proto::Tcp, Proto::Udp]);
    let set = match traffic {
        Traffic::ClusterIp => set,
        Traffic::ExternalToRemote => set.external_on_remote_node(),
    };
    let programmed = program(config, balancer, &set, &lab, work_dir);
    let (program_time, attached) = match programmed {
        Ok(programmed) => programmed,
        Err(BenchError::TimeLimit { limit_secs, .. }) => {
            let why = format!("programming did not finish within {limit_secs} s");
            return CaseResult {
                balancer,
                traffic,
                services,
                program: Some(Ok(ProgramTime::StoppedAfter(Duration::from_secs(
                    limit_secs,
                )))),
                throughput: balancer.works_per_packet().then(|| Err(why.clone())),
                connections: Err(why),
            };
        }
        Err(error) => return failed(error),
    };
    let targets = spread(&set, config.max_targets);
    let ports = host_ports(services);
    let throughput = balancer
        .works_per_packet()
        .then(|| throughput(config, &lab, traffic, &targets, ports).map_err(|e| e.to_string()));
    let backends: Vec<Ipv4Addr> = lab.backends.iter().map(|b| b.ipv4).collect();
    let destinations = destinations(balancer, &targets, &backends);
    let connections = match balancer.no_connections_because() {
        Some(why) => Err(BenchError::unexpected("connections", why)),
        None => connections(
            config,
            &lab,
            &targets,
            &destinations,
            attached.client_cgroup(),
        )
        .and_then(|measured| attached.confirm_socket_path(measured))
        .and_then(|measured| confirm_sources(traffic, measured)),
    };
    CaseResult {
        balancer,
        traffic,
        services,
        program: program_time.map(|took| Ok(ProgramTime::Took(took))),
        throughput,
        connections: connections.map_err(|e| e.to_string()),
    }
}

/// A service the traffic goes to, and the port its endpoints listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    service: SocketAddr,
    target_port: u16,
}

/// Up to `max` services, evenly spread over the list (first and last included).
fn spread(set: &ServiceSet, max: usize) -> Vec<Target> {
    let count = set.len().min(max).max(1);
    (0..count)
        .map(|i| {
            let index = if count == 1 {
                0
            } else {
                i * (set.len() - 1) / (count - 1)
            };
            let service = &set.services[index];
            Target {
                service: SocketAddr::new(service.vip_v4.into(), service.port),
                target_port: service.target_port,
            }
        })
        .collect()
}

/// Where the connect load goes: the services, or for [`Balancer::Direct`] every backend on
/// every service's target port, interleaved so that the clients' turns spread over the
/// backends as a balancer's random picks do.
fn destinations(balancer: Balancer, targets: &[Target], backends: &[Ipv4Addr]) -> Vec<SocketAddr> {
    match balancer {
        Balancer::Direct => targets
            .iter()
            .flat_map(|t| {
                backends
                    .iter()
                    .map(|&backend| SocketAddr::new(backend.into(), t.target_port))
            })
            .collect(),
        // The forwarding floor carries no connections (`no_connections_because`).
        Balancer::ForwardFloor
        | Balancer::Slicelb
        | Balancer::SlicelbSocket
        | Balancer::Iptables
        | Balancer::Nftables => targets.iter().map(|t| t.service).collect(),
    }
}

/// What keeps a balancer's programs attached for the rest of the case.
enum Attached {
    Slicelb(
        #[expect(
            dead_code,
            reason = "held only so that dropping it detaches the programs"
        )]
        Box<Slicelb>,
    ),
    Pass(
        #[expect(
            dead_code,
            reason = "held only so that dropping it detaches the program"
        )]
        Pass,
    ),
    Floor(
        #[expect(
            dead_code,
            reason = "held only so that dropping it detaches the program"
        )]
        ForwardFloor,
    ),
    /// The hooks at `cgroup`, which the client's connect load joins. Fields drop in order:
    /// the links go before the cgroup is removed.
    SlicelbSocket {
        slicelb: Box<Slicelb>,
        cgroup: Cgroup,
        #[expect(
            dead_code,
            reason = "held only so that dropping it detaches the program"
        )]
        pass: Pass,
    },
}

impl Attached {
    /// The cgroup the connect load must run in, if the balancer works at socket level.
    fn client_cgroup(&self) -> Option<&Cgroup> {
        match self {
            Attached::SlicelbSocket { cgroup, .. } => Some(cgroup),
            Attached::Slicelb(_) | Attached::Pass(_) | Attached::Floor(_) => None,
        }
    }

    /// For socket-level balancing, checks from SOCKET_STATS that the hooks translated at
    /// least every completed connection, so that nothing else (a load outside the cgroup
    /// balanced by another program of this host) is reported as slicelb-socket.
    fn confirm_socket_path(&self, measured: Connections) -> Result<Connections, BenchError> {
        let Attached::SlicelbSocket { slicelb, .. } = self else {
            return Ok(measured);
        };
        let translated = slicelb
            .socket_counters()?
            .into_iter()
            .find(|(counter, _)| *counter == SocketCounter::ConnectTranslated)
            .map_or(0, |(_, value)| value);
        if translated < measured.completed as u64 {
            return Err(BenchError::unexpected(
                "slicelb-socket connect load",
                format!(
                    "the socket-level hooks translated {translated} connect() calls for {} \
                     completed connections: the load did not run through them",
                    measured.completed
                ),
            ));
        }
        Ok(Connections {
            socket_translated: Some(translated),
            ..measured
        })
    }
}

/// Programs the services on the node; returns the time it took to program them (`None` for
/// the floor, which programs nothing).
fn program(
    config: &Config,
    balancer: Balancer,
    set: &ServiceSet,
    lab: &Lab,
    work_dir: &Path,
) -> Result<(Option<Duration>, Attached), BenchError> {
    let limit = config.program_limit;
    let case = format!("{} programming {} services", balancer.name(), set.len());
    match balancer {
        Balancer::Direct => {
            let pass = Pass::attach(&lab.node, Lab::NODE_CLIENT_IFACE)?;
            Ok((None, Attached::Pass(pass)))
        }
        Balancer::ForwardFloor => {
            let backends = lab
                .backends
                .iter()
                .map(|b| {
                    Ok(FloorBackend {
                        iface: b.node_iface.clone(),
                        hop: FloorHop {
                            src_mac: mac_of(&lab.node, &b.node_iface)?,
                            dst_mac: mac_of(&b.netns, "eth0")?,
                        },
                    })
                })
                .collect::<Result<Vec<_>, BenchError>>()?;
            let floor = ForwardFloor::attach(&lab.node, Lab::NODE_CLIENT_IFACE, &backends)?;
            Ok((None, Attached::Floor(floor)))
        }
        Balancer::Slicelb => {
            let mut slicelb = Slicelb::load(MapCapacity {
                snat: snat_capacity(config),
                ..capacity_for(set.len(), 3, 2)
            })?;
            // The clock covers the cold sync, as for the other two: loading and attaching
            // programs is a one-off at agent start.
            slicelb.attach(&lab.node, Lab::NODE_CLIENT_IFACE)?;
            // The backends' links take redirected frames (their peers run the XDP sinks).
            let backend_links: Vec<&str> =
                lab.backends.iter().map(|b| b.node_iface.as_str()).collect();
            slicelb.allow_fast_path(&lab.node, &backend_links)?;
            if set.external {
                masquerade_on_backend_links(&mut slicelb, lab)?;
            }
            let snapshot = set.snapshot();
            let stats = slicelb.sync(&snapshot)?;
            Ok((Some(stats.total()), Attached::Slicelb(Box::new(slicelb))))
        }
        Balancer::SlicelbSocket => {
            let mut slicelb = Slicelb::load(capacity_for(set.len(), 3, 2))?;
            let cgroup = Cgroup::new("pods").map_err(BenchError::lab(&case))?;
            // One-off at agent start, as attaching is for the packet path: not timed.
            slicelb.attach_cgroup(cgroup.path())?;
            // The node's veth gets the same XDP_PASS program as in the kube-proxy cases, so
            // its receive path is theirs: only where the backend is chosen differs.
            let pass = Pass::attach(&lab.node, Lab::NODE_CLIENT_IFACE)?;
            let stats = slicelb.sync(&set.snapshot())?;
            Ok((
                Some(stats.total()),
                Attached::SlicelbSocket {
                    slicelb: Box::new(slicelb),
                    cgroup,
                    pass,
                },
            ))
        }
        Balancer::Iptables => {
            let path = work_dir.join(format!("iptables-{}.rules", set.len()));
            write_file(&path, &kube_proxy::iptables_restore_input(set))?;
            let path_arg = path.display().to_string();
            let elapsed = run_within(
                &lab.node,
                "iptables-restore",
                &["--noflush", &path_arg],
                limit,
                &case,
            )?;
            let pass = Pass::attach(&lab.node, Lab::NODE_CLIENT_IFACE)?;
            Ok((Some(elapsed), Attached::Pass(pass)))
        }
        Balancer::Nftables => {
            let path = work_dir.join(format!("nftables-{}.nft", set.len()));
            write_file(&path, &kube_proxy::nft_input(set))?;
            let path_arg = path.display().to_string();
            let elapsed = run_within(&lab.node, "nft", &["-f", &path_arg], limit, &case)?;
            let pass = Pass::attach(&lab.node, Lab::NODE_CLIENT_IFACE)?;
            Ok((Some(elapsed), Attached::Pass(pass)))
        }
    }
}

/// Masquerade table entries for one case: two per flow, for every throughput flow and
/// every connection, with room to spare (the bench runs no expiry, as the agent does).
fn snat_capacity(config: &Config) -> u32 {
    let flows = u64::from(config.flows) + config.max_connections as u64;
    (2 * flows + 4096)
        .next_power_of_two()
        .max(u64::from(MapCapacity::default().snat))
        .min(u64::from(u32::MAX)) as u32
}

/// The masquerade source ports: the whole range netfilter's MASQUERADE takes from. The
/// node in the lab has no local connections whose ephemeral ports these could take.
const MASQUERADE_PORTS: PortRange = PortRange {
    min: 1024,
    max: 65535,
};

/// The node's addresses on backend `backend`'s link: `.1` of the backend's /24 and /64
/// (see [`Lab::add_backend`]).
fn node_side(backend: &LabBackend) -> (Ipv4Addr, Ipv6Addr) {
    let [a, b, c, _] = backend.ipv4.octets();
    let mut v6 = backend.ipv6.segments();
    v6[7] = 1;
    (Ipv4Addr::new(a, b, c, 1), Ipv6Addr::from(v6))
}

/// Attaches slicelb to the node's links towards the backends too (their TC egress
/// masquerades, their ingress takes the replies back) and turns masquerade on with the
/// node's addresses on each, as the agent does for its `--iface` interfaces.
fn masquerade_on_backend_links(slicelb: &mut Slicelb, lab: &Lab) -> Result<(), BenchError> {
    let mut addresses = Vec::new();
    for backend in &lab.backends {
        slicelb.attach(&lab.node, &backend.node_iface)?;
        let name = std::ffi::CString::new(backend.node_iface.clone()).map_err(|_| {
            BenchError::unexpected("masquerade", format!("bad name {}", backend.node_iface))
        })?;
        // SAFETY: if_nametoindex reads a NUL-terminated name; in the node's namespace.
        let ifindex = lab
            .node
            .enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) })
            .map_err(BenchError::lab("reading an interface index"))?;
        if ifindex == 0 {
            return Err(BenchError::unexpected(
                "masquerade",
                format!("no interface {} on the node", backend.node_iface),
            ));
        }
        let (v4, v6) = node_side(backend);
        addresses.push((ifindex, snat_addresses(&[v4.into(), v6.into()])));
    }
    slicelb.set_masquerade(Some(MASQUERADE_PORTS), &addresses)
}

/// For the masquerade cases, checks that the backends saw the node's address and never
/// the client's: the load went through the masquerade path, not around it.
fn confirm_sources(traffic: Traffic, measured: Connections) -> Result<Connections, BenchError> {
    if traffic == Traffic::ExternalToRemote
        && (measured.accepted_from_client > 0 || measured.accepted_from_node == 0)
    {
        return Err(BenchError::unexpected(
            "masquerade connect load",
            format!(
                "the backends accepted {} connections from the client's address and {} from \
                 the node's: not masqueraded",
                measured.accepted_from_client, measured.accepted_from_node
            ),
        ));
    }
    Ok(measured)
}

/// Runs `program args…` in `netns` and returns how long it took; stops it at `limit`.
fn run_within(
    netns: &Netns,
    program: &str,
    args: &[&str],
    limit: Duration,
    case: &str,
) -> Result<Duration, BenchError> {
    let spawn_error = |source| BenchError::Socket {
        case: format!("{case}: running {program}"),
        source,
    };
    let started = Instant::now();
    let mut child = netns
        .command(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    loop {
        if let Some(status) = child.try_wait().map_err(spawn_error)? {
            let elapsed = started.elapsed();
            if status.success() {
                return Ok(elapsed);
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return Err(BenchError::unexpected(
                case,
                format!("{program} failed ({status}): {}", stderr.trim()),
            ));
        }
        if started.elapsed() > limit {
            // Our own child: stop it (the transaction is then not committed).
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::TimeLimit {
                case: case.to_string(),
                limit_secs: limit.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    })
}

/// The MAC address of `iface` in `netns`.
pub fn mac_of(netns: &Netns, iface: &str) -> Result<[u8; 6], BenchError> {
    let output = netns
        .ip(&["-br", "link", "show", "dev", iface])
        .map_err(BenchError::lab("reading a MAC address"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = text.split_whitespace().nth(2).unwrap_or_default();
    let bytes: Vec<u8> = field
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes.try_into().map_err(|_| {
        BenchError::unexpected(
            "reading a MAC address",
            format!("no MAC for {iface} in `ip -br link` output {text:?}"),
        )
    })
}

/// Lets the node resolve every backend's MAC before timing (a frame that waits for ARP
/// would be dropped and counted against the balancer).
fn warm_neighbours(lab: &Lab) -> Result<(), BenchError> {
    let backends: Vec<Ipv4Addr> = lab.backends.iter().map(|b| b.ipv4).collect();
    lab.node
        .enter(move || -> std::io::Result<()> {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for backend in &backends {
                socket.send_to(b"warm", (*backend, 9))?;
            }
            Ok(())
        })
        .map_err(BenchError::lab("warming neighbours"))?
        .map_err(|source| BenchError::Socket {
            case: "warming neighbours".into(),
            source,
        })?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn sum_counts(sinks: &[Sink]) -> Result<SinkCounts, BenchError> {
    let mut total = SinkCounts::default();
    for sink in sinks {
        let counts = sink.counts()?;
        total.seen += counts.seen;
        total.correct += counts.correct;
    }
    Ok(total)
}

fn throughput(
    config: &Config,
    lab: &Lab,
    traffic: Traffic,
    targets: &[Target],
    ports: std::ops::Range<u16>,
) -> Result<Throughput, BenchError> {
    let sinks = lab
        .backends
        .iter()
        .map(|b| {
            // Masqueraded traffic is correct only from the node's address on the link.
            let source = match traffic {
                Traffic::ClusterIp => Lab::CLIENT_IPV4,
                Traffic::ExternalToRemote => node_side(b).0,
            };
            Sink::attach(&b.netns, "eth0", b.ipv4, ports.clone(), source)
        })
        .collect::<Result<Vec<_>, _>>()?;
    warm_neighbours(lab)?;
    let v4_targets: Vec<(Ipv4Addr, u16)> = targets
        .iter()
        .filter_map(|t| match t.service.ip() {
            IpAddr::V4(v4) => Some((v4, t.service.port())),
            IpAddr::V6(_) => None,
        })
        .collect();
    let flows_per_target = (config.flows / v4_targets.len().max(1) as u32).max(1);
    let client_mac = mac_of(&lab.client, Lab::CLIENT_IFACE)?;
    let node_mac = mac_of(&lab.node, Lab::NODE_CLIENT_IFACE)?;
    let frame = udp_frame(
        client_mac,
        node_mac,
        SocketAddr::new(Lab::CLIENT_IPV4.into(), FIRST_SOURCE_PORT),
        targets[0].service,
    );
    let generator = Generator::new(&frame, &v4_targets, flows_per_target, FIRST_SOURCE_PORT)?;
    // A warm-up pass over every flow: first packets (new conntrack entries, ARP) are
    // then behind us, as they are in a long-running node.
    let warm_up = (flows_per_target * v4_targets.len() as u32).min(config.packets);
    generator.send(
        &lab.client,
        Lab::CLIENT_IFACE,
        &frame,
        warm_up,
        GENERATOR_CPU,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let mut total = Throughput::default();
    let forwarded_before = stack_forwarded(&lab.node)?;
    for _ in 0..config.throughput_runs.max(1) {
        let before = sum_counts(&sinks)?;
        let elapsed = generator.send(
            &lab.client,
            Lab::CLIENT_IFACE,
            &frame,
            config.packets,
            GENERATOR_CPU,
        )?;
        // Frames still in a queue when the generator returns arrive within milliseconds.
        std::thread::sleep(Duration::from_millis(200));
        let after = sum_counts(&sinks)?;
        let delivered = after.seen - before.seen;
        total.sent += u64::from(config.packets);
        total.delivered += delivered;
        total.correct += after.correct - before.correct;
        total
            .runs_mpps
            .push(delivered as f64 / elapsed.as_secs_f64() / 1e6);
    }
    total.generator = generator.method();
    total.stack_forwarded = stack_forwarded(&lab.node)? - forwarded_before;
    Ok(total)
}

/// `Ip: ForwDatagrams` of `netns`: the datagrams its stack has forwarded.
fn stack_forwarded(netns: &Netns) -> Result<u64, BenchError> {
    // thread-self: /proc/net would show the namespace of the process, not of this thread.
    let snmp = netns
        .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .map_err(BenchError::lab("reading the node's IP counters"))?
        .map_err(|source| BenchError::Io {
            action: "reading",
            path: "/proc/thread-self/net/snmp".into(),
            source,
        })?;
    let mut ip_lines = snmp.lines().filter(|line| line.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip_lines.next(), ip_lines.next()) else {
        return Err(BenchError::unexpected(
            "the node's IP counters",
            "no Ip: lines",
        ));
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ForwDatagrams")
        .and_then(|(_, value)| value.parse().ok())
        .ok_or_else(|| BenchError::unexpected("the node's IP counters", "no ForwDatagrams"))
}

/// Sets SO_LINGER to zero so that closing sends a reset and leaves no TIME_WAIT behind
/// (the client would otherwise run out of ports at thousands of connections a second).
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The connect load from the client namespace to `destinations`; inside `client_cgroup` when
/// one is given.
fn connections(
    config: &Config,
    lab: &Lab,
    targets: &[Target],
    destinations: &[SocketAddr],
    client_cgroup: Option<&Cgroup>,
) -> Result<Connections, BenchError> {
    let stop = AtomicBool::new(false);
    // An XDP program on each backend's end of its link: a veth takes frames redirected from
    // XDP into it (slicelb's fast path) only then. The same for every balancer, so that
    // all connect through backends whose receive path is the same.
    let _backend_xdp = lab
        .backends
        .iter()
        .map(|b| Pass::attach(&b.netns, "eth0"))
        .collect::<Result<Vec<_>, _>>()?;
    // Every backend host listens on the target port of every service the clients use.
    let listeners = lab
        .backends
        .iter()
        .map(|b| {
            targets
                .iter()
                .map(|t| {
                    b.netns
                        .enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, t.target_port)))
                        .map_err(BenchError::lab("backend listener"))?
                        .map_err(|source| BenchError::Socket {
                            case: format!("listening on {}:{}", b.ipv4, t.target_port),
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = config.connect_duration + Duration::from_secs(10);
    std::thread::scope(|scope| {
        let acceptors: Vec<_> = listeners
            .iter()
            .zip(&lab.backends)
            .map(|(host, backend)| {
                let stop = &stop;
                let node = node_side(backend).0;
                scope.spawn(move || accept_until(host, node, stop, limit))
            })
            .collect();
        let result = (|| {
            // The whole bench process joins the cgroup for the load (cgroup v2 moves
            // processes, not threads, and the hooks go by the cgroup of the process that
            // creates a socket), and leaves it when the guard drops, also on a panic. The
            // backends' listeners were opened before, so only the clients' sockets are
            // created inside. A child process would be the alternative, but this binary
            // has no client mode to run, and forking a threaded process is unsound.
            let _inside = client_cgroup
                .map(Cgroup::join)
                .transpose()
                .map_err(BenchError::lab("moving the client into the pods' cgroup"))?;
            lab.client
                .enter(|| connect_load(config, destinations))
                .map_err(BenchError::lab("connection clients"))
        })();
        stop.store(true, Ordering::Relaxed);
        let mut sources = AcceptedSources::default();
        for acceptor in acceptors {
            let host = acceptor.join().unwrap_or_default();
            sources.client += host.client;
            sources.node += host.node;
        }
        result.map(|measured| Connections {
            accepted_from_client: sources.client,
            accepted_from_node: sources.node,
            ..measured
        })
    })
}

/// Whose address the connections a backend accepted came from.
#[derive(Clone, Copy, Debug, Default)]
struct AcceptedSources {
    client: usize,
    /// The node's address on the backend's link: masqueraded.
    node: usize,
}

/// Accepts and closes connections on all of one host's listeners until told to stop (or
/// `limit` passes); counts those from the client and from `node` (the node's address on
/// the host's link).
fn accept_until(
    listeners: &[TcpListener],
    node: Ipv4Addr,
    stop: &AtomicBool,
    limit: Duration,
) -> AcceptedSources {
    let mut sources = AcceptedSources::default();
    if listeners.iter().any(|l| l.set_nonblocking(true).is_err()) {
        return sources;
    }
    let mut polled: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        // SAFETY: `polled` is a valid array of pollfd for open listeners.
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 20) };
        if ready <= 0 {
            continue;
        }
        for (entry, listener) in polled.iter_mut().zip(listeners) {
            if entry.revents == 0 {
                continue;
            }
            entry.revents = 0;
            loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if peer.ip() == IpAddr::from(Lab::CLIENT_IPV4) {
                            sources.client += 1;
                        } else if peer.ip() == IpAddr::from(node) {
                            sources.node += 1;
                        }
                        drop(stream);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
    sources
}

/// Runs in the client namespace: workers open and reset connections to the destinations in
/// turn for the configured time; latency is connect() (SYN to established).
fn connect_load(config: &Config, targets: &[SocketAddr]) -> Connections {
    let per_worker = config.max_connections / config.connect_workers.max(1);
    let started = Instant::now();
    let results: Vec<(Vec<f64>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.connect_workers)
            .map(|worker| {
                scope.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut failed = 0;
                    let mut next = worker;
                    while started.elapsed() < config.connect_duration
                        && latencies.len() + failed < per_worker
                    {
                        let target = targets[next % targets.len()];
                        next += config.connect_workers;
                        let attempt = Instant::now();
                        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                            Ok(stream) => {
                                latencies.push(attempt.elapsed().as_secs_f64() * 1e6);
                                reset_on_close(&stream);
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    (latencies, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let failed = results.iter().map(|r| r.1).sum();
    let latencies: Vec<f64> = results.into_iter().flat_map(|r| r.0).collect();
    Connections {
        completed: latencies.len(),
        failed,
        seconds,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        socket_translated: None,
        accepted_from_client: 0,
        accepted_from_node: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::services::synthetic_endpoint;

    #[test]
    fn spread_covers_first_and_last_service() {
        let set = ServiceSet::on_hosts(10, &[synthetic_endpoint(0)], &[Proto::Udp]);
        let targets = spread(&set, 4);
        assert_eq!(targets.len(), 4);
        assert_eq!(
            targets[0].service.ip(),
            IpAddr::from(set.services[0].vip_v4)
        );
        assert_eq!(
            targets[3].service.ip(),
            IpAddr::from(set.services[9].vip_v4)
        );
        assert_eq!(targets[3].target_port, set.services[9].target_port);
        assert_eq!(spread(&set, 100).len(), 10, "never more than the services");
    }

    #[test]
    fn direct_connects_to_every_backend_on_every_target_port_in_turn() {
        let set = ServiceSet::on_hosts(2, &[synthetic_endpoint(0)], &[Proto::Tcp]);
        let targets = spread(&set, 2);
        let backends = [Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 2, 2)];
        let direct = destinations(Balancer::Direct, &targets, &backends);
        let expected: Vec<SocketAddr> = targets
            .iter()
            .flat_map(|t| {
                backends
                    .iter()
                    .map(move |&b| SocketAddr::new(b.into(), t.target_port))
            })
            .collect();
        assert_eq!(
            direct, expected,
            "each target port, on each backend in turn"
        );
        assert_ne!(
            targets[0].target_port, targets[1].target_port,
            "the two services have their own ports"
        );
        for balancer in Balancer::ALL.into_iter().filter(|&b| b != Balancer::Direct) {
            let services: Vec<SocketAddr> = targets.iter().map(|t| t.service).collect();
            assert_eq!(
                destinations(balancer, &targets, &backends),
                services,
                "{} connects to the services",
                balancer.name()
            );
        }
    }
}
