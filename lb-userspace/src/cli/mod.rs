//! The `slicelb` command line: the agent, and the operator commands that read the pinned
//! maps (they work with or without a running agent).

pub mod commands;
pub mod conntrack;
pub mod generate;
pub mod logging;
pub mod output;
pub mod services;
pub mod stats;
pub mod status;
pub mod trace;

pub use output::{OutputArgs, OutputFormat};

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    agent::AgentConfig,
    dataplane::{MapCapacity, attach_mode::XdpMode, cgroup::CgroupRoot, masquerade::PortRange},
    health::DEFAULT_HEALTHZ_BIND_ADDRESS,
    metrics::{MetricsError, MetricsOptions, parse_listen_addr},
    source::SourceConfig,
};

// Flags `check` shares with the agent read the agent's variables, so that `kubectl exec …
// slicelb check` in the agent's pod compares what that agent reads.
const NODE_NAME_ENV: &str = "SLICELB_NODE_NAME";
const NODEPORT_ADDRESSES_ENV: &str = "SLICELB_NODEPORT_ADDRESSES";
const SERVICE_PROXY_NAME_ENV: &str = "SLICELB_SERVICE_PROXY_NAME";

/// Where programs, links and maps are pinned unless `--pin-path` says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/slicelb";
/// The environment variable every command reads `--pin-path` from when not given: the
/// DaemonSet's container sets it, so `kubectl exec … slicelb services` finds the pins.
pub const PIN_PATH_ENV: &str = "SLICELB_PIN_PATH";
/// Every agent flag `--some-flag` can also be set as `SLICELB_SOME_FLAG` (the DaemonSet's
/// way of configuring it); a flag given on the command line wins over its variable.
pub const ENV_PREFIX: &str = "SLICELB_";

#[derive(Debug, Parser)]
#[command(
    name = "slicelb",
    version,
    about = "Kubernetes Service load balancing in XDP and TC",
    long_about = "Kubernetes Service load balancing in XDP and TC.\n\n\
        `slicelb agent` watches Services and EndpointSlices (from Kubernetes or a directory of \
        manifests) and programs the kernel; the other commands show what the kernel does."
)]
pub struct Cli {
    #[command(flatten)]
    pub logging: logging::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch a source and keep the kernel's maps in step with it.
    Agent(AgentArgs),
    /// Load and attach the programs on interfaces without a source (maps stay empty), then
    /// print the per-protocol counters until Ctrl-C.
    Attach(AttachArgs),
    /// Remove programs, links and maps.
    Detach(PinArgs),
    /// Every frontend with its backends, from the kernel's maps.
    Services(ServicesArgs),
    /// Which backend a flow would reach and why, by running the loaded program on a crafted
    /// packet against the live maps (no flow state is created).
    Trace(TraceArgs),
    /// Compare what a source says with what the kernel holds; exit 1 on drift.
    Check(CheckArgs),
    /// Datapath counters by reason and protocol, summed over CPUs.
    Stats(StatsArgs),
    /// What is attached where, what is pinned, how full each map is, and whether an agent
    /// holds the maps.
    Status(StatusArgs),
    /// The flows in the conntrack table: client, frontend, backend, service, idle time and
    /// TCP state (read in one bounded pass).
    Conntrack(ConntrackArgs),
    /// Print a shell completion script for slicelb to stdout.
    Completions(generate::CompletionsArgs),
    /// Write man pages: slicelb.1 and one page per subcommand (slicelb-agent.1, …).
    Man(generate::ManArgs),
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Directory under a bpffs mount where programs, links and maps are pinned.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

/// Where Services and EndpointSlices come from.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// A directory of Service, EndpointSlice and Node manifests, YAML or JSON (watched for
    /// changes).
    #[arg(
        long,
        value_name = "DIR",
        visible_alias = "config-dir",
        env = "SLICELB_MANIFEST_DIR"
    )]
    pub manifest_dir: Option<PathBuf>,
    /// A kubeconfig file for the Kubernetes API.
    #[arg(long, value_name = "PATH", env = "SLICELB_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Use the pod's service account (running inside the cluster).
    #[arg(long, env = "SLICELB_IN_CLUSTER")]
    pub in_cluster: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// Native XDP on physical NICs; TC on veth and other virtual devices, whose packets
    /// may carry partial checksums that XDP cannot see.
    Auto,
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP.
    Generic,
    /// No XDP: TC ingress balances.
    Off,
}

