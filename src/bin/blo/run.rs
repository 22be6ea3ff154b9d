//! `blo run CONFIG.toml [--out RESULTS.json] [--profile]`.
//!
//! Exit codes: 0 success; 2 the config (or the command line) is wrong, nothing ran and
//! nothing was written; 1 blo failed during the run (the message says why), nothing
//! was written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use blo::experiment::{Experiment, write_atomic};

/// Arguments of `blo run`.
#[derive(clap::Args)]
pub struct Args {
    /// The experiment file (TOML; the README's "The experiment config format" section
    /// lists every key, and examples/configs/ has one per problem and method).
    pub config: PathBuf,
    /// Where to write the results JSON [default: <config name>.results.json in the
    /// current directory]. A relative `hypergradient_out` goes next to it.
    #[arg(long, value_name = "RESULTS.json")]
    pub out: Option<PathBuf>,
    /// Record every dispatch with GPU timestamps and print the device time and
    /// dispatches per kernel family (also written into the results as `gpu_profile`).
    /// Needs a GPU device; the run is slower on the host while profiled.
    #[arg(long)]
    pub profile: bool,
}

fn config_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn run_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

/// Runs `blo run`.
pub fn run(args: Args) -> ExitCode {
    let experiment = match Experiment::from_file(&args.config) {
        Ok(e) => e,
        Err(e) => return config_error(e),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "blo".into());
        PathBuf::from(format!("{stem}.results.json"))
    });
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !out_dir.is_dir() {
        return config_error(format!(
            "--out {}: the directory {} does not exist",
            out.display(),
            out_dir.display()
        ));
    }
    let hg_path = experiment.hypergradient_path(&out);
    if let Some(p) = &hg_path
        && !p
            .parent()
            .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir())
    {
        return config_error(format!(
            "{}: key `hypergradient_out`: the directory of {} does not exist",
            args.config.display(),
            p.display()
        ));
    }

    let (device, reason) = match experiment.open_device() {
        Ok(d) => d,
        Err(e) => return run_error(e),
    };
    let c = experiment.config();
    println!("device: {reason}");
    let profiled = match (args.profile, device.gpu_context()) {
        (false, _) => None,
        (true, None) => {
            return config_error(format!(
                "--profile needs a GPU device, and this run uses {device} (set `device` in {} or drop --profile)",
                args.config.display()
            ));
        }
        (true, Some(ctx)) => {
            if !ctx.has_timestamps() {
                println!(
                    "notice: this adapter has no GPU timestamps; --profile counts dispatches only"
                );
            }
            if let Err(e) = ctx.start_profile() {
                return run_error(e);
            }
            Some(ctx)
        }
    };
    println!(
        "problem {}, method {}, |λ| = {}, {} outer step(s)",
        c.problem.kind.name(),
        experiment.method_name(),
        experiment.lambda0().len(),
        experiment.outer_steps()
    );
    let total = experiment.outer_steps() + 1;
    let every = total.div_ceil(20).max(1);
    let outcome = experiment.run(&device, &mut |s| {
        if s.step % every == 0 || s.step + 1 == total {
            println!(
                "  step {:>4}  L_out {:<12.6}  ‖h‖ {:<10.3e}  {:.3} s",
                s.step,
                s.outer_loss,
                s.hypergrad_norm,
                s.report.wall_time.as_secs_f64()
            );
        }
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return run_error(e),
    };
    let mut results = experiment.results(&outcome, &device, &reason);
    results.hypergradient_out = hg_path.as_ref().map(|p| p.display().to_string());
    if let Some(ctx) = profiled {
        match ctx.finish_profile() {
            Ok(p) => {
                print!("GPU profile of the run:\n{}", p.table(false));
                results.gpu_profile = Some(p);
            }
            Err(e) => return run_error(e),
        }
    }
    let json = match serde_json::to_vec_pretty(&results) {
        Ok(j) => j,
        Err(e) => return run_error(format!("cannot encode the results: {e}")),
    };
    if let Some(p) = &hg_path {
        // Through a temporary file too, so a failed write leaves nothing behind.
        let tmp = p.with_extension(format!("npy.{}.tmp", std::process::id()));
        let written =
            blo::problems::data::write_npy(&tmp, &outcome.hypergradient, &outcome.lambda_shape)
                .map_err(|e| e.to_string())
                .and_then(|()| std::fs::rename(&tmp, p).map_err(|e| e.to_string()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return run_error(format!("cannot write {}: {e}", p.display()));
        }
    }
    if let Err(e) = write_atomic(&out, &json) {
        if let Some(p) = &hg_path {
            let _ = std::fs::remove_file(p);
        }
        return run_error(format!("cannot write {}: {e}", out.display()));
    }
    let m = &results.metrics;
    println!(
        "final outer loss {:.6} (initial {:.6})",
        m.final_outer_loss, m.initial_outer_loss
    );
    if let Some(a) = m.test_accuracy {
        println!("test accuracy {:.4}", a);
    }
    if let Some(f) = m.corruption_f1 {
        println!("corrupted-label F1 {:.4}", f);
    }
    if let Some(a) = m.val_accuracy {
        println!("validation accuracy {:.4}", a);
    }
    if let Some(p) = &hg_path {
        println!("hypergradient written to {}", p.display());
    }
    println!("results written to {}", out.display());
    ExitCode::SUCCESS
}
