//! Socket-level balancing on the multi-node lab: pods and the node's own processes reach
//! Services through the agent's cgroup hooks, in both families, over TCP and UDP, and see
//! the Service, not the pod. One agent per node, all reading one manifest directory.
//!
//! The cluster: node-a runs my-app-1, my-app-2 and a client pod; node-b runs my-app-3.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{SockConnection, SockReverseKey, SockReverseValue, capacity, map_names};
use slicelb_lab::lab::{
    cluster::{
        ClusterSpec,
        manifests::{
            ClusterEndpoint, ClusterService, Conditions, DNS_SERVICE, LOCAL_SERVICE,
            MY_APP_SERVICE, endpoint_slice, write_manifest, write_my_app, write_services,
        },
        serving::ServingCluster,
    },
    probe::{Probe, ProbeAnswer, ProbeResult, spray_args},
    require_root,
};

const REPLICAS: [&str; 3] = ["my-app-1", "my-app-2", "my-app-3"];
const CLIENT: &str = "client";
/// Attempts per check: a random choice among 3 endpoints misses one of them in 30 attempts
/// with probability 3·(2/3)^30 < 10^-5.
const ATTEMPTS: u32 = 30;
/// How long a change may take to reach the datapath before a test gives up (a bound on a
/// failure, not a measured time).
const PATIENCE: Duration = Duration::from_secs(15);

struct SocketLab {
    serving: ServingCluster,
}

impl std::ops::Deref for SocketLab {
    type Target = ServingCluster;
    fn deref(&self) -> &ServingCluster {
        &self.serving
    }
}

impl std::ops::DerefMut for SocketLab {
    fn deref_mut(&mut self) -> &mut ServingCluster {
        &mut self.serving
    }
}

impl SocketLab {
    /// The cluster with every pod serving, my-app's three replicas ready and an agent on
    /// each node that has synced (the client pod reaches the ClusterIP).
    fn new(test: &str) -> Self {
        require_root(test);
        let spec = ClusterSpec::new(&[
            ("node-a", &["my-app-1", "my-app-2", CLIENT]),
            ("node-b", &["my-app-3"]),
        ]);
        let mut this = Self {
            serving: ServingCluster::new(test, &spec, &[]),
        };
        this.write(&REPLICAS.map(|pod| (pod, Conditions::READY)));
        for node in ["node-a", "node-b"] {
            this.start_agent(node);
        }
        // node-a's client pod and node-b's own processes: both agents have synced.
        for (from, node) in [(CLIENT, "node-a"), ("node-b", "node-b")] {
            this.wait_until(&format!("the first sync on {node}"), || {
                this.answers(from, &Probe::tcp(MY_APP_SERVICE.addr_v4()))
                    .is_some()
            });
        }
        this
    }

    /// my-app's endpoints, each with its conditions; the others are not endpoints.
    fn write(&self, endpoints: &[(&str, Conditions)]) {
        let endpoints: Vec<ClusterEndpoint> = endpoints
            .iter()
            .map(|(pod, conditions)| ClusterEndpoint::new(self.cluster.pod(pod), *conditions))
            .collect();
        write_my_app(self.manifests.path(), &endpoints).expect("write the manifests");
    }

    /// `services`, each with every replica ready, instead of the usual three.
    fn write_services(&self, services: &[ClusterService]) {
        let endpoints: Vec<ClusterEndpoint> = REPLICAS
            .iter()
            .map(|pod| ClusterEndpoint::new(self.cluster.pod(pod), Conditions::READY))
            .collect();
        write_services(self.manifests.path(), services, &endpoints).expect("write manifests");
    }

    /// Entries of node's socket-level maps: (connected sockets, unconnected UDP socket and
    /// backend pairs), as `bpftool map dump` would count them.
    fn socket_entries(&self, node: &str) -> (usize, usize) {
        let maps = self.cluster.node(node).pin_path.join("maps");
        let open = |name: &str| {
            let data = MapData::from_pin(maps.join(name))
                .unwrap_or_else(|e| panic!("open the pinned {name}: {e}"));
            Map::LruHashMap(data)
        };
        let connected: HashMap<MapData, u64, SockConnection> =
            HashMap::try_from(open(map_names::SOCK_CONNECTED)).expect("SOCK_CONNECTED");
        let datagrams: HashMap<MapData, SockReverseKey, SockReverseValue> =
            HashMap::try_from(open(map_names::SOCK_REVERSE)).expect("SOCK_REVERSE");
        (connected.keys().count(), datagrams.keys().count())
    }

