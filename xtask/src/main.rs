//! `cargo xtask`: set up a machine, build, test, run the lab demo and benchmark slicelb.
//!
//! Builds on the machine's default stable; every build, lint and test of the workspace runs
//! with the pinned toolchains from [`toolchain`].

mod kind;
mod setup;
mod toolchain;

use std::{
    path::PathBuf,
    process::{Command, ExitStatus},
    time::Instant,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set up, build, test, run and benchmark slicelb")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install toolchains, bpf-linker, Debian packages, the manifest validator (in a Python
    /// virtual environment under ~/.cache/slicelb); mount bpffs.
    Setup,
    /// Release build; prints the binary's path.
    Build,
    /// Setup, then fmt, clippy (userspace and eBPF), unit tests, then the root-only kernel
    /// and lab tests.
    Test,
    /// Setup, build, and run the demo: my-app on a two-node cluster lab of network
    /// namespaces.
    Run {
        /// Seconds of traffic over the whole demo, split between its steps (default 16).
        #[arg(long)]
        duration: Option<u64>,
        /// Leave the lab up at the end, until Ctrl-C, and print how to enter it.
        #[arg(long)]
        keep: bool,
        /// Instead of the lab: build the image, load it into a kind cluster and deploy.
        #[arg(long)]
        kind: bool,
        /// The kind cluster (with --kind).
        #[arg(long, default_value = "kind", requires = "kind")]
        cluster: String,
    },
    /// Benchmarks (see README): per-packet cost, throughput, connections, control plane.
    Bench {
        /// A reduced run (under 2 minutes).
        #[arg(long)]
        quick: bool,
        /// Only these parts, comma-separated: per-packet, lab, control-plane.
        #[arg(long)]
        only: Option<String>,
    },
}

/// One line per step, so a newcomer sees what setup does.
pub fn step(message: &str) {
    println!("xtask: {message}");
}

/// A command with the check that it succeeded.
pub struct Cmd(Command);

pub fn cmd(program: &str, args: &[&str]) -> Cmd {
    let mut command = Command::new(program);
    command.args(args);
    Cmd(command)
}

