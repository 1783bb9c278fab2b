#![no_std]
// The programs live in main.rs (a `no_main` binary, as aya-build expects); this library
// target exists so that host-side tooling (clippy, rust-analyzer) has a crate root, and so
// that lb-lab can list this crate as a build dependency (cargo ignores one without a lib).
