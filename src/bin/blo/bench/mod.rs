//! `blo bench` and `blo bench --compare`: kernel throughput, dispatch overhead,
//! second-order autodiff and whole hypergradients, each also expressed as a fraction of
//! the device's own measured ceilings, with a JSON format and a side-by-side comparison
//! of several result files (one per adapter or vendor).
//!
//! Conventions: GB/s counts bytes read plus bytes written once each (an `add` of n
//! f32 moves 12n bytes, a copy 8n); GFLOP/s counts a multiply-add as two operations.
//! Every time is the median of several repeats after one warm-up run, with a device
//! sync before and after each repeat, so GPU numbers include execution, not just
//! recording. The ceilings are measured before and after the suite with the better
//! kept, since a ceiling is the best the device can do, and the two throughput ceilings
//! take the fastest repeat. On a GPU a third ceiling is the floor of chained dispatch,
//! measured with wgpu alone; the GPU's dispatch counts per hypergradient step are
//! results of their own.
//!
//! `suite` lists and times the results, `ceilings` measures the ceilings (the GPU's
//! throughput ones through a [`blo::CustomKernel`], the dispatch floor through the
//! context's wgpu device), `host` describes where it ran and `report` holds the JSON
//! types and the tables.

mod ceilings;
mod host;
mod report;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;

use blo::{Device, DeviceSpec, Error};

use report::BenchReport;
use suite::Config;

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
    /// Also run each result three more times with GPU timestamps around every dispatch and
    /// print (and write into the JSON) its device time and dispatches per kernel family.
    /// Needs a GPU device; times need an adapter with timestamp queries.
    #[arg(long, conflicts_with = "compare")]
    profile: bool,
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
    let names: Vec<String> = ["ceiling_fma", "ceiling_copy", "ceiling_dispatch"]
        .iter()
        .map(|n| n.to_string())
        .chain(suite::names(config.quick))
        .collect();
    if let Some(only) = &config.only
        && !names.iter().any(|n| n.contains(only.as_str()))
    {
        eprintln!(
            "error: --only {only:?} matches no result; the results are: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    }
    // The JSON path is checked before the benchmark (minutes), not after it.
    if let Some(path) = &args.json
        && let Err(e) = blo::experiment::check_outputs(&[("--json", path)], &[])
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if args.profile {
        match device.gpu_context() {
            Some(ctx) if !ctx.has_timestamps() => eprintln!(
                "notice: {device} has no GPU timestamps; --profile counts dispatches only"
            ),
            Some(_) => {}
            None => {
                eprintln!("error: --profile needs a GPU device ({device} is not one)");
                return ExitCode::from(2);
            }
        }
        config.profile = true;
    }
    eprintln!(
        "benchmarking {device}{}",
        if args.quick { " (quick)" } else { "" }
    );
    // Progress on stderr as results arrive; the table with the final fractions (the
    // ceilings are measured again at the end) on stdout.
    let progress = |r: &report::Record| {
        let size: Vec<String> = r.size.iter().map(usize::to_string).collect();
        eprint!(
            "  {:<24} {:<18} {:>10.3} ms\n{}",
            r.name,
            size.join("x"),
            r.median_ms,
            report::notes(r)
        )
    };
    let report = match suite::run(&device, &config, progress) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: the benchmark failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report::table(&report));
    for sk in &report.skipped {
        println!("skipped {} {:?}: {}", sk.name, sk.size, sk.reason);
    }
    if let Some(path) = &args.json {
        let written = report::to_json(&report).and_then(|text| {
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
    let mut reports: Vec<(String, BenchReport)> = Vec::new();
    for p in paths {
        match report::load(p) {
            Ok(r) => reports.push((p.display().to_string(), r)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    print!("{}", report::compare(&reports));
    ExitCode::SUCCESS
}
