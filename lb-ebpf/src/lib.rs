//! The datapath's logic; its programs (the entry points) are in main.rs, a `no_main`
//! binary as aya-build expects. A library so that another eBPF crate (the bench programs,
//! `lb-lab-ebpf`) runs the same parser. No panic handler here: each binary defines its own.
#![no_std]
#![expect(
    clippy::result_unit_err,
    reason = "a failed rewrite carries nothing: the caller maps it to a counted Reason"
)]

pub mod counters;
pub mod csum;
pub mod ctx;
pub mod fast_path;
pub mod flow_cache;
pub mod forward;
pub mod fragments;
pub mod icmp;
pub mod lookup;
pub mod maps;
pub mod nat;
pub mod packet;
pub mod parse;
pub mod reject;
pub mod reverse;
pub mod snat;
pub mod sock;
pub mod verdict;
