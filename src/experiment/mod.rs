//! Experiments described by a TOML file: the config schema and its checks, running
//! the experiment on a device, and the results JSON. Needs the `config` feature (on by
//! default, through `cli`).
//!
//! This is what `blo run CONFIG.toml` does, usable from Rust:
//!
//! ```
//! use blo::experiment::{Config, Experiment};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let text = r#"
//!     device = "cpu"
//!     dtype = "f64"
//!     [problem]
//!     kind = "ridge"
//!     [data]
//!     source = "synthetic"
//!     n_train = 40
//!     n_val = 30
//!     features = 5
//!     [inner]
//!     kind = "gd"
//!     lr = 0.5
//!     steps = 50
//!     [method]
//!     kind = "cg"
//!     iters = 10
//! "#;
//! let file = std::path::Path::new("inline.toml");
//! let config = Config::from_toml_str(text, file)?;
//! let experiment = Experiment::from_config(config, file, std::path::Path::new("."))?;
//! let (device, reason) = experiment.open_device()?;
//! let outcome = experiment.run(&device, &mut |_step| {})?;
//! assert_eq!(outcome.hypergradient.len(), 5); // outer.steps = 0: one hypergradient
//! let results = experiment.results(&outcome, &device, &reason);
//! assert!(results.metrics.final_outer_loss.is_finite());
//! # Ok(()) }
//! ```
//!
//! Errors come in two kinds: a [`ConfigError`] (the file is wrong: it names the file,
//! the key and what was expected; found before anything runs) and a [`crate::Error`]
//! from the run itself.

mod config;
pub mod meta;
mod prepare;
mod results;
pub mod toys;

use std::fmt;
use std::path::{Path, PathBuf};

pub use config::{
    Config, DTypeName, DataConfig, DataSourceKind, DeviceSpec, InnerConfig, InnerKind,
    LambdaConfig, LambdaInit, MethodConfig, OuterConfigToml, OuterKind, ProblemConfig, ProblemKind,
};
pub use results::{
    DeviceRecord, Metrics, Output, Results, StepRecord, check_outputs, write_all_or_nothing,
    write_atomic,
};

use crate::bilevel::{
    HoagConfig, Inner, OuterConfig, Problem, SolveThen, Tolerance, Trace, TraceStep, hoag_with,
    optimize_with,
};
use crate::device::Device;
use crate::error::Result;
use crate::problems::data::{CleaningData, Matrix, Split};
use crate::problems::{HyperCleaning, Logistic, Ridge};
use crate::tensor::{DType, Tensor};

/// A mistake in an experiment file: which file, which key (dotted path, empty for the
/// file as a whole) and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// Dotted key path such as `method.k` (empty when the whole file is at fault).
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// 1-based line and column, when the parser knows them.
    pub position: Option<(usize, usize)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The data of an experiment on the host, checked against its problem.
#[derive(Debug, Clone)]
enum HostData {
    Ridge {
        x: Matrix,
        y: Vec<f64>,
        x_val: Matrix,
        y_val: Vec<f64>,
    },
    Logistic {
        train: Split,
        val: Split,
        classes: usize,
        per_feature: bool,
    },
    HyperCleaning {
        data: CleaningData,
        mu: f64,
        /// Whether `data.corrupted` is known (an F1 score can be reported).
        has_flags: bool,
    },
}

/// What the outer loop is. `Optimize` runs the config's hypergradient method.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    Optimize {
        inner: Inner,
        outer: OuterConfig,
        /// `inner.tol`: solve to it, then evaluate the method ([`SolveThen`]).
        tolerance: Option<Tolerance>,
    },
    Hoag(HoagConfig),
}

/// A checked experiment, ready to run on any device.
#[derive(Debug, Clone)]
pub struct Experiment {
    file: PathBuf,
    config: Config,
    data: HostData,
    lambda0: Vec<f64>,
    /// `inner.init`, flat in the problem's layout; `None` starts from w₀ = 0.
    w0: Option<Vec<f64>>,
    plan: Plan,
    dtype: DType,
}

