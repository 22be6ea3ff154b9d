//! The `blo` command line. Each subcommand lives in its own module with its own
//! `Args` (clap) and `run(args) -> ExitCode`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod check;
mod demo;
mod devices;
mod plot;
mod run;
mod tune;

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
    /// Measure kernels, autodiff and hypergradients against the device's own ceilings;
    /// `--compare` puts several result files side by side.
    Bench(bench::Args),
    /// Check every kernel (against naive f64 references), gradient, solver and
    /// hypergradient method (against the CPU in f64) on a device; exit 1 on any failure.
    Check(check::Args),
    /// Time the kernel variants of the tunable families (matmul, matvec) on an adapter for the
    /// common shape classes, keep the fastest in the tuning cache, and print the table.
    Tune(tune::Args),
}

/// Mesa's drivers print "XDG_RUNTIME_DIR is invalid or not set" on headless machines
/// whenever an adapter is probed. The command (not the library) gives them a private
/// 0700 directory when the variable is missing, so its output stays clean.
#[cfg(unix)]
fn quiet_mesa_runtime_dir() {
    use std::os::unix::fs::PermissionsExt;
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        return;
    }
    let dir = std::env::temp_dir().join("blo-xdg-runtime");
    if std::fs::create_dir_all(&dir).is_ok()
        && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
    {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    quiet_mesa_runtime_dir();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Devices) => devices::run(),
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Check(args)) => check::run(args),
        Some(Command::Tune(args)) => tune::run(args),
        None => demo::run(cli.demo),
    }
}
