//! What can go wrong while benchmarking, naming the case and what to try next.

use std::path::PathBuf;

use crate::lab::LabError;

use super::plot::PlotError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("lab setup for {case} failed: {source}")]
    Lab {
        case: String,
        #[source]
        source: LabError,
    },
    #[error(
        "loading the embedded eBPF object for {what} failed: {source} (run as root; is bpffs mounted? `cargo xtask setup`)"
    )]
    Load {
        what: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {name} is not in the embedded eBPF object (rebuild: `cargo xtask build`)")]
    MissingProgram { name: String },
    #[error("map {name} is not in the embedded eBPF object (rebuild: `cargo xtask build`)")]
    MissingMap { name: String },
    #[error("program {name}: {action} failed: {source}")]
    Program {
        name: String,
        action: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {action} failed: {source}")]
    Map {
        name: String,
        action: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{case}: {what}")]
    Unexpected { case: String, what: String },
    #[error("{what} is not available yet: {detail}")]
    NotLanded { what: &'static str, detail: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{case}: {source}")]
    Socket {
        case: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("{case}: the time limit of {limit_secs} s was reached")]
    TimeLimit { case: String, limit_secs: u64 },
}

impl BenchError {
    pub fn lab(case: &str) -> impl FnOnce(LabError) -> Self + '_ {
        move |source| Self::Lab {
            case: case.to_string(),
            source,
        }
    }

    pub fn unexpected(case: &str, what: impl Into<String>) -> Self {
        Self::Unexpected {
            case: case.to_string(),
            what: what.into(),
        }
    }
}