impl From<XdpModeArg> for XdpMode {
    fn from(arg: XdpModeArg) -> Self {
        match arg {
            XdpModeArg::Auto => XdpMode::Auto,
            XdpModeArg::Native => XdpMode::Native,
            XdpModeArg::Generic => XdpMode::Generic,
            XdpModeArg::Off => XdpMode::Off,
        }
    }
}

impl SourceArgs {
    /// The source chosen (clap lets exactly one of the three through), reading the Services
    /// of the proxy named `proxy_name` (`--service-proxy-name`).
    pub fn config(&self, proxy_name: Option<&str>) -> SourceConfig {
        match (&self.manifest_dir, &self.kubeconfig) {
            (Some(dir), _) => SourceConfig::ManifestDir(dir.clone()),
            (None, Some(kubeconfig)) => SourceConfig::kubeconfig(kubeconfig.clone()),
            (None, None) => SourceConfig::in_cluster(),
        }
        .with_proxy_name(proxy_name)
    }
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Interface to balance on (repeat, or give a comma-separated list).
    #[arg(
        long = "iface",
        value_name = "IFACE",
        required = true,
        value_delimiter = ',',
        env = "SLICELB_IFACE"
    )]
    pub ifaces: Vec<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// This node's name: decides which endpoints are local (traffic policies, topology).
    #[arg(long, value_name = "NAME", env = NODE_NAME_ENV)]
    pub node_name: Option<String>,
    /// NodePorts answer on local addresses within these CIDRs (default: all local addresses).
    #[arg(long, value_name = "CIDR[,CIDR…]", value_delimiter = ',', env = NODEPORT_ADDRESSES_ENV)]
    pub nodeport_addresses: Vec<ipnet::IpNet>,
    /// Directory under a bpffs mount where programs, links and maps are pinned.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Prometheus metrics, /healthz and /readyz (an IPv6 address may go without brackets).
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:9400",
        value_parser = parse_listen_addr,
        env = "SLICELB_METRICS_ADDR"
    )]
    pub metrics_addr: SocketAddr,
    /// One metric series per service port (packets, bytes, new flows, socket
    /// translations); false keeps a large cluster's scrape small.
    #[arg(long, value_name = "true|false", default_value_t = true, action = clap::ArgAction::Set, env = "SLICELB_PER_SERVICE_METRICS")]
    pub per_service_metrics: bool,
    /// kube-proxy's health endpoint, /healthz (load balancers) and /livez (liveness), on
    /// ADDR:PORT; 0.0.0.0 is every address of both families, as for kube-proxy; "" serves
    /// none.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = DEFAULT_HEALTHZ_BIND_ADDRESS,
        value_parser = parse_healthz_addr,
        env = "SLICELB_HEALTHZ_BIND_ADDRESS"
    )]
    pub healthz_bind_address: ::std::option::Option<SocketAddr>,
    /// An update not in the maps after this many seconds turns /healthz, /livez and the
    /// metrics port's /readyz to 503 (kube-proxy: twice its sync period).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "60",
        value_parser = parse_seconds,
        env = "SLICELB_HEALTHZ_TIMEOUT"
    )]
    pub healthz_timeout: Duration,
    /// How packets arriving on --iface are balanced: XDP (native or generic) or TC only.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto, env = "SLICELB_XDP_MODE")]
    pub xdp_mode: XdpModeArg,
    /// Serve only the Services labelled `service.kubernetes.io/service-proxy-name=NAME`
    /// (unlabelled ones are left to kube-proxy). Without it, only the Services without that
    /// label, whatever its value, as kube-proxy does.
    #[arg(long, value_name = "NAME", env = SERVICE_PROXY_NAME_ENV)]
    pub service_proxy_name: Option<String>,
    /// Balance every process below this cgroup v2 directory at connect()/sendmsg() (pods
    /// and the node itself). Default: the cgroup v2 mount from /proc/self/mountinfo.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "no_socket_lb",
        env = "SLICELB_CGROUP_ROOT"
    )]
    pub cgroup_root: Option<PathBuf>,
    /// No socket-level balancing: only packets arriving on --iface are balanced.
    #[arg(long, env = "SLICELB_NO_SOCKET_LB")]
    pub no_socket_lb: bool,
    /// Entries of the conntrack table (CONNTRACK, an LRU; each balanced flow takes two).
    /// Fixed when the maps are made: changing it over pinned maps asks for `slicelb detach`.
    #[arg(long, value_name = "N", default_value_t = lb_common::capacity::CONNTRACK, value_parser = parse_map_size, env = "SLICELB_CONNTRACK_MAX")]
    pub conntrack_max: u32,
    /// Entries of the session-affinity table (AFFINITY, an LRU; one per client and Service).
    #[arg(long, value_name = "N", default_value_t = lb_common::capacity::AFFINITY, value_parser = parse_map_size, env = "SLICELB_AFFINITY_MAX")]
    pub affinity_max: u32,
    /// Entries of each socket-level flow table (SOCK_CONNECTED: connected sockets to a
    /// Service; SOCK_REVERSE: unconnected UDP peers), both LRUs.
    #[arg(long, value_name = "N", default_value_t = lb_common::capacity::SOCK_CONNECTED, value_parser = parse_map_size, env = "SLICELB_SOCKET_MAP_MAX")]
    pub socket_map_max: u32,
    /// Source ports of masqueraded flows, MIN-MAX, or "off" for no masquerade. External
    /// traffic (NodePort, load-balancer IP, external IP) with `externalTrafficPolicy:
    /// Cluster` sent to another node's endpoint leaves with this node's address and a port
    /// of this range. Keep it outside the node's ephemeral ports
    /// (`net.ipv4.ip_local_port_range`, 32768-60999 by default) and its NodePorts.
    #[arg(long, value_name = "MIN-MAX|off", default_value = DEFAULT_MASQUERADE_PORTS, value_parser = parse_port_range, env = "SLICELB_MASQUERADE_PORTS")]
    pub masquerade_ports: ::std::option::Option<PortRange>,
    /// Seconds a masqueraded TCP connection the endpoint closed first keeps its port
    /// (netfilter's `nf_conntrack_tcp_timeout_time_wait`): the endpoint holds the old
    /// connection for 60 s after it closed, and a new connection given the same port
    /// meanwhile is answered with the old connection's ACK instead of a SYN-ACK. Ports of
    /// the range per endpoint divided by this is the sustained rate of new masqueraded
    /// connections to one endpoint that the endpoint closes.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "120",
        value_parser = parse_seconds,
        env = "SLICELB_MASQUERADE_TCP_TIME_WAIT"
    )]
    pub masquerade_tcp_time_wait: Duration,
    /// Entries of the masquerade table (SNAT, two per masqueraded flow). A full table
    /// refuses new masqueraded flows; it never evicts a live one.
    #[arg(long, value_name = "N", default_value_t = lb_common::capacity::SNAT, value_parser = parse_map_size, env = "SLICELB_MASQUERADE_MAX")]
    pub masquerade_max: u32,
    /// The XDP fast path: a balanced packet whose backend is reached through a device of
    /// --fast-path-iface leaves from XDP (XDP_TX or redirect, TTL decremented) instead of
    /// going up the stack to be forwarded; false sends every balanced packet to the stack.
    #[arg(long, value_name = "true|false", default_value_t = true, action = clap::ArgAction::Set, env = "SLICELB_FAST_PATH")]
    pub fast_path: bool,
    /// Devices the XDP fast path may send frames out of (repeat, or a comma-separated
    /// list; default none). Only devices that take redirected XDP frames: a NIC whose
    /// driver transmits them (ndo_xdp_xmit), a veth whose peer runs an XDP program or has
    /// GRO on. A frame sent to another device is lost.
    #[arg(
        long = "fast-path-iface",
        value_name = "IFACE",
        value_delimiter = ',',
        env = "SLICELB_FAST_PATH_IFACE"
    )]
    pub fast_path_ifaces: Vec<String>,
}