    fn probe(&self, from: &str, probe: &Probe) -> Vec<ProbeResult> {
        probe
            .run(self.command(from))
            .unwrap_or_else(|e| panic!("probe {probe:?} from {from}: {e}"))
    }

    /// Every attempt's answer; None if any attempt failed.
    fn answers(&self, from: &str, probe: &Probe) -> Option<Vec<ProbeAnswer>> {
        self.probe(from, probe)
            .into_iter()
            .map(|r| r.answer().cloned())
            .collect()
    }

    /// The answers of `ATTEMPTS` attempts, all of which must succeed.
    fn must_answer(&self, from: &str, probe: Probe) -> Vec<ProbeAnswer> {
        let probe = probe.count(ATTEMPTS);
        let results = self.probe(from, &probe);
        results
            .iter()
            .map(|r| {
                r.answer()
                    .cloned()
                    .unwrap_or_else(|| panic!("{probe:?} from {from}: {r:?} in {results:?}"))
            })
            .collect()
    }

    fn wait_until(&self, what: &str, done: impl FnMut() -> bool) {
        slicelb_lab::lab::wait_until(what, PATIENCE, done);
    }

    /// `slicelb stats -o json`'s socket-level counters on `node`.
    fn socket_counters(&self, node: &str) -> serde_json::Value {
        self.stats(node)["sockets"].clone()
    }
}

fn served_by(answers: &[ProbeAnswer]) -> BTreeSet<String> {
    answers.iter().map(|a| a.served_by.clone()).collect()
}

fn names(pods: &[&str]) -> BTreeSet<String> {
    pods.iter().map(ToString::to_string).collect()
}

/// What an application must see of a balanced connection: the Service as its peer, and the
/// server sees the client's own address and port (nothing rewritten on the wire).
fn assert_sees_the_service(answers: &[ProbeAnswer], service: SocketAddr, what: &str) {
    for answer in answers {
        assert_eq!(answer.peer, service, "{what}: the peer is the Service");
        assert_eq!(
            answer.client_seen.port(),
            answer.local.port(),
            "{what}: the server sees the client's port"
        );
        if !answer.local.ip().is_unspecified() {
            assert_eq!(
                answer.client_seen.ip(),
                answer.local.ip(),
                "{what}: the server sees the client's own address"
            );
        }
    }
}

