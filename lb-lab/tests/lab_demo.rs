//! `slicelb-lab demo` (what `cargo xtask run` starts) as a user runs it, with its default
//! duration: it exits 0 (every self-check of every step held; a check that does not hold
//! makes it exit non-zero), each step showed what it announces, and nothing is left behind
//! (namespaces, pins, cgroups, agents).

use std::process::{Command, Stdio};

use slicelb_lab::lab::{
    NETNS_PREFIX,
    cgroup::{CGROUP_PREFIX, cgroup2_mount},
    cluster::PIN_PREFIX,
    require_root,
};

/// A line the demo prints for each step when that step behaved, one or more per step.
const EXPECTED: [&str; 10] = [
    // 1: a pod reaches all three replicas on both nodes, sees the Service, keeps its address.
    "ok: client → 198.18.100.10:80/TCP: my-app-1, my-app-2 and my-app-3 answered; getpeername() = 198.18.100.10:80; the pods saw 198.18.20.12 (own address)",
    "ok: client → [2001:2:0:100::10]:80/TCP: my-app-1, my-app-2 and my-app-3 answered; getpeername() = [2001:2:0:100::10]:80; the pods saw 2001:2:0:20::12 (own address)",
    // 2: a process of the other node, too.
    "ok: node-b → 198.18.100.10:80/TCP: my-app-1, my-app-2 and my-app-3 answered; getpeername() = 198.18.100.10:80",
    // 3: unconnected UDP: the replies come from the Service.
    "ok: client → 198.18.100.53:53/UDP: my-app-1, my-app-2 and my-app-3 answered; recvfrom() = 198.18.100.53:53",
    // 4: internalTrafficPolicy: Local keeps the client on node-a.
    "ok: client → 198.18.100.20:80/TCP: my-app-1 and my-app-2 answered; getpeername() = 198.18.100.20:80",
    // 5: from outside, each node's NodePort answers with its own replicas.
    "ok: outside → 198.18.10.11:30081/TCP: my-app-3 answered; getpeername() = 198.18.10.11:30081; the pods saw 198.18.10.2 (own address)",
    // 6: the rolling update.
    "my-app-4 ready",
    "ok: the held connection",
    // 7: scale-down: refused at once, from a pod and from outside.
    "ok: client → 198.18.100.10:80/TCP: all ",
    "ok: outside → 198.18.10.10:30081/TCP: all ",
];

#[test]
fn demo_runs_every_step_and_leaves_nothing_behind() {
    require_root("demo_runs_every_step_and_leaves_nothing_behind");
    let demo = Command::new(env!("CARGO_BIN_EXE_slicelb-lab"))
        .arg("demo")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start slicelb-lab demo");
    // The demo's namespaces, pins and cgroups carry its process id.
    let pid = demo.id();
    let output = demo.wait_with_output().expect("wait for the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for step in 1..=7 {
        let heading = format!("\n[{step}/7] ");
        assert!(stdout.contains(&heading), "step {step} missing:\n{stdout}");
    }
    for line in EXPECTED {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("NOT OK"), "a step misbehaved:\n{stdout}");
    assert!(
        stdout.contains("slicelb demo: every step behaved as announced"),
        "no final verdict:\n{stdout}"
    );

    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.file_name().to_string_lossy().to_string())
                .filter(|name| name.starts_with(&format!("{NETNS_PREFIX}-{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");
    let pins: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .expect("bpffs is mounted")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().to_string())
        .filter(|name| name.starts_with(&format!("{PIN_PREFIX}-{pid}-")))
        .collect();
    assert!(pins.is_empty(), "pins left: {pins:?}");
    let cgroup = cgroup2_mount()
        .expect("cgroup v2")
        .join(format!("{CGROUP_PREFIX}-{pid}-demo"));
    assert!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
    // The agents name their pins on the command line.
    let agents = Command::new("pgrep")
        .args(["-f", &format!("{PIN_PREFIX}-{pid}-")])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&agents.stdout).trim().is_empty(),
        "agents left: {}",
        String::from_utf8_lossy(&agents.stdout)
    );
}
