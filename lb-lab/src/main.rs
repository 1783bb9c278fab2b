//! `slicelb-lab`: the demo, the benchmarks and the lab's backend servers. xtask builds it
//! beside `slicelb` and starts it (`cargo xtask run`, `cargo xtask bench`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use slicelb_lab::{
    bench::{self, Part},
    lab::{demo, servers::BackendServers},
};

#[derive(Debug, Parser)]
#[command(
    name = "slicelb-lab",
    version,
    about = "slicelb's demo and benchmarks on a lab of network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo on a lab of network namespaces (what `cargo xtask run` starts).
    Demo(DemoArgs),
    /// Benchmarks (what `cargo xtask bench` starts).
    Bench(BenchArgs),
    /// A lab backend: HTTP and UDP echo answering with NAME (started by the demo and tests).
    LabServer(LabServerArgs),
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Leave the lab up at the end and print how to enter it.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// A reduced run (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Run only these parts (repeat or comma-separate); all of them by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

#[derive(Debug, Args)]
struct LabServerArgs {
    /// What the servers answer (`backend-K`).
    #[arg(long)]
    name: String,
    /// TCP port of the HTTP server.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// UDP port of the echo server.
    #[arg(long, default_value_t = 9000)]
    udp_port: u16,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(&demo::DemoOptions {
            duration: args.duration,
            keep: args.keep,
        }),
        Command::Bench(args) => bench::run(&bench::BenchOptions {
            quick: args.quick,
            out_dir: args.out_dir,
            only: args.only,
        }),
        Command::LabServer(args) => BackendServers {
            name: args.name,
            http_port: args.http_port,
            udp_port: args.udp_port,
        }
        .serve()
        .map_err(anyhow::Error::from),
    }
}

fn main() {
    slicelb::cli::init_logging();
    if let Err(error) = run(Cli::parse()) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
