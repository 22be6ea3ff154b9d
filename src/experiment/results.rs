//! The results JSON of an experiment, and writing files all-or-nothing.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::Config;
use super::{Experiment, Outcome};
use crate::bilevel::TraceStep;
use crate::device::{AdapterInfo, Device, GpuProfile};

/// One results file (`blo run --out RESULTS.json`). Every field is always present;
/// metrics that do not apply to the problem are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// blo's version.
    pub blo_version: String,
    /// The config file as given on the command line.
    pub config_file: String,
    /// The parsed config, echoed (defaults not filled in).
    pub config: Config,
    /// The device the run used.
    pub device: DeviceRecord,
    /// Problem kind, method name, λ's length.
    pub problem: String,
    /// The method's name (`hoag` for HOAG).
    pub method: String,
    /// Number of elements of λ.
    pub lambda_len: usize,
    /// One record per hypergradient evaluation: `outer.steps + 1` of them (the last at
    /// the final λ), or one for `outer.steps = 0`.
    pub trace: Vec<StepRecord>,
    /// Final metrics.
    pub metrics: Metrics,
    /// λ after the last update.
    pub final_lambda: Vec<f64>,
    /// The path `hypergradient_out` was written to, if any.
    pub hypergradient_out: Option<String>,
    /// With `blo run --profile` on a GPU: the run's dispatches and device time per
    /// kernel (see [`GpuProfile`]); `null` otherwise.
    #[serde(default)]
    pub gpu_profile: Option<GpuProfile>,
}

/// The device of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// `cpu` or `gpu:<adapter> (<backend>)`.
    pub name: String,
    /// What was chosen and why.
    pub reason: String,
    /// The adapter (null on the CPU).
    pub adapter: Option<AdapterInfo>,
}

impl DeviceRecord {
    /// The record of `device`, with the sentence saying why it was chosen.
    pub fn new(device: &Device, reason: &str) -> Self {
        DeviceRecord {
            name: device.to_string(),
            reason: reason.to_string(),
            adapter: device.gpu_context().map(|c| c.info().clone()),
        }
    }
}

/// One hypergradient evaluation of the trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Outer step index, from 0.
    pub step: usize,
    /// L_out where the hypergradient was evaluated (before this step's update).
    pub outer_loss: f64,
    /// ‖hypergradient‖₂.
    pub hypergrad_norm: f64,
    /// Seconds since the start of the outer loop.
    pub elapsed_s: f64,
    /// Seconds this hypergradient took (inner steps included).
    pub hypergradient_s: f64,
    /// Inner steps taken.
    pub inner_steps: usize,
    /// CG iterations or series terms.
    pub solver_iterations: usize,
    /// Final residual norm of the linear solve, where there is one.
    pub residual: Option<f64>,
    /// Bytes of state the method stored.
    pub stored_bytes: u64,
    /// GPU dispatches (null on the CPU).
    pub dispatches: Option<u64>,
}

impl From<&TraceStep> for StepRecord {
    fn from(s: &TraceStep) -> Self {
        StepRecord {
            step: s.step,
            outer_loss: s.outer_loss,
            hypergrad_norm: s.hypergrad_norm,
            elapsed_s: s.elapsed_s,
            hypergradient_s: s.report.wall_time.as_secs_f64(),
            inner_steps: s.report.inner_steps,
            solver_iterations: s.report.solver_iterations,
            residual: s.report.residual,
            stored_bytes: s.report.stored_bytes,
            dispatches: s.report.dispatches,
        }
    }
}

/// Final metrics of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// L_out at the last evaluation (at the final λ).
    pub final_outer_loss: f64,
    /// L_out at the first evaluation (at the initial λ).
    pub initial_outer_loss: f64,
    /// ‖last hypergradient‖₂.
    pub final_hypergrad_norm: f64,
    /// Test accuracy of the final classifier (hyper-cleaning), else null.
    pub test_accuracy: Option<f64>,
    /// F1 of flagging λ_i < 0 as corrupted (hyper-cleaning with known flags), else null.
    pub corruption_f1: Option<f64>,
    /// Validation accuracy of the final classifier (logistic), else null.
    pub val_accuracy: Option<f64>,
    /// Mean seconds per hypergradient.
    pub mean_hypergradient_s: f64,
    /// Largest stored state of any step, in bytes.
    pub peak_stored_bytes: u64,
    /// Wall time of the run (set-up, outer loop and metrics), seconds.
    pub wall_time_s: f64,
}

impl Metrics {
    /// The metrics of an outcome.
    pub fn new(o: &Outcome) -> Self {
        let steps = &o.trace.steps;
        let n = steps.len().max(1) as f64;
        Metrics {
            final_outer_loss: o.final_outer_loss,
            initial_outer_loss: steps.first().map_or(f64::NAN, |s| s.outer_loss),
            final_hypergrad_norm: steps.last().map_or(f64::NAN, |s| s.hypergrad_norm),
            test_accuracy: o.test_accuracy,
            corruption_f1: o.corruption_f1,
            val_accuracy: o.val_accuracy,
            mean_hypergradient_s: steps
                .iter()
                .map(|s| s.report.wall_time.as_secs_f64())
                .sum::<f64>()
                / n,
            peak_stored_bytes: steps
                .iter()
                .map(|s| s.report.stored_bytes)
                .max()
                .unwrap_or(0),
            wall_time_s: o.wall_time_s,
        }
    }
}

impl Results {
    pub(crate) fn new(e: &Experiment, o: &Outcome, device: &Device, reason: &str) -> Self {
        Results {
            blo_version: env!("CARGO_PKG_VERSION").to_string(),
            config_file: e.file.display().to_string(),
            config: e.config.clone(),
            device: DeviceRecord::new(device, reason),
            problem: e.config.problem.kind.name().to_string(),
            method: e.method_name().to_string(),
            lambda_len: e.lambda0.len(),
            trace: o.trace.steps.iter().map(StepRecord::from).collect(),
            metrics: Metrics::new(o),
            final_lambda: o.final_lambda.clone(),
            hypergradient_out: None,
            gpu_profile: None,
        }
    }
}

/// Writes `bytes` to `path` all-or-nothing: into a temporary file in the same
/// directory, then renamed over `path`, so a failure leaves no partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