#[test]
fn pod_connections_to_a_cluster_ip_spread_over_both_nodes_and_see_the_service() {
    let lab = SocketLab::new("sock_spread");
    let client = lab.cluster.pod(CLIENT);
    let before = lab.socket_counters("node-a");
    for (service, client_ip) in [
        (MY_APP_SERVICE.addr_v4(), IpAddr::from(client.addr_v4)),
        (MY_APP_SERVICE.addr_v6(), IpAddr::from(client.addr_v6)),
    ] {
        let answers = lab.must_answer(CLIENT, Probe::tcp(service));
        assert_eq!(
            served_by(&answers),
            names(&REPLICAS),
            "{service}: every replica, on both nodes"
        );
        assert_sees_the_service(&answers, service, &format!("pod -> {service}"));
        assert!(
            answers.iter().all(|a| a.client_seen.ip() == client_ip),
            "{service}: the server sees the client pod's address {client_ip}"
        );
    }
    // An operator sees it: the agent's counters on the client's node went up.
    let after = lab.socket_counters("node-a");
    let delta = |counter: &str| {
        after[counter].as_u64().unwrap_or(0) - before[counter].as_u64().unwrap_or(0)
    };
    assert!(
        delta("connect_translated") >= 2 * u64::from(ATTEMPTS),
        "connect_translated went from {} to {}",
        before["connect_translated"],
        after["connect_translated"]
    );
    assert!(delta("peer_shown_as_service") >= 2 * u64::from(ATTEMPTS));
    let services = lab.slicelb("node-a", &["services", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&services.stdout).expect("JSON");
    let my_app = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| row["frontend"] == MY_APP_SERVICE.addr_v4().to_string())
        .expect("my-app's IPv4 ClusterIP row");
    assert!(
        my_app["socket_translations"].as_u64().unwrap_or(0) >= u64::from(ATTEMPTS),
        "services counts socket-level connections: {my_app}"
    );
    // And `trace --socket` explains the choice: every replica, each with its share.
    let to = MY_APP_SERVICE.addr_v4().to_string();
    let trace = lab.slicelb("node-a", &["trace", "--socket", "--to", &to, "-o", "json"]);
    let trace: serde_json::Value = serde_json::from_slice(&trace.stdout).expect("JSON");
    assert_eq!(trace["decision"], "socket", "{trace}");
    let explanation = trace["explanation"].as_str().unwrap_or_default();
    for replica in REPLICAS {
        let addr = SocketAddr::new(lab.cluster.pod(replica).addr_v4.into(), 8080);
        assert!(
            explanation.contains(&format!("{addr} (active")),
            "trace names {replica} ({addr}): {explanation}"
        );
    }
}

#[test]
fn udp_replies_come_from_the_service_connected_and_unconnected() {
    let lab = SocketLab::new("sock_udp");
    for service in [DNS_SERVICE.addr_v4(), DNS_SERVICE.addr_v6()] {
        for probe in [Probe::udp(service), Probe::udp(service).unconnected()] {
            let what = format!("{probe:?}");
            let answers = lab.must_answer(CLIENT, probe);
            assert_eq!(served_by(&answers), names(&REPLICAS), "{what}");
            assert_sees_the_service(&answers, service, &what);
        }
    }
    let sockets = lab.socket_counters("node-a");
    assert!(sockets["sendmsg_translated"].as_u64().unwrap_or(0) >= 2 * u64::from(ATTEMPTS));
    assert!(sockets["reply_shown_as_service"].as_u64().unwrap_or(0) >= 2 * u64::from(ATTEMPTS));
}

#[test]
fn node_processes_are_balanced_like_pods() {
    let lab = SocketLab::new("sock_node");
    for probe in [
        Probe::tcp(MY_APP_SERVICE.addr_v4()),
        Probe::tcp(MY_APP_SERVICE.addr_v6()),
        Probe::udp(DNS_SERVICE.addr_v4()),
        Probe::udp(DNS_SERVICE.addr_v4()).unconnected(),
    ] {
        let what = format!("node-a process: {probe:?}");
        let target = probe.target;
        let answers = lab.must_answer("node-a", probe);
        assert_eq!(served_by(&answers), names(&REPLICAS), "{what}");
        assert_sees_the_service(&answers, target, &what);
    }
}

#[test]
fn internal_traffic_policy_local_keeps_to_the_node() {
    let lab = SocketLab::new("sock_itp_local");
    for service in [LOCAL_SERVICE.addr_v4(), LOCAL_SERVICE.addr_v6()] {
        let from_a = lab.must_answer(CLIENT, Probe::tcp(service));
        assert_eq!(
            served_by(&from_a),
            names(&["my-app-1", "my-app-2"]),
            "{service} from a pod on node-a: node-a's replicas only"
        );
        let from_b = lab.must_answer("node-b", Probe::tcp(service));
        assert_eq!(
            served_by(&from_b),
            names(&["my-app-3"]),
            "{service} from node-b: node-b's replica only"
        );
    }
}

