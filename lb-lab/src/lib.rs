//! slicelb's lab, demo and benchmarks: everything that runs the product on network
//! namespaces of this machine, and nothing the product itself needs. It uses the `slicelb`
//! library (model, planner, map writer) and drives the real `slicelb` binary as each node's
//! agent.
//!
//! - [`lab`]: namespaces, veth pairs, backend servers, the demo (`cargo xtask run`), and the
//!   multi-node lab ([`lab::cluster`]) with its pod servers and probe client ([`lab::probe`]).
//! - [`bench`]: `cargo xtask bench`, with its own eBPF programs ([`bench::ebpf`]).

pub mod bench;
pub mod lab;
