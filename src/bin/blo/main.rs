//! The `blo` command line. Each subcommand lives in its own module with its own
//! `Args` (clap) and `run(args) -> ExitCode`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod check;
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
    /// Measure kernels, autodiff and hypergradients against the device's own ceilings;
    /// `--compare` puts several result files side by side.
    Bench(bench::Args),
    /// Check every kernel, gradient, solver and hypergradient method on a device
    /// against the CPU in f64; exit 1 on any failure.
    Check(check::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Devices) | None => devices::run(),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Check(args)) => check::run(args),
    }
}
