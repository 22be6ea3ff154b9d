//! `blo bench` and `blo bench --compare`.

use std::path::PathBuf;
use std::process::ExitCode;

use blo::bench::{self, Config, Report};
use blo::{Device, DeviceSpec, Error};

/// Arguments of `blo bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Small sizes and few repeats: seconds even on a software adapter (what CI runs).
    #[arg(long, conflicts_with = "compare")]
    quick: bool,
    /// cpu, gpu (the most capable adapter, software ones included), best, an adapter
    /// index from `blo devices`, or part of an adapter's name. Default: gpu, or the CPU
    /// with a notice when there is no adapter.
    #[arg(long, value_name = "DEVICE", conflicts_with = "compare")]
    device: Option<DeviceSpec>,
    /// Also write the results as JSON to FILE (the input of --compare).
    #[arg(long, value_name = "FILE", conflicts_with = "compare")]
    json: Option<PathBuf>,
    /// Run only results whose name contains this text (the ceilings always run).
    #[arg(long, value_name = "TEXT", conflicts_with = "compare")]
    only: Option<String>,
    /// Print one side-by-side table of result files written by `--json` (matched by
    /// name and size, speed relative to the first file) instead of benchmarking.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    compare: Vec<PathBuf>,
}

/// Runs `blo bench`.
pub fn run(args: Args) -> ExitCode {
    if !args.compare.is_empty() {
        return compare(&args.compare);
    }
    let device = match args.device.clone().unwrap_or(DeviceSpec::Gpu).open() {
        Ok(c) => c.device,
        Err(Error::NoAdapter { .. }) if args.device.is_none() => {
            eprintln!(
                "notice: no GPU adapter found; benchmarking the CPU backend instead (`blo devices` lists adapters)"
            );
            Device::cpu()
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = if args.quick {
        Config::quick()
    } else {
        Config::full()
    };
    config.only = args.only.clone();
    eprintln!(
        "benchmarking {device}{}",
        if args.quick { " (quick)" } else { "" }
    );
    // Progress on stderr as results arrive; the table with the final fractions (the
    // ceilings are measured again at the end) on stdout.
    let progress = |r: &bench::Record| {
        let size: Vec<String> = r.size.iter().map(usize::to_string).collect();
        eprintln!(
            "  {:<24} {:<18} {:>10.3} ms",
            r.name,
            size.join("x"),
            r.median_ms
        )
    };
    let report = match bench::run(&device, &config, progress) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: the benchmark failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", bench::table(&report));
    for sk in &report.skipped {
        println!("skipped {} {:?}: {}", sk.name, sk.size, sk.reason);
    }
    if let Some(path) = &args.json {
        let written = bench::to_json(&report).and_then(|text| {
            std::fs::write(path, text).map_err(|e| Error::InvalidArgument {
                op: "--json",
                msg: format!("cannot write {}: {e}", path.display()),
            })
        });
        match written {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

fn compare(paths: &[PathBuf]) -> ExitCode {
    let mut reports: Vec<(String, Report)> = Vec::new();
    for p in paths {
        match bench::load(p) {
            Ok(r) => reports.push((p.display().to_string(), r)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    print!("{}", bench::compare(&reports));
    ExitCode::SUCCESS
}
