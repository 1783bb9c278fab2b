//! Root tests of the multi-node lab without any agent: pods, nodes and the external client
//! reach what the addressing plan says and nothing else, processes land in their pod's or
//! node's cgroup and namespace, and everything the cluster made is gone after drop, also
//! after a panic.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::{fs::MetadataExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use slicelb_lab::lab::{
    ChildGuard,
    cgroup::{cgroup_of, cgroup2_mount},
    cluster::{Cluster, ClusterSpec, POD_TCP_PORT, manifests::MY_APP_SERVICE, wait_listening},
    lab_binary,
    probe::{Probe, ProbeResult, ProbeStage},
    require_root, slicelb_binary,
};

fn my_app_cluster(test: &str) -> Cluster {
    require_root(test);
    Cluster::new(test, &ClusterSpec::my_app()).expect("build the cluster")
}

fn lab() -> PathBuf {
    lab_binary().expect("the slicelb-lab binary")
}

/// The my-app cluster with every pod's server up, and the `slicelb-lab` binary.
fn my_app_cluster_serving(test: &str) -> (Cluster, Vec<ChildGuard>, PathBuf) {
    let cluster = my_app_cluster(test);
    let lab = lab();
    let servers = cluster
        .start_pod_servers(&lab)
        .expect("start the pod servers");
    (cluster, servers, lab)
}

/// Runs `probe` as `command` and returns its single result.
fn probe_once(probe: &Probe, command: Command, from: &str) -> ProbeResult {
    let results = probe
        .run(command)
        .unwrap_or_else(|e| panic!("probe {probe:?} from {from}: {e}"));
    assert_eq!(
        results.len(),
        1,
        "one line per attempt from {from}: {results:?}"
    );
    results.into_iter().next().expect("one result")
}

/// The answer of a probe that must succeed, checked against what routing without NAT means:
/// the peer is the address asked, the server sees the client's own address and port.
fn assert_answered_without_nat(
    result: &ProbeResult,
    probe: &Probe,
    from: &str,
    served_by: &str,
    client_ip: IpAddr,
) {
    let answer = result
        .answer()
        .unwrap_or_else(|| panic!("{probe:?} from {from}: no answer: {result:?}"));
    assert_eq!(answer.served_by, served_by, "{probe:?} from {from}");
    assert_eq!(
        answer.peer, probe.target,
        "{probe:?} from {from}: the peer is the address asked"
    );
    assert_eq!(
        answer.client_seen.ip(),
        client_ip,
        "{probe:?} from {from}: the server sees the client's own address"
    );
    assert_eq!(
        answer.client_seen.port(),
        answer.local.port(),
        "{probe:?} from {from}: the server sees the client's port"
    );
    // An unconnected UDP socket's own address is the wildcard it is bound to.
    if !answer.local.ip().is_unspecified() {
        assert_eq!(
            answer.local.ip(),
            client_ip,
            "{probe:?} from {from}: getsockname"
        );
    }
}

#[test]
fn pods_reach_pods_on_both_nodes_by_pod_ip_over_tcp_and_udp_in_both_families() {
    let (cluster, _servers, lab) = my_app_cluster_serving("pods_reach_pods");
    let client = cluster.pod("my-app-1");
    for server_name in ["my-app-3", "my-app-2"] {
        let server = cluster.pod(server_name);
        let cases = [
            (
                Probe::tcp(server.tcp_addr_v4()),
                IpAddr::from(client.addr_v4),
            ),
            (Probe::tcp(server.tcp_addr_v6()), client.addr_v6.into()),
            (Probe::udp(server.udp_addr_v4()), client.addr_v4.into()),
            (Probe::udp(server.udp_addr_v6()), client.addr_v6.into()),
            (
                Probe::udp(server.udp_addr_v4()).unconnected(),
                client.addr_v4.into(),
            ),
            (
                Probe::udp(server.udp_addr_v6()).unconnected(),
                client.addr_v6.into(),
            ),
        ];
        for (probe, client_ip) in cases {
            let result = probe_once(&probe, client.command(&lab), "my-app-1");
            assert_answered_without_nat(&result, &probe, "my-app-1", server_name, client_ip);
        }
    }
}

#[test]
fn a_held_connection_asks_on_one_connection_until_the_hold_ends() {
    let (cluster, _servers, lab) = my_app_cluster_serving("held_connection");
    let client = cluster.pod("my-app-1");
    let probe = Probe::tcp(cluster.pod("my-app-3").tcp_addr_v6()).hold(Duration::from_secs(1));
    let mut running = probe.spawn(client.command(&lab)).expect("start the probe");
    let first = running
        .next_result()
        .expect("a first line")
        .expect("a probe line");
    let rest = running.finish().expect("the probe ends by itself");
    assert!(
        !rest.is_empty(),
        "a request every 100 ms for 1 s: {first:?} {rest:?}"
    );
    let first = first
        .answer()
        .expect("the first request is answered")
        .clone();
    for result in &rest {
        let answer = result
            .answer()
            .unwrap_or_else(|| panic!("a held request failed: {result:?}"));
        assert_eq!(answer.served_by, "my-app-3");
        assert_eq!(
            answer.local, first.local,
            "every request on the one held connection"
        );
    }
}

