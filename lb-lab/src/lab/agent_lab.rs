//! The single-node lab with the real agent on the node, reading a manifest directory: what
//! the agent, operator-command and metrics tests share. Its manifests are the classic
//! `my-app` example: a LoadBalancer Service over backends 1..=3 (up to 4), and a UDP Service.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::{
    ChildGuard, Lab, require_root,
    servers::{HttpConnection, http_get_once, udp_ask_once},
};

pub const CLUSTER_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
pub const CLUSTER_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x10);
pub const LOAD_BALANCER_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
pub const NODE_PORT: u16 = 30080;
pub const UDP_CLUSTER_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 11);
pub const UDP_PORT: u16 = 53;
const NODE_NAME: &str = "lab-node";

/// One endpoint of the lab's EndpointSlices: backend `backend` (1..=4) and its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabEndpoint {
    pub backend: u8,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl LabEndpoint {
    pub fn ready(backend: u8) -> Self {
        Self {
            backend,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// A pod whose readiness probe fails: neither ready nor serving.
    pub fn not_serving(backend: u8) -> Self {
        Self {
            backend,
            ready: false,
            serving: false,
            terminating: false,
        }
    }
}

fn endpoint_yaml(endpoints: &[LabEndpoint], ipv6: bool) -> String {
    let mut out = String::new();
    for e in endpoints {
        let addr = if ipv6 {
            Ipv6Addr::new(0x2001, 2, 0, e.backend.into(), 0, 0, 0, 2).to_string()
        } else {
            Ipv4Addr::new(198, 18, e.backend, 2).to_string()
        };
        out.push_str(&format!(
            "  - addresses: [\"{addr}\"]\n    conditions: {{ready: {}, serving: {}, terminating: {}}}\n    nodeName: {NODE_NAME}\n    targetRef: {{kind: Pod, namespace: default, name: my-app-{}}}\n",
            e.ready, e.serving, e.terminating, e.backend
        ));
    }
    if endpoints.is_empty() {
        out.push_str("  []\n");
    }
    out
}

/// The EndpointSlice of Service `service` on port `port_name` (`protocol`, `port`): the lab's
/// backends `endpoints`, by their IPv6 addresses when `ipv6`, every one serving, on the lab's
/// node.
pub fn endpoint_slice_yaml(
    service: &str,
    port_name: &str,
    protocol: &str,
    port: u16,
    endpoints: &[LabEndpoint],
    ipv6: bool,
) -> String {
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-{lower}
  namespace: default
  labels:
    kubernetes.io/service-name: {service}
addressType: {family}
ports:
- name: {port_name}
  protocol: {protocol}
  port: {port}
endpoints:
{endpoints}"#,
        lower = family.to_lowercase(),
        endpoints = endpoint_yaml(endpoints, ipv6),
    )
}

/// The lab's manifests: Service `my-app-service` (LoadBalancer, port 80 -> targetPort 8080,
/// selector app: my-app, dual-stack ClusterIP, a NodePort and a load-balancer IP) with its
/// EndpointSlices, and a UDP Service `echo-udp` (53 -> 9000).
pub fn manifests(endpoints: &[LabEndpoint]) -> String {
    let v4 = endpoint_slice_yaml("my-app-service", "http", "TCP", 8080, endpoints, false);
    let v6 = endpoint_slice_yaml("my-app-service", "http", "TCP", 8080, endpoints, true);
    let udp = endpoint_slice_yaml("echo-udp", "echo", "UDP", 9000, endpoints, false);
    format!(
        r#"# Written by the slicelb lab: the classic my-app example.
apiVersion: v1
kind: Service
metadata:
  name: my-app-service
  namespace: default
spec:
  type: LoadBalancer
  selector:
    app: my-app
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: {CLUSTER_IPV4}
  clusterIPs: ["{CLUSTER_IPV4}", "{CLUSTER_IPV6}"]
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
    nodePort: {NODE_PORT}
status:
  loadBalancer:
    ingress:
    - ip: {LOAD_BALANCER_IPV4}
---
{v4}---
{v6}---
apiVersion: v1
kind: Service
metadata:
  name: echo-udp
  namespace: default
spec:
  type: ClusterIP
  selector:
    app: my-app
  clusterIP: {UDP_CLUSTER_IPV4}
  clusterIPs: ["{UDP_CLUSTER_IPV4}"]
  ports:
  - name: echo
    protocol: UDP
    port: {UDP_PORT}
    targetPort: 9000
---
{udp}"#
    )
}

/// `slicelb agent` on the lab's node, reading `manifest_dir` (the lab tests' agent:
/// NodePorts on the node's lab addresses, node name `lab-node`).
pub fn agent_command(
    lab: &Lab,
    slicelb: &std::path::Path,
    manifest_dir: &std::path::Path,
    pin_path: &std::path::Path,
) -> std::process::Command {
    let mut command = lab.node.command(&slicelb.display().to_string());
    command.args([
        "agent",
        "--iface",
        Lab::NODE_CLIENT_IFACE,
        "--manifest-dir",
        &manifest_dir.display().to_string(),
        "--node-name",
        NODE_NAME,
        "--nodeport-addresses",
        "198.18.0.0/24,2001:2::/64",
        "--pin-path",
        &pin_path.display().to_string(),
        // The single-node lab's clients are threads of the test process: keep them on the
        // packet path (socket-level balancing is tested on the cluster lab).
        "--no-socket-lb",
    ]);
    command.env("RUST_LOG", "warn");
    command
}

/// The lab's frontends, as the client asks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Frontend {
    ClusterIpV4,
    ClusterIpV6,
    NodePort,
    LoadBalancer,
    UdpClusterIp,
}

