//! Builds the datapath's eBPF programs (`lb-ebpf`) with the pinned nightly and embeds the
//! object in `slicelb`.
include!("../ebpf-build.rs");

fn main() -> anyhow::Result<()> {
    build_ebpf("lb-ebpf")
}
