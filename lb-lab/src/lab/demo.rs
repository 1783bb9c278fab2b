//! `slicelb-lab demo` (what `cargo xtask run` starts): the seed's `my-app` Deployment, three
//! replicas spread over the two nodes of a cluster lab ([`super::cluster`]) behind
//! `my-app-service`, with one real `slicelb agent` per node, both reading one manifest
//! directory. A client pod, a process of each node and a client outside the cluster ask the
//! Services; then the demo acts out a rolling update and a scale-down to zero. Every step
//! checks what it announces; the demo exits non-zero when something did not behave.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::signal::unix::SignalKind;

use super::{
    ChildGuard,
    cluster::{
        Cluster, ClusterNode, ClusterSpec, Outside, Pod,
        manifests::{
            ClusterEndpoint, ClusterService, Conditions, DNS_SERVICE, EXTERNAL_LOCAL_SERVICE,
            LOCAL_SERVICE, MANIFEST_FILE, MY_APP_SERVICE, NAMESPACE, write_services,
        },
    },
    probe::{Probe, ProbeAnswer, ProbeProtocol, ProbeResult},
};

/// The cluster: my-app's three replicas over both nodes, the client pod beside two of them,
/// and the rolling update's new replica (not an endpoint until then) on node-b.
const NODES: [(&str, &[&str]); 2] = [
    ("node-a", &["my-app-1", "my-app-2", "client"]),
    ("node-b", &["my-app-3", "my-app-4"]),
];
const REPLICAS: [&str; 3] = ["my-app-1", "my-app-2", "my-app-3"];
const NEW_REPLICA: &str = "my-app-4";
const CLIENT: &str = "client";
/// What the agents read: the cluster lab's three Services and my-app's NodePort with
/// `externalTrafficPolicy: Local` for the client outside.
const DEMO_SERVICES: [ClusterService; 4] = [
    MY_APP_SERVICE,
    DNS_SERVICE,
    LOCAL_SERVICE,
    EXTERNAL_LOCAL_SERVICE,
];
/// Names the cluster's cgroup tree and pins.
const LAB_NAME: &str = "demo";
/// Seconds of traffic over the whole demo when `--duration` is not given.
pub const DEFAULT_DURATION_SECS: u64 = 16;
/// The traffic windows the duration is split into: steps 1 to 5, the rolling update's two
/// phases, the scale-down.
const WINDOWS: u64 = 8;
/// How long the agents may take to start, and to apply a manifest change.
const AGENT_PATIENCE: Duration = Duration::from_secs(20);
/// Requests per probe run; a window runs probes until it is over.
const BATCH: u32 = 10;
/// Generous: on a busy machine a slow answer is not a wrong one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The held connection's limit; the demo ends it long before.
const HOLD_LIMIT: Duration = Duration::from_secs(300);

/// What `slicelb-lab demo` was asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemoOptions {
    /// Seconds of traffic over the whole demo, split between its steps (default
    /// [`DEFAULT_DURATION_SECS`]).
    pub duration: Option<u64>,
    /// At the end, keep the cluster up (my-app back at 3 replicas) until Ctrl-C, and print
    /// how to enter it.
    pub keep: bool,
}

/// Who asks: a pod, a process of a node itself, or the client outside the cluster.
#[derive(Clone, Copy)]
enum Asker<'a> {
    Pod(&'a Pod),
    Node(&'a ClusterNode),
    Outside(&'a Outside),
}

impl Asker<'_> {
    fn name(&self) -> &str {
        match self {
            Asker::Pod(pod) => &pod.name,
            Asker::Node(node) => &node.name,
            Asker::Outside(_) => "outside",
        }
    }

    /// `program` in the asker's namespace and cgroup (below its node's cgroup for a pod or
    /// a node process: socket-level balancing applies).
    fn command(&self, program: &Path) -> Command {
        match self {
            Asker::Pod(pod) => pod.command(program),
            Asker::Node(node) => node.command(program),
            Asker::Outside(outside) => outside.command(program),
        }
    }

    /// The source addresses the asker's connections may carry: a pod's own, a node's
    /// uplink or (towards its own pods) the gateway address on their veths, the outside
    /// client's own.
    fn own_addresses(&self) -> Vec<IpAddr> {
        match self {
            Asker::Pod(pod) => vec![pod.addr_v4.into(), pod.addr_v6.into()],
            Asker::Node(node) => vec![
                node.addr_v4.into(),
                node.gateway_v4.into(),
                node.addr_v6.into(),
                node.gateway_v6.into(),
            ],
            Asker::Outside(outside) => vec![outside.addr_v4.into(), outside.addr_v6.into()],
        }
    }
}

/// One line of a step's table: `from` asking `probe` again and again.
struct Row<'a> {
    from: Asker<'a>,
    probe: Probe,
}

