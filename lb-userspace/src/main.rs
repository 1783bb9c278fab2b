use clap::Parser as _;
use slicelb::cli::Cli;

fn main() {
    let cli = Cli::parse();
    if let Err(error) = slicelb::cli::run(cli) {
        // The whole chain, one line: what failed and why (no backtrace for operators).
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
