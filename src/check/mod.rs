//! The correctness checks behind `blo check`: every kernel, every gradient rule, the
//! second-order products, the linear solvers and every hypergradient method, run on a
//! chosen device in f32 and compared with the CPU backend in f64 on the same seeded
//! inputs. This is how to find out whether an adapter and its driver compute what blo
//! expects, before trusting a benchmark or an experiment on it.
//!
//! For code that embeds blo, the module also has the finite-difference check of a
//! hypergradient, [`fd_hypergradient`], and [`rel_err`], the error measure behind every
//! tolerance here.
//!
//! ```no_run
//! use blo::{Device, check};
//! # fn main() -> blo::Result<()> {
//! let results = check::run_checks(&Device::gpu()?);
//! for r in &results {
//!     println!("{}", r.line());
//! }
//! assert!(results.iter().all(|r| r.passed));
//! # Ok(()) }
//! ```
//!
//! A check is a function of a few seeded input tensors returning some output tensors;
//! [`Check::run`] evaluates it on the device with f32 inputs and reports the worst
//! norm-wise relative error ([`rel_err`]) over the outputs against an
//! oracle given the same values widened to f64. Tolerances follow the project's rule:
//! [`KERNEL_TOL`] for single kernels, gradients and second-order products,
//! [`HYPERGRADIENT_TOL`] for whole hypergradients, exact for 0/1 comparison masks.
//!
//! Which oracle a check uses:
//! - every kernel check (`unary/`, `binary/`, `matmul/`, `reduce/`, `loss/`, `index/`,
//!   `shape/`, `fill/`, `update/`) has a naive reference: plain loops in f64 in this
//!   file, sharing no code with blo's ops or CPU backend, so a bug in the CPU backend
//!   (in f32 and f64 alike) fails `blo check --device cpu` too. The CPU backend in f64
//!   is run as well and must agree with the reference within [`REFERENCE_TOL`], so the
//!   oracle of the other checks is itself checked, kernel by kernel;
//! - gradients, second-order products, solvers and hypergradients, where a naive
//!   reference would be a second autodiff, compare with the same code run by the CPU
//!   backend in f64: they test the device and f32 rounding, and rely on the kernel
//!   checks (and on the finite-difference tests) for the CPU backend itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::autodiff::{HvpOperator, grad, mixed, mixed_t};
use crate::bilevel::{Inner, InnerOptimizer, Method, Problem, hypergradient};
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::ops::binary::{ALL_BINARY, BinaryOp};
use crate::ops::unary::{ALL_UNARY, UnaryOp};
use crate::problems::data::{cleaning_split, synthetic_classification};
use crate::problems::{HyperCleaning, Ridge};
use crate::solvers::{CgOptions, conjugate_gradient, fixed_point, neumann};
use crate::tensor::{DType, Tensor};
use crate::testing::oracle_pair;

/// Relative-error tolerance of single kernels, gradients, HVPs, mixed products and
/// solver outputs (f32 against f64).
pub const KERNEL_TOL: f64 = 1e-4;
/// Relative-error tolerance of whole hypergradients, which chain hundreds of kernels.
pub const HYPERGRADIENT_TOL: f64 = 1e-3;
/// How far the CPU backend in f64 may be from a check's naive reference (norm-wise
/// relative), or exactly equal when the check itself is exact. Both sides are f64 and
/// differ only in the order of their roundings (~1e-13 for a million-term sum), so any
/// real bug is orders of magnitude above this.
pub const REFERENCE_TOL: f64 = 1e-10;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// The check's name, `family/what`, e.g. `unary/exp`, `grad/matmul/tn`.
    pub name: String,
    /// Worst norm-wise relative error over the outputs (NaN or ∞ when an output was
    /// NaN, infinite, or of the wrong shape).
    pub rel_err: f64,
    /// The tolerance it was held to.
    pub tol: f64,
    /// `rel_err ≤ tol` and no error.
    pub passed: bool,
    /// Why it failed other than by its error: an op's error, a shape mismatch, a panic.
    pub error: Option<String>,
    /// Wall time of the device side and the oracle together.
    pub elapsed: Duration,
}

impl CheckResult {
    /// One line: name, worst relative error, tolerance, time, `pass` or `FAIL` (and why).
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<40} rel err {:>9.2e}  tol {:.0e}  {:>7.1} ms  {}",
            self.name,
            self.rel_err,
            self.tol,
            self.elapsed.as_secs_f64() * 1e3,
            if self.passed { "pass" } else { "FAIL" }
        );
        if let Some(e) = &self.error {
            s += &format!("  ({e})");
        }
        s
    }
}

