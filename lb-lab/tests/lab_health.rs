//! kube-proxy's health answers on the multi-node lab, as a cloud load balancer outside the
//! cluster gets them (curl from the external client): each node's `healthCheckNodePort` of
//! an `externalTrafficPolicy: Local` LoadBalancer answers 200 with the node's ready replicas
//! or 503 without, follows endpoint changes and closes with the Service; `/healthz` on port
//! 10256 answers kube-proxy's body, 503 while the node is tainted for deletion or while
//! syncs are stale (a manifest edit the agent cannot apply, with a 1 s `--healthz-timeout`).
//!
//! The cluster: node-a runs my-app-1 and my-app-2, node-b runs my-app-3.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use slicelb_lab::lab::{
    ChildGuard,
    cluster::{
        Cluster, ClusterSpec,
        manifests::{
            ClusterEndpoint, Conditions, LOCAL_LOAD_BALANCER_SERVICE, node_manifest,
            write_manifest, write_services,
        },
    },
    require_root, slicelb_binary, wait_until,
};

const NODES: [&str; 2] = ["node-a", "node-b"];
/// kube-proxy's default `--healthz-bind-address` port, which the agents keep.
const HEALTHZ_PORT: u16 = 10256;
/// The agents' `--metrics-addr` default: loopback of each node.
const METRICS: &str = "127.0.0.1:9400";
/// A bound on a failure (a change that never shows), not a measured time.
const PATIENCE: Duration = Duration::from_secs(15);

/// What curl got.
#[derive(Debug)]
enum Answer {
    Http {
        status: u16,
        /// `name: value` lines, names lower-cased.
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Nothing listens there (curl's exit status 7).
    Refused,
}

impl Answer {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Refused => None,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        match self {
            Self::Http { headers, .. } => headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str()),
            Self::Refused => None,
        }
    }

    fn json(&self) -> Value {
        match self {
            Self::Http { body, .. } => {
                serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
            }
            Self::Refused => panic!("refused: no body"),
        }
    }
}

