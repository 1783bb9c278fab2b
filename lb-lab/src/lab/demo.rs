//! `slicelb demo` (what `cargo xtask run` starts): the classic `my-app` Deployment behind a
//! LoadBalancer Service, balanced by the real agent on a lab of namespaces, then a rolling
//! update acted out step by step, and a scale-down to zero. Every step checks what it
//! announces; the demo exits non-zero when something did not behave.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    ChildGuard, Lab,
    servers::{HttpConnection, fresh_udp_client, http_get_once},
};

pub const CLUSTER_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
pub const CLUSTER_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x10);
pub const LOAD_BALANCER_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
pub const NODE_PORT: u16 = 30080;
pub const UDP_CLUSTER_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 11);
pub const UDP_PORT: u16 = 53;
const NODE_NAME: &str = "lab-node";

/// One endpoint of the demo's EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoEndpoint {
    pub backend: u8,
    pub ready: bool,
    pub terminating: bool,
}

impl DemoEndpoint {
    pub fn ready(backend: u8) -> Self {
        Self {
            backend,
            ready: true,
            terminating: false,
        }
    }
}

fn endpoint_yaml(endpoints: &[DemoEndpoint], ipv6: bool) -> String {
    let mut out = String::new();
    for e in endpoints {
        let addr = if ipv6 {
            Ipv6Addr::new(0x2001, 2, 0, e.backend.into(), 0, 0, 0, 2).to_string()
        } else {
            Ipv4Addr::new(198, 18, e.backend, 2).to_string()
        };
        out.push_str(&format!(
            "  - addresses: [\"{addr}\"]\n    conditions: {{ready: {}, serving: true, terminating: {}}}\n    nodeName: {NODE_NAME}\n    targetRef: {{kind: Pod, namespace: default, name: my-app-{}}}\n",
            e.ready, e.terminating, e.backend
        ));
    }
    if endpoints.is_empty() {
        out.push_str("  []\n");
    }
    out
}

/// The demo's manifests: Service `my-app-service` (LoadBalancer, port 80 -> targetPort 8080,
/// selector app: my-app, dual-stack ClusterIP, a NodePort and a load-balancer IP) with its
/// EndpointSlices, and a UDP Service `echo-udp` (53 -> 9000).
pub fn manifests(endpoints: &[DemoEndpoint]) -> String {
    let v4 = endpoint_yaml(endpoints, false);
    let v6 = endpoint_yaml(endpoints, true);
    format!(
        r#"# Written by `slicelb demo`: the classic my-app example.
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
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: my-app-service-ipv4
  namespace: default
  labels:
    kubernetes.io/service-name: my-app-service
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: 8080
endpoints:
{v4}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: my-app-service-ipv6
  namespace: default
  labels:
    kubernetes.io/service-name: my-app-service
addressType: IPv6
ports:
- name: http
  protocol: TCP
  port: 8080
endpoints:
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
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-udp-ipv4
  namespace: default
  labels:
    kubernetes.io/service-name: echo-udp
addressType: IPv4
ports:
- name: echo
  protocol: UDP
  port: 9000
endpoints:
{v4}"#
    )
}

/// `slicelb agent` on the lab's node, reading `manifest_dir` (the demo's and the lab tests'
/// agent: NodePorts on the node's lab addresses, node name `lab-node`).
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
        "--config-dir",
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

/// What the client asks, per frontend.
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

    pub fn label(self) -> String {
        let kind = match self {
            Frontend::ClusterIpV4 | Frontend::ClusterIpV6 => "ClusterIP",
            Frontend::NodePort => "NodePort",
            Frontend::LoadBalancer => "LoadBalancer",
            Frontend::UdpClusterIp => "ClusterIP/UDP",
        };
        format!("{kind} {}", self.addr())
    }

    fn ask(self, timeout: Duration) -> Outcome {
        let result = match self {
            Frontend::UdpClusterIp => udp_ask_connected(self.addr(), timeout),
            _ => http_get_once(self.addr(), timeout),
        };
        match result {
            Ok(name) => Outcome::Answer(name),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Outcome::Refused,
            Err(_) => Outcome::Error,
        }
    }
}