/// Compares outputs (one slice per output tensor) with the oracle's: the worst
/// norm-wise relative error, and a pass when it is within `tol`. Any length mismatch
/// or non-finite error fails. This is the whole verdict of every check.
pub fn verdict(name: &str, got: &[Vec<f64>], want: &[Vec<f64>], tol: f64) -> CheckResult {
    let mut worst = 0.0f64;
    let mut error = None;
    if got.len() != want.len() {
        error = Some(format!(
            "{} outputs, the oracle has {}",
            got.len(),
            want.len()
        ));
        worst = f64::INFINITY;
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = if g.len() != w.len() {
            error.get_or_insert(format!(
                "output {i} has {} elements, the oracle's has {}",
                g.len(),
                w.len()
            ));
            f64::INFINITY
        } else {
            rel_err(g, w)
        };
        // NaN must win the maximum: f64::max would drop it.
        if e.is_nan() || e > worst {
            worst = e;
        }
        if worst.is_nan() {
            break;
        }
    }
    CheckResult {
        name: name.to_string(),
        rel_err: worst,
        tol,
        passed: error.is_none() && worst.is_finite() && worst <= tol,
        error,
        elapsed: Duration::ZERO,
    }
}

/// A seeded input of a check, generated in f32 and widened exactly to f64 for the
/// oracle, so both sides see the same numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Uniform in [-1, 1) ([`crate::testing::oracle_pair`] with this shape and seed).
    Uniform(Vec<usize>, u64),
    /// Uniform in [lo, hi): the same draw mapped affinely, for ops with a restricted
    /// domain (log, sqrt, 1/x) or divisors kept away from zero.
    Range(Vec<usize>, u64, f32, f32),
    /// Exact values, e.g. class labels.
    Values(Vec<usize>, Vec<f32>),
}

impl Input {
    fn values(&self) -> (Vec<usize>, Vec<f32>) {
        match self {
            Input::Uniform(shape, seed) => (shape.clone(), oracle_pair(shape, *seed).0),
            Input::Range(shape, seed, lo, hi) => {
                let x = oracle_pair(shape, *seed).0;
                let v = x.iter().map(|u| lo + (hi - lo) * (u + 1.0) * 0.5).collect();
                (shape.clone(), v)
            }
            Input::Values(shape, v) => (shape.clone(), v.clone()),
        }
    }

    fn tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        let (shape, v) = self.values();
        match dtype {
            DType::F32 => Tensor::from_vec(v, &shape, device),
            DType::F64 => Tensor::from_vec(
                v.into_iter().map(f64::from).collect::<Vec<_>>(),
                &shape,
                device,
            ),
        }
    }
}

type CheckFn = Box<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>> + Send + Sync>;
type ReferenceFn = Box<dyn Fn(&[Vec<f64>]) -> Vec<Vec<f64>> + Send + Sync>;

