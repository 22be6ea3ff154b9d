//! The `blo` command line. Each subcommand lives in its own module with its own
//! `Args` (clap) and `run(args) -> ExitCode`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod devices;

/// blo: bilevel optimization and hypergradients on any GPU (wgpu + WGSL).
#[derive(Parser)]
#[command(name = "blo", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu finds, plus the CPU backend, marking the one "best" picks.
    Devices,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Devices) | None => devices::run(),
    }
}