/// A connected UDP socket, so an ICMP port unreachable surfaces as ConnectionRefused; a new
/// flow each time, like a new TCP connection.
fn udp_ask_connected(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let socket = fresh_udp_client(addr)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"who")?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Answer(String),
    /// Refused at once (TCP RST or ICMP unreachable): what a client of an empty service sees.
    Refused,
    Error,
}

/// Answers per frontend and backend, plus refusals and errors, since the last reset.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub answers: BTreeMap<Frontend, BTreeMap<String, u64>>,
    pub refused: BTreeMap<Frontend, u64>,
    pub errors: BTreeMap<Frontend, u64>,
}

impl Tally {
    fn record(&mut self, frontend: Frontend, outcome: Outcome) {
        match outcome {
            Outcome::Answer(name) => {
                *self
                    .answers
                    .entry(frontend)
                    .or_default()
                    .entry(name)
                    .or_default() += 1
            }
            Outcome::Refused => *self.refused.entry(frontend).or_default() += 1,
            Outcome::Error => *self.errors.entry(frontend).or_default() += 1,
        }
    }

    fn backends_of(&self, frontend: Frontend) -> Vec<String> {
        self.answers
            .get(&frontend)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn render(&self, backends: &[String]) -> String {
        let mut out = format!("  {:<36}", "frontend");
        for b in backends {
            out.push_str(&format!("{b:>11}"));
        }
        out.push_str(&format!("{:>9}{:>8}\n", "refused", "errors"));
        for frontend in Frontend::ALL {
            out.push_str(&format!("  {:<36}", frontend.label()));
            for b in backends {
                let n = self
                    .answers
                    .get(&frontend)
                    .and_then(|m| m.get(b))
                    .copied()
                    .unwrap_or(0);
                out.push_str(&format!("{n:>11}"));
            }
            out.push_str(&format!(
                "{:>9}{:>8}\n",
                self.refused.get(&frontend).copied().unwrap_or(0),
                self.errors.get(&frontend).copied().unwrap_or(0)
            ));
        }
        out
    }
}

/// The running demo: lab, servers, agent, and the client's traffic threads.
struct Demo {
    lab: Lab,
    slicelb: PathBuf,
    manifest_dir: tempfile::TempDir,
    pin_path: PathBuf,
    agent: Option<ChildGuard>,
    _servers: Vec<ChildGuard>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    failures: Vec<String>,
}

impl Demo {
    fn write_endpoints(&self, endpoints: &[DemoEndpoint]) -> anyhow::Result<()> {
        // Write then rename, so the agent never reads a half-written file.
        let tmp = self.manifest_dir.path().join(".my-app.yaml.tmp");
        std::fs::write(&tmp, manifests(endpoints))?;
        std::fs::rename(&tmp, self.manifest_dir.path().join("my-app.yaml"))?;
        Ok(())
    }

    fn start_agent(&mut self) -> anyhow::Result<()> {
        let command = agent_command(
            &self.lab,
            &self.slicelb,
            self.manifest_dir.path(),
            &self.pin_path,
        );
        self.agent = Some(ChildGuard::spawn(command, "agent")?);
        Ok(())
    }

