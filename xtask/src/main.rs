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
    /// Install toolchains, bpf-linker, Debian and Python packages; mount bpffs.
    Setup,
    /// Release build; prints the binary's path.
    Build,
    /// Setup, then fmt, clippy (userspace and eBPF), unit tests, then the root-only kernel
    /// and lab tests.
    Test,
    /// Setup, build, and run the demo on a lab of network namespaces.
    Run {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Leave the lab up at the end and print how to enter it.
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

fn build_release(linker_bin: &std::path::Path) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    cargo(
        linker_bin,
        &[
            "build",
            "--release",
            "-p",
            "lb-userspace",
            "--bin",
            "slicelb",
        ],
    )
    .status_ok()?;
    let binary = workspace_root().join("target/release/slicelb");
    step(&format!(
        "built {} in {:.0} s",
        binary.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(binary)
}

/// Integration test files of lb-userspace whose names start with `prefix`.
fn test_targets(prefix: &str) -> anyhow::Result<Vec<String>> {
    let dir = workspace_root().join("lb-userspace/tests");
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

/// Root tests live in files named `kernel_*` (BPF test-run) and `lab_*` (namespaces).
const ROOT_TEST_PREFIXES: [&str; 2] = ["kernel_", "lab_"];

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
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )
    .status_ok()?;
    step("clippy: eBPF crate");
    // The eBPF crate is no_std with its own panic handler: lint it on the pinned nightly
    // with panic=abort, as aya's template does.
    let mut ebpf_clippy = Command::new("cargo");
    ebpf_clippy
        .args([
            &format!("+{}", toolchain::EBPF_NIGHTLY),
            "clippy",
            "-p",
            "lb-ebpf",
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
    let mut args = vec![
        "test",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--lib",
        "--bins",
    ];
    let root_targets: Vec<String> = ROOT_TEST_PREFIXES
        .iter()
        .map(|p| test_targets(p))
        .collect::<anyhow::Result<Vec<_>>>()?
        .concat();
    let other_targets: Vec<String> = test_targets("")?
        .into_iter()
        .filter(|t| !root_targets.contains(t))
        .collect();
    for target in &other_targets {
        args.extend(["--test", target.as_str()]);
    }
    cargo(linker_bin, &args).status_ok()?;

    step(&format!("root tests: {}", root_targets.join(", ")));
    let mut args = vec!["test", "-p", "lb-userspace"];
    for target in &root_targets {
        args.extend(["--test", target.as_str()]);
    }
    // One at a time: lab tests attach programs and time real traffic on 2 cores.
    args.extend(["--", "--test-threads=1"]);
    cargo(linker_bin, &args).status_ok()?;
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
            let binary = build_release(&linker_bin)?;
            println!("{}", binary.display());
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
            let binary = build_release(&linker_bin)?;
            let mut args = vec!["demo".to_string()];
            if let Some(secs) = duration {
                args.extend(["--duration".to_string(), secs.to_string()]);
            }
            if keep {
                args.push("--keep".to_string());
            }
            let status = Command::new(&binary)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", binary.display()))?;
            if !status.success() {
                bail!("slicelb demo failed ({status})");
            }
        }
        Task::Bench { quick, only } => {
            require_root("bench")?;
            let linker_bin = setup::setup()?;
            let binary = build_release(&linker_bin)?;
            let mut args = vec!["bench"];
            if quick {
                args.push("--quick");
            }
            if let Some(parts) = &only {
                args.extend(["--only", parts.as_str()]);
            }
            let status = Command::new(&binary)
                .args(&args)
                .current_dir(workspace_root())
                .status()
                .with_context(|| format!("starting {}", binary.display()))?;
            if !status.success() {
                bail!("slicelb bench failed ({status})");
            }
        }
    }
    Ok(())
}