#[test]
fn an_endpoint_that_leaves_gets_no_new_connections() {
    let lab = SocketLab::new("sock_leaves");
    lab.write(&[
        ("my-app-1", Conditions::READY),
        ("my-app-2", Conditions::READY),
        ("my-app-3", Conditions::TERMINATING),
    ]);
    let service = MY_APP_SERVICE.addr_v4();
    // ATTEMPTS answers without my-app-3: fewer could miss it by chance while it still
    // takes new connections (10 do with probability (2/3)^10, about 2%: seen in CI).
    lab.wait_until("my-app-3 stops taking new connections", || {
        lab.answers(CLIENT, &Probe::tcp(service).count(ATTEMPTS))
            .is_some_and(|answers| !served_by(&answers).contains("my-app-3"))
    });
    let answers = lab.must_answer(CLIENT, Probe::tcp(service));
    assert_eq!(served_by(&answers), names(&["my-app-1", "my-app-2"]));
    // Gone entirely: the same.
    lab.write(&[
        ("my-app-1", Conditions::READY),
        ("my-app-2", Conditions::READY),
    ]);
    let answers = lab.must_answer(CLIENT, Probe::tcp(service));
    assert_eq!(served_by(&answers), names(&["my-app-1", "my-app-2"]));
}

/// `my-app-sticky`: an IPv4 ClusterIP over my-app's replicas with `sessionAffinity:
/// ClientIP`, in a manifest file of its own.
const STICKY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 100, 40)), 80);

fn write_sticky(lab: &SocketLab, endpoints: &[(&str, Conditions)]) {
    let endpoints: Vec<ClusterEndpoint> = endpoints
        .iter()
        .map(|(pod, conditions)| ClusterEndpoint::new(lab.cluster.pod(pod), *conditions))
        .collect();
    let service = format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: my-app-sticky
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {ip}
  clusterIPs: ["{ip}"]
  sessionAffinity: ClientIP
  ports:
  - name: http
    protocol: TCP
    port: {port}
    targetPort: {target}
"#,
        ip = STICKY.ip(),
        port = STICKY.port(),
        target = MY_APP_SERVICE.target_port,
    );
    let slice = endpoint_slice(
        "my-app-sticky",
        "http",
        MY_APP_SERVICE.protocol,
        MY_APP_SERVICE.target_port,
        &endpoints,
        false,
    );
    let slice = serde_norway::to_string(&slice).expect("the slice as YAML");
    write_manifest(
        lab.manifests.path(),
        "sticky.yaml",
        &format!("{service}---\n{slice}"),
    )
    .expect("write the sticky Service");
}

/// Socket level: a pod's affinity (per network namespace) follows its replica only while
/// the Service may use it, through the same lookup as the packet path.
#[test]
fn pod_affinity_leaves_a_replica_that_turns_terminating_while_others_are_ready() {
    let lab = SocketLab::new("sock_affinity");
    write_sticky(&lab, &REPLICAS.map(|pod| (pod, Conditions::READY)));
    lab.wait_until("the sticky Service answers", || {
        lab.answers(CLIENT, &Probe::tcp(STICKY)).is_some()
    });
    let before = served_by(&lab.must_answer(CLIENT, Probe::tcp(STICKY)));
    assert_eq!(before.len(), 1, "one replica for the pod: {before:?}");
    let pinned = before.first().expect("a replica").clone();

    let conditions = REPLICAS.map(|pod| {
        let terminating = pod == pinned;
        (
            pod,
            if terminating {
                Conditions::TERMINATING
            } else {
                Conditions::READY
            },
        )
    });
    write_sticky(&lab, &conditions);
    // node-a's agent (the client pod's node) has it out of the sticky Service's table (its
    // backend stays: my-app-service, which shares it, still has it ready).
    let pinned_addr = lab.cluster.pod(&pinned).addr_v4.octets();
    let maps = lab.cluster.node("node-a").pin_path.clone();
    lab.wait_until(&format!("{pinned} out of the table on node-a"), || {
        use slicelb::dataplane::{MapWriter as _, aya_maps::AyaMaps};
        let Ok(state) = AyaMaps::from_pin(&maps, Default::default()).and_then(|m| m.read()) else {
            return false;
        };
        let Some((id, _)) = state.backends.iter().find(|(_, b)| {
            b.addr[..4] == pinned_addr && u16::from_be(b.port) == MY_APP_SERVICE.target_port
        }) else {
            return false;
        };
        state.frontends.iter().any(|(key, value)| {
            key.addr[..4] == [198, 18, 100, 40]
                && state
                    .selection
                    .get(&value.table_offset)
                    .is_some_and(|slots| !slots.members().contains(id))
        })
    });

    let after = served_by(&lab.must_answer(CLIENT, Probe::tcp(STICKY)));
    assert!(
        !after.contains(&pinned),
        "new connections still reach the terminating {pinned}: {after:?}"
    );
    assert_eq!(
        after.len(),
        1,
        "the pod is pinned again, to one replica: {after:?}"
    );
}

