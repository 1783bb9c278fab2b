//! The multi-node lab: nodes as network namespaces on one bridge with an external client,
//! pods behind each node, every pod's processes in the pod's namespace and in a cgroup of
//! their own under their node's cgroup (as a kubelet places them), one agent per node.
//!
//! ```text
//!                     segment namespace: bridge br0 (198.18.10.0/24, 2001:2:0:10::/64)
//!        ┌────────────────────────┬──────────────────────────────┐
//!   outside (.2, ::2)      node-a eth0 (.10, ::10)        node-b eth0 (.11, ::11)
//!                          pods 198.18.20.0/24            pods 198.18.21.0/24
//!                               2001:2:0:20::/64               2001:2:0:21::/64
//!                          ├ pod-0 ══ my-app-1 eth0       └ pod-0 ══ my-app-3 eth0
//!                          │          198.18.20.10, 2001:2:0:20::10     198.18.21.10, …
//!                          └ pod-1 ══ my-app-2 eth0 (198.18.20.11, 2001:2:0:20::11)
//! ```
//!
//! Addressing, for node number `i` (0-based, spec order) and its pod number `j`:
//! - node uplink `eth0`: 198.18.10.(10+i)/24 and 2001:2:0:10::(10+i)/64 on the bridge; the
//!   external client is 198.18.10.2 and 2001:2:0:10::2.
//! - pod subnet: 198.18.(20+i).0/24 and 2001:2:0:(20+i)::/64; the node's end of every pod
//!   veth carries the gateway .1 / ::1 (one /32 and /128 per veth, as the ptp plugin that
//!   kindnet uses does); pod `j` is .(10+j) / ::(10+j), a /32 and /128 on its `eth0`.
//! - IPv6 groups read like the IPv4 octets (node-b's pods: 198.18.21.x and 2001:2:0:21::x).
//! - pods route only the lab ranges (198.18.0.0/15, 2001:2::/48) via their gateway, no
//!   default route; nodes forward, reach their pods by a host route per pod, and other
//!   nodes' pod subnets via those nodes' uplink addresses (host-gw); the external client
//!   reaches only the segment, plus what a test routes with [`Cluster::route_from_outside`].
//! - Service addresses ([`manifests`]) are in 198.18.100.0/24 and 2001:2:0:100::/64, routed
//!   nowhere: only socket-level balancing makes them reachable.
//!
//! Cgroups: `<cgroup2 mount>/slicelb-<pid>-<test>/` holds `<node>/` and `<node>/<pod>/` for
//! every node and pod, and `system/` for what must not be below a node (the agents, the
//! external client, servers outside the nodes). Dropping the [`Cluster`] kills every process
//! in that tree, removes the agents' pins, the cgroups and the namespaces, also while a panic
//! unwinds.

pub mod manifests;
pub mod serving;

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    ChildGuard, LabError, Netns, add_address,
    cgroup::{CgroupTree, enter_before_exec},
    stale_owner, veth_pair,
};

/// The TCP port every pod serves on.
pub const POD_TCP_PORT: u16 = 8080;
/// The pods' "DNS-style" UDP port.
pub const POD_UDP_PORT: u16 = 5353;
/// Pins of the cluster's agents: `/sys/fs/bpf/slicelb-test-<pid>-<test>-<node>`.
pub const PIN_PREFIX: &str = "slicelb-test";
const BPF_FS: &str = "/sys/fs/bpf";
const BRIDGE: &str = "br0";
/// Every node's and pod's interface towards the segment or its node.
const ETH0: &str = "eth0";
/// The lab ranges: all a pod routes (via its node), nothing else.
const LAB_RANGE_V4: &str = "198.18.0.0/15";
const LAB_RANGE_V6: &str = "2001:2::/48";
const MAX_NODES: usize = 50;
const MAX_PODS_PER_NODE: usize = 200;
const LISTEN_PATIENCE: Duration = Duration::from_secs(10);

/// Which nodes, and which pods on each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub nodes: Vec<NodeSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub pods: Vec<String>,
}