#[test]
fn a_node_process_reaches_a_pod_on_the_other_node() {
    let (cluster, _servers, lab) = my_app_cluster_serving("node_reaches_pod");
    let node_a = cluster.node("node-a");
    let pod = cluster.pod("my-app-3");
    for (probe, client_ip) in [
        (Probe::tcp(pod.tcp_addr_v4()), IpAddr::from(node_a.addr_v4)),
        (Probe::tcp(pod.tcp_addr_v6()), node_a.addr_v6.into()),
        (Probe::udp(pod.udp_addr_v4()), node_a.addr_v4.into()),
    ] {
        let result = probe_once(&probe, node_a.command(&lab), "node-a");
        assert_answered_without_nat(&result, &probe, "node-a", "my-app-3", client_ip);
    }
}

#[test]
fn the_outside_client_reaches_node_addresses_and_no_pod() {
    let cluster = my_app_cluster("outside_reaches_nodes");
    let lab = lab();
    let node_b = cluster.node("node-b");
    let mut server = node_b.system_command(&lab);
    server
        .args(["pod-server", "--name", "node-b-host"])
        .stdout(Stdio::null());
    let _server = ChildGuard::spawn(server, "node-b-host").expect("start a server on node-b");
    let listening = SocketAddr::new(node_b.addr_v4.into(), POD_TCP_PORT);
    wait_listening(&node_b.netns, listening, "node-b's server").expect("server listens");

    let outside = cluster.outside();
    for (target, client_ip) in [
        (IpAddr::from(node_b.addr_v4), IpAddr::from(outside.addr_v4)),
        (node_b.addr_v6.into(), outside.addr_v6.into()),
    ] {
        let probe = Probe::tcp(SocketAddr::new(target, POD_TCP_PORT));
        let result = probe_once(&probe, cluster.outside_command(&lab), "outside");
        assert_answered_without_nat(&result, &probe, "outside", "node-b-host", client_ip);
    }
    let pod = cluster.pod("my-app-3");
    for target in [pod.tcp_addr_v4(), pod.tcp_addr_v6()] {
        let result = probe_once(
            &Probe::tcp(target),
            cluster.outside_command(&lab),
            "outside",
        );
        let failure = result
            .failure()
            .unwrap_or_else(|| panic!("outside reached pod address {target}: {result:?}"));
        assert_eq!(
            (failure.error.as_str(), failure.stage),
            ("ENETUNREACH", ProbeStage::Connect),
            "outside has no route to pod address {target}"
        );
    }
}

#[test]
fn service_addresses_are_routed_nowhere_without_an_agent() {
    let cluster = my_app_cluster("services_unrouted");
    let lab = lab();
    for target in [MY_APP_SERVICE.addr_v4(), MY_APP_SERVICE.addr_v6()] {
        let probe = Probe::tcp(target).timeout(Duration::from_millis(300));
        // The node itself has no route.
        let result = probe_once(&probe, cluster.node("node-a").command(&lab), "node-a");
        assert_eq!(
            result.failure().map(|f| f.error.as_str()),
            Some("ENETUNREACH"),
            "node-a to {target} with no agent: {result:?}"
        );
        // A pod sends it to its node, which answers "no route" (ICMP). Whether connect()
        // fails with that at once or only times out depends on when the ICMP arrives.
        let result = probe_once(&probe, cluster.pod("my-app-1").command(&lab), "my-app-1");
        let error = result.failure().map(|f| f.error.as_str());
        assert!(
            matches!(error, Some("ENETUNREACH" | "timeout")),
            "my-app-1 to {target} with no agent: {result:?}"
        );
    }
}

/// Where a spawned process runs: its cgroup (below the v2 mount) and its network namespace
/// (device and inode of its nsfs file).
fn placement(pid: u32) -> (PathBuf, (u64, u64)) {
    let cgroup = cgroup_of(pid).unwrap_or_else(|e| panic!("cgroup of {pid}: {e}"));
    let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("netns of {pid}: {e}"));
    (cgroup, (netns.dev(), netns.ino()))
}

fn expected_placement(cgroup: &Path, netns: &Path) -> (PathBuf, (u64, u64)) {
    let mount = cgroup2_mount().expect("cgroup v2 mount");
    let relative = Path::new("/").join(cgroup.strip_prefix(&mount).expect("below the mount"));
    let netns = std::fs::metadata(netns).expect("netns file");
    (relative, (netns.dev(), netns.ino()))
}

