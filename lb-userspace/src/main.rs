use clap::Parser as _;
use slicelb::cli::Cli;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    slicelb::run(cli)
}