#[test]
fn a_pod_reaching_its_own_service_may_get_itself() {
    let lab = SocketLab::new("sock_hairpin");
    let answers = lab.must_answer("my-app-1", Probe::tcp(MY_APP_SERVICE.addr_v4()));
    assert_eq!(
        served_by(&answers),
        names(&REPLICAS),
        "itself among the others"
    );
    assert_sees_the_service(&answers, MY_APP_SERVICE.addr_v4(), "hairpin");
}

#[test]
fn no_endpoints_is_refused_at_once() {
    let lab = SocketLab::new("sock_refused");
    lab.write(&[]);
    let refused = |probe: &Probe| {
        lab.probe(CLIENT, probe).iter().all(|r| {
            r.failure()
                .is_some_and(|failure| failure.error == "ECONNREFUSED")
        })
    };
    lab.wait_until("the empty service to refuse", || {
        refused(&Probe::tcp(MY_APP_SERVICE.addr_v4()))
    });
    for probe in [
        Probe::tcp(MY_APP_SERVICE.addr_v4()),
        Probe::tcp(MY_APP_SERVICE.addr_v6()),
        Probe::udp(DNS_SERVICE.addr_v4()).unconnected(),
        Probe::udp(DNS_SERVICE.addr_v6()),
    ] {
        // ECONNREFUSED from connect()/sendmsg() itself: no packet left, nothing waited for
        // (a dropped connection would end in "timeout" instead).
        let results = lab.probe(CLIENT, &probe.clone().count(5));
        for result in &results {
            let failure = result
                .failure()
                .unwrap_or_else(|| panic!("{probe:?} must be refused: {result:?}"));
            assert_eq!(failure.error, "ECONNREFUSED", "{probe:?}: {failure:?}");
        }
    }
    let sockets = lab.socket_counters("node-a");
    assert!(sockets["refused_no_backend"].as_u64().unwrap_or(0) >= 20);
}

#[test]
fn a_process_outside_the_cgroup_root_is_untouched() {
    let lab = SocketLab::new("sock_outside");
    let service = MY_APP_SERVICE.addr_v4();
    // Below the root: balanced.
    lab.must_answer("node-a", Probe::tcp(service));
    // The same node's namespace, outside the cgroup root: nothing translates the address,
    // which is routed nowhere.
    let outside = Probe::tcp(service).count(3);
    let results = outside
        .run(lab.cluster.node("node-a").system_command(&lab.lab))
        .expect("probe outside the cgroup root");
    for result in &results {
        assert!(
            result.answer().is_none(),
            "a process outside the cgroup root reached a pod: {result:?}"
        );
    }
}

/// The set of cgroup links of slicelb's socket programs, by link id.
fn slicelb_cgroup_links() -> BTreeSet<u32> {
    let programs: std::collections::BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|link| link.link_type().ok() == Some(aya::programs::links::LinkType::Cgroup))
        .filter(|link| {
            programs
                .get(&link.program_id())
                .is_some_and(|name| name.starts_with("slicelb_"))
        })
        .map(|link| link.id())
        .collect()
}

