//! `blo` with no subcommand: the data hyper-cleaning demo on the built-in digits.
//!
//! Half of 500 training labels are corrupted; λ holds one weight sigmoid(λ_i) per
//! training example, and the outer loop (Adam on λ, warm-started inner GD) learns to
//! down-weight the corrupted ones by minimising the loss on 500 clean validation
//! examples. Every method gets the same budget (inner steps T per outer step, the same
//! outer steps); the table compares test accuracy, how well λ < 0 flags the corrupted
//! labels, time per hypergradient and stored state.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use blo::bilevel::methods::{Cg, Forward, Neumann, Rad, Trad};
use blo::experiment::{
    Config, DTypeName, DataConfig, DataSourceKind, DeviceRecord, DeviceSpec, Experiment,
    InnerConfig, InnerKind, LambdaConfig, MethodConfig, OuterConfigToml, OuterKind, Output,
    ProblemConfig, ProblemKind, Results, check_outputs, open_device, write_all_or_nothing,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::plot::{LinePlot, Series};

/// Options of the demo (all have defaults that finish in under a minute on 2 cores).
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Device: best, cpu, gpu, an adapter index from `blo devices`, or part of an
    /// adapter's name.
    #[arg(long, value_name = "DEVICE", default_value = "best")]
    pub device: DeviceSpec,
    /// Outer steps (Adam on λ) per method.
    #[arg(long, default_value_t = 20)]
    pub outer_steps: usize,
    /// Inner gradient-descent steps T per outer step (warm-started). Forward mode costs
    /// 1 + |λ| = 501 backward passes per inner step, which sets the default budget.
    #[arg(long, default_value_t = 8)]
    pub inner_steps: usize,
    /// Directory for blo-demo.json and blo-demo.svg.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Seed of the train/validation/test split and of the label corruption.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const INNER_LR: f64 = 1.0;
const OUTER_LR: f64 = 0.3;

fn cg(iters: usize) -> MethodConfig {
    MethodConfig::Cg(Cg {
        iters,
        tol: None,
        damping: 0.0,
    })
}

/// The compared methods with their parameters; `label` is the table's name.
fn methods(t: usize) -> Vec<(String, MethodConfig)> {
    let trad_k = (t / 3).max(1);
    vec![
        ("rad".into(), MethodConfig::Rad(Rad)),
        (
            format!("trad(K={trad_k})"),
            MethodConfig::Trad(Trad { k: trad_k }),
        ),
        ("forward".into(), MethodConfig::Forward(Forward)),
        ("cg(20)".into(), cg(20)),
        (
            "neumann(20)".into(),
            MethodConfig::Neumann(Neumann {
                k: 20,
                eta: INNER_LR,
            }),
        ),
    ]
}

fn config(args: &Args, m: MethodConfig, inner_steps: usize, outer_steps: usize) -> Config {
    Config {
        device: args.device.clone(),
        dtype: DTypeName::F32,
        hypergradient_out: None,
        problem: ProblemConfig {
            kind: ProblemKind::HyperCleaning,
            mu: None,
            per_feature: None,
        },
        data: DataConfig {
            source: DataSourceKind::Digits,
            seed: Some(args.seed),
            ..DataConfig::default()
        },
        lambda: LambdaConfig::default(),
        inner: InnerConfig {
            kind: InnerKind::Gd,
            lr: INNER_LR,
            steps: Some(inner_steps),
            momentum: None,
            init: None,
            tol: None,
            max_steps: None,
            check_every: None,
            solver: None,
        },
        method: m,
        outer: OuterConfigToml {
            steps: outer_steps,
            kind: Some(OuterKind::Adam),
            lr: Some(OUTER_LR),
            ..OuterConfigToml::default()
        },
    }
}

#[derive(Serialize)]
struct DemoSettings {
    problem: &'static str,
    data: &'static str,
    seed: u64,
    inner: String,
    outer: String,
    baseline: String,
}

#[derive(Serialize)]
struct DemoRun {
    label: String,
    results: Results,
}

#[derive(Serialize)]
struct DemoFile {
    blo_version: &'static str,
    settings: DemoSettings,
    device: DeviceRecord,
    baseline: DemoRun,
    methods: Vec<DemoRun>,
    wall_time_s: f64,
}

fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

/// Runs the demo.
pub fn run(args: Args) -> ExitCode {
    let start = Instant::now();
    if args.inner_steps == 0 || args.outer_steps == 0 {
        return fail("--inner-steps and --outer-steps must be at least 1", 2);
    }
    if !args.out_dir.is_dir() {
        return fail(
            format!("--out-dir {} is not a directory", args.out_dir.display()),
            2,
        );
    }
    let json_path = args.out_dir.join("blo-demo.json");
    let svg_path = args.out_dir.join("blo-demo.svg");
    // Both outputs checked before the demo runs (minutes on a slow device).
    if let Err(e) = check_outputs(
        &[
            ("the demo's JSON", &json_path),
            ("the demo's plot", &svg_path),
        ],
        &[],
    ) {
        return fail(e, 2);
    }
    let (device, reason) = match open_device(&args.device) {
        Ok(d) => d,
        Err(e) => return fail(e, 1),
    };
    let (t, s) = (args.inner_steps, args.outer_steps);
    println!(
        "blo demo: data hyper-cleaning on the UCI digits (500 train with 50% corrupted labels, 500 validation, 797 test)"
    );
    println!("device: {reason}");
    if let Some(ctx) = device.gpu_context()
        && !ctx.info().is_hardware()
    {
        println!(
            "note: {} is a software adapter; forward mode's 501 backward passes per inner step take tens of seconds each there (measured ~20 s on llvmpipe, 2 cores), so use --inner-steps 2 --outer-steps 1 or --device cpu",
            ctx.info().name
        );
    }
    println!(
        "budget per method: {s} outer steps of Adam (lr {OUTER_LR}) on λ ∈ R^500, each after T = {t} warm-started GD steps (lr {INNER_LR})"
    );

    let prepare = |m: MethodConfig, inner: usize, outer: usize| {
        Experiment::from_config(
            config(&args, m, inner, outer),
            Path::new("<demo>"),
            Path::new("."),
        )
    };
    // Uniform weights get the same total training as the warm-started methods.
    let baseline_steps = t * (s + 1);
    let baseline = match prepare(cg(1), baseline_steps, 0) {
        Ok(e) => e,
        Err(e) => return fail(e, 2),
    };
    let plan = methods(t);
    let mut experiments = Vec::new();
    for (label, m) in &plan {
        match prepare(m.clone(), t, s) {
            Ok(e) => experiments.push((label.clone(), e)),
            Err(e) => return fail(e, 2),
        }
    }

    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30.cyan/blue}] {pos:>3}/{len} {elapsed:>4} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let make_bar = |label: &str, len: usize| {
        let b = bars.add(ProgressBar::new(len as u64));
        b.set_style(style.clone());
        b.set_prefix(label.to_string());
        b
    };
    let baseline_bar = make_bar("uniform", 1);
    let method_bars: Vec<ProgressBar> = experiments
        .iter()
        .map(|(label, _)| make_bar(label, s + 1))
        .collect();
    let live = !bars.is_hidden();

    let run_one = |label: &str, e: &Experiment, bar: &ProgressBar| {
        bar.reset_elapsed();
        if live {
            // Forward mode's outer steps take seconds; keep the clock moving.
            bar.enable_steady_tick(std::time::Duration::from_millis(250));
        }
        let outcome = e.run(&device, &mut |step| {
            bar.inc(1);
            bar.set_message(format!("L_out {:.4}", step.outer_loss));
        })?;
        let mut summary = format!("test acc {:.3}", outcome.test_accuracy.unwrap_or(f64::NAN));
        if e.outer_steps() > 0 {
            summary.push_str(&format!(
                ", F1 {:.3}",
                outcome.corruption_f1.unwrap_or(f64::NAN)
            ));
        }
        summary.push_str(&format!(" ({:.2} s)", outcome.wall_time_s));
        if live {
            bar.finish_with_message(summary);
        } else {
            println!("{label:>12}: {summary}");
        }
        Ok::<_, blo::Error>(DemoRun {
            label: label.to_string(),
            results: e.results(&outcome, &device, &reason),
        })
    };
    let base = match run_one("uniform", &baseline, &baseline_bar) {
        Ok(r) => r,
        Err(e) => return fail(e, 1),
    };
    let mut runs = Vec::new();
    for ((label, e), bar) in experiments.iter().zip(&method_bars) {
        match run_one(label, e, bar) {
            Ok(r) => runs.push(r),
            Err(e) => return fail(format!("{label}: {e}"), 1),
        }
    }
    drop(bars);

    println!();
    println!(
        "{:<14} {:>9} {:>8} {:>16} {:>12}  device",
        "method", "test acc", "F1", "hypergrad/step", "peak stored"
    );
    let dev = device.to_string();
    let m = &base.results.metrics;
    println!(
        "{:<14} {:>9.3} {:>8} {:>16} {:>12}  {dev}",
        "uniform λ=0",
        m.test_accuracy.unwrap_or(f64::NAN),
        "-",
        "-",
        "-"
    );
    for r in &runs {
        let m = &r.results.metrics;
        println!(
            "{:<14} {:>9.3} {:>8.3} {:>13.1} ms {:>12}  {dev}",
            r.label,
            m.test_accuracy.unwrap_or(f64::NAN),
            m.corruption_f1.unwrap_or(f64::NAN),
            m.mean_hypergradient_s * 1e3,
            bytes(m.peak_stored_bytes)
        );
    }
    println!(
        "(uniform λ=0: plain training on the noisy labels for T·(outer steps + 1) = {baseline_steps} GD steps, the same total the warm-started methods get)"
    );

    let plot = LinePlot {
        title: format!("Data hyper-cleaning on digits: validation loss ({dev})"),
        x_label: "outer step".into(),
        y_label: "validation cross-entropy L_out".into(),
        series: runs
            .iter()
            .map(|r| Series {
                name: r.label.clone(),
                points: r
                    .results
                    .trace
                    .iter()
                    .map(|st| (st.step as f64, st.outer_loss))
                    .collect(),
            })
            .collect(),
    };
    let file = DemoFile {
        blo_version: env!("CARGO_PKG_VERSION"),
        settings: DemoSettings {
            problem: "hyper-cleaning",
            data: "digits: 500 train (50% labels corrupted), 500 validation, 797 test",
            seed: args.seed,
            inner: format!("gd lr {INNER_LR}, T = {t} steps, warm start"),
            outer: format!("adam lr {OUTER_LR}, {s} steps"),
            baseline: format!("uniform weights λ = 0, {baseline_steps} gd steps"),
        },
        device: DeviceRecord::new(&device, &reason),
        baseline: base,
        methods: runs,
        wall_time_s: start.elapsed().as_secs_f64(),
    };
    let json = match serde_json::to_vec_pretty(&file) {
        Ok(j) => j,
        Err(e) => return fail(format!("cannot encode the results: {e}"), 1),
    };
    // The JSON and the plot together or neither.
    let outputs = [
        Output {
            path: &json_path,
            bytes: json,
            what: "the demo's JSON",
        },
        Output {
            path: &svg_path,
            bytes: plot.to_svg().into_bytes(),
            what: "the demo's plot",
        },
    ];
    if let Err(e) = write_all_or_nothing(&outputs) {
        return fail(e, 1);
    }
    println!(
        "wrote {} and {} in {:.1} s",
        json_path.display(),
        svg_path.display(),
        start.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
