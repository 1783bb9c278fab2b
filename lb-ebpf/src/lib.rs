#![no_std]
//! What eBPF programs share with the ones in main.rs (a `no_main` binary, as aya-build
//! expects): the bench programs' crate depends on this library too.

pub mod packet;
