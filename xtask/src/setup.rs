//! What a fresh machine needs before anything builds or runs: toolchains, bpf-linker, Debian
//! packages, the manifest validator (in a Python virtual environment), and bpffs. Idempotent; prints one line
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

/// The offline Kubernetes schema check of `deploy/` (PyPI only: it bundles the schemas, which
/// no Debian package or Rust crate does), installed into [`toolchain::venv_dir`].
const VALIDATOR: (&str, &str) = ("kubernetes-validate==1.37.0", "kubernetes-validate");

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
    ensure_validator()?;
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
    install_apt_packages(&missing)
}

fn install_apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    cmd("apt-get", &["update", "-qq"]).status_ok()?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(packages);
    cmd("apt-get", &args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status_ok()
}

/// The validator in a virtual environment of its own, never in the system Python.
fn ensure_validator() -> anyhow::Result<()> {
    let (requirement, program) = VALIDATOR;
    let venv = toolchain::venv_dir();
    let installed = venv.join("bin").join(program);
    if installed.exists() {
        step(&format!("python tool {program}: in {}", venv.display()));
        return Ok(());
    }
    step(&format!(
        "python tool {program}: installing {requirement} into {}",
        venv.display()
    ));
    let venv_arg = venv.to_str().context("the cache directory is not UTF-8")?;
    // Debian's python3 has no `venv`/`ensurepip` without the python3-venv package.
    if cmd("python3", &["-c", "import ensurepip, venv"])
        .status_ok()
        .is_err()
    {
        install_apt_packages(&["python3-venv"])?;
    }
    cmd("python3", &["-m", "venv", venv_arg]).status_ok()?;
    let pip = venv.join("bin").join("pip");
    cmd(
        pip.to_str().context("the cache directory is not UTF-8")?,
        &["install", "-q", requirement],
    )
    .status_ok()?;
    anyhow::ensure!(
        installed.exists(),
        "{requirement} installed, but {} is missing",
        installed.display()
    );
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
