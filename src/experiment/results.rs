//! The results JSON of an experiment, and writing files all-or-nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// ‖∇_w L_in‖ where the inner solve stopped, with `inner.tol`; else null.
    #[serde(default)]
    pub inner_grad_norm: Option<f64>,
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
            inner_grad_norm: s.report.inner_grad_norm,
            stored_bytes: s.report.stored_bytes,
            dispatches: s.report.dispatches,
        }
    }
}

/// Final metrics of a run. The classifier metrics are of the final classifier: the
/// inner variables w = [W, b] of the last hypergradient evaluation (at the final λ), as
/// fractions in [0, 1] of rows whose arg-max logit is the label.
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
    /// Validation accuracy of the final classifier (logistic, hyper-cleaning), else null.
    pub val_accuracy: Option<f64>,
    /// Training accuracy of the final classifier against the training labels as given,
    /// corrupted ones included (logistic, hyper-cleaning), else null. On hyper-cleaning,
    /// a value near 1 means the classifier fits the noise.
    #[serde(default)]
    pub train_accuracy: Option<f64>,
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
            train_accuracy: o.train_accuracy,
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
/// directory, then renamed over `path`, so a failure leaves no partial file (one output
/// of [`write_all_or_nothing`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_all_or_nothing(&[Output {
        path,
        bytes: bytes.to_vec(),
        what: "output",
    }])
    .map_err(std::io::Error::other)
}

/// One output of a command: where it goes and its bytes.
pub struct Output<'a> {
    /// The file to write.
    pub path: &'a Path,
    /// Its contents.
    pub bytes: Vec<u8>,
    /// What it is, for messages (`--out`, `hypergradient_out`).
    pub what: &'a str,
}

/// The path as the file system would resolve it: its directory made absolute and
/// canonical (the file itself may not exist yet), so that two spellings of one file
/// compare equal.
fn resolved(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

/// Checks, before any work, that each output (`what`, `path`) can be written: it names
/// a file (not a directory, not empty), its directory exists and accepts a new file,
/// and it is neither another output nor one of the `inputs` (the config, data files).
/// The message names the output and what is wrong.
pub fn check_outputs(outputs: &[(&str, &Path)], inputs: &[&Path]) -> Result<(), String> {
    for (i, (what, path)) in outputs.iter().enumerate() {
        let shown = path.display();
        if path.as_os_str().is_empty() || path.file_name().is_none() {
            return Err(format!("{what} `{shown}` does not name a file"));
        }
        if path.is_dir() {
            return Err(format!("{what} {shown} is a directory; give a file name"));
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(format!(
                "{what} {shown}: the directory {} does not exist",
                dir.display()
            ));
        }
        let probe = dir.join(format!(".blo-probe.{}.tmp", std::process::id()));
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => {
                return Err(format!(
                    "{what} {shown}: cannot create files in {}: {e}",
                    dir.display()
                ));
            }
        }
        let me = resolved(path);
        for (other, other_path) in &outputs[..i] {
            if resolved(other_path) == me {
                return Err(format!(
                    "{what} {shown} is the same file as {other}; give them different paths"
                ));
            }
        }
        for input in inputs {
            if resolved(input) == me {
                return Err(format!(
                    "{what} {shown} is an input of the run ({}); writing it would destroy it",
                    input.display()
                ));
            }
        }
    }
    Ok(())
}

