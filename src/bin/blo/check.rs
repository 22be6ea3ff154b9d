//! `blo check`.

use std::process::ExitCode;
use std::time::Instant;

use blo::DeviceSpec;
use blo::check;

/// Arguments of `blo check`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// cpu (checks the CPU backend: f32, and f64 against the references), gpu (the most
    /// capable adapter, software ones included; the default), best, an adapter index
    /// from `blo devices`, or part of an adapter's name.
    #[arg(long, value_name = "DEVICE")]
    device: Option<DeviceSpec>,
    /// Run only the checks whose name contains this text, e.g. `matmul` or `grad/`.
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
}

/// Runs `blo check`: exit 0 when every check passes, 1 when any fails, 2 when the
/// device cannot be opened.
pub fn run(args: Args) -> ExitCode {
    let device = match args.device.unwrap_or(DeviceSpec::Gpu).open() {
        Ok(c) => c.device,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("(`blo check --device cpu` checks the CPU backend)");
            return ExitCode::from(2);
        }
    };
    // Unwritten output elements then read as NaN and fail, instead of passing on stale
    // values that happen to be right.
    if let Some(ctx) = device.gpu_context() {
        ctx.set_poison(true);
    }
    println!("checking {device} against naive f64 references (kernels) and the CPU backend in f64");
    let start = Instant::now();
    let results =
        check::run_checks_matching(&device, args.only.as_deref(), |r| println!("{}", r.line()));
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.as_str())
        .collect();
    println!(
        "{} checks, {} passed, {} failed, {:.1} s",
        results.len(),
        results.len() - failed.len(),
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if results.is_empty() {
        eprintln!(
            "error: no check matches --only {:?}",
            args.only.unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("FAILED: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
