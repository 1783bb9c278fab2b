//! slicelb: a Kubernetes Service load balancer in the Linux kernel.
//!
//! Data flows one way: [`source`] → [`model`] (pure) → [`diff`] → map writer
//! ([`dataplane`]) → kernel maps, read back by the operator commands in [`cli`].

pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod diff;
pub mod metrics;
pub mod model;
pub mod source;

/// Runs one command line (the `slicelb` binary's main).
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        cli::Command::Agent(args) => agent::run(args),
        cli::Command::Services(args) => cli::commands::services(&args),
        cli::Command::Stats(args) => cli::commands::stats(&args),
        cli::Command::Detach(args) => cli::commands::detach(&args),
        cli::Command::Attach(args) => cli::commands::attach(&args),
        cli::Command::Check(args) => cli::commands::check(&args),
        cli::Command::Trace(args) => cli::trace::run(&args),
    }
}