/// `--masquerade-ports` default: above Linux's default ephemeral range, below 65536.
pub const DEFAULT_MASQUERADE_PORTS: &str = "61000-65535";

/// `--masquerade-ports`: "MIN-MAX" (1..=65535, MIN <= MAX), or "off" for none.
fn parse_port_range(input: &str) -> Result<Option<PortRange>, String> {
    if input == "off" {
        return Ok(None);
    }
    let (min, max) = input
        .split_once('-')
        .ok_or_else(|| format!("{input:?} is not MIN-MAX (two ports) or \"off\""))?;
    let port = |text: &str| -> Result<u16, String> {
        text.trim()
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("{text:?} is not a port (1-65535)"))
    };
    let (min, max) = (port(min)?, port(max)?);
    if min > max {
        return Err(format!("{input:?}: the first port is above the last"));
    }
    Ok(Some(PortRange { min, max }))
}

impl AgentArgs {
    pub fn config(&self) -> AgentConfig {
        AgentConfig {
            ifaces: self.ifaces.clone(),
            source: self.source.config(self.service_proxy_name.as_deref()),
            node_name: self.node_name.clone(),
            nodeport_cidrs: self.nodeport_addresses.clone(),
            pin_path: self.pin_path.clone(),
            metrics_addr: self.metrics_addr,
            metrics: MetricsOptions {
                per_service: self.per_service_metrics,
            },
            healthz_addr: self.healthz_bind_address,
            healthz_timeout: self.healthz_timeout,
            xdp_mode: self.xdp_mode.into(),
            service_proxy_name: self.service_proxy_name.clone(),
            cgroup_root: match (&self.cgroup_root, self.no_socket_lb) {
                (_, true) => CgroupRoot::Off,
                (Some(path), false) => CgroupRoot::Path(path.clone()),
                (None, false) => CgroupRoot::Mount,
            },
            masquerade_ports: self.masquerade_ports,
            masquerade_tcp_time_wait: self.masquerade_tcp_time_wait,
            fast_path: self.fast_path,
            fast_path_ifaces: self.fast_path_ifaces.clone(),
            capacity: MapCapacity {
                conntrack: self.conntrack_max,
                handshakes: handshakes_for(self.conntrack_max),
                affinity: self.affinity_max,
                socket_flows: self.socket_map_max,
                snat: self.masquerade_max,
                ..MapCapacity::default()
            },
        }
    }
}