impl<'a> Row<'a> {
    fn new(from: Asker<'a>, probe: Probe) -> Self {
        Self {
            from,
            probe: probe.count(BATCH).timeout(PROBE_TIMEOUT),
        }
    }

    /// `from` asking `service` on its IPv4 and its IPv6 ClusterIP.
    fn both_families(from: Asker<'a>, service: &ClusterService) -> [Self; 2] {
        [service.addr_v4(), service.addr_v6()].map(|addr| Self::new(from, service.probe(addr)))
    }

    fn label(&self) -> String {
        let protocol = match self.probe.protocol {
            ProbeProtocol::Tcp => "TCP",
            ProbeProtocol::Udp => "UDP",
        };
        format!("{} → {}/{protocol}", self.from.name(), self.probe.target)
    }

    /// What a client learns about its peer: `getpeername()`, or for unconnected UDP the
    /// source of each reply.
    fn peer_means(&self) -> &'static str {
        if self.probe.unconnected {
            "recvfrom() ="
        } else {
            "getpeername() ="
        }
    }
}

/// What one row's requests got during a window.
struct Tally {
    results: Vec<ProbeResult>,
}

impl Tally {
    fn answers(&self) -> impl Iterator<Item = &ProbeAnswer> {
        self.results.iter().filter_map(ProbeResult::answer)
    }

    fn served(&self) -> BTreeSet<&str> {
        self.answers().map(|a| a.served_by.as_str()).collect()
    }

    fn answered_by(&self, pod: &str) -> usize {
        self.answers().filter(|a| a.served_by == pod).count()
    }

    /// Failed requests by error name (`ECONNREFUSED`, `timeout`, …).
    fn failures(&self) -> BTreeMap<&str, usize> {
        let mut by_error = BTreeMap::new();
        for failure in self.results.iter().filter_map(ProbeResult::failure) {
            *by_error.entry(failure.error.as_str()).or_default() += 1;
        }
        by_error
    }
}

/// my-app's replicas on `node`.
fn replicas_on(cluster: &Cluster, node: &str) -> Vec<&'static str> {
    REPLICAS
        .into_iter()
        .filter(|name| cluster.pod(name).node == node)
        .collect()
}