/// The final metrics of a run on the host (see [`Metrics`] for the JSON form).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The outer loop's trace.
    pub trace: Trace,
    /// The last hypergradient, flattened, in f64.
    pub hypergradient: Vec<f64>,
    /// λ's shape.
    pub lambda_shape: Vec<usize>,
    /// λ after the last update, flattened, in f64.
    pub final_lambda: Vec<f64>,
    /// L_out at the last evaluation (at the final λ).
    pub final_outer_loss: f64,
    /// Test accuracy (hyper-cleaning).
    pub test_accuracy: Option<f64>,
    /// Corrupted-label F1 (hyper-cleaning with known corruption flags).
    pub corruption_f1: Option<f64>,
    /// Validation accuracy (logistic, hyper-cleaning).
    pub val_accuracy: Option<f64>,
    /// Training accuracy against the training labels as given, corrupted ones included
    /// (logistic, hyper-cleaning).
    pub train_accuracy: Option<f64>,
    /// Wall time of the whole run in seconds (problem set-up included).
    pub wall_time_s: f64,
}

enum Built {
    Ridge(Ridge),
    Logistic(Logistic),
    HyperCleaning(HyperCleaning),
}

impl Built {
    fn problem(&self) -> &dyn Problem {
        match self {
            Built::Ridge(p) => p,
            Built::Logistic(p) => p,
            Built::HyperCleaning(p) => p,
        }
    }
}

impl Experiment {
    /// The config this experiment was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The config file (as given).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// λ's initial value, flattened.
    pub fn lambda0(&self) -> &[f64] {
        &self.lambda0
    }

    /// Where `hypergradient_out` goes for a results file at `results`: relative paths
    /// are resolved against the results file's directory.
    pub fn hypergradient_path(&self, results: &Path) -> Option<PathBuf> {
        let p = self.config.hypergradient_out.as_ref()?;
        Some(if p.is_absolute() {
            p.clone()
        } else {
            results.parent().unwrap_or(Path::new(".")).join(p)
        })
    }

    /// The files the run reads: the config and every `.npy` it names (resolved as the
    /// config resolves them), so that no output overwrites one of them.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let base = self
            .file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let d = &self.config.data;
        let mut files = vec![self.file.clone()];
        let named = [
            &d.x_train,
            &d.y_train,
            &d.x_val,
            &d.y_val,
            &d.x_test,
            &d.y_test,
            &d.corrupted,
        ];
        files.extend(named.into_iter().flatten().map(|p| base.join(p)));
        if let LambdaInit::Npy(p) = &self.config.lambda.init {
            files.push(base.join(p));
        }
        if let Some(p) = &self.config.inner.init {
            files.push(base.join(p));
        }
        files
    }

    /// Opens the configured device; returns it with a sentence saying what was chosen.
    pub fn open_device(&self) -> Result<(Device, String)> {
        open_device(&self.config.device)
    }

    fn build(&self, device: &Device) -> Result<Built> {
        let dtype = self.dtype;
        Ok(match &self.data {
            HostData::Ridge { x, y, x_val, y_val } => {
                Built::Ridge(Ridge::new(x, y, x_val, y_val, device, dtype)?)
            }
            HostData::Logistic {
                train,
                val,
                classes,
                per_feature,
            } => Built::Logistic(Logistic::new(
                train,
                val,
                *classes,
                *per_feature,
                device,
                dtype,
            )?),
            HostData::HyperCleaning { data, mu, .. } => {
                Built::HyperCleaning(HyperCleaning::new(data, *mu, device, dtype)?)
            }
        })
    }

    /// Runs the experiment on `device`, calling `observe` after each outer step.
    pub fn run(&self, device: &Device, observe: &mut dyn FnMut(&TraceStep)) -> Result<Outcome> {
        let start = std::time::Instant::now();
        let built = self.build(device)?;
        let started;
        let problem: &dyn Problem = match &self.w0 {
            Some(flat) => {
                started = StartAt::new(built.problem(), flat, device, self.dtype)?;
                &started
            }
            None => built.problem(),
        };
        let lambda_shape = vec![self.lambda0.len()];
        let lambda = vec![crate::tensor::Tensor::from_f64(
            &self.lambda0,
            &lambda_shape,
            device,
            self.dtype,
        )?];
        let trace = match &self.plan {
            Plan::Optimize {
                inner,
                outer,
                tolerance,
            } => {
                let method = self.config.method.hypergradient_method();
                let method = method.expect("from_config plans HOAG (no such method) as Plan::Hoag");
                match tolerance {
                    Some(tolerance) => {
                        let solved = SolveThen {
                            method,
                            tolerance: *tolerance,
                        };
                        optimize_with(problem, &lambda, inner, &solved, outer, observe)?
                    }
                    None => optimize_with(problem, &lambda, inner, method, outer, observe)?,
                }
            }
            Plan::Hoag(c) => hoag_with(problem, &lambda, c, observe)?,
        };
        let hypergradient = flat(&trace.last.grad)?;
        let final_lambda = flat(&trace.lambda)?;
        let final_outer_loss = trace.last.report.outer_loss;
        let (mut test_accuracy, mut corruption_f1) = (None, None);
        let (mut val_accuracy, mut train_accuracy) = (None, None);
        match &built {
            Built::HyperCleaning(p) => {
                test_accuracy = Some(p.test_accuracy(&trace.w)?);
                val_accuracy = Some(p.val_accuracy(&trace.w)?);
                train_accuracy = Some(p.train_accuracy(&trace.w)?);
                if let HostData::HyperCleaning {
                    has_flags: true, ..
                } = self.data
                {
                    corruption_f1 = Some(p.corruption_f1(&trace.lambda)?);
                }
            }
            Built::Logistic(p) => {
                val_accuracy = Some(p.val_accuracy(&trace.w)?);
                train_accuracy = Some(p.train_accuracy(&trace.w)?);
            }
            Built::Ridge(_) => {}
        }
        Ok(Outcome {
            trace,
            hypergradient,
            lambda_shape,
            final_lambda,
            final_outer_loss,
            test_accuracy,
            corruption_f1,
            val_accuracy,
            train_accuracy,
            wall_time_s: start.elapsed().as_secs_f64(),
        })
    }

    /// The results record of a run (serialise it with serde_json).
    pub fn results(&self, outcome: &Outcome, device: &Device, reason: &str) -> Results {
        Results::new(self, outcome, device, reason)
    }

    /// Number of outer steps the plan takes (the trace has one more entry).
    pub fn outer_steps(&self) -> usize {
        match &self.plan {
            Plan::Optimize { outer, .. } => outer.steps,
            Plan::Hoag(c) => c.outer_steps,
        }
    }

    /// The method's name as in the config.
    pub fn method_name(&self) -> &'static str {
        self.config.method.name()
    }
}

