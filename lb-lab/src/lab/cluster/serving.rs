//! A test cluster at work: every pod serving, one manifest directory, an agent per node,
//! and the operator's and the clients' commands. Shared by the multi-node lab tests, which
//! write their own Services and wait for their own first sync.
//!
//! Test support: a failure here panics with what failed, as an assertion would.

use std::{path::PathBuf, process::Command, process::Output};

use super::{Cluster, ClusterSpec};
use crate::lab::{
    ChildGuard, lab_binary,
    probe::{Probe, ProbeResult},
    slicelb_binary,
};

pub struct ServingCluster {
    pub cluster: Cluster,
    _servers: Vec<ChildGuard>,
    /// The `slicelb-lab` binary (probes and servers).
    pub lab: PathBuf,
    /// The `slicelb` binary (agents and operator commands).
    pub slicelb: PathBuf,
    pub manifests: tempfile::TempDir,
    /// By node name.
    agents: Vec<(String, ChildGuard)>,
    /// Added to every agent's command line.
    agent_args: Vec<String>,
}

impl ServingCluster {
    /// The cluster of `spec` with every pod serving and an empty manifest directory; no
    /// agent yet.
    pub fn new(test: &str, spec: &ClusterSpec, agent_args: &[&str]) -> Self {
        let cluster = Cluster::new(test, spec).expect("build the cluster");
        let lab = lab_binary().expect("the slicelb-lab binary");
        let slicelb = slicelb_binary().expect("the slicelb binary (SLICELB_BIN or built)");
        let servers = cluster.start_pod_servers(&lab).expect("pod servers");
        Self {
            cluster,
            _servers: servers,
            lab,
            slicelb,
            manifests: tempfile::tempdir().expect("a manifest directory"),
            agents: Vec::new(),
            agent_args: agent_args.iter().map(ToString::to_string).collect(),
        }
    }

    /// Starts an agent on `node`, reading the manifest directory.
    pub fn start_agent(&mut self, node: &str) {
        let mut command = self
            .cluster
            .agent_command(node, &self.slicelb, self.manifests.path());
        command.args(&self.agent_args);
        let agent = ChildGuard::spawn(command, &format!("agent on {node}"))
            .unwrap_or_else(|e| panic!("start the agent on {node}: {e}"));
        self.agents.push((node.to_string(), agent));
    }

    /// The agent running on `node`.
    pub fn agent(&mut self, node: &str) -> &mut ChildGuard {
        &mut self
            .agents
            .iter_mut()
            .find(|(name, _)| name == node)
            .unwrap_or_else(|| panic!("no agent on {node}"))
            .1
    }

    /// Kills `node`'s agent with SIGKILL, as a crash would, and waits for it to end; its
    /// pinned programs and maps stay.
    pub fn kill_agent(&mut self, node: &str) {
        let at = self
            .agents
            .iter()
            .position(|(name, _)| name == node)
            .unwrap_or_else(|| panic!("no agent on {node}"));
        let (_, mut agent) = self.agents.remove(at);
        agent
            .signal_and_wait(libc::SIGKILL)
            .unwrap_or_else(|e| panic!("kill the agent on {node}: {e}"));
    }

    /// A `slicelb-lab` command in pod `from`, or in the node's own cgroup when `from` is a
    /// node's name.
    pub fn command(&self, from: &str) -> Command {
        if self.cluster.nodes().iter().any(|node| node.name == from) {
            self.cluster.node(from).command(&self.lab)
        } else {
            self.cluster.pod(from).command(&self.lab)
        }
    }

    /// `probe`'s results, run by `command`.
    pub fn run(&self, command: Command, probe: &Probe) -> Vec<ProbeResult> {
        probe
            .run(command)
            .unwrap_or_else(|e| panic!("probe {probe:?}: {e}"))
    }

    /// `probe`'s results from the client outside the cluster.
    pub fn outside(&self, probe: &Probe) -> Vec<ProbeResult> {
        self.run(self.cluster.outside_command(&self.lab), probe)
    }

    /// `slicelb ARGS --pin-path <node's pins>` on `node`, which must succeed.
    pub fn slicelb(&self, node: &str, args: &[&str]) -> Output {
        let node = self.cluster.node(node);
        let pin = node.pin_path.display().to_string();
        let output = node
            .system_command(&self.slicelb)
            .args(args)
            .args(["--pin-path", &pin])
            .output()
            .expect("run slicelb");
        assert!(
            output.status.success(),
            "slicelb {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `slicelb stats -o json` on `node`.
    pub fn stats(&self, node: &str) -> serde_json::Value {
        let output = self.slicelb(node, &["stats", "-o", "json"]);
        serde_json::from_slice(&output.stdout).expect("stats as JSON")
    }

    /// A reason counter of `slicelb stats` on `node`.
    pub fn reason(&self, node: &str, name: &str) -> u64 {
        let stats = self.stats(node);
        stats["reasons"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no reason {name} in {stats}"))
    }
}
