//! Builds the benchmark's eBPF programs (`lb-lab-ebpf`) with the pinned nightly and embeds
//! the object in `slicelb-lab`.
include!("../ebpf-build.rs");

fn main() -> anyhow::Result<()> {
    build_ebpf("lb-lab-ebpf")
}