impl ClusterSpec {
    /// `[("node-a", &["my-app-1"]), …]`.
    pub fn new(nodes: &[(&str, &[&str])]) -> Self {
        Self {
            nodes: nodes
                .iter()
                .map(|(name, pods)| NodeSpec {
                    name: name.to_string(),
                    pods: pods.iter().map(|pod| pod.to_string()).collect(),
                })
                .collect(),
        }
    }

    /// The my-app Deployment's 3 replicas: my-app-1 and my-app-2 on node-a, my-app-3 on
    /// node-b.
    pub fn my_app() -> Self {
        Self::new(&[
            ("node-a", &["my-app-1", "my-app-2"]),
            ("node-b", &["my-app-3"]),
        ])
    }

    fn validate(&self) -> Result<(), LabError> {
        let invalid = |what: String, why| Err(LabError::InvalidSpec { what, why });
        if self.nodes.len() < 2 || self.nodes.len() > MAX_NODES {
            return invalid(
                format!("{} nodes", self.nodes.len()),
                "is not 2 to 50 nodes",
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for node in &self.nodes {
            // `to-<node>` is the node's port on the bridge, and interface names have 15 bytes.
            if node.name.len() > 12 || !is_dns_label(&node.name) {
                return invalid(
                    format!("node name {:?}", node.name),
                    "is not 1 to 12 of a-z, 0-9 and '-'",
                );
            }
            if node.pods.len() > MAX_PODS_PER_NODE {
                return invalid(format!("node {}", node.name), "has more than 200 pods");
            }
            for name in std::iter::once(&node.name).chain(&node.pods) {
                if !is_dns_label(name) {
                    return invalid(format!("pod name {name:?}"), "is not a-z, 0-9 and '-'");
                }
                if !names.insert(name.as_str()) {
                    return invalid(format!("name {name:?}"), "is used twice");
                }
            }
        }
        Ok(())
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The IPv6 group that reads like the decimal number (21 -> 0x21), so that a pod's IPv6
/// address reads like its IPv4 one.
fn reads_as(decimal: u8) -> u16 {
    u16::from_str_radix(&decimal.to_string(), 16).expect("decimal digits are hex digits")
}

/// The addresses of node number `index` (0-based): uplink, pod subnet, gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddressing {
    pub addr_v4: Ipv4Addr,
    pub addr_v6: Ipv6Addr,
    pub pod_subnet_v4: Ipv4Net,
    pub pod_subnet_v6: Ipv6Net,
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
}

impl NodeAddressing {
    pub fn of(index: u8) -> Self {
        let host = 10 + index;
        let subnet = 20 + index;
        Self {
            addr_v4: Ipv4Addr::new(198, 18, 10, host),
            addr_v6: Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, reads_as(host)),
            pod_subnet_v4: Ipv4Net::new(Ipv4Addr::new(198, 18, subnet, 0), 24)
                .expect("24 is a valid prefix"),
            pod_subnet_v6: Ipv6Net::new(
                Ipv6Addr::new(0x2001, 2, 0, reads_as(subnet), 0, 0, 0, 0),
                64,
            )
            .expect("64 is a valid prefix"),
            gateway_v4: Ipv4Addr::new(198, 18, subnet, 1),
            gateway_v6: Ipv6Addr::new(0x2001, 2, 0, reads_as(subnet), 0, 0, 0, 1),
        }
    }

    /// Pod number `index` (0-based) on this node.
    pub fn pod(&self, index: u8) -> (Ipv4Addr, Ipv6Addr) {
        let host = 10 + index;
        let [a, b, c, _] = self.pod_subnet_v4.addr().octets();
        let mut v6 = self.pod_subnet_v6.addr().segments();
        v6[7] = reads_as(host);
        (Ipv4Addr::new(a, b, c, host), Ipv6Addr::from(v6))
    }
}

/// The external client's addresses, on the segment.
pub const OUTSIDE_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 2);
pub const OUTSIDE_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x10, 0, 0, 0, 2);
/// The segment's prefixes.
pub const SEGMENT_PREFIX_V4: u8 = 24;
pub const SEGMENT_PREFIX_V6: u8 = 64;

