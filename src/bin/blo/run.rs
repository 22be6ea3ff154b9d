//! `blo run CONFIG.toml [--out RESULTS.json] [--profile]`.
//!
//! Exit codes: 0 success; 2 the config (or the command line, or an output path) is
//! wrong, nothing ran and nothing was written; 1 blo failed during the run (the message
//! says why), nothing was written and no existing file was changed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use blo::experiment::{Experiment, Output, check_outputs, write_all_or_nothing};
use blo::problems::data::npy_bytes;

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
    let hg_path = experiment.hypergradient_path(&out);
    // Every output checked before any work: a file name in an existing, writable
    // directory, not another output, not the config or a data file.
    let hg_key = format!("{}: key `hypergradient_out`:", args.config.display());
    let mut outputs: Vec<(&str, &Path)> = vec![("--out", &out)];
    if let Some(p) = &hg_path {
        outputs.push((&hg_key, p));
    }
    let inputs = experiment.input_files();
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    if let Err(e) = check_outputs(&outputs, &input_refs) {
        return config_error(e);
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
    let mut files = vec![Output {
        path: &out,
        bytes: json,
        what: "--out",
    }];
    if let Some(p) = &hg_path {
        match npy_bytes(&outcome.hypergradient, &outcome.lambda_shape) {
            Ok(bytes) => files.push(Output {
                path: p,
                bytes,
                what: "hypergradient_out",
            }),
            Err(e) => return run_error(format!("cannot encode the hypergradient: {e}")),
        }
    }
    // The results and the hypergradient together or neither; a file either replaces
    // comes back if the other fails.
    if let Err(e) = write_all_or_nothing(&files) {
        return run_error(e);
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
    if let Some(a) = m.train_accuracy {
        println!(
            "training accuracy {:.4} (against the training labels as given)",
            a
        );
    }
    if let Some(p) = &hg_path {
        println!("hypergradient written to {}", p.display());
    }
    println!("results written to {}", out.display());
    ExitCode::SUCCESS
}