/// `curl` as `command`: one GET of `url`, headers and body.
fn curl(mut command: Command, url: &str) -> Answer {
    let output = command
        .args(["--silent", "--show-error", "--include", "--globoff"])
        .args(["--noproxy", "*", "--max-time", "5", url])
        .output()
        .expect("run curl");
    if output.status.code() == Some(7) {
        return Answer::Refused;
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {url}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("curl {url}: no end of headers in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("curl {url}: no status line in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer::Http {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn url(addr: IpAddr, port: u16, path: &str) -> String {
    format!("http://{}{path}", SocketAddr::new(addr, port))
}

struct HealthLab {
    cluster: Cluster,
    slicelb: PathBuf,
    manifests: tempfile::TempDir,
    _agents: Vec<ChildGuard>,
}

impl HealthLab {
    fn new(test: &str) -> Self {
        require_root(test);
        let cluster = Cluster::new(test, &ClusterSpec::my_app()).expect("build the cluster");
        let slicelb = slicelb_binary().expect("the slicelb binary");
        let manifests = tempfile::tempdir().expect("manifest dir");
        let mut this = Self {
            cluster,
            slicelb,
            manifests,
            _agents: Vec::new(),
        };
        this.write(&[
            ("my-app-1", Conditions::READY),
            ("my-app-2", Conditions::READY),
            ("my-app-3", Conditions::TERMINATING),
        ]);
        for node in NODES {
            let mut command =
                this.cluster
                    .agent_command(node, &this.slicelb, this.manifests.path());
            // Short, so that a stale sync shows within the test.
            command.args(["--healthz-timeout", "1"]);
            let agent = ChildGuard::spawn(command, &format!("agent on {node}")).expect("agent");
            this._agents.push(agent);
        }
        this
    }

    /// my-app-lb with my-app's pods as endpoints, each with its conditions.
    fn write(&self, endpoints: &[(&str, Conditions)]) {
        let endpoints: Vec<ClusterEndpoint> = endpoints
            .iter()
            .map(|(pod, conditions)| ClusterEndpoint::new(self.cluster.pod(pod), *conditions))
            .collect();
        write_services(
            self.manifests.path(),
            &[LOCAL_LOAD_BALANCER_SERVICE],
            &endpoints,
        )
        .expect("write the manifests");
    }

    /// Both addresses of `node`.
    fn addresses(&self, node: &str) -> [IpAddr; 2] {
        let node = self.cluster.node(node);
        [node.addr_v4.into(), node.addr_v6.into()]
    }

    /// GET from the client outside the cluster.
    fn outside_get(&self, addr: IpAddr, port: u16, path: &str) -> Answer {
        curl(self.cluster.outside_command("curl"), &url(addr, port, path))
    }

    /// `node`'s `/readyz` on its metrics port (loopback of the node).
    fn readyz(&self, node: &str) -> Answer {
        let command = self.cluster.node(node).system_command("curl");
        curl(command, &format!("http://{METRICS}/readyz"))
    }

    fn wait_until(&self, what: &str, done: impl FnMut() -> bool) {
        wait_until(what, PATIENCE, done);
    }

    fn health_check(&self, addr: IpAddr) -> Answer {
        let port = LOCAL_LOAD_BALANCER_SERVICE
            .health_check_node_port
            .expect("my-app-lb has a health check port");
        self.outside_get(addr, port, "/")
    }

    /// Asks `ask` until `expected` holds for its answer, which must carry kube-proxy's
    /// JSON headers; returns that answer.
    fn wait_for_answer(
        &self,
        what: &str,
        ask: impl Fn() -> Answer,
        expected: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let mut last = None;
        self.wait_until(what, || {
            let answer = ask();
            let matched = expected(&answer);
            last = Some(answer);
            matched
        });
        let answer = last.expect("asked at least once");
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        answer
    }

    /// Waits until every address of `node` answers the health check with `status` and
    /// kube-proxy's body for `endpoints`, then checks the endpoint weight header.
    fn expect_health_check(
        &self,
        step: &str,
        node: &str,
        status: u16,
        endpoints: usize,
        proxy_healthy: bool,
    ) {
        let body = json!({
            "service": {"namespace": "default", "name": "my-app-lb"},
            "localEndpoints": endpoints,
            "serviceProxyHealthy": proxy_healthy,
        });
        for addr in self.addresses(node) {
            let what =
                format!("{step}: {node}'s health check on {addr} answering {status} with {body}");
            let answer = self.wait_for_answer(
                &what,
                || self.health_check(addr),
                |answer| answer.status() == Some(status) && answer.json() == body,
            );
            assert_eq!(
                answer.header("x-load-balancing-endpoint-weight"),
                Some(endpoints.to_string().as_str()),
                "{what}"
            );
        }
    }

    /// Waits until `path` on 10256 of both of `node`'s addresses answers `status`; returns
    /// the last body.
    fn expect_healthz(&self, step: &str, node: &str, path: &str, status: u16) -> Value {
        let mut body = Value::Null;
        for addr in self.addresses(node) {
            let what = format!("{step}: {path} on {node} ({addr}) answering {status}");
            let answer = self.wait_for_answer(
                &what,
                || self.outside_get(addr, HEALTHZ_PORT, path),
                |answer| answer.status() == Some(status),
            );
            body = answer.json();
        }
        body
    }
}

#[test]
fn health_check_node_ports_and_healthz_answer_a_load_balancer_as_kube_proxy_does() {
    let lab = HealthLab::new("health");

    // node-a has two ready replicas; node-b's only one is terminating, which does not count.
    lab.expect_health_check("first sync", "node-a", 200, 2, true);
    lab.expect_health_check("first sync", "node-b", 503, 0, true);

    lab.write(&[
        ("my-app-1", Conditions::TERMINATING),
        ("my-app-2", Conditions::READY),
        ("my-app-3", Conditions::READY),
    ]);
    lab.expect_health_check(
        "my-app-1 terminating, my-app-3 ready",
        "node-a",
        200,
        1,
        true,
    );
    lab.expect_health_check(
        "my-app-1 terminating, my-app-3 ready",
        "node-b",
        200,
        1,
        true,
    );

    // kube-proxy's /healthz and /livez: fresh syncs, an eligible node.
    for node in NODES {
        let body = lab.expect_healthz("synced", node, "/healthz", 200);
        assert_eq!(body["nodeEligible"], json!(true), "{node}: {body}");
        assert_eq!(body["healthy"], json!(true), "{node}: {body}");
        assert_eq!(
            body["lastUpdated"], body["currentTime"],
            "{node}: a 200 reports now as lastUpdated, as kube-proxy: {body}"
        );
        for family in ["IPv4", "IPv6"] {
            assert_eq!(
                body["status"][family]["healthy"],
                json!(true),
                "{node}: {body}"
            );
        }
        let body = lab.expect_healthz("synced", node, "/livez", 200);
        assert!(body.get("nodeEligible").is_none(), "{node}: {body}");
        assert_eq!(lab.readyz(node).status(), Some(200), "{node}: /readyz");
    }

    // The cluster autoscaler taints node-a for deletion: load balancers are told to leave
    // it (/healthz 503), the kubelet is not (/livez 200); node-b is unaffected.
    let dir = lab.manifests.path();
    write_manifest(dir, "node-a.yaml", &node_manifest("node-a", true)).expect("write");
    let body = lab.expect_healthz("node-a tainted", "node-a", "/healthz", 503);
    assert_eq!(body["nodeEligible"], json!(false), "{body}");
    assert_eq!(body["healthy"], json!(true), "syncs are fine: {body}");
    lab.expect_healthz("node-a tainted", "node-a", "/livez", 200);
    lab.expect_healthz("node-a tainted", "node-b", "/healthz", 200);
    lab.expect_health_check("node-a tainted", "node-a", 200, 1, true);
    write_manifest(dir, "node-a.yaml", &node_manifest("node-a", false)).expect("write");
    lab.expect_healthz("taint removed", "node-a", "/healthz", 200);

    // A manifest edit the agents cannot apply waits past their 1 s timeout: syncs are
    // stale. Every health answer says so, and the agents are not ready.
    write_manifest(
        dir,
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {}\n",
    )
    .expect("write");
    for node in NODES {
        let body = lab.expect_healthz("stale", node, "/healthz", 503);
        assert_eq!(body["healthy"], json!(false), "{node}: {body}");
        assert_ne!(
            body["lastUpdated"], body["currentTime"],
            "{node}: a 503 reports the last sync: {body}"
        );
        lab.expect_healthz("stale", node, "/livez", 503);
        lab.wait_until(&format!("{node}'s /readyz to turn 503"), || {
            lab.readyz(node).status() == Some(503)
        });
        lab.expect_health_check("stale", node, 503, 1, false);
    }
    std::fs::remove_file(dir.join("broken.yaml")).expect("remove the broken manifest");
    for node in NODES {
        lab.expect_healthz("fixed", node, "/healthz", 200);
        lab.expect_healthz("fixed", node, "/livez", 200);
        lab.wait_until(&format!("{node}'s /readyz to turn 200"), || {
            lab.readyz(node).status() == Some(200)
        });
        lab.expect_health_check("fixed", node, 200, 1, true);
    }

    // The Service is deleted: its health check port closes on every node address.
    write_services(dir, &[], &[]).expect("write the manifests");
    for node in NODES {
        for addr in lab.addresses(node) {
            lab.wait_until(&format!("{node}'s health check on {addr} to close"), || {
                matches!(lab.health_check(addr), Answer::Refused)
            });
        }
        lab.expect_healthz("service deleted", node, "/healthz", 200);
    }
}