impl Cmd {
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.env(key, value);
        self
    }

    pub fn status(mut self) -> anyhow::Result<ExitStatus> {
        self.0
            .status()
            .with_context(|| format!("could not start {:?}", self.0))
    }

    pub fn status_ok(self) -> anyhow::Result<()> {
        let shown = format!("{:?}", self.0).replace('"', "");
        let status = self.status()?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        Ok(())
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `cargo +STABLE args…` in the workspace, with bpf-linker on PATH.
fn cargo(linker_bin: &std::path::Path, args: &[&str]) -> Cmd {
    let mut full = vec![format!("+{}", toolchain::STABLE)];
    full.extend(args.iter().map(|a| a.to_string()));
    let mut command = Command::new("cargo");
    command
        .args(&full)
        .current_dir(workspace_root())
        .env("PATH", toolchain::path_with(linker_bin))
        .env("RUSTUP_AUTO_INSTALL", "0")
        .env("SLICELB_EBPF_TOOLCHAIN", toolchain::EBPF_NIGHTLY);
    Cmd(command)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn require_root(task: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {task}` needs root: it loads BPF programs, mounts bpffs and builds \
             network namespaces. Run it as root (sudo -E cargo xtask {task})."
        );
    }
    Ok(())
}

/// The product: `slicelb`, what the DaemonSet runs.
const PRODUCT: (&str, &str) = ("lb-userspace", "slicelb");
/// The lab's demo, benchmarks and backend servers; runs `slicelb` beside it as the agent.
const LAB: (&str, &str) = ("lb-lab", "slicelb-lab");

/// Release build of `binaries` ((package, binary) pairs); returns their paths.
fn build_release(
    linker_bin: &std::path::Path,
    binaries: &[(&str, &str)],
) -> anyhow::Result<Vec<PathBuf>> {
    let started = Instant::now();
    let mut args = vec!["build", "--release"];
    for (package, binary) in binaries {
        args.extend(["-p", package, "--bin", binary]);
    }
    cargo(linker_bin, &args).status_ok()?;
    let paths: Vec<PathBuf> = binaries
        .iter()
        .map(|(_, binary)| workspace_root().join("target/release").join(binary))
        .collect();
    step(&format!(
        "built {} in {:.0} s",
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    ));
    Ok(paths)
}

/// Runs `slicelb-lab ARGS…` from a release build (it finds `slicelb` beside itself).
fn run_lab(linker_bin: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let binaries = build_release(linker_bin, &[PRODUCT, LAB])?;
    let lab = &binaries[1];
    let status = Command::new(lab)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {}", lab.display()))?;
    if !status.success() {
        bail!("slicelb-lab {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Integration test files of `package` whose names start with `prefix`.
fn test_targets(package: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    let dir = workspace_root().join(package).join("tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Root tests live in files named `kernel_*` (BPF test-run, in lb-userspace) and `lab_*`
/// (namespaces, in lb-lab).
const ROOT_TEST_PREFIXES: [&str; 2] = ["kernel_", "lab_"];
/// The packages with integration tests.
const TESTED_PACKAGES: [&str; 2] = ["lb-userspace", "lb-lab"];

/// `cargo test -p PACKAGE --test T…  -- HARNESS_ARGS…`; nothing when `targets` is empty.
fn test_package(
    linker_bin: &std::path::Path,
    package: &str,
    targets: &[String],
    harness_args: &[&str],
) -> anyhow::Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let mut args = vec!["test", "-p", package];
    for target in targets {
        args.extend(["--test", target.as_str()]);
    }
    args.push("--");
    args.extend(harness_args);
    cargo(linker_bin, &args).status_ok()
}

fn test(linker_bin: &std::path::Path) -> anyhow::Result<()> {
    require_root("test")?;
    let started = Instant::now();
    step("fmt check");
    cargo(linker_bin, &["fmt", "--all", "--", "--check"]).status_ok()?;
    step("clippy: userspace");
    cargo(
        linker_bin,
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--exclude",
            "lb-lab-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )
    .status_ok()?;
    step("clippy: eBPF crates");
    // The eBPF crates are no_std with their own panic handler: lint them on the pinned
    // nightly with panic=abort, as aya's template does.
    let mut ebpf_clippy = Command::new("cargo");
    ebpf_clippy
        .args([
            &format!("+{}", toolchain::EBPF_NIGHTLY),
            "clippy",
            "-p",
            "lb-ebpf",
            "-p",
            "lb-lab-ebpf",
            "--",
            "-D",
            "warnings",
            "-C",
            "panic=abort",
        ])
        .current_dir(workspace_root())
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target/ebpf-clippy"),
        );
    Cmd(ebpf_clippy).status_ok()?;

    step("unit and userspace tests (no root needed)");
    cargo(
        linker_bin,
        &[
            "test",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--exclude",
            "lb-lab-ebpf",
            "--lib",
            "--bins",
        ],
    )
    .status_ok()?;
    for package in TESTED_PACKAGES {
        let targets: Vec<String> = test_targets(package, "")?
            .into_iter()
            .filter(|t| !ROOT_TEST_PREFIXES.iter().any(|p| t.starts_with(p)))
            .collect();
        test_package(linker_bin, package, &targets, &[])?;
    }

    // The lab tests run the `slicelb` binary as the node's agent: build it first (cargo
    // builds only the tested package's own binaries for its tests).
    cargo(linker_bin, &["build", "-p", PRODUCT.0, "--bin", PRODUCT.1]).status_ok()?;
    for package in TESTED_PACKAGES {
        let root_targets: Vec<String> = ROOT_TEST_PREFIXES
            .iter()
            .map(|p| test_targets(package, p))
            .collect::<anyhow::Result<Vec<_>>>()?
            .concat();
        if root_targets.is_empty() {
            continue;
        }
        step(&format!(
            "root tests of {package}: {}",
            root_targets.join(", ")
        ));
        // One at a time: lab tests attach programs and time real traffic on 2 cores.
        test_package(linker_bin, package, &root_targets, &["--test-threads=1"])?;
    }
    step(&format!(
        "all tests passed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => {
            setup::setup()?;
        }
        Task::Build => {
            let linker_bin = setup::setup()?;
            for binary in build_release(&linker_bin, &[PRODUCT])? {
                println!("{}", binary.display());
            }
        }
        Task::Test => {
            let linker_bin = setup::setup()?;
            test(&linker_bin)?;
        }
        Task::Run {
            kind: true,
            cluster,
            ..
        } => {
            if let Err(e) = kind::run_kind(&cluster) {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        Task::Run { duration, keep, .. } => {
            require_root("run")?;
            let linker_bin = setup::setup()?;
            let duration = duration.map(|secs| secs.to_string());
            let mut args = vec!["demo"];
            if let Some(secs) = &duration {
                args.extend(["--duration", secs.as_str()]);
            }
            if keep {
                args.push("--keep");
            }
            run_lab(&linker_bin, &args)?;
        }
        Task::Bench { quick, only } => {
            require_root("bench")?;
            let linker_bin = setup::setup()?;
            let mut args = vec!["bench"];
            if quick {
                args.push("--quick");
            }
            if let Some(parts) = &only {
                args.extend(["--only", parts.as_str()]);
            }
            run_lab(&linker_bin, &args)?;
        }
    }
    Ok(())
}