impl Frontend {
    pub const ALL: [Frontend; 5] = [
        Frontend::ClusterIpV4,
        Frontend::ClusterIpV6,
        Frontend::NodePort,
        Frontend::LoadBalancer,
        Frontend::UdpClusterIp,
    ];

    pub fn addr(self) -> SocketAddr {
        match self {
            Frontend::ClusterIpV4 => SocketAddr::new(CLUSTER_IPV4.into(), 80),
            Frontend::ClusterIpV6 => SocketAddr::new(CLUSTER_IPV6.into(), 80),
            Frontend::NodePort => SocketAddr::new(Lab::NODE_IPV4.into(), NODE_PORT),
            Frontend::LoadBalancer => SocketAddr::new(LOAD_BALANCER_IPV4.into(), 80),
            Frontend::UdpClusterIp => SocketAddr::new(UDP_CLUSTER_IPV4.into(), UDP_PORT),
        }
    }
}

pub struct AgentLab {
    pub lab: Lab,
    pub slicelb: PathBuf,
    _servers: Vec<ChildGuard>,
    pub manifests: tempfile::TempDir,
    pub pin_path: PathBuf,
}

impl AgentLab {
    /// A lab of 4 backends with servers running; `test` names the pins; the agent is the
    /// `slicelb` binary built beside the test ([`super::slicelb_binary`]).
    pub fn new(test: &str) -> Self {
        require_root(test);
        let slicelb = super::slicelb_binary().expect("the slicelb binary under test");
        let lab = Lab::new(4).expect("build lab");
        let servers = lab
            .start_servers(&super::lab_binary().expect("the slicelb-lab binary"))
            .expect("start servers");
        let manifests = tempfile::tempdir().expect("temp dir");
        let pin_path = PathBuf::from(format!(
            "/sys/fs/bpf/slicelb-test-{}-{test}",
            std::process::id()
        ));
        Self {
            lab,
            slicelb,
            _servers: servers,
            manifests,
            pin_path,
        }
    }

    /// Writes the lab's manifests with these endpoints (atomically, by rename).
    pub fn write(&self, endpoints: &[LabEndpoint]) {
        self.write_manifest("my-app", &manifests(endpoints));
    }