/// A lab namespace for the cluster, with IPv6 duplicate address detection off for the links
/// made in it: with it on, IPv6 between fresh namespaces stalls about a second (the first
/// connections time out) while the new links' link-local addresses are tentative.
fn cluster_netns(role: &str) -> Result<Netns, LabError> {
    let netns = Netns::new(role)?;
    netns.sysctl("net.ipv6.conf.all.accept_dad=0")?;
    netns.sysctl("net.ipv6.conf.default.accept_dad=0")?;
    Ok(netns)
}

/// A command that runs `program` in the cgroup at `cgroup` and the namespace `netns`.
fn command_in(program: impl AsRef<OsStr>, cgroup: &Path, netns: &Netns) -> Command {
    let mut command = Command::new(program);
    enter_before_exec(&mut command, cgroup, &netns.path());
    command
}

/// One node: a namespace with an uplink on the segment, its pods behind it.
#[derive(Debug)]
pub struct ClusterNode {
    pub name: String,
    pub netns: Netns,
    /// `…/slicelb-<pid>-<test>/<node>`: the node's cgroup, the agent's `--cgroup-root`.
    pub cgroup: PathBuf,
    /// `…/slicelb-<pid>-<test>/system`, shared by the cluster's system processes.
    pub system_cgroup: PathBuf,
    /// The node's interface on the segment (`eth0`).
    pub uplink: String,
    pub addr_v4: Ipv4Addr,
    pub addr_v6: Ipv6Addr,
    pub pod_subnet_v4: Ipv4Net,
    pub pod_subnet_v6: Ipv6Net,
    /// The node's address on every pod veth: the pods' next hop.
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
    /// Where this node's agent pins its maps (removed when the cluster drops).
    pub pin_path: PathBuf,
}

impl ClusterNode {
    /// A node process: the node's namespace and cgroup (below the node, like a host
    /// process that the node's socket-level balancing applies to).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(program, &self.cgroup, &self.netns)
    }

    /// A system process on the node: the node's namespace, the `system` cgroup (for the
    /// agent, and anything that must not be balanced by the node's socket hooks).
    pub fn system_command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(program, &self.system_cgroup, &self.netns)
    }

    /// This node's addresses, as `slicelb agent --nodeport-addresses` takes them.
    pub fn nodeport_addresses(&self) -> String {
        format!("{}/32,{}/128", self.addr_v4, self.addr_v6)
    }
}

/// One pod: its own namespace behind its node, its own cgroup below its node's.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    /// The node's name.
    pub node: String,
    pub netns: Netns,
    /// `…/slicelb-<pid>-<test>/<node>/<pod>`.
    pub cgroup: PathBuf,
    pub addr_v4: Ipv4Addr,
    pub addr_v6: Ipv6Addr,
    /// The node's end of the pod's veth (the pod's end is `eth0`).
    pub node_iface: String,
}

impl Pod {
    /// A process of this pod: its namespace and cgroup.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(program, &self.cgroup, &self.netns)
    }

    /// Starts `slicelb-lab pod-server --name <pod>` (TCP 8080, UDP 5353) in this pod.
    pub fn start_server(&self, lab_binary: &Path) -> Result<ChildGuard, LabError> {
        let mut command = self.command(lab_binary);
        command.args(["pod-server", "--name", &self.name]);
        command.stdout(Stdio::null());
        ChildGuard::spawn(command, &self.name)
    }

    pub fn tcp_addr_v4(&self) -> SocketAddr {
        SocketAddr::new(self.addr_v4.into(), POD_TCP_PORT)
    }

    pub fn tcp_addr_v6(&self) -> SocketAddr {
        SocketAddr::new(self.addr_v6.into(), POD_TCP_PORT)
    }

    pub fn udp_addr_v4(&self) -> SocketAddr {
        SocketAddr::new(self.addr_v4.into(), POD_UDP_PORT)
    }

    pub fn udp_addr_v6(&self) -> SocketAddr {
        SocketAddr::new(self.addr_v6.into(), POD_UDP_PORT)
    }
}