/// `--healthz-bind-address`: an address as `--metrics-addr` takes it, or "" for none.
fn parse_healthz_addr(input: &str) -> Result<Option<SocketAddr>, MetricsError> {
    if input.is_empty() {
        return Ok(None);
    }
    parse_listen_addr(input).map(Some)
}

/// HANDSHAKES for a CONNTRACK of `conntrack` entries: a quarter of it, at least the
/// fewest a flow map may have.
fn handshakes_for(conntrack: u32) -> u32 {
    (conntrack / 4).max(MAP_SIZE_MIN)
}

/// Fewest entries a flow map may have: the kernel's LRU hands out free entries to each CPU
/// in batches, so a smaller table would evict while it is still mostly empty.
const MAP_SIZE_MIN: u32 = 256;
/// Most entries a flow map may have: 2^26 conntrack entries already take about 10 GiB of
/// kernel memory; more is a typo.
const MAP_SIZE_MAX: u32 = 1 << 26;

/// `--conntrack-max` and the other flow map sizes: a count of entries within
/// [`MAP_SIZE_MIN`]..=[`MAP_SIZE_MAX`].
fn parse_map_size(input: &str) -> Result<u32, String> {
    let size: u64 = input
        .parse()
        .map_err(|_| format!("{input:?} is not a number of entries"))?;
    u32::try_from(size)
        .ok()
        .filter(|size| (MAP_SIZE_MIN..=MAP_SIZE_MAX).contains(size))
        .ok_or_else(|| {
            format!("{size} entries is outside {MAP_SIZE_MIN}..={MAP_SIZE_MAX} (the kernel allocates every entry up front)")
        })
}

