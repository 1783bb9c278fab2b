//! `slicelb-lab`: the demo, the benchmarks, the lab's backend servers and the cluster lab's
//! pod servers and probe client. xtask builds it beside `slicelb` and starts it
//! (`cargo xtask run`, `cargo xtask bench`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use slicelb_lab::{
    bench::{self, Part},
    lab::{
        demo,
        probe::{self, Probe, ProbeProtocol},
        servers::{BackendServers, PodServers},
    },
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
    /// Run the demo: my-app on a two-node cluster lab of network namespaces (what `cargo
    /// xtask run` starts).
    Demo(DemoArgs),
    /// Benchmarks (what `cargo xtask bench` starts).
    Bench(BenchArgs),
    /// A lab backend: HTTP and UDP echo answering with NAME (started by the demo and tests).
    LabServer(LabServerArgs),
    /// A cluster lab pod's servers: TCP lines and UDP datagrams answered with
    /// `NAME CLIENT-ADDR:PORT` (started by the cluster lab in each pod).
    #[command(hide = true)]
    PodServer(PodServerArgs),
    /// A client that prints one JSON line per request: who answered, what getpeername()
    /// said, the client address the server saw (run in a pod or node by the tests).
    #[command(hide = true)]
    Probe(ProbeArgs),
    /// Fresh unconnected UDP sockets, one datagram each, no answer awaited (run in a pod by
    /// the tests to churn socket-level state).
    #[command(hide = true)]
    Spray(SprayArgs),
}

#[derive(Debug, Args)]
struct SprayArgs {
    #[arg(long, value_name = "ADDR:PORT")]
    udp: SocketAddr,
    /// Sockets, one datagram each.
    #[arg(long)]
    sockets: u32,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Seconds of traffic over the whole demo, split between its steps (default 16;
    /// building and removing the cluster add a few seconds).
    #[arg(long)]
    duration: Option<u64>,
    /// Leave the lab up at the end, until Ctrl-C, and print how to enter it.
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

#[derive(Debug, Args)]
struct PodServerArgs {
    /// What the servers answer (the pod's name).
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 8080)]
    tcp_port: u16,
    /// The pod's "DNS-style" UDP port.
    #[arg(long, default_value_t = 5353)]
    udp_port: u16,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("protocol").required(true))]
struct ProbeArgs {
    /// A TCP connection per attempt, one line asked on it.
    #[arg(long, group = "protocol", value_name = "ADDR:PORT")]
    tcp: Option<SocketAddr>,
    /// A UDP socket per attempt, one datagram asked on it.
    #[arg(long, group = "protocol", value_name = "ADDR:PORT")]
    udp: Option<SocketAddr>,
    /// Attempts, each on a fresh socket.
    #[arg(long, default_value_t = 1, conflicts_with = "hold_ms")]
    count: u32,
    /// UDP: sendto/recvfrom without connect (the answer's source is reported as the peer).
    #[arg(long, requires = "udp")]
    unconnected: bool,
    /// For each connect and each answer.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Keep one socket open and ask every 100 ms for this long, a line per request.
    #[arg(long)]
    hold_ms: Option<u64>,
    /// UDP: each attempt's unconnected socket also asks this address, right after the
    /// first; a line per answer, in the order they arrive.
    #[arg(long, requires = "unconnected", value_name = "ADDR:PORT")]
    also_to: Option<SocketAddr>,
}

impl ProbeArgs {
    fn probe(&self) -> Probe {
        let (protocol, target) = match (self.tcp, self.udp) {
            (Some(target), _) => (ProbeProtocol::Tcp, target),
            (None, Some(target)) => (ProbeProtocol::Udp, target),
            (None, None) => unreachable!("clap requires --tcp or --udp"),
        };
        Probe {
            protocol,
            target,
            count: self.count,
            unconnected: self.unconnected,
            timeout: Duration::from_millis(self.timeout_ms),
            hold: self.hold_ms.map(Duration::from_millis),
            also_to: self.also_to,
        }
    }
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
        Command::PodServer(args) => PodServers {
            name: args.name,
            tcp_port: args.tcp_port,
            udp_port: args.udp_port,
        }
        .serve()
        .map_err(anyhow::Error::from),
        Command::Probe(args) => args
            .probe()
            .run_here(&mut std::io::stdout().lock())
            .map_err(anyhow::Error::from),
        Command::Spray(args) => {
            let sent = probe::spray_datagrams(args.udp, args.sockets)?;
            println!("{sent}");
            Ok(())
        }
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

    #[test]
    fn probe_args_from_the_library_parse_back_to_the_same_probe() {
        let target: SocketAddr = "[2001:2:0:100::53]:53".parse().expect("literal");
        for probe in [
            Probe::tcp(target).count(4),
            Probe::udp(target)
                .unconnected()
                .timeout(Duration::from_millis(300)),
            Probe::tcp(target).hold(Duration::from_secs(3)),
            Probe::udp(target).count(2).also_to(target),
        ] {
            let args = std::iter::once("slicelb-lab".to_string()).chain(probe.args());
            let Command::Probe(parsed) = Cli::try_parse_from(args)
                .unwrap_or_else(|e| panic!("{probe:?} does not parse: {e}"))
                .command
            else {
                panic!("{probe:?} parsed as another command");
            };
            let mut expected = probe.clone();
            if expected.hold.is_some() {
                // Holding ignores --count, which the arguments then leave out.
                expected.count = 1;
            }
            assert_eq!(parsed.probe(), expected);
        }
    }

    #[test]
    fn spray_args_from_the_library_parse_back() {
        let target: SocketAddr = "198.18.100.53:53".parse().expect("literal");
        let args = std::iter::once("slicelb-lab".to_string()).chain(probe::spray_args(target, 7));
        let Command::Spray(parsed) = Cli::try_parse_from(args).expect("parses").command else {
            panic!("parsed as another command");
        };
        assert_eq!((parsed.udp, parsed.sockets), (target, 7));
    }
}
