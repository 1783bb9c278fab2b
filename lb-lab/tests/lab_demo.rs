//! `slicelb demo` (what `cargo xtask run` starts) as a user runs it: it exits 0, every
//! frontend got answers from all three backends, every rolling-update step behaved as
//! announced, and nothing is left behind (namespaces, pins, processes).

use std::{path::Path, process::Command};

use slicelb_lab::lab::{NETNS_PREFIX, require_root};

#[test]
fn demo_runs_every_step_and_leaves_nothing_behind() {
    require_root("demo_runs_every_step_and_leaves_nothing_behind");
    let output = Command::new(env!("CARGO_BIN_EXE_slicelb-lab"))
        .args(["demo", "--duration", "20"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run slicelb demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for step in ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"] {
        assert!(stdout.contains(step), "step {step} missing:\n{stdout}");
    }
    assert!(!stdout.contains("NOT OK"), "a step misbehaved:\n{stdout}");
    for frontend in [
        "ClusterIP 198.18.100.10:80",
        "ClusterIP [2001:2:0:100::10]:80",
        "NodePort 198.18.0.1:30080",
        "LoadBalancer 198.18.200.10:80",
        "ClusterIP/UDP 198.18.100.11:53",
    ] {
        let steady =
            format!("ok: {frontend} answered from [\"backend-1\", \"backend-2\", \"backend-3\"]");
        assert!(
            stdout.contains(&steady),
            "{frontend} did not reach all three backends:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("every step behaved as announced"),
        "no final verdict:\n{stdout}"
    );

    // Nothing left: the demo's namespaces carry its pid, its pins are under slicelb-demo-<pid>.
    let pid = stdout
        .lines()
        .chain(stderr.lines())
        .find_map(|l| l.split("/sys/fs/bpf/slicelb-demo-").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .expect("the demo names its pin path");
    assert!(
        !Path::new(&format!("/sys/fs/bpf/slicelb-demo-{pid}")).exists(),
        "pins left behind"
    );
    let leftover_netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&format!("{NETNS_PREFIX}-{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftover_netns.is_empty(),
        "namespaces left: {leftover_netns:?}"
    );
    let processes = Command::new("pgrep")
        .args(["-f", &format!("slicelb-demo-{pid}")])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&processes.stdout).trim().is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&processes.stdout)
    );
}
