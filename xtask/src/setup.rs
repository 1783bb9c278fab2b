//! What a fresh machine needs before anything builds or runs: toolchains, bpf-linker, Debian
//! packages, Python tools for the manifest checks, and bpffs. Idempotent; prints one line
//! per step.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{cmd, step, toolchain};

/// Debian packages and the command that shows each is there.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("util-linux", "nsenter"),
    ("procps", "sysctl"),
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("curl", "curl"),
    // lab_capabilities records the agent's system calls.
    ("strace", "strace"),
];

/// PyPI tool for the offline Kubernetes schema check of `deploy/`.
const PIP_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate==1.37.0", "kubernetes-validate")];

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Everything; returns the directory holding bpf-linker (to put first on PATH).
pub fn setup() -> anyhow::Result<PathBuf> {
    toolchain::ensure_toolchains()?;
    let linker_bin = toolchain::ensure_bpf_linker()?;
    ensure_apt_packages()?;
    ensure_pip_packages()?;
    ensure_bpffs()?;
    Ok(linker_bin)
}

fn ensure_apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, program)| !have(program))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        step("debian packages: present");
        return Ok(());
    }
    step(&format!(
        "debian packages: installing {}",
        missing.join(" ")
    ));
    cmd("apt-get", &["update", "-qq"]).status_ok()?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    cmd("apt-get", &args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status_ok()
}

fn ensure_pip_packages() -> anyhow::Result<()> {
    for (requirement, program) in PIP_PACKAGES {
        if have(program) {
            step(&format!("python tool {program}: present"));
            continue;
        }
        step(&format!("python tool {program}: installing {requirement}"));
        cmd("python3", &["-m", "pip", "install", "-q", requirement]).status_ok()?;
        // Under pyenv a new console script is reachable only once its shim exists.
        if have("pyenv") {
            let _ = cmd("pyenv", &["rehash"]).status();
        }
        if !have(program) {
            anyhow::bail!(
                "{requirement} installed, but `{program}` is not on PATH; add pip's script directory to PATH"
            );
        }
    }
    Ok(())
}

fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        step("bpffs: mounted at /sys/fs/bpf");
        return Ok(());
    }
    step("bpffs: mounting at /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    cmd("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]).status_ok()
}