#[test]
fn established_connections_survive_an_agent_sigkill_and_restart_which_adopts_the_links() {
    let mut lab = SocketLab::new("sock_restart");
    let service = MY_APP_SERVICE.addr_v4();
    let mut held = Probe::tcp(service)
        .hold(Duration::from_secs(4))
        .spawn(lab.command(CLIENT))
        .expect("a held connection");
    let first = held
        .next_result()
        .expect("a first answer")
        .expect("a line")
        .answer()
        .cloned()
        .expect("the held connection is answered");
    let links_before = slicelb_cgroup_links();

    lab.kill_agent("node-a");
    // No agent: the pinned programs keep balancing new connections.
    let answers = lab.must_answer(CLIENT, Probe::tcp(service));
    assert_eq!(served_by(&answers), names(&REPLICAS), "without an agent");
    lab.start_agent("node-a");
    lab.wait_until("the new agent's socket links replace the old", || {
        let now = slicelb_cgroup_links();
        now.len() == links_before.len() && now != links_before
    });
    let answers = lab.must_answer(CLIENT, Probe::tcp(service));
    assert_eq!(served_by(&answers), names(&REPLICAS), "after the restart");

    let rest = held.finish().expect("the held connection's lines");
    assert!(!rest.is_empty());
    for result in &rest {
        let answer = result
            .answer()
            .unwrap_or_else(|| panic!("the held connection broke: {result:?}"));
        assert_eq!(answer.served_by, first.served_by, "same backend throughout");
        assert_eq!(answer.peer, service);
    }
}

#[test]
fn detach_leaves_no_link_behind() {
    let mut lab = SocketLab::new("sock_detach");
    let node_b_links = {
        // Only node-a's agent goes: node-b's links stay and are not ours to check.
        let before = slicelb_cgroup_links();
        lab.agent("node-a")
            .signal_and_wait(libc::SIGTERM)
            .expect("stop the agent");
        lab.slicelb("node-a", &["detach"]);
        let after = slicelb_cgroup_links();
        assert_eq!(
            before.len() - after.len(),
            9,
            "detach removes node-a's nine socket links: before {before:?}, after {after:?}"
        );
        after
    };
    assert!(!lab.cluster.node("node-a").pin_path.join("links").exists());
    // Nothing translates the ClusterIP for node-a's pods any more.
    let results = lab.probe(CLIENT, &Probe::tcp(MY_APP_SERVICE.addr_v4()).count(3));
    assert!(
        results.iter().all(|r| r.answer().is_none()),
        "still balanced after detach: {results:?}"
    );
    assert_eq!(slicelb_cgroup_links(), node_b_links);
}

/// An address no node routes: a Service whose endpoint is there makes `connect()` fail at
/// once on the node (ENETUNREACH) after the socket program translated it.
fn unroutable_endpoint() -> ClusterEndpoint {
    ClusterEndpoint {
        pod: "unroutable".into(),
        node: "node-b".into(),
        addr_v4: Ipv4Addr::new(198, 18, 99, 1),
        addr_v6: Ipv6Addr::new(0x2001, 2, 0, 0x99, 0, 0, 0, 1),
        conditions: Conditions::READY,
    }
}

#[test]
fn a_connect_that_fails_leaves_no_socket_state_behind() {
    let lab = SocketLab::new("sock_failed_connect");
    write_my_app(lab.manifests.path(), &[unroutable_endpoint()]).expect("write manifests");
    let unreachable = |probe: &Probe| {
        lab.probe("node-a", probe)
            .iter()
            .all(|r| r.failure().is_some_and(|f| f.error == "ENETUNREACH"))
    };
    lab.wait_until("my-app to point at the unroutable endpoint", || {
        unreachable(&Probe::tcp(MY_APP_SERVICE.addr_v4()))
    });
    let before = lab.socket_counters("node-a");
    for service in [MY_APP_SERVICE.addr_v4(), MY_APP_SERVICE.addr_v6()] {
        let probe = Probe::tcp(service).count(ATTEMPTS);
        assert!(unreachable(&probe), "{service}: connect() fails at once");
    }
    let after = lab.socket_counters("node-a");
    let translated = after["connect_translated"].as_u64().unwrap_or(0)
        - before["connect_translated"].as_u64().unwrap_or(0);
    assert!(
        translated >= 2 * u64::from(ATTEMPTS),
        "the connects were translated before they failed ({translated})"
    );
    // Every probe has exited and closed its sockets: nothing of them may stay behind to
    // fill the map (and push live connections' entries out).
    assert_eq!(
        lab.socket_entries("node-a"),
        (0, 0),
        "socket-level entries left on node-a"
    );
}