/// Seconds, fractions allowed (`0.5`), more than zero.
fn parse_seconds(input: &str) -> Result<Duration, String> {
    let seconds: f64 = input
        .parse()
        .map_err(|_| format!("{input:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{input:?} seconds is not a duration above zero"))
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Interface to attach to (repeat, or give a comma-separated list).
    #[arg(
        long = "iface",
        value_name = "IFACE",
        required = true,
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,
    /// Directory under a bpffs mount where programs, links and maps are pinned.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// How packets arriving on --iface are balanced: XDP (native or generic) or TC only.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Print the counters every this many seconds.
    #[arg(long, default_value_t = 1)]
    pub interval: u64,
    /// Exit after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    pub duration: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Only this Service (or this port of it): NAMESPACE/NAME or NAMESPACE/NAME:PORTNAME.
    #[arg(value_name = "NAMESPACE/NAME[:PORTNAME]", value_parser = services::ServiceFilter::parse_service)]
    pub service: Option<(String, String, Option<String>)>,
    /// Only frontends at this address or with a backend at it.
    #[arg(long, value_name = "ADDR")]
    pub address: Option<std::net::IpAddr>,
    /// Only frontends on this port or with a backend on it.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Directory under a bpffs mount where programs, links and maps are pinned.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl ServicesArgs {
    pub fn filter(&self) -> services::ServiceFilter {
        services::ServiceFilter {
            service: self.service.clone(),
            address: self.address,
            port: self.port,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Directory under a bpffs mount where programs, links and maps are pinned.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ConntrackArgs {
    /// Only flows of this Service: NAMESPACE/NAME or NAMESPACE/NAME:PORTNAME.
    #[arg(long, value_name = "NAMESPACE/NAME[:PORTNAME]", value_parser = services::ServiceFilter::parse_service)]
    pub service: Option<(String, String, Option<String>)>,
    /// Only flows to this backend: ADDR or ADDR:PORT ([ADDR]:PORT for IPv6).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = conntrack::parse_endpoint)]
    pub backend: Option<conntrack::Endpoint>,
    /// Only flows from this client address.
    #[arg(long, value_name = "ADDR")]
    pub client: Option<std::net::IpAddr>,
    /// Stop after this many flows (the pass over the table ends there).
    #[arg(long, value_name = "N", default_value_t = conntrack::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print only how many flows match, per service (counts the whole table).
    #[arg(long)]
    pub count: bool,
    /// Directory under a bpffs mount where programs, links and maps are pinned.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The client: ADDR or ADDR:PORT (IPv6 as [ADDR]:PORT); the port defaults to 40000.
    #[arg(long, required_unless_present = "socket")]
    pub from: Option<String>,
    /// Explain what socket-level balancing does with a connect() to --to from a pod or a
    /// process of the node (instead of a packet arriving on an interface).
    #[arg(long, conflicts_with = "from")]
    pub socket: bool,
    /// The destination: ADDR:PORT (IPv6 as [ADDR]:PORT).
    #[arg(long)]
    pub to: SocketAddr,
    /// The transport protocol of the flow.
    #[arg(long, value_enum, default_value_t = Protocol::Tcp)]
    pub proto: Protocol,
    /// The interface the packet arrives on (one slicelb is attached to): the XDP fast path
    /// then sends it as it would live (XDP_TX, redirect, or the stack and why). Default: the
    /// only attached interface; needed when several are and the fast path is on.
    #[arg(long, value_name = "IFACE", conflicts_with = "socket")]
    pub iface: Option<String>,
    /// Directory under a bpffs mount where programs, links and maps are pinned.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// `table` and `wide` print the same lines.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The agent's `--node-name`: which endpoints are local to the node checked.
    #[arg(long, value_name = "NAME", env = NODE_NAME_ENV)]
    pub node_name: Option<String>,
    /// The agent's `--nodeport-addresses`: where the node's NodePorts answer.
    #[arg(long, value_name = "CIDR[,CIDR…]", value_delimiter = ',', env = NODEPORT_ADDRESSES_ENV)]
    pub nodeport_addresses: Vec<ipnet::IpNet>,
    /// Directory under a bpffs mount where the agent pinned its maps.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// The agent's `--service-proxy-name`: the same Services are read and compared.
    #[arg(long, value_name = "NAME", env = SERVICE_PROXY_NAME_ENV)]
    pub service_proxy_name: Option<String>,
}

impl CheckArgs {
    /// The source, reading what the agent with this `--service-proxy-name` reads.
    pub fn source_config(&self) -> SourceConfig {
        self.source.config(self.service_proxy_name.as_deref())
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Directory under a bpffs mount where programs, links and maps are pinned.
    #[arg(long, value_name = "DIR", env = PIN_PATH_ENV, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Log lines to stderr, `info` and up unless `RUST_LOG` says otherwise (also used by
/// `slicelb-lab`).
pub fn init_logging() {
    logging::init(&logging::LogArgs::default());
}

/// Runs one command line (the `slicelb` binary's main): every other layer gets a plain
/// config of its own, never clap's types.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    logging::init(&cli.logging);
    match cli.command {
        Command::Agent(args) => crate::agent::run(args.config()),
        Command::Services(args) => commands::services(&args),
        Command::Stats(args) => commands::stats(&args),
        Command::Detach(args) => commands::detach(&args),
        Command::Attach(args) => commands::attach(&args),
        Command::Check(args) => commands::check(&args),
        Command::Trace(args) => trace::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Conntrack(args) => conntrack::run(&args),
        Command::Completions(args) => generate::completions(&args, &mut std::io::stdout()),
        Command::Man(args) => generate::man_pages(&args).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command below `command` (itself included), with its full name.
    fn all_commands(command: &clap::Command, path: &str, found: &mut Vec<(String, clap::Command)>) {
        let path = format!("{path} {}", command.get_name()).trim().to_owned();
        found.push((path.clone(), command.clone()));
        for sub in command.get_subcommands() {
            all_commands(sub, &path, found);
        }
    }

    #[test]
    fn every_argument_and_command_has_help_text() {
        let mut commands = Vec::new();
        all_commands(&Cli::command(), "", &mut commands);
        let mut missing = Vec::new();
        for (path, command) in &commands {
            if command.get_about().is_none() && path != "slicelb help" {
                missing.push(format!("`{path}` has no about text"));
            }
            for arg in command.get_arguments() {
                let builtin = ["help", "version"].contains(&arg.get_id().as_str());
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("`{path}` argument {} has no help", arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }

    /// Every agent flag `--some-flag` reads `SLICELB_SOME_FLAG`, as the DaemonSet sets them.
    #[test]
    fn every_agent_flag_has_its_slicelb_variable() {
        let mut command = Cli::command();
        // Puts the global flags (--log-format, --log-level) into the subcommands.
        command.build();
        let agent = command.find_subcommand("agent").expect("an agent command");
        for arg in agent.get_arguments() {
            let Some(long) = arg.get_long() else {
                continue;
            };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let wanted = format!("{ENV_PREFIX}{}", long.to_uppercase().replace('-', "_"));
            let env = arg
                .get_env()
                .map(|name| name.to_string_lossy().into_owned());
            assert_eq!(env.as_deref(), Some(wanted.as_str()), "--{long}");
        }
        let help = agent.clone().render_long_help().to_string();
        for shown in ["[env: SLICELB_IFACE", "[env: SLICELB_LOG_FORMAT"] {
            assert!(help.contains(shown), "--help shows the variables: {help}");
        }
    }

    #[test]
    fn config_dir_still_names_the_manifest_directory() {
        let args = agent_args(&["slicelb", "agent", "--iface", "eth0", "--config-dir", "/m"]);
        assert_eq!(args.source.manifest_dir, Some(PathBuf::from("/m")));
    }

    #[test]
    fn log_flags_are_global() {
        let cli = Cli::try_parse_from([
            "slicelb",
            "services",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .expect("accepted after the subcommand");
        assert_eq!(cli.logging.log_format, logging::LogFormat::Json);
        assert_eq!(cli.logging.log_level, logging::LogLevel::Debug);
        assert!(Cli::try_parse_from(["slicelb", "--log-level", "loud", "stats"]).is_err());
    }

    /// `slicelb agent` with the least it needs, then `flags`.
    fn agent_argv(flags: &[&str]) -> Vec<String> {
        [
            "slicelb",
            "agent",
            "--iface",
            "eth0",
            "--manifest-dir",
            "/tmp",
        ]
        .iter()
        .chain(flags)
        .map(|a| a.to_string())
        .collect()
    }

    fn agent_with(flags: &[&str]) -> AgentConfig {
        let argv = agent_argv(flags);
        agent_args(&argv.iter().map(String::as_str).collect::<Vec<_>>()).config()
    }

    fn refused(flags: &[&str]) -> bool {
        Cli::try_parse_from(agent_argv(flags)).is_err()
    }

    #[test]
    fn the_fast_path_is_on_by_default_sends_nowhere_unlisted_and_turns_off() {
        let default = agent_with(&[]);
        assert!(default.fast_path, "on by default");
        assert!(
            default.fast_path_ifaces.is_empty(),
            "no device unless listed"
        );
        let set = agent_with(&["--fast-path", "false", "--fast-path-iface", "eth1,eth2"]);
        assert!(!set.fast_path);
        assert_eq!(set.fast_path_ifaces, ["eth1", "eth2"]);
        assert!(refused(&["--fast-path", "maybe"]));
    }

    #[test]
    fn flow_map_sizes_reach_the_agents_capacity_and_absurd_ones_are_refused() {
        let capacity = agent_with(&[
            "--conntrack-max",
            "1024",
            "--affinity-max",
            "512",
            "--socket-map-max",
            "2048",
        ])
        .capacity;
        assert_eq!(
            (capacity.conntrack, capacity.affinity, capacity.socket_flows),
            (1024, 512, 2048)
        );
        assert_eq!(capacity.backends, MapCapacity::default().backends);
        assert_eq!(agent_with(&[]).capacity, MapCapacity::default());
        for absurd in ["0", "255", "67108865", "4294967296", "-1", "many"] {
            assert!(
                refused(&["--conntrack-max", absurd]),
                "--conntrack-max {absurd} was accepted"
            );
        }
    }

    #[test]
    fn a_closed_masqueraded_flow_keeps_its_port_for_netfilters_time_wait_unless_told() {
        assert_eq!(
            agent_with(&[]).masquerade_tcp_time_wait,
            crate::dataplane::masquerade::DEFAULT_TCP_TIME_WAIT
        );
        let short = agent_with(&["--masquerade-tcp-time-wait", "1"]);
        assert_eq!(short.masquerade_tcp_time_wait, Duration::from_secs(1));
    }

    #[test]
    fn masquerade_ports_default_to_above_the_ephemeral_range_and_bad_ranges_are_refused() {
        let range = |min, max| Some(PortRange { min, max });
        assert_eq!(agent_with(&[]).masquerade_ports, range(61000, 65535));
        let tiny = agent_with(&[
            "--masquerade-ports",
            "40000-40001",
            "--masquerade-max",
            "512",
        ]);
        assert_eq!(tiny.masquerade_ports, range(40000, 40001));
        assert_eq!(tiny.capacity.snat, 512);
        assert_eq!(
            agent_with(&["--masquerade-ports", "off"]).masquerade_ports,
            None
        );
        for bad in ["0-10", "10-5", "1-65536", "61000", "a-b", ""] {
            assert!(
                refused(&["--masquerade-ports", bad]),
                "--masquerade-ports {bad:?} was accepted"
            );
        }
    }

    /// The subcommand of a command line clap must accept.
    fn parse(argv: &[&str]) -> Command {
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{argv:?} must be accepted: {e}"))
            .command
    }

    fn agent_args(argv: &[&str]) -> AgentArgs {
        match parse(argv) {
            Command::Agent(args) => args,
            other => panic!("{argv:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn agent_accepts_repeated_and_comma_separated_interfaces() {
        let args = agent_args(&[
            "slicelb",
            "agent",
            "--iface",
            "eth0",
            "--iface",
            "eth1,eth2",
            "--manifest-dir",
            "/tmp/m",
        ]);
        assert_eq!(args.ifaces, ["eth0", "eth1", "eth2"]);
        assert_eq!(args.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        assert_eq!(args.metrics_addr.to_string(), "127.0.0.1:9400");
        assert_eq!(
            args.healthz_bind_address,
            Some("0.0.0.0:10256".parse().expect("literal")),
            "kube-proxy's default"
        );
        assert_eq!(args.healthz_timeout, Duration::from_secs(60));
        assert_eq!(args.xdp_mode, XdpModeArg::Auto);
        assert!(
            args.per_service_metrics,
            "per-service series are on by default"
        );
    }

    #[test]
    fn per_service_metrics_take_true_or_false() {
        let base = ["slicelb", "agent", "--iface", "eth0", "--in-cluster"];
        let per_service = |value: &str| {
            let argv = base.iter().copied().chain(["--per-service-metrics", value]);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Agent(args) => args.config().metrics.per_service,
                other => panic!("parsed as {other:?}"),
            })
        };
        assert!(
            !per_service("false").expect("false"),
            "false turns them off"
        );
        assert!(per_service("true").expect("true"), "true keeps them");
        assert!(per_service("off").is_err(), "only true or false");
    }

    #[test]
    fn the_health_endpoint_can_move_or_go_and_its_timeout_is_seconds() {
        let parse = |extra: &[&str]| {
            let base = ["slicelb", "agent", "--iface", "eth0", "--in-cluster"];
            Cli::try_parse_from(base.iter().chain(extra)).map(|cli| match cli.command {
                Command::Agent(args) => (args.healthz_bind_address, args.healthz_timeout),
                other => panic!("parsed as {other:?}"),
            })
        };
        let (addr, _) = parse(&["--healthz-bind-address", "fd00::1:10256"]).expect("IPv6");
        assert_eq!(addr, Some("[fd00::1]:10256".parse().expect("literal")));
        let (addr, _) = parse(&["--healthz-bind-address", ""]).expect("empty");
        assert_eq!(addr, None, "\"\" serves no health endpoint");
        let (_, timeout) = parse(&["--healthz-timeout", "0.5"]).expect("fraction");
        assert_eq!(timeout, Duration::from_millis(500));
        for bad in [
            ["--healthz-bind-address", "10256"],
            ["--healthz-timeout", "0"],
            ["--healthz-timeout", "-1"],
            ["--healthz-timeout", "soon"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn agent_needs_exactly_one_source() {
        let none = Cli::try_parse_from(["slicelb", "agent", "--iface", "eth0"]);
        assert!(none.is_err(), "no source must be refused");
        let two = Cli::try_parse_from([
            "slicelb",
            "agent",
            "--iface",
            "eth0",
            "--manifest-dir",
            "/m",
            "--in-cluster",
        ]);
        assert!(two.is_err(), "two sources must be refused");
    }

    /// Issue #14: with a proxy name, the Kubernetes watch of `agent` and `check` asks for
    /// the Services labelled with it (it used to ask for the unlabelled ones as well, and
    /// `check` for the unlabelled ones only); slices are selected as kube-proxy does.
    #[test]
    fn a_proxy_name_selects_the_services_labelled_with_it() {
        let selectors = |source: SourceConfig| match source {
            SourceConfig::Kubernetes(options) => (options.service_selector, options.slice_selector),
            other => panic!("a Kubernetes source expected, got {other:?}"),
        };
        let named = (
            "service.kubernetes.io/service-proxy-name=slicelb".to_owned(),
            "!service.kubernetes.io/headless".to_owned(),
        );
        let agent = agent_args(&[
            "slicelb",
            "agent",
            "--iface",
            "eth0",
            "--kubeconfig",
            "/k",
            "--service-proxy-name",
            "slicelb",
        ]);
        assert_eq!(selectors(agent.config().source), named, "agent");
        let check_line = [
            "slicelb",
            "check",
            "--kubeconfig",
            "/k",
            "--service-proxy-name",
            "slicelb",
        ];
        let Command::Check(check) = parse(&check_line) else {
            panic!("{check_line:?} is not `check`");
        };
        assert_eq!(selectors(check.source_config()), named, "check");
    }

    #[test]
    fn nodeport_addresses_are_cidrs() {
        let args = agent_args(&[
            "slicelb",
            "agent",
            "--iface",
            "eth0",
            "--in-cluster",
            "--nodeport-addresses",
            "198.18.0.0/15,2001:2::/48",
        ]);
        assert_eq!(args.nodeport_addresses.len(), 2);
        let bad = Cli::try_parse_from([
            "slicelb",
            "agent",
            "--iface",
            "eth0",
            "--in-cluster",
            "--nodeport-addresses",
            "10.0.0/8",
        ]);
        assert!(bad.is_err(), "a malformed CIDR must be refused");
    }

    #[test]
    fn command_line_sources_map_to_configs() {
        use std::path::Path;

        let args = |manifest_dir: Option<&str>, kubeconfig: Option<&str>, in_cluster| SourceArgs {
            manifest_dir: manifest_dir.map(PathBuf::from),
            kubeconfig: kubeconfig.map(PathBuf::from),
            in_cluster,
        };
        assert!(matches!(
            args(Some("/etc/slicelb"), None, false).config(None),
            SourceConfig::ManifestDir(dir) if dir == Path::new("/etc/slicelb")
        ));
        match args(None, Some("/root/.kube/config"), false).config(None) {
            SourceConfig::Kubernetes(options) => {
                assert!(
                    matches!(options.connection, crate::source::Connection::Kubeconfig(p) if p == Path::new("/root/.kube/config"))
                );
                assert_eq!(
                    (
                        options.service_selector.as_str(),
                        options.slice_selector.as_str()
                    ),
                    (
                        "!service.kubernetes.io/service-proxy-name",
                        "!service.kubernetes.io/headless"
                    ),
                    "kube-proxy's selectors by default"
                );
            }
            other => panic!("--kubeconfig gave {other:?}"),
        }
        match args(None, None, true).config(None) {
            SourceConfig::Kubernetes(options) => match options.connection {
                crate::source::Connection::InCluster(paths) => {
                    assert_eq!(
                        paths.service_account_dir,
                        Path::new(crate::source::kubernetes::SERVICE_ACCOUNT_DIR)
                    );
                    assert_eq!(paths.api_server, None, "from KUBERNETES_SERVICE_HOST/PORT");
                }
                other => panic!("--in-cluster gave {other:?}"),
            },
            other => panic!("--in-cluster gave {other:?}"),
        }
    }
}