fn sleeper(mut command: Command) -> Child {
    command
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

#[test]
fn processes_run_in_their_cgroup_and_namespace_and_see_the_bpf_filesystem() {
    let cluster = my_app_cluster("process_placement");
    let pod = cluster.pod("my-app-3");
    let node = cluster.node("node-b");
    let outside = cluster.outside();
    let system = node.system_cgroup.clone();
    let cases = [
        (
            "pod my-app-3",
            pod.command("sleep"),
            expected_placement(&pod.cgroup, &pod.netns.path()),
        ),
        (
            "node-b",
            node.command("sleep"),
            expected_placement(&node.cgroup, &node.netns.path()),
        ),
        (
            "node-b system",
            node.system_command("sleep"),
            expected_placement(&system, &node.netns.path()),
        ),
        (
            "outside",
            cluster.outside_command("sleep"),
            expected_placement(&outside.cgroup, &outside.netns.path()),
        ),
    ];
    for (what, command, expected) in cases {
        let mut child = sleeper(command);
        let seen = placement(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            seen, expected,
            "{what}: (cgroup, netns) of a spawned process"
        );
    }
    assert!(
        pod.cgroup.starts_with(&node.cgroup),
        "a pod's cgroup is below its node's, where the node's socket hooks apply"
    );
    assert!(
        !system.starts_with(&node.cgroup),
        "the agents' cgroup is not below a node"
    );

    // The agent runs in the node's namespace with /sys/fs/bpf visible (setns, not
    // `ip netns exec`, which remounts /sys).
    let output = node
        .system_command("stat")
        .args(["-f", "-c", "%T", "/sys/fs/bpf"])
        .output()
        .expect("run stat");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "bpf_fs",
        "/sys/fs/bpf in the node's namespace: {output:?}"
    );
    let slicelb = slicelb_binary().expect("the slicelb binary (SLICELB_BIN or built)");
    let help = node
        .system_command(&slicelb)
        .arg("--help")
        .output()
        .expect("run slicelb --help on the node");
    assert!(
        help.status.success(),
        "slicelb --help on the node: {help:?}"
    );

    let agent = cluster.agent_command("node-b", &slicelb, Path::new("/tmp/manifests"));
    let args: Vec<String> = agent
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|at| args.get(at + 1))
            .unwrap_or_else(|| panic!("{flag} in {args:?}"))
            .clone()
    };
    assert_eq!(value_of("--iface"), node.uplink);
    assert_eq!(value_of("--node-name"), "node-b");
    assert_eq!(value_of("--cgroup-root"), node.cgroup.display().to_string());
    assert_eq!(value_of("--pin-path"), node.pin_path.display().to_string());
    assert_eq!(
        value_of("--nodeport-addresses"),
        format!("{}/32,{}/128", node.addr_v4, node.addr_v6)
    );
}

/// What a cluster leaves to check after it is gone.
struct Leftovers {
    namespaces: Vec<PathBuf>,
    cgroup_root: PathBuf,
    pin_paths: Vec<PathBuf>,
    /// Processes started in a pod, on a node and in the system cgroup, not reaped.
    children: Vec<(String, Child)>,
}

/// Starts a sleeper in a pod, on a node and in the system cgroup, and makes a pin directory
/// per node, as an agent would.
fn populate(cluster: &Cluster) -> Leftovers {
    let mut namespaces = vec![cluster.segment().path(), cluster.outside().netns.path()];
    namespaces.extend(cluster.nodes().iter().map(|node| node.netns.path()));
    namespaces.extend(cluster.pods().iter().map(|pod| pod.netns.path()));
    for node in cluster.nodes() {
        std::fs::create_dir(&node.pin_path).expect("create a pin directory");
    }
    let node = cluster.node("node-a");
    Leftovers {
        namespaces,
        cgroup_root: cluster.cgroup_root().to_path_buf(),
        pin_paths: cluster.nodes().iter().map(|n| n.pin_path.clone()).collect(),
        children: vec![
            (
                "pod".into(),
                sleeper(cluster.pod("my-app-2").command("sleep")),
            ),
            ("node".into(), sleeper(node.command("sleep"))),
            ("system".into(), sleeper(node.system_command("sleep"))),
        ],
    }
}

fn assert_nothing_left(leftovers: Leftovers, when: &str) {
    for (what, mut child) in leftovers.children {
        let status = child
            .try_wait()
            .expect("wait")
            .unwrap_or_else(|| panic!("{when}: the {what} process still runs"));
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{when}: the {what} process was killed"
        );
    }
    for path in leftovers
        .namespaces
        .iter()
        .chain(&leftovers.pin_paths)
        .chain([&leftovers.cgroup_root])
    {
        assert!(!path.exists(), "{when}: {} is left", path.display());
    }
}

#[test]
fn dropping_the_cluster_kills_its_processes_and_removes_everything() {
    let cluster = my_app_cluster("cluster_drop");
    let leftovers = populate(&cluster);
    for path in leftovers.namespaces.iter().chain([&leftovers.cgroup_root]) {
        assert!(
            path.exists(),
            "{} exists while the cluster is up",
            path.display()
        );
    }
    drop(cluster);
    assert_nothing_left(leftovers, "after drop");
}

#[test]
fn a_cluster_dropped_while_a_panic_unwinds_leaves_nothing() {
    let result = std::panic::catch_unwind(|| {
        let cluster = my_app_cluster("cluster_panic");
        std::panic::panic_any(populate(&cluster));
    });
    let leftovers = *result
        .expect_err("the closure panics")
        .downcast::<Leftovers>()
        .unwrap_or_else(|_| panic!("the panic payload is the leftovers"));
    assert_nothing_left(leftovers, "after unwinding");
}
