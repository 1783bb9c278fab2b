//! Builds the benchmark's eBPF programs (`lb-lab-ebpf`) with the pinned nightly and embeds
//! the object in `slicelb-lab`.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Must match `EBPF_TOOLCHAIN` in xtask (the one place the pins are chosen); xtask passes
/// it down so a plain `cargo build` after `cargo xtask setup` uses the same one.
const DEFAULT_EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SLICELB_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("SLICELB_EBPF_TOOLCHAIN")
        .unwrap_or_else(|_| DEFAULT_EBPF_TOOLCHAIN.to_string());
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-lab-ebpf")
        .ok_or_else(|| anyhow!("lb-lab-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-lab-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
