//! What eBPF programs share, beside the datapath's own programs in main.rs (a `no_main`
//! binary, as aya-build expects): another eBPF crate (the bench programs) can depend on
//! `lb-ebpf` and use these. No panic handler here: each binary defines its own.
#![no_std]

pub mod packet;