/// `a, b and c`.
fn listed<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
    match items.as_slice() {
        [] => "nobody".to_string(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The running demo: the cluster, its agents, and what went wrong so far.
struct Demo<'a> {
    cluster: &'a Cluster,
    slicelb: PathBuf,
    lab_binary: PathBuf,
    manifest_dir: &'a Path,
    agents: Vec<ChildGuard>,
    /// How long each step's traffic runs.
    window: Duration,
    interrupted: Arc<AtomicBool>,
    failures: Vec<String>,
}

impl<'a> Demo<'a> {
    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    fn check(&mut self, ok: bool, what: String) {
        if ok {
            println!("    ok: {what}");
        } else {
            println!("    NOT OK: {what}");
            self.failures.push(what);
        }
    }

    fn pod(&self, name: &str) -> Asker<'a> {
        Asker::Pod(self.cluster.pod(name))
    }

    /// The node of pod `name`.
    fn node_of(&self, name: &str) -> &'a str {
        &self.cluster.pod(name).node
    }

    /// `names` with their nodes: `my-app-1 (node-a)`.
    fn with_nodes<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> Vec<String> {
        names
            .into_iter()
            .map(|name| format!("{name} ({})", self.node_of(name)))
            .collect()
    }

    /// Writes the manifests with these pods as my-app's endpoints, then waits until both
    /// agents' maps send new connections to the ready ones.
    fn apply(&mut self, endpoints: &[(&str, Conditions)]) -> anyhow::Result<Duration> {
        let endpoints: Vec<ClusterEndpoint> = endpoints
            .iter()
            .map(|(name, conditions)| ClusterEndpoint::new(self.cluster.pod(name), *conditions))
            .collect();
        write_services(self.manifest_dir, &DEMO_SERVICES, &endpoints)
            .context("writing the manifests")?;
        let ready: BTreeSet<IpAddr> = endpoints
            .iter()
            .filter(|endpoint| endpoint.conditions.ready)
            .map(|endpoint| endpoint.addr_v4.into())
            .collect();
        self.wait_programmed(&ready)
    }

    /// Waits until every agent's `my-app-service` ClusterIP (IPv4) selects exactly `ready`,
    /// as `slicelb services` reads it from the node's pinned maps.
    fn wait_programmed(&mut self, ready: &BTreeSet<IpAddr>) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            for (node, agent) in self.cluster.nodes().iter().zip(&mut self.agents) {
                if !agent.is_running() {
                    bail!("the agent of {} exited (its log is above)", node.name);
                }
            }
            let seen: Vec<(&str, Option<BTreeSet<IpAddr>>)> = self
                .cluster
                .nodes()
                .iter()
                .map(|node| (node.name.as_str(), self.selected_by(node)))
                .collect();
            if seen
                .iter()
                .all(|(_, selected)| selected.as_ref() == Some(ready))
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > AGENT_PATIENCE || self.interrupted() {
                bail!(
                    "the agents did not program my-app-service's endpoints {ready:?} within {AGENT_PATIENCE:?}; they select {seen:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The backend addresses `node`'s maps select for my-app-service's IPv4 ClusterIP, or
    /// None while the agent has not written it.
    fn selected_by(&self, node: &ClusterNode) -> Option<BTreeSet<IpAddr>> {
        let service = format!(
            "{NAMESPACE}/{}:{}",
            MY_APP_SERVICE.name, MY_APP_SERVICE.port_name
        );
        // Naming the service port: the command fails (None) until the agent has written it.
        let output = node
            .system_command(&self.slicelb)
            .arg("services")
            .arg(&service)
            .arg("--pin-path")
            .arg(&node.pin_path)
            .args(["-o", "json"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|output| output.status.success())?;
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).ok()?;
        let frontend = MY_APP_SERVICE.addr_v4().to_string();
        let row = rows
            .iter()
            .find(|row| row["kind"] == "ClusterIP" && row["frontend"] == frontend.as_str())?;
        row["backends"]
            .as_array()?
            .iter()
            .map(|backend| {
                backend["address"]
                    .as_str()?
                    .parse::<SocketAddr>()
                    .ok()
                    .map(|addr| addr.ip())
            })
            .collect()
    }

    /// Runs every row's probes side by side for one window.
    fn traffic(&self, rows: &[Row]) -> anyhow::Result<Vec<Tally>> {
        let deadline = Instant::now() + self.window;
        std::thread::scope(|scope| {
            let running: Vec<_> = rows
                .iter()
                .map(|row| {
                    scope.spawn(move || -> anyhow::Result<Tally> {
                        let mut results = Vec::new();
                        loop {
                            let batch = row
                                .probe
                                .run(row.from.command(&self.lab_binary))
                                .with_context(|| format!("probing {}", row.label()))?;
                            results.extend(batch);
                            if Instant::now() >= deadline || self.interrupted() {
                                return Ok(Tally { results });
                            }
                        }
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|thread| thread.join().expect("a probe thread does not panic"))
                .collect()
        })
    }

    /// The table: a line per row, answers per my-app pod, refusals and other failures.
    fn print_table(&self, rows: &[Row], tallies: &[Tally]) {
        let pods: Vec<&str> = REPLICAS.into_iter().chain([NEW_REPLICA]).collect();
        let mut out = format!("  {:<40}", "from → to");
        for pod in &pods {
            out.push_str(&format!("{pod:>10}"));
        }
        out.push_str(&format!("{:>9}{:>8}\n  {:<40}", "refused", "failed", ""));
        for pod in &pods {
            out.push_str(&format!("{:>10}", self.node_of(pod)));
        }
        out.push('\n');
        for (row, tally) in rows.iter().zip(tallies) {
            out.push_str(&format!("  {:<40}", row.label()));
            for pod in &pods {
                out.push_str(&format!("{:>10}", tally.answered_by(pod)));
            }
            let failures = tally.failures();
            let refused = failures.get("ECONNREFUSED").copied().unwrap_or(0);
            let failed: usize = failures.values().sum::<usize>() - refused;
            out.push_str(&format!("{refused:>9}{failed:>8}\n"));
        }
        print!("{out}");
    }

    /// Runs `rows` for a window, prints the table, and checks each row with
    /// [`Self::check_row`] against the pods `expected` of it.
    fn ask_and_check<'e>(
        &mut self,
        rows: &[Row],
        expected: impl Fn(&Row) -> Vec<&'e str>,
    ) -> anyhow::Result<()> {
        let tallies = self.traffic(rows)?;
        self.print_table(rows, &tallies);
        for (row, tally) in rows.iter().zip(&tallies) {
            self.check_row(row, tally, &expected(row));
        }
        Ok(())
    }

    /// Every request of `row` answered, by exactly the pods `expected`; the peer the client
    /// saw was the address it asked; the pods saw the client as one of its own addresses
    /// (nothing translated the source). One line says it all.
    fn check_row(&mut self, row: &Row, tally: &Tally, expected: &[&str]) {
        let failures = tally.failures();
        let served = tally.served();
        let peers: BTreeSet<SocketAddr> = tally.answers().map(|a| a.peer).collect();
        let seen: BTreeSet<IpAddr> = tally.answers().map(|a| a.client_seen.ip()).collect();
        let own = row.from.own_addresses();
        let ok = failures.is_empty()
            && served == expected.iter().copied().collect()
            && peers == BTreeSet::from([row.probe.target])
            && seen.iter().all(|ip| own.contains(ip));
        let plural = if seen.len() > 1 { "es" } else { "" };
        let mut what = format!(
            "{}: {} answered; {} {}; the pods saw {} (own address{plural})",
            row.label(),
            listed(&served),
            row.peer_means(),
            listed(peers.iter().map(SocketAddr::to_string)),
            listed(seen.iter().map(IpAddr::to_string))
        );
        if !failures.is_empty() {
            what.push_str(&format!("; failed: {failures:?}"));
        }
        if !ok {
            what.push_str(&format!(
                " (expected: {} answered, peer {}, the client's own address)",
                listed(expected),
                row.probe.target
            ));
        }
        self.check(ok, what);
    }

    fn act_out(&mut self) -> anyhow::Result<()> {
        println!(
            "slicelb demo: my-app-service (ClusterIP {}, {}; TCP {} -> {}; NodePort {}) with 3 ready replicas",
            MY_APP_SERVICE.cluster_ipv4,
            MY_APP_SERVICE.cluster_ipv6,
            MY_APP_SERVICE.port,
            MY_APP_SERVICE.target_port,
            MY_APP_SERVICE.node_port.unwrap_or_default(),
        );
        println!(
            "              also {} (UDP {} -> {}), {} (internalTrafficPolicy: Local), {} (NodePort {}, externalTrafficPolicy: Local)",
            DNS_SERVICE.name,
            DNS_SERVICE.port,
            DNS_SERVICE.target_port,
            LOCAL_SERVICE.name,
            EXTERNAL_LOCAL_SERVICE.name,
            EXTERNAL_LOCAL_SERVICE.node_port.unwrap_or_default(),
        );
        for node in self.cluster.nodes() {
            let command = self
                .cluster
                .agent_command(&node.name, &self.slicelb, self.manifest_dir);
            self.agents.push(ChildGuard::spawn(command, "agent")?);
        }
        let ready: Vec<(&str, Conditions)> = REPLICAS
            .iter()
            .map(|name| (*name, Conditions::READY))
            .collect();
        let took = self.apply(&ready)?;
        println!(
            "slicelb demo: agents on {} up and programmed in {:.0} ms",
            listed(self.cluster.nodes().iter().map(|n| n.name.as_str())),
            took.as_secs_f64() * 1000.0
        );

        let steps: [fn(&mut Self) -> anyhow::Result<()>; 7] = [
            Self::pod_to_cluster_ip,
            Self::node_to_cluster_ip,
            Self::dns_exchange,
            Self::internal_local,
            Self::outside_to_node_port,
            Self::rolling_update,
            Self::scale_down,
        ];
        for step in steps {
            if self.interrupted() {
                break;
            }
            step(self)?;
        }
        Ok(())
    }

    fn pod_to_cluster_ip(&mut self) -> anyhow::Result<()> {
        println!(
            "\n[1/7] pod → ClusterIP, IPv4 and IPv6: the client pod on {} reaches all three replicas, on both nodes",
            self.node_of(CLIENT)
        );
        let rows = Row::both_families(self.pod(CLIENT), &MY_APP_SERVICE);
        self.ask_and_check(&rows, |_| REPLICAS.to_vec())
    }

    fn node_to_cluster_ip(&mut self) -> anyhow::Result<()> {
        println!(
            "\n[2/7] node → ClusterIP: a process of each node itself (below the node's cgroup, where its agent balances sockets)"
        );
        let rows: Vec<Row> = self
            .cluster
            .nodes()
            .iter()
            .flat_map(|node| Row::both_families(Asker::Node(node), &MY_APP_SERVICE))
            .collect();
        self.ask_and_check(&rows, |_| REPLICAS.to_vec())
    }

    fn dns_exchange(&mut self) -> anyhow::Result<()> {
        println!(
            "\n[3/7] DNS-style UDP: the client pod sends to {} with sendto() on an unconnected socket; recvfrom() must name the Service",
            DNS_SERVICE.name
        );
        let rows = Row::both_families(self.pod(CLIENT), &DNS_SERVICE).map(|row| Row {
            probe: row.probe.unconnected(),
            ..row
        });
        self.ask_and_check(&rows, |_| REPLICAS.to_vec())
    }

    fn internal_local(&mut self) -> anyhow::Result<()> {
        let node = self.node_of(CLIENT);
        let local = replicas_on(self.cluster, node);
        println!(
            "\n[4/7] internalTrafficPolicy: Local ({}): the client pod gets only the replicas on its own node, {node}",
            LOCAL_SERVICE.name
        );
        let rows = Row::both_families(self.pod(CLIENT), &LOCAL_SERVICE);
        self.ask_and_check(&rows, |_| local.clone())
    }

    fn outside_to_node_port(&mut self) -> anyhow::Result<()> {
        let node_port = EXTERNAL_LOCAL_SERVICE
            .node_port
            .expect("my-app-external has a NodePort");
        println!(
            "\n[5/7] outside → NodePort {node_port} of each node ({}, externalTrafficPolicy: Local), balanced on the node's eth0: its own replicas answer",
            EXTERNAL_LOCAL_SERVICE.name
        );
        println!(
            "      (my-app-service's NodePort {} has policy Cluster: a node masquerades what it sends to the other node's pods)",
            MY_APP_SERVICE.node_port.unwrap_or_default()
        );
        let outside = self.cluster.outside();
        let rows: Vec<Row> = self
            .cluster
            .nodes()
            .iter()
            .flat_map(|node| {
                [IpAddr::from(node.addr_v4), node.addr_v6.into()].map(|addr| {
                    Row::new(
                        Asker::Outside(outside),
                        Probe::tcp(SocketAddr::new(addr, node_port)),
                    )
                })
            })
            .collect();
        let nodes = self.cluster.nodes();
        self.ask_and_check(&rows, |row| {
            let node = nodes
                .iter()
                .find(|node| {
                    [IpAddr::from(node.addr_v4), node.addr_v6.into()]
                        .contains(&row.probe.target.ip())
                })
                .expect("every row asks a node's address");
            replicas_on(self.cluster, &node.name)
        })
    }

    fn rolling_update(&mut self) -> anyhow::Result<()> {
        let client = self.cluster.pod(CLIENT);
        let target = MY_APP_SERVICE.addr_v4();
        let mut held = Probe::tcp(target)
            .timeout(Duration::from_secs(1))
            .hold(HOLD_LIMIT)
            .spawn(client.command(&self.lab_binary))
            .context("starting the held connection")?;
        let first = held
            .next_result()
            .context("the held connection's probe printed nothing")?
            .context("the held connection's first answer")?;
        let Some(first) = first.answer().cloned() else {
            self.check(
                false,
                format!("a held connection to {target} from the client pod: {first:?}"),
            );
            return Ok(());
        };
        let leaving = first.served_by.clone();
        let staying: Vec<&str> = REPLICAS
            .into_iter()
            .filter(|name| *name != leaving)
            .collect();
        println!(
            "\n[6/7] rolling update: the client pod holds a connection to {leaving} ({}), which turns terminating; then {NEW_REPLICA} ({}) becomes ready",
            self.node_of(&leaving),
            self.node_of(NEW_REPLICA)
        );
        let mut endpoints: Vec<(&str, Conditions)> = REPLICAS
            .iter()
            .map(|name| {
                let conditions = if *name == leaving {
                    Conditions::TERMINATING
                } else {
                    Conditions::READY
                };
                (*name, conditions)
            })
            .collect();
        let took = self.apply(&endpoints)?;
        println!(
            "  {leaving} terminating (both agents' maps had it in {:.0} ms): new connections avoid it",
            took.as_secs_f64() * 1000.0
        );
        let rows = Row::both_families(self.pod(CLIENT), &MY_APP_SERVICE);
        self.ask_and_check(&rows, |_| staying.clone())?;

        endpoints.push((NEW_REPLICA, Conditions::READY));
        let took = self.apply(&endpoints)?;
        println!(
            "  {NEW_REPLICA} ready (in {:.0} ms): new connections reach it, still not {leaving}",
            took.as_secs_f64() * 1000.0
        );
        let with_new: Vec<&str> = staying.iter().copied().chain([NEW_REPLICA]).collect();
        self.ask_and_check(&rows, |_| with_new.clone())?;

        let held_results: Vec<ProbeResult> = std::iter::once(ProbeResult::Answered(first.clone()))
            .chain(held.stop().context("ending the held connection")?)
            .collect();
        // The probe asks every 100 ms until stopped, a failed request is a line of its own,
        // and one that ended early is an error of `stop`: these answers span both phases.
        let on_one_connection = held_results.len() > 1
            && held_results.iter().all(|result| {
                result.answer().is_some_and(|a| {
                    a.served_by == leaving && a.local == first.local && a.peer == target
                })
            });
        let failure = held_results.iter().find_map(ProbeResult::failure);
        self.check(
            on_one_connection,
            format!(
                "the held connection (client port {}) got {} answers, all from {leaving} with getpeername() = {target}, while {leaving} was terminating and {NEW_REPLICA} became ready{}",
                first.local.port(),
                held_results.iter().filter_map(ProbeResult::answer).count(),
                failure.map(|f| format!("; then {f:?}")).unwrap_or_default()
            ),
        );
        Ok(())
    }

    fn scale_down(&mut self) -> anyhow::Result<()> {
        println!(
            "\n[7/7] scale down to zero: every client is refused at once (ECONNREFUSED), none waits for a timeout"
        );
        let took = self.apply(&[])?;
        println!(
            "  no endpoints (both agents' maps had it in {:.0} ms)",
            took.as_secs_f64() * 1000.0
        );
        let outside = self.cluster.outside();
        let node_a = &self.cluster.nodes()[0];
        let node_b = &self.cluster.nodes()[1];
        let rows = [
            Row::new(
                self.pod(CLIENT),
                MY_APP_SERVICE.probe(MY_APP_SERVICE.addr_v4()),
            ),
            Row::new(
                self.pod(CLIENT),
                MY_APP_SERVICE.probe(MY_APP_SERVICE.addr_v6()),
            ),
            Row::new(
                self.pod(CLIENT),
                DNS_SERVICE.probe(DNS_SERVICE.addr_v4()).unconnected(),
            ),
            Row::new(
                Asker::Node(node_b),
                MY_APP_SERVICE.probe(MY_APP_SERVICE.addr_v4()),
            ),
            Row::new(
                Asker::Outside(outside),
                Probe::tcp(SocketAddr::new(
                    node_a.addr_v4.into(),
                    EXTERNAL_LOCAL_SERVICE.node_port.unwrap_or_default(),
                )),
            ),
        ];
        let tallies = self.traffic(&rows)?;
        self.print_table(&rows, &tallies);
        for (row, tally) in rows.iter().zip(&tallies) {
            let failures = tally.failures();
            let refused = failures.get("ECONNREFUSED").copied().unwrap_or(0);
            let all = tally.results.len();
            let stages: BTreeSet<String> = tally
                .results
                .iter()
                .filter_map(ProbeResult::failure)
                .map(|failure| format!("{:?}", failure.stage).to_lowercase())
                .collect();
            let what = if refused == all {
                format!(
                    "{}: all {all} refused (ECONNREFUSED at {})",
                    row.label(),
                    listed(&stages)
                )
            } else {
                format!(
                    "{}: {refused} of {all} refused, {} answered, failed: {failures:?}",
                    row.label(),
                    tally.answers().count()
                )
            };
            self.check(refused == all && all > 0, what);
        }
        Ok(())
    }

    /// After `--keep`: how to look around the cluster.
    fn print_how_to_enter(&self) {
        let cluster = self.cluster;
        let client = cluster.pod(CLIENT);
        let shell_in = |netns: &Path, cgroup: &Path| {
            format!(
                "nsenter --net={} -- sh -c 'echo $$ > {}/cgroup.procs && exec bash'",
                netns.display(),
                cgroup.display()
            )
        };
        println!(
            "\nslicelb demo: --keep: the cluster stays up, my-app back at 3 ready replicas: {}.",
            listed(self.with_nodes(REPLICAS))
        );
        println!(
            "  the manifests:      {} (edit it; both agents apply every change)",
            self.manifest_dir.join(MANIFEST_FILE).display()
        );
        println!(
            "  the client pod:     {}",
            shell_in(&client.netns.path(), &client.cgroup)
        );
        println!(
            "                      (then e.g. `{} probe --tcp {} --count 5`)",
            self.lab_binary.display(),
            MY_APP_SERVICE.addr_v4()
        );
        for node in cluster.nodes() {
            println!(
                "  a shell on {}:  {}",
                node.name,
                shell_in(&node.netns.path(), &node.cgroup)
            );
        }
        println!(
            "  outside:            nsenter --net={} bash",
            cluster.outside().netns.path().display()
        );
        println!(
            "  (a shell's cgroup below its node's is what puts it under socket-level balancing)"
        );
        for node in cluster.nodes() {
            println!(
                "  {}'s services: {} services --pin-path {}",
                node.name,
                self.slicelb.display(),
                node.pin_path.display()
            );
        }
        println!(
            "  Ctrl-C (or `kill {}`) ends the demo and removes the cluster.",
            std::process::id()
        );
    }
}

/// Ctrl-C or SIGTERM sets the flag; the demo then stops after the current step (or ends
/// `--keep`'s wait) and removes the cluster.
fn stop_on_signal() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        runtime.block_on(async {
            let mut terminate =
                tokio::signal::unix::signal(SignalKind::terminate()).expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        });
        set.store(true, Ordering::Relaxed);
    });
    flag
}