/// The external client: a host on the segment, not a node.
#[derive(Debug)]
pub struct Outside {
    pub netns: Netns,
    /// The `system` cgroup.
    pub cgroup: PathBuf,
    pub addr_v4: Ipv4Addr,
    pub addr_v6: Ipv6Addr,
}

impl Outside {
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(program, &self.cgroup, &self.netns)
    }
}

/// The agents' pin directories, removed on drop (after the cgroup kill, so no agent is
/// left using them).
#[derive(Debug)]
struct PinDirs(Vec<PathBuf>);

impl Drop for PinDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            if dir.exists()
                && let Err(error) = std::fs::remove_dir_all(dir)
            {
                eprintln!("slicelb lab: removing pins {}: {error}", dir.display());
            }
        }
    }
}

/// Removes pin directories of runs whose process is gone.
fn remove_stale_pins() {
    let Ok(entries) = std::fs::read_dir(BPF_FS) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if stale_owner(&name, PIN_PREFIX).is_some() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The running cluster. See the module documentation for its addresses.
#[derive(Debug)]
pub struct Cluster {
    // Fields drop in this order: processes die first (cgroup.kill), then their pins go,
    // then the namespaces.
    cgroups: CgroupTree,
    _pins: PinDirs,
    nodes: Vec<ClusterNode>,
    pods: Vec<Pod>,
    outside: Outside,
    segment: Netns,
}

impl Cluster {
    /// Builds the cluster for test `test` (letters, digits, `-`, `_`: it names the cgroup
    /// tree and the pins), after removing what killed runs left behind.
    pub fn new(test: &str, spec: &ClusterSpec) -> Result<Self, LabError> {
        spec.validate()?;
        if test.is_empty()
            || test.len() > 100
            || !test
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(LabError::InvalidSpec {
                what: format!("test name {test:?}"),
                why: "is not 1 to 100 of letters, digits, '-' and '_'",
            });
        }
        Netns::remove_stale();
        remove_stale_pins();
        let cgroups = CgroupTree::new(test)?;
        let system_cgroup = cgroups.create("system")?;
        let pin_paths: Vec<PathBuf> = spec
            .nodes
            .iter()
            .map(|node| {
                PathBuf::from(BPF_FS).join(format!(
                    "{PIN_PREFIX}-{}-{test}-{}",
                    std::process::id(),
                    node.name
                ))
            })
            .collect();
        let pins = PinDirs(pin_paths.clone());

        let segment = cluster_netns("segment")?;
        segment.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        segment.ip(&["link", "set", BRIDGE, "up"])?;
        let attach = |netns: &Netns, port: &str| -> Result<(), LabError> {
            veth_pair(netns, ETH0, &segment, port)?;
            segment.ip(&["link", "set", port, "master", BRIDGE])?;
            Ok(())
        };

        let outside_netns = cluster_netns("outside")?;
        attach(&outside_netns, "to-outside")?;
        add_address(&outside_netns, ETH0, OUTSIDE_IPV4.into(), SEGMENT_PREFIX_V4)?;
        add_address(&outside_netns, ETH0, OUTSIDE_IPV6.into(), SEGMENT_PREFIX_V6)?;
        let outside = Outside {
            netns: outside_netns,
            cgroup: system_cgroup.clone(),
            addr_v4: OUTSIDE_IPV4,
            addr_v6: OUTSIDE_IPV6,
        };

        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for ((index, node_spec), pin_path) in spec.nodes.iter().enumerate().zip(pin_paths) {
            let addressing =
                NodeAddressing::of(u8::try_from(index).expect("validated: at most 50 nodes"));
            let node = Self::build_node(
                node_spec,
                &addressing,
                &cgroups,
                &system_cgroup,
                pin_path,
                &attach,
            )?;
            for (pod_index, pod_name) in node_spec.pods.iter().enumerate() {
                let pod_index = u8::try_from(pod_index).expect("validated: at most 200 pods");
                pods.push(Self::build_pod(
                    &node,
                    pod_name,
                    pod_index,
                    addressing.pod(pod_index),
                    &cgroups,
                )?);
            }
            nodes.push(node);
        }
        // host-gw: every node reaches the other nodes' pods through their uplinks.
        for node in &nodes {
            for other in nodes.iter().filter(|other| other.name != node.name) {
                node.netns.ip(&[
                    "route",
                    "add",
                    &other.pod_subnet_v4.to_string(),
                    "via",
                    &other.addr_v4.to_string(),
                ])?;
                node.netns.ip(&[
                    "-6",
                    "route",
                    "add",
                    &other.pod_subnet_v6.to_string(),
                    "via",
                    &other.addr_v6.to_string(),
                ])?;
            }
        }
        Ok(Self {
            cgroups,
            _pins: pins,
            nodes,
            pods,
            outside,
            segment,
        })
    }

    fn build_node(
        spec: &NodeSpec,
        addressing: &NodeAddressing,
        cgroups: &CgroupTree,
        system_cgroup: &Path,
        pin_path: PathBuf,
        attach: &impl Fn(&Netns, &str) -> Result<(), LabError>,
    ) -> Result<ClusterNode, LabError> {
        let netns = cluster_netns(&spec.name)?;
        attach(&netns, &format!("to-{}", spec.name))?;
        add_address(&netns, ETH0, addressing.addr_v4.into(), SEGMENT_PREFIX_V4)?;
        add_address(&netns, ETH0, addressing.addr_v6.into(), SEGMENT_PREFIX_V6)?;
        netns.sysctl("net.ipv4.ip_forward=1")?;
        netns.sysctl("net.ipv6.conf.all.forwarding=1")?;
        Ok(ClusterNode {
            name: spec.name.clone(),
            netns,
            cgroup: cgroups.create(&spec.name)?,
            system_cgroup: system_cgroup.to_path_buf(),
            uplink: ETH0.to_string(),
            addr_v4: addressing.addr_v4,
            addr_v6: addressing.addr_v6,
            pod_subnet_v4: addressing.pod_subnet_v4,
            pod_subnet_v6: addressing.pod_subnet_v6,
            gateway_v4: addressing.gateway_v4,
            gateway_v6: addressing.gateway_v6,
            pin_path,
        })
    }

    /// A pod as the ptp plugin wires it: a veth to the node, a /32 and /128 on the pod's
    /// end, the gateway on the node's end, a host route to the pod on the node.
    fn build_pod(
        node: &ClusterNode,
        name: &str,
        index: u8,
        (addr_v4, addr_v6): (Ipv4Addr, Ipv6Addr),
        cgroups: &CgroupTree,
    ) -> Result<Pod, LabError> {
        let netns = cluster_netns(name)?;
        let node_iface = format!("pod-{index}");
        veth_pair(&node.netns, &node_iface, &netns, ETH0)?;
        add_address(&node.netns, &node_iface, node.gateway_v4.into(), 32)?;
        add_address(&node.netns, &node_iface, node.gateway_v6.into(), 128)?;
        node.netns
            .ip(&["route", "add", &format!("{addr_v4}/32"), "dev", &node_iface])?;
        node.netns.ip(&[
            "-6",
            "route",
            "add",
            &format!("{addr_v6}/128"),
            "dev",
            &node_iface,
        ])?;
        add_address(&netns, ETH0, addr_v4.into(), 32)?;
        add_address(&netns, ETH0, addr_v6.into(), 128)?;
        let gateway_v4 = node.gateway_v4.to_string();
        let gateway_v6 = node.gateway_v6.to_string();
        netns.ip(&["route", "add", &gateway_v4, "dev", ETH0, "scope", "link"])?;
        netns.ip(&[
            "route",
            "add",
            LAB_RANGE_V4,
            "via",
            &gateway_v4,
            "dev",
            ETH0,
        ])?;
        netns.ip(&["-6", "route", "add", &gateway_v6, "dev", ETH0])?;
        netns.ip(&[
            "-6",
            "route",
            "add",
            LAB_RANGE_V6,
            "via",
            &gateway_v6,
            "dev",
            ETH0,
        ])?;
        Ok(Pod {
            name: name.to_string(),
            node: node.name.clone(),
            netns,
            cgroup: cgroups.create(&format!("{}/{name}", node.name))?,
            addr_v4,
            addr_v6,
            node_iface,
        })
    }

    /// The node called `name`; panics (naming the nodes there are) if there is none.
    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name:?} in the cluster: {:?}", self.node_names()))
    }

    /// The pod called `name`; panics (naming the pods there are) if there is none.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = self.pods.iter().map(|pod| pod.name.as_str()).collect();
                panic!("no pod {name:?} in the cluster: {names:?}")
            })
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |pod| pod.node == node)
    }

    fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|node| node.name.as_str()).collect()
    }

    pub fn outside(&self) -> &Outside {
        &self.outside
    }

    /// A process of the external client (its namespace, the `system` cgroup).
    pub fn outside_command(&self, program: impl AsRef<OsStr>) -> Command {
        self.outside.command(program)
    }

    /// The namespace holding the bridge.
    pub fn segment(&self) -> &Netns {
        &self.segment
    }

    /// `…/slicelb-<pid>-<test>`: the cluster's cgroup tree.
    pub fn cgroup_root(&self) -> &Path {
        self.cgroups.root()
    }

    /// The external client routes `prefix` (a Service's external or load-balancer address,
    /// say) via node `via_node`'s uplink address of the same family.
    pub fn route_from_outside(&self, prefix: IpNet, via_node: &str) -> Result<(), LabError> {
        let node = self.node(via_node);
        let (family, via) = match prefix {
            IpNet::V4(_) => ("-4", IpAddr::from(node.addr_v4)),
            IpNet::V6(_) => ("-6", IpAddr::from(node.addr_v6)),
        };
        self.outside
            .netns
            .ip(&[
                family,
                "route",
                "add",
                &prefix.to_string(),
                "via",
                &via.to_string(),
            ])
            .map(|_| ())
    }

    /// `slicelb agent` for node `node`, in the node's namespace and the `system` cgroup:
    /// balancing on its uplink, reading `manifest_dir` (every node's agent reads the same
    /// directory), NodePorts on the node's own two addresses, socket-level balancing for
    /// the processes below the node's cgroup, maps pinned at [`ClusterNode::pin_path`].
    pub fn agent_command(&self, node: &str, slicelb: &Path, manifest_dir: &Path) -> Command {
        self.agent_command_under(&[], node, slicelb, manifest_dir)
    }

    /// [`Cluster::agent_command`] run by `wrapper` (a program and its arguments, which end
    /// where the agent's command line starts: `strace -f -o FILE --`, say); the agent alone
    /// when `wrapper` is empty.
    pub fn agent_command_under(
        &self,
        wrapper: &[&OsStr],
        node: &str,
        slicelb: &Path,
        manifest_dir: &Path,
    ) -> Command {
        let node = self.node(node);
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = node.system_command(program);
                command.args(args).arg(slicelb);
                command
            }
            None => node.system_command(slicelb),
        };
        command
            .arg("agent")
            .args(["--iface", &node.uplink])
            .arg("--manifest-dir")
            .arg(manifest_dir)
            .args(["--node-name", &node.name])
            .args(["--nodeport-addresses", &node.nodeport_addresses()])
            .arg("--pin-path")
            .arg(&node.pin_path)
            .arg("--cgroup-root")
            .arg(&node.cgroup);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        command
    }

    /// Starts every pod's server ([`Pod::start_server`]) and waits until each accepts TCP
    /// (its UDP socket is bound before that). The servers also die with the cluster.
    pub fn start_pod_servers(&self, lab_binary: &Path) -> Result<Vec<ChildGuard>, LabError> {
        let servers = self
            .pods
            .iter()
            .map(|pod| pod.start_server(lab_binary))
            .collect::<Result<Vec<_>, _>>()?;
        for pod in &self.pods {
            wait_listening(
                &pod.netns,
                pod.tcp_addr_v4(),
                &format!("pod {}'s server", pod.name),
            )?;
        }
        Ok(servers)
    }
}