    /// Client threads: each frontend asked every 50 ms, each time on a new connection.
    fn start_traffic(&self) -> Vec<std::thread::JoinHandle<()>> {
        Frontend::ALL
            .into_iter()
            .map(|frontend| {
                let tally = self.tally.clone();
                let stop = self.stop.clone();
                let client = self.lab.client.path();
                std::thread::spawn(move || {
                    let file = std::fs::File::open(&client).expect("client netns exists");
                    // SAFETY: setns on a valid namespace fd affects only this thread.
                    let rc = unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                    };
                    assert_eq!(rc, 0, "entering the client namespace");
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = frontend.ask(Duration::from_millis(500));
                        tally.lock().expect("tally lock").record(frontend, outcome);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect()
    }

    fn take_tally(&self) -> Tally {
        std::mem::take(&mut *self.tally.lock().expect("tally lock"))
    }

    fn check(&mut self, ok: bool, what: String) {
        if ok {
            println!("    ok: {what}");
        } else {
            println!("    NOT OK: {what}");
            self.failures.push(what);
        }
    }

    /// Runs `duration`, printing the live table every second.
    fn watch(&self, duration: Duration, stop: &AtomicBool) -> Tally {
        let started = Instant::now();
        let mut total = Tally::default();
        while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1).min(duration));
            let tally = self.take_tally();
            for (frontend, by_backend) in &tally.answers {
                for (backend, n) in by_backend {
                    *total
                        .answers
                        .entry(*frontend)
                        .or_default()
                        .entry(backend.clone())
                        .or_default() += n;
                }
            }
            for (frontend, n) in &tally.refused {
                *total.refused.entry(*frontend).or_default() += n;
            }
            for (frontend, n) in &tally.errors {
                *total.errors.entry(*frontend).or_default() += n;
            }
        }
        let backends: Vec<String> = self.lab.backends.iter().map(|b| b.name()).collect();
        print!("{}", total.render(&backends));
        total
    }

    /// The agent's own record of programming latency (event arrival to maps written), from
    /// its metrics endpoint on the node: (mean in ms, syncs counted).
    fn programming_latency(&self) -> Option<(f64, u64)> {
        let text = self
            .lab
            .node
            .enter(|| {
                use std::io::{Read as _, Write as _};
                let mut stream = std::net::TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], 9400)),
                    Duration::from_secs(1),
                )
                .ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
                    .ok()?;
                let mut body = String::new();
                stream.read_to_string(&mut body).ok()?;
                Some(body)
            })
            .ok()??;
        let value = |name: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        let sum = value("slicelb_programming_latency_seconds_sum")?;
        let count = value("slicelb_programming_latency_seconds_count")?;
        (count > 0.0).then(|| (sum * 1000.0 / count, count as u64))
    }

    fn print_latency(&self) {
        if let Some((mean_ms, syncs)) = self.programming_latency() {
            println!(
                "    agent programming latency: {mean_ms:.1} ms mean over {syncs} syncs (event arrival -> maps written)"
            );
        }
    }

    fn in_client<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        Ok(self.lab.client.enter(f)?)
    }
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ctrl-C sets the flag; the demo then stops at the next step and cleans up.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        set.store(true, Ordering::Relaxed);
    });
    flag
}

/// What `slicelb-lab demo` was asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemoOptions {
    /// Stop after this many seconds (default: until Ctrl-C).
    pub duration: Option<u64>,
    /// Leave the lab up at the end and print how to enter it.
    pub keep: bool,
}

