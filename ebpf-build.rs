// Shared by the build scripts of lb-userspace and lb-lab (each `include!`s it): they build
// an eBPF crate of this workspace and embed its object.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Must match `EBPF_TOOLCHAIN` in xtask (the one place the pins are chosen); xtask passes
/// it down so a plain `cargo build` after `cargo xtask setup` uses the same one.
const DEFAULT_EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

/// Builds the eBPF crate `package` of this workspace with the pinned nightly into OUT_DIR.
fn build_ebpf(package: &str) -> anyhow::Result<()> {
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
        .find(|p| p.name.as_str() == package)
        .ok_or_else(|| anyhow!("{package} package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