/// Writes every output or none: each goes to a temporary file beside it first; only
/// when all are written are they renamed into place, a file they replace having been
/// moved aside, and on any failure the files moved aside are put back and the
/// temporary ones removed. So a failure never leaves a partial output nor removes a
/// file that existed before.
pub fn write_all_or_nothing(outputs: &[Output<'_>]) -> Result<(), String> {
    write_all_with(outputs, &|from, to| std::fs::rename(from, to))
}

/// [`write_all_or_nothing`] with the rename it uses given (tests make it fail).
fn write_all_with(
    outputs: &[Output<'_>],
    rename: &dyn Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<(), String> {
    if let Some(o) = outputs.iter().find(|o| o.path.is_dir()) {
        return Err(format!("{} {} is a directory", o.what, o.path.display()));
    }
    let pid = std::process::id();
    let side = |p: &Path, tag: &str| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        p.with_file_name(format!(".{name}.{pid}.{tag}"))
    };
    let mut temps: Vec<PathBuf> = Vec::new();
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for o in outputs {
        let tmp = side(o.path, "tmp");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&o.bytes)?;
            f.sync_all()
        })();
        temps.push(tmp);
        if let Err(e) = written {
            cleanup(&temps);
            return Err(format!("cannot write {} {}: {e}", o.what, o.path.display()));
        }
    }
    // Move what exists aside, then the new files in; undo on the first failure.
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut placed: Vec<&Path> = Vec::new();
    let undo = |moved: &[(PathBuf, PathBuf)], placed: &[&Path]| {
        for p in placed {
            let _ = std::fs::remove_file(p);
        }
        for (backup, original) in moved {
            let _ = rename(backup, original);
        }
    };
    for (o, tmp) in outputs.iter().zip(&temps) {
        if o.path.exists() {
            let backup = side(o.path, "old");
            if let Err(e) = rename(o.path, &backup) {
                undo(&moved, &placed);
                cleanup(&temps);
                return Err(format!(
                    "cannot replace {} {}: {e}",
                    o.what,
                    o.path.display()
                ));
            }
            moved.push((backup, o.path.to_path_buf()));
        }
        if let Err(e) = rename(tmp, o.path) {
            undo(&moved, &placed);
            cleanup(&temps);
            return Err(format!("cannot write {} {}: {e}", o.what, o.path.display()));
        }
        placed.push(o.path);
    }
    for (backup, _) in &moved {
        let _ = std::fs::remove_file(backup);
    }
    Ok(())
}

#[cfg(test)]
mod output_tests {
    use super::*;

    /// The defect of issue #13: the results write failing after the hypergradient was
    /// written removed the user's earlier hypergradient. Now neither output is placed
    /// unless both are written, and the earlier file keeps its contents.
    #[test]
    fn a_failed_output_leaves_every_earlier_file_as_it_was() {
        let dir = std::env::temp_dir().join(format!("blo-outputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join("h.npy");
        std::fs::write(&old, b"precious").unwrap();
        // The second output's directory does not exist: its write fails.
        let gone = dir.join("gone/r.json");
        let outputs = [
            Output {
                path: &old,
                bytes: b"new".to_vec(),
                what: "hypergradient_out",
            },
            Output {
                path: &gone,
                bytes: b"{}".to_vec(),
                what: "--out",
            },
        ];
        let e = write_all_or_nothing(&outputs).unwrap_err();
        assert!(e.contains("--out") && e.contains("gone"), "{e}");
        assert_eq!(std::fs::read(&old).unwrap(), b"precious");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["h.npy"], "no temporary or moved-aside file is left");

        // A directory in the way is refused before anything moves.
        let blocker = dir.join("r.json");
        std::fs::create_dir_all(blocker.join("inside")).unwrap();
        let outputs = [
            Output {
                path: &old,
                bytes: b"new".to_vec(),
                what: "hypergradient_out",
            },
            Output {
                path: &blocker,
                bytes: b"{}".to_vec(),
                what: "--out",
            },
        ];
        assert!(write_all_or_nothing(&outputs).is_err());
        assert_eq!(std::fs::read(&old).unwrap(), b"precious");
        assert!(blocker.join("inside").is_dir());
        std::fs::remove_dir_all(&blocker).unwrap();
        std::fs::write(&blocker, b"old results").unwrap();

        // Placing fails at every possible rename in turn (moving a file aside, placing
        // a new one): whatever was moved or placed is undone.
        for fail_at in 0..4 {
            let calls = std::cell::Cell::new(0);
            let flaky = |from: &Path, to: &Path| {
                calls.set(calls.get() + 1);
                if calls.get() == fail_at + 1 {
                    return Err(std::io::Error::other("injected failure"));
                }
                std::fs::rename(from, to)
            };
            let e = write_all_with(&outputs, &flaky).unwrap_err();
            assert!(e.contains("injected"), "{fail_at}: {e}");
            assert_eq!(std::fs::read(&old).unwrap(), b"precious", "{fail_at}");
            assert_eq!(
                std::fs::read(&blocker).unwrap(),
                b"old results",
                "{fail_at}"
            );
            assert_eq!(
                std::fs::read_dir(&dir).unwrap().count(),
                2,
                "{fail_at}: leftovers"
            );
        }

        // Both writable: both replaced, nothing left behind.
        write_all_or_nothing(&outputs).unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"new");
        assert_eq!(std::fs::read(&blocker).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