pub fn run(options: &DemoOptions) -> anyhow::Result<()> {
    super::require_root("slicelb demo");
    let interrupted = stop_on_signal();
    let slicelb = super::slicelb_binary()?;
    let lab_binary = super::lab_binary()?;
    let duration = options.duration.unwrap_or(DEFAULT_DURATION_SECS);
    let window = Duration::from_millis((duration * 1000 / WINDOWS).max(1000));

    let spec = ClusterSpec::new(&NODES);
    println!(
        "slicelb demo: building the cluster lab: {}, and a client outside",
        listed(
            spec.nodes
                .iter()
                .map(|node| format!("{} ({})", node.name, node.pods.join(", ")))
        )
    );
    let cluster = Cluster::new(LAB_NAME, &spec)?;
    let manifests = tempfile::Builder::new()
        .prefix("slicelb-demo-")
        .tempdir()
        .context("creating the manifest directory")?;
    let servers = cluster.start_pod_servers(&lab_binary)?;
    let mut demo = Demo {
        cluster: &cluster,
        slicelb,
        lab_binary,
        manifest_dir: manifests.path(),
        agents: Vec::new(),
        window,
        interrupted,
        failures: Vec::new(),
    };
    let result = demo.act_out();
    let interrupted = demo.interrupted();
    if options.keep && !interrupted && result.is_ok() {
        let ready: Vec<(&str, Conditions)> = REPLICAS
            .iter()
            .map(|name| (*name, Conditions::READY))
            .collect();
        demo.apply(&ready)?;
        demo.print_how_to_enter();
        // The cluster lives as long as this process: a lab whose process is gone is
        // removed by the next lab that starts.
        while !demo.interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let failures = std::mem::take(&mut demo.failures);
    drop(demo);
    drop(servers);
    drop(cluster);
    if interrupted {
        // The signal also ended the probes, agents and servers: no step's result counts.
        println!("slicelb demo: interrupted; cluster, agents and pins removed");
        return Ok(());
    }
    result?;
    verdict(&failures, "cluster, agents and pins removed")
}

/// Ok when every check held, else an error naming those that did not.
fn verdict(failures: &[String], state: &str) -> anyhow::Result<()> {
    if failures.is_empty() {
        println!("slicelb demo: every step behaved as announced; {state}");
        Ok(())
    } else {
        bail!(
            "{} check(s) did not hold: {}",
            failures.len(),
            failures.join("; ")
        )
    }
}