pub fn run(args: &DemoOptions) -> anyhow::Result<()> {
    crate::lab::require_root("slicelb demo");
    let interrupted = stop_on_ctrl_c();
    let slicelb = crate::lab::slicelb_binary()?;
    let lab_binary = std::env::current_exe().context("locating the slicelb-lab binary")?;
    // Four steps of equal length, with a floor so each has time to show traffic.
    let step = Duration::from_secs(args.duration.map(|d| (d / 5).max(3)).unwrap_or(8));

    println!("slicelb demo: building the lab (client, node, 4 backend namespaces)");
    let lab = Lab::new(4)?;
    let servers = lab.start_servers(&lab_binary)?;
    let pin_path = PathBuf::from(format!("/sys/fs/bpf/slicelb-demo-{}", std::process::id()));
    let mut demo = Demo {
        lab,
        slicelb,
        manifest_dir: tempfile::Builder::new().prefix("slicelb-demo-").tempdir()?,
        pin_path,
        agent: None,
        _servers: servers,
        tally: Arc::default(),
        stop: Arc::new(AtomicBool::new(false)),
        failures: Vec::new(),
    };
    let result = act_out(&mut demo, step, &interrupted);
    demo.stop.store(true, Ordering::Relaxed);

    if args.keep {
        println!("slicelb demo: --keep: the lab stays up.");
        println!(
            "  the manifests:    {} (edit them; the agent applies every change)",
            demo.manifest_dir.path().display()
        );
        println!(
            "  enter the client: nsenter --net={} bash",
            demo.lab.client.path().display()
        );
        println!(
            "  enter the node:   nsenter --net={} bash",
            demo.lab.node.path().display()
        );
        println!(
            "  see the services: {} services --pin-path {}",
            demo.slicelb.display(),
            demo.pin_path.display()
        );
        let namespaces: Vec<&str> = [&demo.lab.client, &demo.lab.node]
            .into_iter()
            .chain(demo.lab.backends.iter().map(|b| &b.netns))
            .map(|ns| ns.name())
            .collect();
        let pids: Vec<String> = demo
            .agent
            .iter()
            .chain(demo._servers.iter())
            .map(|p| p.id().to_string())
            .collect();
        println!(
            "  remove it all:    kill {}; {} detach --pin-path {}; for ns in {}; do ip netns del $ns; done",
            pids.join(" "),
            demo.slicelb.display(),
            demo.pin_path.display(),
            namespaces.join(" ")
        );
        let Demo {
            lab,
            agent,
            _servers,
            manifest_dir,
            ..
        } = demo;
        std::mem::forget(lab);
        std::mem::forget(agent);
        std::mem::forget(_servers);
        let _ = manifest_dir.keep();
        return result;
    }
    cleanup(&mut demo);
    result?;
    if demo.failures.is_empty() {
        println!("slicelb demo: every step behaved as announced; lab, agent and pins removed");
        Ok(())
    } else {
        bail!(
            "{} step(s) did not behave: {}",
            demo.failures.len(),
            demo.failures.join("; ")
        )
    }
}

fn cleanup(demo: &mut Demo) {
    if let Some(mut agent) = demo.agent.take() {
        let _ = agent.signal_and_wait(libc::SIGTERM);
    }
    let _ = std::process::Command::new(&demo.slicelb)
        .args(["detach", "--pin-path", &demo.pin_path.display().to_string()])
        .status();
}