    /// Writes `yaml` as the manifest file `name.yaml` (atomically, by rename).
    pub fn write_manifest(&self, name: &str, yaml: &str) {
        let tmp = self.manifests.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.path().join(format!("{name}.yaml"))).expect("rename");
    }

    pub fn start_agent(&self) -> ChildGuard {
        self.start_agent_with(&[])
    }

    /// The lab's agent with `extra` arguments (e.g. `--conntrack-max 1024`).
    pub fn start_agent_with(&self, extra: &[&str]) -> ChildGuard {
        let mut command = agent_command(
            &self.lab,
            &self.slicelb,
            self.manifests.path(),
            &self.pin_path,
        );
        command.args(extra);
        ChildGuard::spawn(command, "agent").expect("start agent")
    }

    /// The lab's services with backends 1..=3 ready and an agent that has synced them
    /// (every backend answers on the ClusterIP and the UDP service).
    pub fn with_synced_agent(test: &str) -> (Self, ChildGuard) {
        Self::with_synced_agent_args(test, &[])
    }

    /// [`Self::with_synced_agent`], the agent started with `extra` arguments.
    pub fn with_synced_agent_args(test: &str, extra: &[&str]) -> (Self, ChildGuard) {
        let lab = Self::new(test);
        lab.write(&(1..=3).map(LabEndpoint::ready).collect::<Vec<_>>());
        let agent = lab.start_agent_with(extra);
        for frontend in [Frontend::ClusterIpV4, Frontend::UdpClusterIp] {
            lab.wait_until(
                "the first sync",
                frontend,
                Duration::from_secs(30),
                all_three,
            );
        }
        (lab, agent)
    }

    /// A keep-alive connection to the IPv4 ClusterIP and the backend that answered it.
    pub fn open_kept_connection(&self) -> (HttpConnection, String) {
        let service = Frontend::ClusterIpV4.addr();
        self.in_client(|| {
            let mut connection =
                HttpConnection::connect(service, Duration::from_secs(2)).expect("connect");
            let first = connection.get().expect("first request");
            (connection, first)
        })
    }

    /// Runs `slicelb args…` in the node namespace (where the agent and its maps are).
    pub fn slicelb_on_node(&self, args: &[&str]) -> std::process::Output {
        self.lab
            .node
            .command(&self.slicelb.display().to_string())
            .args(args)
            .output()
            .expect("run slicelb")
    }

    /// Backends 1..=3 with the one that gave `answer` (`backend-N`) no longer ready;
    /// returns the backends that answer new connections once none is that one.
    pub fn make_unready(&self, answer: &str) -> BTreeSet<String> {
        let index: usize = answer
            .strip_prefix("backend-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{answer:?} names no backend"));
        let mut endpoints: Vec<LabEndpoint> = (1..=3).map(LabEndpoint::ready).collect();
        endpoints[index - 1].ready = false;
        self.write(&endpoints);
        self.wait_until(
            "a not-ready endpoint takes no new connections",
            Frontend::ClusterIpV4,
            Duration::from_secs(10),
            |answers| answers.len() == 2 && !answers.contains(answer),
        )
    }

    /// One reason counter from `slicelb stats -o json`.
    pub fn reason(&self, name: &str) -> u64 {
        let pin = self.pin_path.display().to_string();
        let json = super::stdout_of(
            &self.slicelb_on_node(&["stats", "--pin-path", &pin, "-o", "json"]),
            "stats",
        );
        let stats: serde_json::Value = serde_json::from_str(&json).expect("stats JSON");
        stats["reasons"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no reason {name} in {json}"))
    }

    pub fn in_client<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.lab.client.enter(f).expect("enter client")
    }

    /// Asks `frontend` 30 times on new connections until `accept` holds for the set of
    /// backends that answered; panics after `patience`.
    pub fn wait_until(
        &self,
        what: &str,
        frontend: Frontend,
        patience: Duration,
        accept: impl Fn(&BTreeSet<String>) -> bool,
    ) -> BTreeSet<String> {
        let started = Instant::now();
        loop {
            let answers: BTreeSet<String> =
                self.in_client(|| (0..30).filter_map(|_| ask(frontend).ok()).collect());
            if accept(&answers) {
                return answers;
            }
            assert!(
                started.elapsed() < patience,
                "{what}: last answers from {frontend:?} were {answers:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for AgentLab {
    fn drop(&mut self) {
        let _ = Command::new(&self.slicelb)
            .args(["detach", "--pin-path", &self.pin_path.display().to_string()])
            .output();
    }
}

/// One request on a new connection (HTTP) or from a new socket (UDP).
pub fn ask(frontend: Frontend) -> std::io::Result<String> {
    let timeout = Duration::from_millis(500);
    match frontend {
        Frontend::UdpClusterIp => udp_ask_once(frontend.addr(), timeout),
        _ => http_get_once(frontend.addr(), timeout),
    }
}

/// All three first backends answered.
pub fn all_three(answers: &BTreeSet<String>) -> bool {
    answers.len() == 3
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn lab_manifests_name_every_endpoint_with_its_conditions() {
        let yaml = manifests(&[
            LabEndpoint::ready(1),
            LabEndpoint {
                backend: 2,
                ready: false,
                serving: true,
                terminating: true,
            },
            LabEndpoint::not_serving(3),
        ]);
        assert!(
            yaml.contains("\"198.18.1.2\""),
            "IPv4 endpoint of backend 1"
        );
        assert!(
            yaml.contains("\"2001:2:0:2::2\""),
            "IPv6 endpoint of backend 2"
        );
        assert!(yaml.contains("{ready: false, serving: true, terminating: true}"));
        assert!(yaml.contains("{ready: false, serving: false, terminating: false}"));
        assert_eq!(yaml.matches("kind: EndpointSlice").count(), 3);
        for doc in yaml.split("\n---\n") {
            let value: serde_norway::Value = serde_norway::from_str(doc)
                .unwrap_or_else(|e| panic!("lab manifest does not parse: {e}\n{doc}"));
            assert!(
                value.get("kind").is_some(),
                "every document has a kind:\n{doc}"
            );
        }
    }

    #[test]
    fn empty_endpoint_list_is_valid_yaml() {
        let yaml = manifests(&[]);
        for doc in yaml.split("\n---\n") {
            let value: serde_norway::Value = serde_norway::from_str(doc)
                .unwrap_or_else(|e| panic!("lab manifest does not parse: {e}\n{doc}"));
            if value.get("kind").and_then(|k| k.as_str()) == Some("EndpointSlice") {
                let endpoints = value.get("endpoints").expect("endpoints key");
                assert_eq!(endpoints.as_sequence().map(Vec::len), Some(0));
            }
        }
    }

    #[test]
    fn frontends_use_lab_addresses_only() {
        for frontend in Frontend::ALL {
            let ok = match frontend.addr().ip() {
                IpAddr::V4(v4) => v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18,
                IpAddr::V6(v6) => {
                    v6.segments()[0] == 0x2001 && v6.segments()[1] == 2 && v6.segments()[2] == 0
                }
            };
            assert!(
                ok,
                "{frontend:?} ({}) is outside the lab ranges",
                frontend.addr()
            );
        }
    }
}
