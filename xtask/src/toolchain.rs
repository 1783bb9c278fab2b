//! The pinned toolchains and bpf-linker: the one place their versions are chosen.
//!
//! rustup on these machines never installs a toolchain by itself (RUSTUP_AUTO_INSTALL=0),
//! so a root `rust-toolchain.toml` would make `cargo xtask` fail on a fresh machine. xtask
//! builds on whatever stable is there, installs the pins, and calls `cargo +PIN …` itself.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{cmd, step};

/// Stable for the workspace: aya 0.16 needs rustc >= 1.98.
pub const STABLE: &str = "1.99.1";
/// Nightly for `lb-ebpf` (build-std needs rust-src); its LLVM is the one bpf-linker links.
pub const EBPF_NIGHTLY: &str = "nightly-2026-10-29";
pub const BPF_LINKER_VERSION: &str = "0.13.0";

fn toolchain_installed(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Installs the two pinned toolchains (minimal profile plus what the tests use).
pub fn ensure_toolchains() -> anyhow::Result<()> {
    for (name, components) in [
        (STABLE, &["clippy", "rustfmt"][..]),
        (EBPF_NIGHTLY, &["rust-src", "clippy", "rustfmt"][..]),
    ] {
        let has_components =
            toolchain_installed(name) && components.iter().all(|c| component_installed(name, c));
        if has_components {
            step(&format!("toolchain {name}: installed"));
            continue;
        }
        step(&format!(
            "toolchain {name}: installing with {}",
            components.join(", ")
        ));
        let mut args = vec!["toolchain", "install", name, "--profile", "minimal"];
        for c in components {
            args.extend(["--component", c]);
        }
        cmd("rustup", &args).status_ok()?;
    }
    Ok(())
}

fn component_installed(toolchain: &str, component: &str) -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(component))
        })
        .unwrap_or(false)
}

fn sysroot(toolchain: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args([&format!("+{toolchain}"), "--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    if !out.status.success() {
        bail!(
            "rustc +{toolchain} --print sysroot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Where bpf-linker is installed: keyed by version and nightly, so a new pin (another LLVM)
/// gets a fresh build instead of a linker for the wrong LLVM.
pub fn bpf_linker_root() -> PathBuf {
    cache_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{EBPF_NIGHTLY}"))
}

/// `~/.cache/slicelb` (or under `XDG_CACHE_HOME`): what setup installs outside the system.
pub fn cache_dir() -> PathBuf {
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("slicelb")
}

/// The Python virtual environment holding the manifest validator (a system Python that is
/// externally managed, as on Debian 12+, refuses `pip install`).
pub fn venv_dir() -> PathBuf {
    cache_dir().join("venv")
}

/// Builds bpf-linker against the pinned nightly's own libLLVM when it is missing.
///
/// Why this recipe: no prebuilt bpf-linker can be downloaded here, and it must use the same
/// LLVM as the nightly that compiles `lb-ebpf` (LLVM 23). That nightly ships libLLVM as
/// `lib/libLLVM.so.<ver>-rust-<rustc>-nightly`; bpf-linker's build finds LLVM through
/// `LLVM_PREFIX/lib/libLLVM.so`, so we make a prefix whose lib/ links to that file under
/// both names (the soname too, for the loader at run time).
pub fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let root = bpf_linker_root();
    let bin = root.join("bin");
    if bin.join("bpf-linker").exists() {
        step(&format!(
            "bpf-linker {BPF_LINKER_VERSION}: installed in {}",
            bin.display()
        ));
        return Ok(bin);
    }
    let llvm_lib = sysroot(EBPF_NIGHTLY)?.join("lib");
    let libllvm = std::fs::read_dir(&llvm_lib)
        .with_context(|| format!("reading {}", llvm_lib.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {} (is {EBPF_NIGHTLY} installed?)",
                llvm_lib.display()
            )
        })?;
    let prefix = root.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(llvm_lib.join(&libllvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against {libllvm} (about a minute)"
    ));
    cmd(
        "cargo",
        &[
            &format!("+{STABLE}"),
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--root",
            &root.display().to_string(),
        ],
    )
    .env("LLVM_PREFIX", &prefix)
    .status_ok()?;
    Ok(bin)
}

/// PATH with bpf-linker first, for every cargo that builds the eBPF object, and the
/// validator's virtual environment, for the manifest test.
pub fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut paths = vec![bin.to_path_buf(), venv_dir().join("bin")];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).expect("PATH entries have no separator")
}