#[test]
fn datagram_churn_never_hides_the_service_behind_a_held_connection() {
    let lab = SocketLab::new("sock_churn");
    let service = MY_APP_SERVICE.addr_v4();
    let mut held = Probe::tcp(service)
        .hold(Duration::from_secs(600))
        .spawn(lab.command(CLIENT))
        .expect("a held connection");
    assert_eq!(held_answer(&mut held, "before the churn").peer, service);
    // An idle application: nothing looks its socket up while the node's resolvers churn
    // through twice the datagram table's capacity.
    held.pause().expect("pause the held connection's process");
    let sockets = 2 * capacity::SOCK_REVERSE + 1000;
    let output = lab
        .command(CLIENT)
        .args(spray_args(DNS_SERVICE.addr_v4(), sockets))
        .output()
        .expect("run the spray");
    assert!(output.status.success(), "spray: {output:?}");
    held.resume().expect("resume the held connection's process");
    let answer = held_answer(&mut held, "after the churn");
    assert_eq!(
        answer.peer, service,
        "getpeername() of a connection held through datagram churn"
    );
    let (connected, datagrams) = lab.socket_entries("node-a");
    assert_eq!(connected, 1, "the held connection's entry");
    assert!(datagrams <= capacity::SOCK_REVERSE as usize);
    held.stop().expect("stop the held connection");
}

fn held_answer(held: &mut slicelb_lab::lab::probe::RunningProbe, what: &str) -> ProbeAnswer {
    held.next_result()
        .unwrap_or_else(|| panic!("{what}: the held probe ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .answer()
        .cloned()
        .unwrap_or_else(|| panic!("{what}: the held connection failed"))
}

/// A second Service with DNS's endpoints: one backend set behind two addresses.
const DNS_ALIAS: ClusterService = ClusterService {
    name: "dns-alias",
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 54),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x54),
    ..DNS_SERVICE
};

#[test]
fn one_datagram_socket_asking_two_services_gets_each_answer_from_its_service() {
    let lab = SocketLab::new("sock_two_services");
    lab.write_services(&[MY_APP_SERVICE, DNS_SERVICE, DNS_ALIAS]);
    let (dns, alias) = (DNS_SERVICE.addr_v4(), DNS_ALIAS.addr_v4());
    lab.wait_until("the alias to answer", || {
        lab.answers(CLIENT, &Probe::udp(alias)).is_some()
    });
    let before = lab.socket_counters("node-a");
    let probe = Probe::udp(dns).count(ATTEMPTS).also_to(alias);
    let results = lab.probe(CLIENT, &probe);
    assert_eq!(results.len(), 2 * ATTEMPTS as usize, "{results:?}");
    let mut shown_wrong = 0;
    for pair in results.chunks(2) {
        let answers: Vec<&ProbeAnswer> = pair
            .iter()
            .map(|r| r.answer().unwrap_or_else(|| panic!("unanswered: {pair:?}")))
            .collect();
        let shown: BTreeSet<SocketAddr> = answers.iter().map(|a| a.peer).collect();
        if shown != BTreeSet::from([dns, alias]) {
            // Both answers seemed to come from one Service: only when one pod served both
            // (the same source address on the wire).
            assert_eq!(
                answers[0].served_by, answers[1].served_by,
                "two backends, yet the answers were not told apart: {pair:?}"
            );
            shown_wrong += 1;
        }
    }
    // The program avoids sending one socket's datagrams for two Services to one backend
    // when it can, and counts each time it could not (an operator sees it).
    let after = lab.socket_counters("node-a");
    let ambiguous = after["reply_ambiguous"].as_u64().unwrap_or(0)
        - before["reply_ambiguous"].as_u64().unwrap_or(0);
    assert_eq!(
        shown_wrong, ambiguous,
        "every answer shown as from the wrong Service is counted as ambiguous"
    );
    assert!(
        shown_wrong < u64::from(ATTEMPTS) / 3,
        "{shown_wrong} of {ATTEMPTS} sockets got both answers from one Service"
    );
}
