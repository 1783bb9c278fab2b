//! A lab with the real agent on the node, reading a manifest directory: what the agent,
//! operator-command and metrics tests share.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::{
    ChildGuard, Lab,
    demo::{DemoEndpoint, Frontend, agent_command, manifests},
    require_root,
    servers::{HttpConnection, http_get_once, udp_ask_once},
};

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

    /// Writes the demo's manifests with these endpoints (atomically, by rename).
    pub fn write(&self, endpoints: &[DemoEndpoint]) {
        let tmp = self.manifests.path().join(".my-app.tmp");
        std::fs::write(&tmp, manifests(endpoints)).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.path().join("my-app.yaml")).expect("rename");
    }

    pub fn start_agent(&self) -> ChildGuard {
        let command = agent_command(
            &self.lab,
            &self.slicelb,
            self.manifests.path(),
            &self.pin_path,
        );
        ChildGuard::spawn(command, "agent").expect("start agent")
    }

    /// The demo's services with backends 1..=3 ready and an agent that has synced them
    /// (every backend answers on the ClusterIP and the UDP service).
    pub fn with_synced_agent(test: &str) -> (Self, ChildGuard) {
        let lab = Self::new(test);
        lab.write(&(1..=3).map(DemoEndpoint::ready).collect::<Vec<_>>());
        let agent = lab.start_agent();
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
