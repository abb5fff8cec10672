//! `edgeplane`: one binary, one subcommand per job.

mod cli;
mod replay;
mod run;

use anyhow::Result;
use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    cli::init_logging(args.log_format);
    if let Err(e) = run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: cli::Cli) -> Result<()> {
    match args.command {
        cli::Command::Compile(a) => cli::compile(a),
        cli::Command::Replay(a) => replay::replay(a),
        cli::Command::Run(a) => run::run(a),
        cli::Command::Pktgen(a) => edgeplane_bench::pktgen::run(a),
    }
}