/// One check: a name, a tolerance, seeded inputs and the computation. The function
/// must build everything from its inputs (their device and dtype say where it runs),
/// so the same code serves the device under test and the CPU backend in f64. An
/// optional naive reference ([`Check::with_reference`]) computes the expected outputs
/// without blo, and then is the oracle (see the module docs for which checks have one).
pub struct Check {
    name: String,
    tol: f64,
    inputs: Vec<Input>,
    f: CheckFn,
    reference: Option<ReferenceFn>,
    kernel_family: Option<&'static str>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("tol", &self.tol)
            .field("has_reference", &self.reference.is_some())
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A check of `f` on `inputs`, held to `tol`.
    pub fn new(
        name: impl Into<String>,
        tol: f64,
        inputs: Vec<Input>,
        f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            tol,
            inputs,
            f: Box::new(f),
            reference: None,
            kernel_family: None,
        }
    }

    /// The check runs the kernels of `family` (a family of
    /// [`GpuContext::kernel_variants`](crate::GpuContext::kernel_variants)), so it is run
    /// once more with each other variant of that family the adapter can run. Without
    /// it, a check named `unary/…`, `binary/…` or `fill/…` belongs to `elementwise`, one
    /// named `matmul/…`, `matvec/…`, `reduce/…`, `loss/…`, `index/…` or `update/…` to
    /// that family, and any other check to none.
    pub fn with_kernel_family(mut self, family: &'static str) -> Self {
        self.kernel_family = Some(family);
        self
    }

    /// The kernel family whose variants the check is repeated with, if any.
    pub fn kernel_family(&self) -> Option<&'static str> {
        self.kernel_family
            .or_else(|| match self.name.split('/').next()? {
                "unary" | "binary" | "fill" => Some("elementwise"),
                "matmul" => Some("matmul"),
                "matvec" => Some("matvec"),
                "reduce" => Some("reduce"),
                "loss" => Some("loss"),
                "index" => Some("index"),
                "update" => Some("update"),
                _ => None,
            })
    }

    /// The check with a naive reference as its oracle: `reference` gets the inputs'
    /// values widened to f64 (one flat row-major vector per input, in order) and returns
    /// the expected outputs, flat. It must not call blo (no tensors, no ops), so that it
    /// shares no bug with the code under test.
    pub fn with_reference(
        mut self,
        reference: impl Fn(&[Vec<f64>]) -> Vec<Vec<f64>> + Send + Sync + 'static,
    ) -> Self {
        self.reference = Some(Box::new(reference));
        self
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the check has a naive reference.
    pub fn has_reference(&self) -> bool {
        self.reference.is_some()
    }

    /// Runs the check on `device` (f32) and on the CPU in f64, and compares: the device
    /// with the naive reference when there is one (and the CPU in f64 with it too, within
    /// [`REFERENCE_TOL`]), otherwise the device with the CPU in f64. Errors and panics
    /// inside the check become a failed result, never a panic here.
    pub fn run(&self, device: &Device) -> CheckResult {
        let start = Instant::now();
        let eval = |device: &Device, dtype: DType| -> Result<Vec<Vec<f64>>> {
            let inputs: Vec<Tensor> = self
                .inputs
                .iter()
                .map(|i| i.tensor(device, dtype))
                .collect::<Result<_>>()?;
            let outputs = (self.f)(&inputs)?;
            outputs.iter().map(|t| t.to_vec::<f64>()).collect()
        };
        let outcome = guarded("the device", || eval(device, DType::F32)).and_then(|got| {
            let cpu = guarded("the f64 oracle", || eval(&Device::Cpu, DType::F64))?;
            let reference = match &self.reference {
                Some(r) => Some(guarded("the naive reference", || {
                    let host: Vec<Vec<f64>> = self
                        .inputs
                        .iter()
                        .map(|i| i.values().1.into_iter().map(f64::from).collect())
                        .collect();
                    Ok(r(&host))
                })?),
                None => None,
            };
            Ok((got, cpu, reference))
        });
        let mut result = match outcome {
            Ok((got, cpu, None)) => verdict(&self.name, &got, &cpu, self.tol),
            Ok((got, cpu, Some(want))) => {
                let mut r = verdict(&self.name, &got, &want, self.tol);
                let oracle = verdict(&self.name, &cpu, &want, self.tol.min(REFERENCE_TOL));
                if !oracle.passed {
                    r.passed = false;
                    let why = oracle.error.map(|e| format!(": {e}")).unwrap_or_default();
                    r.error.get_or_insert(format!(
                        "the CPU backend in f64 is off the naive reference by {:.2e}{why}",
                        oracle.rel_err
                    ));
                }
                r
            }
            Err(e) => CheckResult {
                name: self.name.clone(),
                rel_err: f64::NAN,
                tol: self.tol,
                passed: false,
                error: Some(e.to_string()),
                elapsed: Duration::ZERO,
            },
        };
        result.elapsed = start.elapsed();
        result
    }
}

/// `f()`, with a panic turned into an error that names `side`.
fn guarded<T>(side: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(invalid("check", format!("{side} panicked: {msg}")))
    })
}

/// Runs every check of [`checks`] on `device`.
pub fn run_checks(device: &Device) -> Vec<CheckResult> {
    run_checks_matching(device, None, |_| {})
}

