//! The `blo` command line. Each subcommand lives in its own module with its own
//! `Args` (clap) and `run(args) -> ExitCode`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod devices;
mod run;

/// blo: bilevel optimization and hypergradients on any GPU (wgpu + WGSL).
///
/// Without a subcommand, runs the data hyper-cleaning demo on the built-in digits data
/// on the best device, compares hypergradient methods on the same budget, and writes
/// blo-demo.json and blo-demo.svg.
#[derive(Parser)]
#[command(name = "blo", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: demo::Args,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu finds, plus the CPU backend, marking the one "best" picks.
    Devices,
    /// Run an experiment described by a TOML file and write its results as JSON.
    Run(run::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Devices) => devices::run(),
        Some(Command::Run(args)) => run::run(args),
        None => demo::run(cli.demo),
    }
}