/// Waits until something in `netns` accepts TCP connections on `addr`.
pub fn wait_listening(netns: &Netns, addr: SocketAddr, what: &str) -> Result<(), LabError> {
    let started = Instant::now();
    let listening = netns.enter(|| {
        while started.elapsed() < LISTEN_PATIENCE {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    })?;
    if listening {
        Ok(())
    } else {
        Err(LabError::NotListening {
            what: format!("{what} on {addr}"),
            waited: LISTEN_PATIENCE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_lab_ranges(addr: IpAddr) -> bool {
        let v4: Ipv4Net = LAB_RANGE_V4.parse().expect("literal");
        let v6: Ipv6Net = LAB_RANGE_V6.parse().expect("literal");
        match addr {
            IpAddr::V4(addr) => v4.contains(&addr),
            IpAddr::V6(addr) => v6.contains(&addr),
        }
    }

    #[test]
    fn node_b_and_its_second_pod_have_the_documented_addresses() {
        let node_b = NodeAddressing::of(1);
        assert_eq!(node_b.addr_v4, Ipv4Addr::new(198, 18, 10, 11));
        assert_eq!(node_b.addr_v6.to_string(), "2001:2:0:10::11");
        assert_eq!(node_b.pod_subnet_v4.to_string(), "198.18.21.0/24");
        assert_eq!(node_b.pod_subnet_v6.to_string(), "2001:2:0:21::/64");
        assert_eq!(node_b.gateway_v6.to_string(), "2001:2:0:21::1");
        let (v4, v6) = node_b.pod(1);
        assert_eq!(
            (v4.to_string(), v6.to_string()),
            ("198.18.21.11".into(), "2001:2:0:21::11".into())
        );
    }

    #[test]
    fn every_address_of_the_largest_cluster_is_in_the_lab_ranges_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        let mut check = |addr: IpAddr| {
            assert!(in_lab_ranges(addr), "{addr} is outside the lab ranges");
            assert!(seen.insert(addr), "{addr} is given twice");
        };
        check(OUTSIDE_IPV4.into());
        check(OUTSIDE_IPV6.into());
        for index in 0..MAX_NODES as u8 {
            let node = NodeAddressing::of(index);
            check(node.addr_v4.into());
            check(node.addr_v6.into());
            check(node.gateway_v4.into());
            check(node.gateway_v6.into());
            let segment_v4 = Ipv4Net::new(OUTSIDE_IPV4, SEGMENT_PREFIX_V4).expect("prefix");
            assert!(
                segment_v4.contains(&node.addr_v4),
                "{} on the segment",
                node.addr_v4
            );
            for pod in 0..MAX_PODS_PER_NODE as u8 {
                let (v4, v6) = node.pod(pod);
                assert!(
                    node.pod_subnet_v4.contains(&v4),
                    "{v4} in its node's subnet"
                );
                assert!(
                    node.pod_subnet_v6.contains(&v6),
                    "{v6} in its node's subnet"
                );
                check(v4.into());
                check(v6.into());
            }
        }
    }

    #[test]
    fn a_spec_with_one_node_or_a_long_node_name_is_refused() {
        let one = ClusterSpec::new(&[("node-a", &["my-app-1"])]);
        assert!(matches!(one.validate(), Err(LabError::InvalidSpec { .. })));
        let long = ClusterSpec::new(&[("node-a", &[]), ("a-very-long-node", &[])]);
        assert!(matches!(long.validate(), Err(LabError::InvalidSpec { .. })));
        let twice = ClusterSpec::new(&[("node-a", &["p"]), ("node-b", &["p"])]);
        assert!(matches!(
            twice.validate(),
            Err(LabError::InvalidSpec { .. })
        ));
        ClusterSpec::my_app()
            .validate()
            .expect("the my-app spec is valid");
    }
}