fn act_out(demo: &mut Demo, step: Duration, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let initial: Vec<DemoEndpoint> = (1..=3).map(DemoEndpoint::ready).collect();
    demo.write_endpoints(&initial)?;
    println!(
        "slicelb demo: Service my-app-service (LoadBalancer, 80 -> 8080) with 3 ready endpoints; echo-udp (UDP {UDP_PORT} -> 9000)"
    );
    demo.start_agent()?;
    let agent_started = Instant::now();
    let first = Frontend::ClusterIpV4;
    demo.in_client(|| {
        wait_for(
            "the agent to program the first service",
            Duration::from_secs(20),
            || matches!(first.ask(Duration::from_millis(300)), Outcome::Answer(_)).then_some(()),
        )
    })??;
    println!(
        "slicelb demo: agent up and programmed in {:.0} ms; client traffic starts",
        agent_started.elapsed().as_secs_f64() * 1000.0
    );
    let threads = demo.start_traffic();

    println!("\n[1/5] steady state: every frontend spreads over backend-1..3");
    let tally = demo.watch(step, interrupted);
    demo.print_latency();
    for frontend in Frontend::ALL {
        let seen = tally.backends_of(frontend);
        demo.check(
            seen == ["backend-1", "backend-2", "backend-3"],
            format!("{} answered from {seen:?}", frontend.label()),
        );
    }

    if !interrupted.load(Ordering::Relaxed) {
        rolling_update(demo, step, interrupted)?;
    }
    demo.stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn rolling_update(demo: &mut Demo, step: Duration, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let service = Frontend::ClusterIpV4.addr();
    let (mut kept, first_answer) = demo.in_client(|| -> anyhow::Result<_> {
        let mut connection = HttpConnection::connect(service, Duration::from_secs(2))?;
        let first = connection.get()?;
        Ok((connection, first))
    })??;
    let leaving: u8 = first_answer
        .strip_prefix("backend-")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected answer {first_answer:?}"))?;
    println!(
        "\n[2/5] rolling update: backend-{leaving} becomes terminating; an established connection to it stays, new ones avoid it"
    );
    let mut endpoints: Vec<DemoEndpoint> = (1..=3).map(DemoEndpoint::ready).collect();
    endpoints[usize::from(leaving - 1)] = DemoEndpoint {
        backend: leaving,
        ready: false,
        terminating: true,
    };
    demo.write_endpoints(&endpoints)?;
    std::thread::sleep(Duration::from_secs(1));
    demo.take_tally();
    let tally = demo.watch(step, interrupted);
    demo.print_latency();
    let still = demo.in_client(move || kept.get().map(|name| (name, kept)))?;
    match still {
        Ok((name, connection)) => {
            kept = connection;
            demo.check(
                name == first_answer,
                format!(
                    "established connection still answered by {name} (expected {first_answer})"
                ),
            );
        }
        Err(e) => {
            demo.check(
                false,
                format!("established connection to backend-{leaving} broke: {e}"),
            );
            return Ok(());
        }
    }
    let leaving_name = format!("backend-{leaving}");
    for frontend in Frontend::ALL {
        let seen = tally.backends_of(frontend);
        demo.check(
            !seen.contains(&leaving_name) && seen.len() == 2,
            format!(
                "{} new connections went to {seen:?} (not {leaving_name})",
                frontend.label()
            ),
        );
    }

    println!("\n[3/5] rolling update: backend-4 becomes ready and takes traffic");
    endpoints.push(DemoEndpoint::ready(4));
    demo.write_endpoints(&endpoints)?;
    std::thread::sleep(Duration::from_secs(1));
    demo.take_tally();
    let tally = demo.watch(step, interrupted);
    demo.print_latency();
    for frontend in Frontend::ALL {
        let seen = tally.backends_of(frontend);
        demo.check(
            seen.contains(&"backend-4".to_string()),
            format!(
                "{} answered from {seen:?} (backend-4 included)",
                frontend.label()
            ),
        );
    }

    println!(
        "\n[4/5] rolling update: backend-{leaving} is gone; its connection is closed by the pod"
    );
    endpoints.retain(|e| e.backend != leaving);
    demo.write_endpoints(&endpoints)?;
    drop(kept);
    std::thread::sleep(Duration::from_secs(1));
    demo.take_tally();
    let tally = demo.watch(step, interrupted);
    for frontend in Frontend::ALL {
        let seen = tally.backends_of(frontend);
        demo.check(
            !seen.contains(&leaving_name) && seen.contains(&"backend-4".to_string()),
            format!("{} answered from {seen:?}", frontend.label()),
        );
    }

    println!("\n[5/5] scale down to zero: clients are refused at once");
    demo.write_endpoints(&[])?;
    std::thread::sleep(Duration::from_secs(1));
    demo.take_tally();
    let tally = demo.watch(step, interrupted);
    for frontend in Frontend::ALL {
        let refused = tally.refused.get(&frontend).copied().unwrap_or(0);
        let answered: u64 = tally
            .answers
            .get(&frontend)
            .map(|m| m.values().sum())
            .unwrap_or(0);
        let errors = tally.errors.get(&frontend).copied().unwrap_or(0);
        demo.check(
            refused > 0 && answered == 0 && errors == 0,
            format!(
                "{}: {refused} refused, {answered} answered, {errors} timed out",
                frontend.label()
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn demo_manifests_name_every_endpoint_with_its_conditions() {
        let yaml = manifests(&[
            DemoEndpoint::ready(1),
            DemoEndpoint {
                backend: 2,
                ready: false,
                terminating: true,
            },
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
        assert_eq!(yaml.matches("kind: EndpointSlice").count(), 3);
        for doc in yaml.split("\n---\n") {
            let value: serde_yaml::Value = serde_yaml::from_str(doc)
                .unwrap_or_else(|e| panic!("demo manifest does not parse: {e}\n{doc}"));
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
            let value: serde_yaml::Value = serde_yaml::from_str(doc)
                .unwrap_or_else(|e| panic!("demo manifest does not parse: {e}\n{doc}"));
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
            assert!(ok, "{} is outside the lab ranges", frontend.label());
        }
    }
}
