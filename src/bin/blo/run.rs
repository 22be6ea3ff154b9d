//! `blo run CONFIG.toml [--out RESULTS.json] [--profile]`.
//!
//! Exit codes: 0 success; 2 the config (or the command line, or an output path) is
//! wrong, nothing ran and nothing was written; 1 blo failed during the run (the message
//! says why), nothing was written and no existing file was changed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use blo::experiment::meta::{MetaExperiment, is_meta_config};
use blo::experiment::toys::{ToyExperiment, is_toy_config};
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

/// The results JSON, the first file a run writes (`--out`).
fn results_file<'a>(results: &impl serde::Serialize, out: &'a Path) -> Result<Output<'a>, String> {
    let bytes = serde_json::to_vec_pretty(results)
        .map_err(|e| format!("cannot encode the results: {e}"))?;
    Ok(Output {
        path: out,
        bytes,
        what: "--out",
    })
}

/// Runs `blo run`.
pub fn run(args: Args) -> ExitCode {
    // An unreadable file is reported by the bilevel config's reader below.
    let text = std::fs::read_to_string(&args.config).unwrap_or_default();
    if is_meta_config(&text) {
        return run_meta(args);
    }
    if is_toy_config(&text) {
        return run_toy(args);
    }
    let experiment = match Experiment::from_file(&args.config) {
        Ok(e) => e,
        Err(e) => return config_error(e),
    };
    let out = default_out(&args);
    let hg_path = experiment.hypergradient_path(&out);
    if let Err(code) = check_run_outputs(
        &args,
        &out,
        &[("hypergradient_out", hg_path.as_deref())],
        &experiment.input_files(),
    ) {
        return code;
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
    let mut files = match results_file(&results, &out) {
        Ok(f) => vec![f],
        Err(e) => return run_error(e),
    };
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

/// The default results path: `<config name>.results.json` in the current directory.
/// Every output checked before any work: a file name in an existing, writable
/// directory, not another output, not the config or a data file. `named` holds the
/// config's own outputs, by key.
fn check_run_outputs(
    args: &Args,
    out: &Path,
    named: &[(&str, Option<&Path>)],
    inputs: &[PathBuf],
) -> Result<(), ExitCode> {
    let keys: Vec<(String, &Path)> = named
        .iter()
        .filter_map(|(k, p)| p.map(|p| (format!("{}: key `{k}`:", args.config.display()), p)))
        .collect();
    let mut outputs: Vec<(&str, &Path)> = vec![("--out", out)];
    outputs.extend(keys.iter().map(|(k, p)| (k.as_str(), *p)));
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    check_outputs(&outputs, &input_refs).map_err(config_error)
}

/// `p` as given when absolute, else next to the results file `out`.
fn beside(out: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        out.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn default_out(args: &Args) -> PathBuf {
    args.out.clone().unwrap_or_else(|| {
        let stem = args
            .config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "blo".into());
        PathBuf::from(format!("{stem}.results.json"))
    })
}

/// `blo run` for a meta-learning config (`problem.kind` sinusoid or digits-fewshot).
fn run_meta(args: Args) -> ExitCode {
    let experiment = match MetaExperiment::from_file(&args.config) {
        Ok(e) => e,
        Err(e) => return config_error(e),
    };
    if args.profile {
        return config_error("--profile is not supported for meta-learning configs yet");
    }
    let out = default_out(&args);
    let c = experiment.config();
    let g_path = experiment.output_path(&c.metagradient_out, &out);
    let ga_path = experiment.output_path(&c.metagradient_alpha_out, &out);
    let plot_path = experiment.output_path(&c.plot_out, &out);
    if let Err(code) = check_run_outputs(
        &args,
        &out,
        &[
            ("metagradient_out", g_path.as_deref()),
            ("metagradient_alpha_out", ga_path.as_deref()),
            ("plot_out", plot_path.as_deref()),
        ],
        &experiment.input_files(),
    ) {
        return code;
    }
    let (device, reason) = match experiment.open_device() {
        Ok(d) => d,
        Err(e) => return run_error(e),
    };
    println!("device: {reason}");
    let m = experiment.model();
    println!(
        "problem {}, method {}, model {:?} ({} parameters), {} meta-iteration(s)",
        experiment.problem_name(),
        c.method.method().name(),
        m.widths(),
        m.dim(),
        c.outer.steps
    );
    let total = c.outer.steps + 1;
    let every = total.div_ceil(20).max(1);
    let outcome = experiment.run(&device, &reason, &mut |s| {
        if s.iteration % every == 0 || s.iteration + 1 == total {
            println!(
                "  iteration {:>5}  meta-loss {:<12.6}  ‖g‖ {:<10.3e}  {:.3} s",
                s.iteration, s.meta_loss, s.grad_norm, s.elapsed_s
            );
        }
    });
    let mut outcome = match outcome {
        Ok(o) => o,
        Err(e) => return run_error(e),
    };
    outcome.results.metagradient_out = g_path.as_ref().map(|p| p.display().to_string());
    outcome.results.metagradient_alpha_out = ga_path.as_ref().map(|p| p.display().to_string());
    let mut files = match results_file(&outcome.results, &out) {
        Ok(f) => vec![f],
        Err(e) => return run_error(e),
    };
    let dim = m.dim();
    if let Some(p) = &g_path {
        match npy_bytes(&outcome.metagradient, &[dim]) {
            Ok(bytes) => files.push(Output {
                path: p,
                bytes,
                what: "metagradient_out",
            }),
            Err(e) => return run_error(format!("cannot encode the meta-gradient: {e}")),
        }
    }
    if let (Some(p), Some(ga)) = (&ga_path, &outcome.metagradient_alpha) {
        match npy_bytes(ga, &[dim]) {
            Ok(bytes) => files.push(Output {
                path: p,
                bytes,
                what: "metagradient_alpha_out",
            }),
            Err(e) => return run_error(format!("cannot encode ∂M/∂α: {e}")),
        }
    }
    if let Some(p) = &plot_path {
        let r = &outcome.results;
        let plot = crate::plot::LinePlot {
            title: format!("{}: post-adaptation test loss", r.problem),
            x_label: "meta-iteration".into(),
            y_label: "query loss after adaptation".into(),
            series: std::iter::once((&r.method, &r.curve))
                .chain(r.comparison.iter().map(|c| (&c.method, &c.curve)))
                .map(|(name, curve)| crate::plot::Series {
                    name: name.clone(),
                    points: curve.iter().map(|c| (c.iteration as f64, c.loss)).collect(),
                })
                .collect(),
        };
        files.push(Output {
            path: p,
            bytes: plot.to_svg().into_bytes(),
            what: "plot_out",
        });
    }
    if let Err(e) = write_all_or_nothing(&files) {
        return run_error(e);
    }
    let r = &outcome.results;
    println!(
        "meta-loss {:.6} (initial {:.6}), {:.3} ms per meta-gradient step",
        r.final_meta_loss, r.initial_meta_loss, r.metagradient_ms
    );
    // Every method in one table: the main one, then each [[compare]].
    print!("{}", r.table());
    for (what, p) in [
        ("∂M/∂θ", &g_path),
        ("∂M/∂α", &ga_path),
        ("plot", &plot_path),
    ] {
        if let Some(p) = p {
            println!("{what} written to {}", p.display());
        }
    }
    println!("results written to {}", out.display());
    ExitCode::SUCCESS
}

/// `blo run` for a toy config (`problem.kind` bda-toy, quadratic-toy or iaptt-toy):
/// several methods from the same start, their curves in the results and the plot.
fn run_toy(args: Args) -> ExitCode {
    let experiment = match ToyExperiment::from_file(&args.config) {
        Ok(e) => e,
        Err(e) => return config_error(e),
    };
    if args.profile {
        return config_error("--profile is not supported for toy configs");
    }
    let out = default_out(&args);
    let plot_path = experiment
        .config()
        .plot_out
        .as_deref()
        .map(|p| beside(&out, p));
    if let Err(code) = check_run_outputs(
        &args,
        &out,
        &[("plot_out", plot_path.as_deref())],
        &experiment.input_files(),
    ) {
        return code;
    }
    let (device, reason) = match experiment.open_device() {
        Ok(d) => d,
        Err(e) => return run_error(e),
    };
    println!("device: {reason}");
    let names = experiment.method_names();
    let c = experiment.config();
    println!(
        "problem {}, methods {}, {} outer step(s) each",
        experiment.problem_name(),
        names.join(", "),
        c.outer.steps
    );
    let total = c.outer.steps + 1;
    let every = total.div_ceil(10).max(1);
    let results = experiment.run(&device, &reason, &mut |m, s| {
        if s.step % every == 0 || s.step + 1 == total {
            println!(
                "  {:<24} step {:>5}  F {:<12.6} ‖x − x*‖ {:<10.3e} f {:.6}",
                names[m], s.step, s.outer_loss, s.distance, s.inner_loss
            );
        }
    });
    let results = match results {
        Ok(r) => r,
        Err(e) => return run_error(e),
    };
    let mut files = match results_file(&results, &out) {
        Ok(f) => vec![f],
        Err(e) => return run_error(e),
    };
    if let Some(p) = &plot_path {
        let curve = |title: &str, y: &str, f: &dyn Fn(&blo::experiment::toys::ToyStep) -> f64| {
            crate::plot::LinePlot {
                title: format!("{title} on {}", results.problem),
                x_label: "outer step".into(),
                y_label: y.into(),
                series: results
                    .runs
                    .iter()
                    .map(|r| crate::plot::Series {
                        name: r.method.clone(),
                        points: r.steps.iter().map(|s| (s.step as f64, f(s))).collect(),
                    })
                    .collect(),
            }
        };
        let svg = crate::plot::stack(&[
            curve("F(x, y)", "outer objective F", &|s| s.outer_loss),
            curve("distance to x*", "‖x − x*‖", &|s| s.distance),
            curve("f(x, y)", "inner objective f", &|s| s.inner_loss),
        ]);
        files.push(Output {
            path: p,
            bytes: svg.into_bytes(),
            what: "plot_out",
        });
    }
    if let Err(e) = write_all_or_nothing(&files) {
        return run_error(e);
    }
    println!("{:<26} {:>14} {:>14}", "method", "final F", "‖x − x*‖");
    for r in &results.runs {
        println!(
            "{:<26} {:>14.6} {:>14.3e}",
            r.method, r.final_outer_loss, r.final_distance
        );
    }
    println!("results written to {}", out.display());
    if let Some(p) = &plot_path {
        println!("plot written to {}", p.display());
    }
    ExitCode::SUCCESS
}