/// Runs the checks whose name contains `filter` (all when `None`), calling
/// `on_result` after each one (for progress output). On a GPU, the checks of each kernel
/// family ([`Check::kernel_family`]) run once more for every variant of that family the
/// adapter can run besides its automatic choice, forced through
/// [`GpuContext::force_kernel`](crate::GpuContext::force_kernel) and named
/// `<check>@<variant>`; the automatic choice is restored after each variant (other
/// threads using the same context meanwhile run the forced variant too). With
/// elementwise fusion on, the elementwise, reduce and update checks also run unfused
/// (`<check>@unfused`), and forced variants always do.
pub fn run_checks_matching(
    device: &Device,
    filter: Option<&str>,
    mut on_result: impl FnMut(&CheckResult),
) -> Vec<CheckResult> {
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));
    let all = checks();
    let mut results = Vec::new();
    let mut emit = |r: CheckResult| {
        on_result(&r);
        results.push(r);
    };
    for c in all.iter().filter(|c| wanted(&c.name)) {
        emit(c.run(device));
    }
    // Every other kernel variant this adapter can run, forced in turn, on the checks of
    // its family (`matmul/nn@portable`); the automatic choice is restored after each.
    if let Device::Gpu(ctx) = device {
        // With elementwise fusion on, the checks above ran the generated kernels; the
        // families fusion replaces run once more unfused (`unary/exp_7@unfused`), and the
        // forced variants run unfused, since fusion would bypass them.
        let fusion = ctx.fusion();
        ctx.set_fusion(false);
        if fusion {
            for c in all
                .iter()
                .filter(|c| matches!(c.kernel_family(), Some("elementwise" | "reduce" | "update")))
            {
                let name = format!("{}@unfused", c.name);
                if wanted(&name) {
                    emit(CheckResult {
                        name,
                        ..c.run(device)
                    });
                }
            }
        }
        for variant in ctx.kernel_variants() {
            if variant.default || !variant.runnable() {
                continue;
            }
            let forced = ctx.force_kernel(variant.family, Some(variant.name));
            for c in all
                .iter()
                .filter(|c| c.kernel_family() == Some(variant.family))
            {
                let name = format!("{}@{}", c.name, variant.name);
                if !wanted(&name) {
                    continue;
                }
                emit(match &forced {
                    Ok(()) => CheckResult {
                        name,
                        ..c.run(device)
                    },
                    Err(e) => CheckResult {
                        name,
                        rel_err: f64::NAN,
                        tol: c.tol,
                        passed: false,
                        error: Some(e.to_string()),
                        elapsed: Duration::ZERO,
                    },
                });
            }
            // Restoring the automatic choice of a family that exists cannot fail.
            let _ = ctx.force_kernel(variant.family, None);
        }
        ctx.set_fusion(fusion);
    }
    results
}

mod fd;
mod gradients;
mod hypergradients;
mod kernels;
mod naive;

pub use fd::{fd_hypergradient, rel_err};
use gradients::{gradient_checks, second_order_checks};
use hypergradients::hypergradient_checks;
use kernels::kernel_checks;

/// Every check, in the order `blo check` prints them.
pub fn checks() -> Vec<Check> {
    let mut v = Vec::new();
    kernel_checks(&mut v);
    gradient_checks(&mut v);
    second_order_checks(&mut v);
    hypergradient_checks(&mut v);
    v
}

// ---- the list ---------------------------------------------------------------------

pub(super) use Input::{Range, Uniform, Values};

pub(super) fn u(shape: &[usize], seed: u64) -> Input {
    Uniform(shape.to_vec(), seed)
}

pub(super) fn labels(n: usize, classes: usize) -> Input {
    Values(
        vec![n],
        (0..n).map(|i| ((i * 7 + 3) % classes) as f32).collect(),
    )
}

/// A gradient of a scalar `loss` with respect to `wrt`, as constants.
pub(super) fn grads(loss: &Tensor, wrt: &[&Tensor]) -> Result<Vec<Tensor>> {
    grad(loss, wrt, false)
}

/// A scalar that depends on every element of `y` with random weights `c` (y's shape),
/// so a gradient check sees a non-trivial upstream gradient.
pub(super) fn project(y: &Tensor, c: &Tensor) -> Result<Tensor> {
    y.dot(c)
}

pub(super) fn unary_input(op: UnaryOp, shape: &[usize], seed: u64) -> Input {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip => Range(shape.to_vec(), seed, 0.25, 2.0),
        _ => u(shape, seed),
    }
}

/// The (a, b) of `a·x + b` in the scale_shift checks.
pub(super) const SCALE_SHIFT: (f64, f64) = (0.75, -0.5);

pub(super) fn apply_unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    match op {
        UnaryOp::ScaleShift => x.scale_shift(SCALE_SHIFT.0, SCALE_SHIFT.1),
        _ => x.unary(op),
    }
}

pub(super) fn lower(op: impl std::fmt::Debug) -> String {
    let s = format!("{op:?}");
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

pub(super) fn is_comparison(op: BinaryOp) -> bool {
    matches!(
        op,
        BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq
    )
}

#[cfg(test)]
mod tests;