/// A problem whose starting point w₀ (`init_w`) is given: `inner.init`. Every method
/// and both outer loops start (and, without warm starts, restart) from `init_w`.
struct StartAt<'p> {
    problem: &'p dyn Problem,
    w0: Vec<Tensor>,
}

impl<'p> StartAt<'p> {
    /// `flat` split into tensors shaped like the problem's own w₀ (the length was
    /// checked against the problem's layout with the config).
    fn new(problem: &'p dyn Problem, flat: &[f64], device: &Device, dtype: DType) -> Result<Self> {
        let like = problem.init_w()?;
        let mut w0 = Vec::with_capacity(like.len());
        let mut at = 0;
        for t in &like {
            let n = t.numel();
            let part = flat.get(at..at + n).ok_or_else(|| {
                crate::error::invalid(
                    "inner.init",
                    format!(
                        "w has {} values, the file {}",
                        like.iter().map(Tensor::numel).sum::<usize>(),
                        flat.len()
                    ),
                )
            })?;
            w0.push(crate::tensor::Tensor::from_f64(
                part,
                t.shape(),
                device,
                dtype,
            )?);
            at += n;
        }
        Ok(StartAt { problem, w0 })
    }
}

impl Problem for StartAt<'_> {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Ok(self.w0.clone())
    }
    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        self.problem.lambda_shapes()
    }
    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        self.problem.inner_loss(w, lambda)
    }
    fn outer_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        self.problem.outer_loss(w, lambda)
    }
    fn inner_solution(&self, lambda: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        self.problem.inner_solution(lambda)
    }
    fn inner_bounds(&self) -> Option<(f64, f64)> {
        self.problem.inner_bounds()
    }
    fn lambda_bounds(&self) -> Option<(f64, f64)> {
        self.problem.lambda_bounds()
    }
}

fn flat(ts: &[Tensor]) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for t in ts {
        out.extend(t.to_vec::<f64>()?);
    }
    Ok(out)
}

/// Opens a device by its config spelling; returns it with what was chosen and why.
pub fn open_device(spec: &DeviceSpec) -> Result<(Device, String)> {
    spec.open().map(|c| (c.device, c.reason))
}
