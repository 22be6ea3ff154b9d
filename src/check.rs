//! The correctness checks behind `blo check`: every kernel, every gradient rule, the
//! second-order products, the linear solvers and every hypergradient method, run on a
//! chosen device in f32 and compared with the CPU backend in f64 on the same seeded
//! inputs. This is how to find out whether an adapter and its driver compute what blo
//! expects, before trusting a benchmark or an experiment on it.
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
//! norm-wise relative error ([`crate::testing::rel_err`]) over the outputs against an
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
use crate::ops::matmul::{GpuPlan, matmul_with};
use crate::ops::unary::{ALL_UNARY, UnaryOp};
use crate::problems::data::{cleaning_split, synthetic_classification};
use crate::problems::{HyperCleaning, Ridge};
use crate::solvers::{CgOptions, conjugate_gradient, fixed_point, neumann};
use crate::tensor::{DType, Tensor};
use crate::testing::{oracle_pair, rel_err};

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
        }
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
/// `on_result` after each one (for progress output).
pub fn run_checks_matching(
    device: &Device,
    filter: Option<&str>,
    mut on_result: impl FnMut(&CheckResult),
) -> Vec<CheckResult> {
    checks()
        .iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        .map(|c| {
            let r = c.run(device);
            on_result(&r);
            r
        })
        .collect()
}

// ---- the list ---------------------------------------------------------------------

use Input::{Range, Uniform, Values};

fn u(shape: &[usize], seed: u64) -> Input {
    Uniform(shape.to_vec(), seed)
}

fn labels(n: usize, classes: usize) -> Input {
    Values(
        vec![n],
        (0..n).map(|i| ((i * 7 + 3) % classes) as f32).collect(),
    )
}

/// A gradient of a scalar `loss` with respect to `wrt`, as constants.
fn grads(loss: &Tensor, wrt: &[&Tensor]) -> Result<Vec<Tensor>> {
    grad(loss, wrt, false)
}

/// A scalar that depends on every element of `y` with random weights `c` (y's shape),
/// so a gradient check sees a non-trivial upstream gradient.
fn project(y: &Tensor, c: &Tensor) -> Result<Tensor> {
    y.dot(c)
}

fn unary_input(op: UnaryOp, shape: &[usize], seed: u64) -> Input {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip => Range(shape.to_vec(), seed, 0.25, 2.0),
        _ => u(shape, seed),
    }
}

/// The (a, b) of `a·x + b` in the scale_shift checks.
const SCALE_SHIFT: (f64, f64) = (0.75, -0.5);

fn apply_unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    match op {
        UnaryOp::ScaleShift => x.scale_shift(SCALE_SHIFT.0, SCALE_SHIFT.1),
        _ => x.unary(op),
    }
}

fn lower(op: impl std::fmt::Debug) -> String {
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

fn is_comparison(op: BinaryOp) -> bool {
    matches!(
        op,
        BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq
    )
}

/// Every check, in the order `blo check` prints them.
pub fn checks() -> Vec<Check> {
    let mut v = Vec::new();
    kernel_checks(&mut v);
    gradient_checks(&mut v);
    second_order_checks(&mut v);
    hypergradient_checks(&mut v);
    v
}

fn kernel_checks(v: &mut Vec<Check>) {
    let k = KERNEL_TOL;
    // 7 × 37 = 259 elements: not a multiple of 4 (the vec4 tail) nor of a workgroup.
    let shape = [7, 37];
    for op in ALL_UNARY {
        v.push(
            Check::new(
                format!("unary/{}", lower(op)),
                k,
                vec![unary_input(op, &shape, 1)],
                move |t| Ok(vec![apply_unary(&t[0], op)?]),
            )
            .with_reference(move |x| vec![x[0].iter().map(|&v| naive::unary(op, v)).collect()]),
        );
    }
    let (sa, sb) = ([31, 17], [17]);
    for op in ALL_BINARY {
        if is_comparison(op) {
            v.push(comparison_check(op));
            continue;
        }
        let b = if op == BinaryOp::Div {
            Range(sb.to_vec(), 3, 0.5, 1.5)
        } else {
            u(&sb, 3)
        };
        v.push(
            Check::new(
                format!("binary/{}", lower(op)),
                k,
                vec![u(&sa, 2), b],
                move |t| Ok(vec![t[0].binary(&t[1], op)?]),
            )
            .with_reference(move |x| {
                vec![naive::elementwise(&x[0], &sa, &x[1], &sb, |p, q| {
                    naive::binary(op, p, q)
                })]
            }),
        );
    }
    v.push(
        Check::new(
            "binary/add_outer_broadcast",
            k,
            vec![u(&[31, 1], 4), u(&[1, 17], 5)],
            |t| Ok(vec![t[0].add(&t[1])?]),
        )
        .with_reference(|x| {
            vec![naive::elementwise(
                &x[0],
                &[31, 1],
                &x[1],
                &[1, 17],
                |p, q| p + q,
            )]
        }),
    );
    v.push(
        Check::new("binary/mul_0d", k, vec![u(&[257], 4), u(&[], 5)], |t| {
            Ok(vec![t[0].mul(&t[1])?, t[1].mul(&t[0])?])
        })
        .with_reference(|x| {
            vec![
                naive::elementwise(&x[0], &[257], &x[1], &[], |p, q| p * q),
                naive::elementwise(&x[1], &[], &x[0], &[257], |p, q| p * q),
            ]
        }),
    );

    let (m, kk, n) = (33, 47, 29);
    for (ta, tb) in TRANSPOSES {
        let a = if ta { [kk, m] } else { [m, kk] };
        let b = if tb { [n, kk] } else { [kk, n] };
        let name = format!("matmul/{}{}", flag(ta), flag(tb));
        v.push(matmul_check(name, vec![(&a, &b)], (6, 7), ta, tb, None));
    }
    let plain = |name: &str, a: &[usize], b: &[usize], seeds| {
        matmul_check(name.into(), vec![(a, b)], seeds, false, false, None)
    };
    v.push(plain(
        "matmul/large_257x131x65",
        &[257, 131],
        &[131, 65],
        (8, 9),
    ));
    v.push(plain("matmul/long_k_1031", &[9, 1031], &[1031, 7], (8, 9)));
    v.push(plain("matmul/vector_1x1", &[1, 1], &[1, 1], (8, 9)));
    v.push(plain(
        "matmul/batched",
        &[3, 17, 29],
        &[3, 29, 11],
        (10, 11),
    ));
    v.push(plain(
        "matmul/batched_shared_rhs",
        &[3, 17, 29],
        &[29, 11],
        (10, 11),
    ));
    v.push(matmul_check(
        "matmul/batched_tt".into(),
        vec![(&[3, 29, 17], &[3, 11, 29])],
        (10, 11),
        true,
        true,
        None,
    ));
    // The portable kernel (for adapters without subgroups), forced: lavapipe and most
    // GPUs have subgroups, so it would never run here otherwise. Each transpose pair
    // on three shapes (m, k, n): 13·37·7, where every stored row length is odd;
    // 20·44·12, where every one is a whole number of vec4s; 1·16·5, where stored rows
    // are 16 long or 1 or 5, so that nn, nt and tt pair operands read as vec4s with
    // ones read as floats. No m is a multiple of the kernel's 8 rows, and n = 7 and 5
    // no multiple of its 4 columns. The CPU ignores the plan, so there these repeat the
    // plain products on other shapes.
    let portable = GpuPlan {
        portable: true,
        ..GpuPlan::default()
    };
    for (ta, tb) in TRANSPOSES {
        let stored = |(m, kk, n): (usize, usize, usize)| {
            let a = if ta { [kk, m] } else { [m, kk] };
            let b = if tb { [n, kk] } else { [kk, n] };
            (a, b)
        };
        let shapes = [(13, 37, 7), (20, 44, 12), (1, 16, 5)].map(stored);
        let operands = shapes.iter().map(|(a, b)| (&a[..], &b[..])).collect();
        let name = format!("matmul/portable_{}{}", flag(ta), flag(tb));
        v.push(matmul_check(
            name,
            operands,
            (82, 83),
            ta,
            tb,
            Some(portable),
        ));
    }
    v.push(matmul_check(
        "matmul/portable_batched".into(),
        vec![(&[3, 17, 29], &[3, 29, 11]), (&[3, 13, 28], &[28, 9])],
        (84, 85),
        false,
        false,
        Some(portable),
    ));
    v.push(matmul_check(
        "matmul/portable_batched_tt".into(),
        vec![(&[3, 29, 17], &[3, 11, 29])],
        (86, 87),
        true,
        true,
        Some(portable),
    ));

    // 37 × 195 = 7215 elements: one workgroup of the full reduction.
    let r = [37, 195];
    type Reduction = fn(&Tensor) -> Result<Tensor>;
    type NaiveReduction = fn(&[f64], &[usize]) -> Vec<f64>;
    use naive::Reduce::{Max, Mean, Sum};
    let reductions: [(&str, Reduction, NaiveReduction); 10] = [
        ("sum", |x| x.sum(), |x, _| vec![naive::sum(x)]),
        (
            "mean",
            |x| x.mean(),
            |x, _| vec![naive::sum(x) / x.len() as f64],
        ),
        ("sqnorm", |x| x.sqnorm(), |x, _| vec![naive::dot(x, x)]),
        (
            "sum_axis0",
            |x| x.sum_axis(0, false),
            |x, s| naive::reduce_axis(x, s, 0, Sum),
        ),
        (
            "sum_axis1_keepdim",
            |x| x.sum_axis(1, true),
            |x, s| naive::reduce_axis(x, s, 1, Sum),
        ),
        (
            "mean_axis0",
            |x| x.mean_axis(0, false),
            |x, s| naive::reduce_axis(x, s, 0, Mean),
        ),
        (
            "mean_axis1",
            |x| x.mean_axis(1, false),
            |x, s| naive::reduce_axis(x, s, 1, Mean),
        ),
        (
            "max_axis0",
            |x| x.max_axis(0, false),
            |x, s| naive::reduce_axis(x, s, 0, Max),
        ),
        (
            "max_axis1",
            |x| x.max_axis(1, true),
            |x, s| naive::reduce_axis(x, s, 1, Max),
        ),
        (
            "sum_axis1_3d",
            |x| x.reshape(&[5, 37, 39])?.sum_axis(1, false),
            |x, _| naive::reduce_axis(x, &[5, 37, 39], 1, Sum),
        ),
    ];
    for (name, f, want) in reductions {
        v.push(
            Check::new(format!("reduce/{name}"), k, vec![u(&r, 12)], move |t| {
                Ok(vec![f(&t[0])?])
            })
            .with_reference(move |x| vec![want(&x[0], &r)]),
        );
    }
    v.push(
        Check::new("reduce/sum_1", k, vec![u(&[1], 12)], |t| {
            Ok(vec![t[0].sum()?])
        })
        .with_reference(|x| vec![vec![naive::sum(&x[0])]]),
    );
    v.push(
        Check::new("reduce/dot", k, vec![u(&[7215], 12), u(&[7215], 13)], |t| {
            Ok(vec![t[0].dot(&t[1])?])
        })
        .with_reference(|x| vec![vec![naive::dot(&x[0], &x[1])]]),
    );
    // Full reductions over many workgroups. 1,000,003 (a prime) elements are 250,000
    // vec4s and a 3-element tail; `full_gpu` (backend/gpu/kernels/reduce.rs) gives a workgroup at
    // most 256 invocations × 64 vec4s = 65,536 elements, so these spread over 16
    // workgroups whose partial sums a second dispatch adds (the 7,215 elements above
    // take one). An f64 sum of a million f32 values is exact to ~1e-13; the f32 tree's
    // ~1e-6 relative error is well inside KERNEL_TOL.
    let big = [1_000_003];
    type NaiveFull = fn(&[f64]) -> f64;
    let fulls: [(&str, Reduction, NaiveFull); 3] = [
        ("sum", |x| x.sum(), naive::sum),
        ("mean", |x| x.mean(), |x| naive::sum(x) / x.len() as f64),
        ("sqnorm", |x| x.sqnorm(), |x| naive::dot(x, x)),
    ];
    for (name, f, want) in fulls {
        v.push(
            Check::new(
                format!("reduce/{name}_1000003"),
                k,
                vec![u(&big, 90)],
                move |t| Ok(vec![f(&t[0])?]),
            )
            .with_reference(move |x| vec![vec![want(&x[0])]]),
        );
    }
    v.push(
        Check::new(
            "reduce/dot_1000003",
            k,
            vec![u(&big, 90), u(&big, 91)],
            |t| Ok(vec![t[0].dot(&t[1])?]),
        )
        .with_reference(|x| vec![vec![naive::dot(&x[0], &x[1])]]),
    );
    // Long axes, over rows ([3, 100,003]: contiguous) and columns ([50,021, 12]: four
    // outputs per invocation). Above 2^18 elements `axis_gpu` splits an axis into
    // chunks of 64 for parallelism (1,563 and 782 chunks, on 74 and 37 workgroups) and
    // reduces the chunks' partials in a second dispatch.
    let (rows, cols) = ([3, 100_003], [50_021, 12]);
    v.push(
        Check::new("reduce/sum_axis1_long", k, vec![u(&rows, 92)], |t| {
            Ok(vec![t[0].sum_axis(1, false)?])
        })
        .with_reference(move |x| vec![naive::reduce_axis(&x[0], &rows, 1, Sum)]),
    );
    v.push(
        Check::new("reduce/max_axis0_long", k, vec![u(&cols, 93)], |t| {
            Ok(vec![t[0].max_axis(0, false)?])
        })
        .with_reference(move |x| vec![naive::reduce_axis(&x[0], &cols, 0, Max)]),
    );

    let (ln, lc) = (33, 10);
    v.push(
        Check::new("loss/log_softmax", k, vec![u(&[ln, lc], 14)], |t| {
            Ok(vec![t[0].log_softmax()?])
        })
        .with_reference(move |x| vec![naive::log_softmax(&x[0], lc)]),
    );
    v.push(
        Check::new("loss/softmax", k, vec![u(&[ln, lc], 14)], |t| {
            Ok(vec![t[0].softmax()?])
        })
        .with_reference(move |x| vec![naive::softmax(&x[0], lc)]),
    );
    v.push(
        Check::new(
            "loss/cross_entropy",
            k,
            vec![u(&[ln, lc], 14), labels(ln, lc)],
            |t| Ok(vec![t[0].cross_entropy(&t[1], None)?]),
        )
        .with_reference(move |x| vec![vec![naive::cross_entropy(&x[0], &x[1], None, lc)]]),
    );
    v.push(
        Check::new(
            "loss/cross_entropy_weighted",
            k,
            vec![u(&[ln, lc], 14), labels(ln, lc), u(&[ln], 15)],
            |t| Ok(vec![t[0].cross_entropy(&t[1], Some(&t[2]))?]),
        )
        .with_reference(move |x| vec![vec![naive::cross_entropy(&x[0], &x[1], Some(&x[2]), lc)]]),
    );
    v.push(
        Check::new("loss/mse", k, vec![u(&[257], 16), u(&[257], 17)], |t| {
            Ok(vec![t[0].mse(&t[1])?])
        })
        .with_reference(|x| vec![vec![naive::mse(&x[0], &x[1])]]),
    );
    // The mean squared difference through the same multi-workgroup path as above.
    v.push(
        Check::new("loss/mse_1000003", k, vec![u(&big, 90), u(&big, 91)], |t| {
            Ok(vec![t[0].mse(&t[1])?])
        })
        .with_reference(|x| vec![vec![naive::mse(&x[0], &x[1])]]),
    );

    v.push(
        Check::new("index/one_hot", k, vec![labels(ln, lc)], move |t| {
            Ok(vec![Tensor::one_hot(&t[0], lc)?])
        })
        .with_reference(move |x| {
            let hot = |i: usize, j: usize| if x[0][i] == j as f64 { 1.0 } else { 0.0 };
            vec![(0..ln * lc).map(|e| hot(e / lc, e % lc)).collect()]
        }),
    );
    v.push(
        Check::new(
            "index/gather",
            k,
            vec![u(&[ln, lc], 18), labels(ln, lc)],
            |t| Ok(vec![t[0].gather(&t[1])?]),
        )
        .with_reference(move |x| vec![(0..ln).map(|i| x[0][i * lc + x[1][i] as usize]).collect()]),
    );
    v.push(
        Check::new("index/transpose", k, vec![u(&[31, 17], 19)], |t| {
            Ok(vec![t[0].transpose()?])
        })
        .with_reference(|x| vec![naive::transpose(&x[0], 31, 17)]),
    );
    v.push(
        Check::new(
            "index/transpose_batched",
            k,
            vec![u(&[3, 31, 17], 19)],
            |t| Ok(vec![t[0].transpose()?]),
        )
        .with_reference(|x| vec![naive::transpose(&x[0], 31, 17)]),
    );
    v.push(
        Check::new(
            "index/concat",
            k,
            vec![u(&[7, 3], 20), u(&[1], 21), u(&[257], 22)],
            |t| Ok(vec![Tensor::concat(&[&t[0], &t[1], &t[2]])?]),
        )
        .with_reference(|x| vec![x.concat()]),
    );
    v.push(
        Check::new("index/slice", k, vec![u(&[257], 23)], |t| {
            Ok(vec![t[0].slice(5, 101)?, t[0].slice(256, 1)?])
        })
        .with_reference(|x| vec![x[0][5..106].to_vec(), x[0][256..].to_vec()]),
    );
    v.push(
        Check::new("index/split", k, vec![u(&[257], 23)], |t| {
            t[0].split(&[1, 100, 156])
        })
        .with_reference(|x| {
            vec![
                x[0][..1].to_vec(),
                x[0][1..101].to_vec(),
                x[0][101..].to_vec(),
            ]
        }),
    );

    v.push(
        Check::new("shape/broadcast_to", k, vec![u(&[17], 24)], |t| {
            Ok(vec![t[0].broadcast_to(&[31, 17])?])
        })
        .with_reference(|x| vec![naive::broadcast_to(&x[0], &[17], &[31, 17])]),
    );
    v.push(
        Check::new("shape/sum_to", k, vec![u(&[31, 17], 25)], |t| {
            Ok(vec![t[0].sum_to(&[17])?, t[0].sum_to(&[31, 1])?])
        })
        .with_reference(|x| {
            vec![
                naive::sum_to(&x[0], &[31, 17], &[17]),
                naive::sum_to(&x[0], &[31, 17], &[31, 1]),
            ]
        }),
    );
    v.push(
        Check::new("fill/full_like", k, vec![u(&[257], 26)], |t| {
            Ok(vec![t[0].full_like(0.5)?, t[0].zeros_like()?])
        })
        .with_reference(|_| vec![vec![0.5; 257], vec![0.0; 257]]),
    );

    let vecs = || vec![u(&[257], 27), u(&[257], 28)];
    // Every update is elementwise linear: y_i = p·x_i + q·z_i.
    let lin = |p: f64, x: &[f64], q: f64, z: &[f64]| -> Vec<f64> {
        x.iter().zip(z).map(|(a, b)| p * a + q * b).collect()
    };
    v.push(
        Check::new("update/axpy_host", k, vecs(), |t| {
            Ok(vec![t[0].axpy(-0.3, &t[1])?])
        })
        .with_reference(move |x| vec![lin(1.0, &x[0], -0.3, &x[1])]),
    );
    v.push(
        Check::new(
            "update/axpy_device",
            k,
            [vecs(), vec![u(&[], 29)]].concat(),
            |t| Ok(vec![t[0].axpy(&t[2], &t[1])?]),
        )
        .with_reference(move |x| vec![lin(1.0, &x[0], x[2][0], &x[1])]),
    );
    v.push(
        Check::new(
            "update/axpby_device",
            k,
            [vecs(), vec![u(&[], 29), u(&[1], 30)]].concat(),
            |t| {
                Ok(vec![
                    t[0].axpby(&t[3], &t[2], &t[1])?,
                    t[0].axpby(0.5, 2.0, &t[1])?,
                ])
            },
        )
        .with_reference(move |x| {
            vec![
                lin(x[3][0], &x[0], x[2][0], &x[1]),
                lin(0.5, &x[0], 2.0, &x[1]),
            ]
        }),
    );
    v.push(
        Check::new(
            "update/axpy_ratio",
            k,
            [vecs(), vec![u(&[], 29), Range(vec![], 30, 0.5, 1.5)]].concat(),
            |t| {
                Ok(vec![
                    t[0].axpy_ratio(&t[2], &t[3], 1.0, &t[1])?,
                    t[0].axpy_ratio(&t[2], &t[3], -1.0, &t[1])?,
                ])
            },
        )
        .with_reference(move |x| {
            let ratio = x[2][0] / x[3][0];
            vec![
                lin(1.0, &x[0], ratio, &x[1]),
                lin(1.0, &x[0], -ratio, &x[1]),
            ]
        }),
    );
}

/// The four (trans_a, trans_b) pairs.
const TRANSPOSES: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// `name`: op(a)·op(b) for each pair of stored operand shapes (a's inputs seeded
/// `seeds.0 + 2i`, b's `seeds.1 + 2i`), one output each, through the public op or,
/// with a plan, through `matmul_with`.
fn matmul_check(
    name: String,
    operands: Vec<(&[usize], &[usize])>,
    seeds: (u64, u64),
    ta: bool,
    tb: bool,
    plan: Option<GpuPlan>,
) -> Check {
    let shapes: Vec<(Vec<usize>, Vec<usize>)> = operands
        .iter()
        .map(|(a, b)| (a.to_vec(), b.to_vec()))
        .collect();
    let inputs = shapes
        .iter()
        .zip(0u64..)
        .flat_map(|((a, b), i)| [u(a, seeds.0 + 2 * i), u(b, seeds.1 + 2 * i)])
        .collect();
    Check::new(name, KERNEL_TOL, inputs, move |t| {
        t.chunks(2)
            .map(|p| match plan {
                Some(plan) => matmul_with(&p[0], &p[1], ta, tb, plan),
                None => p[0].matmul_t(&p[1], ta, tb),
            })
            .collect()
    })
    .with_reference(move |x| {
        shapes
            .iter()
            .zip(x.chunks(2))
            .map(|((sa, sb), p)| naive::matmul(&p[0], sa, &p[1], sb, ta, tb))
            .collect()
    })
}

/// A comparison on inputs with exact ties, held to exact equality: the inputs are f32
/// values, which f64 holds exactly and in the same order, so the 0/1 answer of the f32
/// device and of the f64 reference must be the same, bit for bit, on any correct
/// kernel (a comparison does not round). Three outputs: a op max(a, c), with c
/// broadcast along rows (a tie wherever c ≤ a, about half the elements); b op a, with
/// b a copy of a in every third place; a op d, with d a column holding one of each
/// row's values (a tie through a column broadcast).
fn comparison_check(op: BinaryOp) -> Check {
    let (m, n) = (31, 17);
    let a = u(&[m, n], 2);
    let av = a.values().1;
    let fresh = oracle_pair(&[m, n], 4).0;
    let b = (0..m * n)
        .map(|i| if i % 3 == 0 { av[i] } else { fresh[i] })
        .collect();
    let d = (0..m).map(|r| av[r * n + (5 * r) % n]).collect();
    Check::new(
        format!("binary/{}", lower(op)),
        0.0,
        vec![a, u(&[n], 3), Values(vec![m, n], b), Values(vec![m, 1], d)],
        move |t| {
            Ok(vec![
                t[0].binary(&t[0].maximum(&t[1])?, op)?,
                t[2].binary(&t[0], op)?,
                t[0].binary(&t[3], op)?,
            ])
        },
    )
    .with_reference(move |x| {
        let f = |p, q| naive::binary(op, p, q);
        let max = naive::elementwise(&x[0], &[m, n], &x[1], &[n], |p, q| {
            naive::binary(BinaryOp::Max, p, q)
        });
        vec![
            naive::elementwise(&x[0], &[m, n], &max, &[m, n], f),
            naive::elementwise(&x[2], &[m, n], &x[0], &[m, n], f),
            naive::elementwise(&x[0], &[m, n], &x[3], &[m, 1], f),
        ]
    })
}

fn flag(t: bool) -> &'static str {
    if t { "t" } else { "n" }
}

fn gradient_checks(v: &mut Vec<Check>) {
    let k = KERNEL_TOL;
    let shape = [7, 37];
    for op in ALL_UNARY {
        v.push(Check::new(
            format!("grad/unary/{}", lower(op)),
            k,
            vec![unary_input(op, &shape, 31), u(&shape, 32)],
            move |t| {
                let x = t[0].requires_grad();
                grads(&project(&apply_unary(&x, op)?, &t[1])?, &[&x])
            },
        ));
    }
    for op in ALL_BINARY.into_iter().filter(|&op| !is_comparison(op)) {
        let b = if op == BinaryOp::Div {
            Range(vec![17], 34, 0.5, 1.5)
        } else {
            u(&[17], 34)
        };
        // b broadcasts along the rows, so its gradient goes through sum_to.
        v.push(Check::new(
            format!("grad/binary/{}", lower(op)),
            k,
            vec![u(&[31, 17], 33), b, u(&[31, 17], 35)],
            move |t| {
                let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
                grads(&project(&a.binary(&b, op)?, &t[2])?, &[&a, &b])
            },
        ));
    }
    let (m, kk, n) = (13, 17, 11);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = if ta { [kk, m] } else { [m, kk] };
        let b = if tb { [n, kk] } else { [kk, n] };
        v.push(Check::new(
            format!("grad/matmul/{}{}", flag(ta), flag(tb)),
            k,
            vec![u(&a, 36), u(&b, 37), u(&[m, n], 38)],
            move |t| {
                let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
                grads(&project(&a.matmul_t(&b, ta, tb)?, &t[2])?, &[&a, &b])
            },
        ));
    }
    v.push(Check::new(
        "grad/matmul/batched_shared_rhs",
        k,
        vec![u(&[3, m, kk], 39), u(&[kk, n], 40), u(&[3, m, n], 41)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            grads(&project(&a.matmul(&b)?, &t[2])?, &[&a, &b])
        },
    ));

    type Reduction = fn(&Tensor) -> Result<Tensor>;
    let reductions: [(&str, Reduction, Vec<usize>); 7] = [
        ("sum", |x| x.sum()?.square(), vec![]),
        ("mean", |x| x.mean()?.square(), vec![]),
        ("sqnorm", |x| x.sqnorm()?.sqrt(), vec![]),
        ("sum_axis", |x| x.sum_axis(0, false), vec![17]),
        ("mean_axis", |x| x.mean_axis(1, true), vec![31, 1]),
        ("max_axis", |x| x.max_axis(1, false), vec![31]),
        ("log_softmax", |x| x.log_softmax(), vec![31, 17]),
    ];
    for (name, f, out) in reductions {
        let family = if name == "log_softmax" {
            "loss"
        } else {
            "reduce"
        };
        v.push(Check::new(
            format!("grad/{family}/{name}"),
            k,
            vec![u(&[31, 17], 42), u(&out, 43)],
            move |t| {
                let x = t[0].requires_grad();
                let y = f(&x)?;
                let loss = if y.rank() == 0 {
                    y
                } else {
                    project(&y, &t[1])?
                };
                grads(&loss, &[&x])
            },
        ));
    }
    v.push(Check::new(
        "grad/reduce/dot",
        k,
        vec![u(&[257], 44), u(&[257], 45)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            grads(&a.dot(&b)?.square()?, &[&a, &b])
        },
    ));
    let (ln, lc) = (23, 7);
    v.push(Check::new(
        "grad/loss/cross_entropy_weighted",
        k,
        vec![u(&[ln, lc], 46), labels(ln, lc), u(&[ln], 47)],
        |t| {
            let (z, w) = (t[0].requires_grad(), t[2].requires_grad());
            grads(&z.cross_entropy(&t[1], Some(&w))?, &[&z, &w])
        },
    ));
    v.push(Check::new(
        "grad/loss/cross_entropy",
        k,
        vec![u(&[ln, lc], 46), labels(ln, lc)],
        |t| {
            let z = t[0].requires_grad();
            grads(&z.cross_entropy(&t[1], None)?, &[&z])
        },
    ));
    v.push(Check::new(
        "grad/loss/mse",
        k,
        vec![u(&[257], 48), u(&[257], 49)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            grads(&a.mse(&b)?, &[&a, &b])
        },
    ));
    v.push(Check::new(
        "grad/index/gather",
        k,
        vec![u(&[ln, lc], 50), labels(ln, lc), u(&[ln], 51)],
        |t| {
            let z = t[0].requires_grad();
            grads(&project(&z.gather(&t[1])?, &t[2])?, &[&z])
        },
    ));
    v.push(Check::new(
        "grad/index/transpose",
        k,
        vec![u(&[3, 13, 11], 52), u(&[3, 11, 13], 53)],
        |t| {
            let x = t[0].requires_grad();
            grads(&project(&x.transpose()?, &t[1])?, &[&x])
        },
    ));
    v.push(Check::new(
        "grad/index/concat_split_slice",
        k,
        vec![u(&[7, 3], 54), u(&[11], 55), u(&[32], 56)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            let c = Tensor::concat(&[&a, &b])?;
            let parts = c.split(&[5, 27])?;
            let y = Tensor::concat(&[&parts[1], &c.slice(3, 5)?])?;
            grads(&project(&y, &t[2])?, &[&a, &b])
        },
    ));
    v.push(Check::new(
        "grad/shape/broadcast_to_sum_to",
        k,
        vec![u(&[1, 17], 57), u(&[31, 1], 58), u(&[17], 59)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            let y = a.broadcast_to(&[31, 17])?.mul(&b)?.sum_to(&[17])?;
            grads(&project(&y, &t[2])?, &[&a, &b])
        },
    ));
    v.push(Check::new(
        "grad/update/axpby_axpy_ratio",
        k,
        vec![
            u(&[257], 60),
            u(&[257], 61),
            u(&[], 62),
            Range(vec![], 63, 0.5, 1.5),
            u(&[257], 64),
        ],
        |t| {
            let x: Vec<Tensor> = t[..4].iter().map(Tensor::requires_grad).collect();
            let y = x[0].axpby(&x[2], &x[3], &x[1])?;
            let z = y.axpy_ratio(&x[2], &x[3], -1.0, &x[0])?;
            grads(&project(&z, &t[4])?, &[&x[0], &x[1], &x[2], &x[3]])
        },
    ));
}

/// A tanh MLP d-h-c on n samples with cross-entropy, over flat parameters w.
fn mlp_loss(x: &Tensor, labels: &Tensor, w: &Tensor, dims: [usize; 3]) -> Result<Tensor> {
    let [d, h, c] = dims;
    let p = w.split(&[d * h, h, h * c, c])?;
    let a = x.matmul(&p[0].reshape(&[d, h])?)?.add(&p[1])?.tanh()?;
    a.matmul(&p[2].reshape(&[h, c])?)?
        .add(&p[3])?
        .cross_entropy(labels, None)
}

/// Hyper-cleaning's inner loss on a linear classifier: weights sigmoid(λ) per example,
/// plus (μ/2)‖W‖².
fn weighted_ce(
    x: &Tensor,
    labels: &Tensor,
    wm: &Tensor,
    b: &Tensor,
    lambda: &Tensor,
    mu: f64,
) -> Result<Tensor> {
    x.matmul(wm)?
        .add(b)?
        .cross_entropy(labels, Some(&lambda.sigmoid()?))?
        .add(&wm.sqnorm()?.scale(0.5 * mu)?)
}

fn second_order_checks(v: &mut Vec<Check>) {
    let k = KERNEL_TOL;
    let (n, d, h, c) = (20, 6, 5, 3);
    let params = d * h + h + h * c + c;
    v.push(Check::new(
        "hvp/mlp",
        k,
        vec![
            u(&[n, d], 70),
            labels(n, c),
            u(&[params], 71),
            u(&[params], 72),
        ],
        move |t| {
            let w = t[2].requires_grad();
            let loss = mlp_loss(&t[0], &t[1], &w, [d, h, c])?;
            Ok(vec![HvpOperator::new(&loss, &[&w])?.hvp1(&t[3])?])
        },
    ));
    let cls = move || {
        vec![
            u(&[n, d], 73),
            labels(n, c),
            u(&[d, c], 74),
            u(&[c], 75),
            u(&[n], 76),
        ]
    };
    v.push(Check::new(
        "mixed/weighted_cross_entropy",
        k,
        [cls(), vec![u(&[d, c], 77), u(&[c], 78)]].concat(),
        |t| {
            let (wm, b, l) = (
                t[2].requires_grad(),
                t[3].requires_grad(),
                t[4].requires_grad(),
            );
            let loss = weighted_ce(&t[0], &t[1], &wm, &b, &l, 0.1)?;
            mixed(&loss, &[&wm, &b], &[&l], &[&t[5], &t[6]])
        },
    ));
    v.push(Check::new(
        "mixed_t/weighted_cross_entropy",
        k,
        [cls(), vec![u(&[n], 79)]].concat(),
        |t| {
            let (wm, b, l) = (
                t[2].requires_grad(),
                t[3].requires_grad(),
                t[4].requires_grad(),
            );
            let loss = weighted_ce(&t[0], &t[1], &wm, &b, &l, 0.1)?;
            mixed_t(&loss, &[&wm, &b], &[&l], &[&t[5]])
        },
    ));
    // The solvers on the Hessian of an L2-regularised softmax regression (μ = 0.5, so
    // its condition number is small and ten iterations converge well in f32).
    type Solver = fn(&HvpOperator, &Tensor) -> Result<Tensor>;
    let solvers: [(&str, Solver); 3] = [
        ("solver/cg", |op, b| {
            let opts = CgOptions {
                max_iters: 10,
                ..CgOptions::default()
            };
            Ok(conjugate_gradient(|p| op.hvp1(p), b, &opts)?.x)
        }),
        ("solver/neumann", |op, b| {
            Ok(neumann(|p| op.hvp1(p), b, 10, 0.5)?.x)
        }),
        ("solver/fixed_point", |op, b| {
            Ok(fixed_point(|p| op.hvp1(p), b, 10, 0.5)?.x)
        }),
    ];
    for (name, solve) in solvers {
        v.push(Check::new(
            name,
            k,
            [cls(), vec![u(&[d * c], 80)]].concat(),
            move |t| {
                let w = t[2].reshape(&[d * c])?.requires_grad();
                let loss = weighted_ce(&t[0], &t[1], &w.reshape(&[d, c])?, &t[3], &t[4], 0.5)?;
                let op = HvpOperator::new(&loss, &[&w])?;
                Ok(vec![solve(&op, &t[5])?])
            },
        ));
    }
}

/// The hypergradient methods checked, as in the integration tests.
fn methods() -> Vec<(&'static str, Method)> {
    vec![
        ("rad", Method::Rad),
        ("trad", Method::Trad { k: 5 }),
        ("forward", Method::Forward),
        // Damped: the small cleaning Hessian has eigenvalues down to ~1e-2 (and the
        // softmax bias an all-ones direction with none), so undamped CG amplifies f32
        // rounding past the tolerance on the CPU in f32 just as on a GPU.
        (
            "cg",
            Method::Cg {
                iters: 10,
                tol: None,
                damping: 0.1,
            },
        ),
        ("neumann", Method::Neumann { k: 10, eta: 0.5 }),
        ("fixed_point", Method::FixedPoint { k: 10, eta: 0.5 }),
        (
            "one_step_exact",
            Method::OneStep {
                xi: 0.5,
                exact: true,
            },
        ),
        (
            "one_step_fd",
            Method::OneStep {
                xi: 0.5,
                exact: false,
            },
        ),
        ("exact", Method::Exact),
    ]
}

fn hypergrad_of(p: &dyn Problem, lambda: &Tensor, method: Method) -> Result<Vec<Tensor>> {
    let inner = Inner {
        optimizer: InnerOptimizer::Gd { lr: 0.2 },
        steps: 12,
    };
    let w0 = p.init_w()?;
    Ok(hypergradient(p, std::slice::from_ref(lambda), &w0, &inner, &method)?.grad)
}

fn hypergradient_checks(v: &mut Vec<Check>) {
    let tol = HYPERGRADIENT_TOL;
    let ridge_lambda = Values(vec![5], (0..5).map(|j| -0.5 + 0.25 * j as f32).collect());
    let cleaning_lambda = Values(
        vec![30],
        (0..30).map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.6).collect(),
    );
    for (name, m) in methods() {
        v.push(Check::new(
            format!("hypergrad/ridge/{name}"),
            tol,
            vec![ridge_lambda.clone()],
            move |t| {
                let p = Ridge::synthetic(40, 30, 5, 3, &t[0].device(), t[0].dtype())?;
                hypergrad_of(&p, &t[0], m)
            },
        ));
    }
    for (name, m) in methods() {
        if m == Method::Exact {
            // Hyper-cleaning has no closed-form inner solution.
            continue;
        }
        v.push(Check::new(
            format!("hypergrad/cleaning/{name}"),
            tol,
            vec![cleaning_lambda.clone()],
            move |t| {
                let (x, y) = synthetic_classification(90, 6, 3, 2.0, 5);
                let data = cleaning_split(&x, &y, 3, 30, 30, 0.3, 1)?;
                let p = HyperCleaning::new(&data, 1e-2, &t[0].device(), t[0].dtype())?;
                hypergrad_of(&p, &t[0], m)
            },
        ));
    }
}

// ---- naive references ---------------------------------------------------------------

/// Naive host definitions of the kernels, in f64, for the references of the kernel
/// checks: loops over row-major indices written from each op's documented definition.
/// Nothing here calls into blo (no tensors, no ops, no CPU backend helpers), so a
/// reference cannot share a bug with the code it checks. Speed does not matter here;
/// being obviously right does.
mod naive {
    use crate::ops::binary::BinaryOp;
    use crate::ops::unary::UnaryOp;

    fn numel(shape: &[usize]) -> usize {
        shape.iter().product()
    }

    /// The row-major multi-index of flat index `i` in `shape`.
    fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = i % shape[d];
            i /= shape[d];
        }
        idx
    }

    /// The flat offset of the element of an operand of `shape` that the output element
    /// at multi-index `idx` reads under NumPy broadcasting: dims aligned at the right,
    /// index 0 along the operand's extent-1 dims.
    fn broadcast_offset(idx: &[usize], shape: &[usize]) -> usize {
        let lead = idx.len() - shape.len();
        let mut offset = 0;
        for (d, &extent) in shape.iter().enumerate() {
            let i = if extent == 1 { 0 } else { idx[lead + d] };
            offset = offset * extent + i;
        }
        offset
    }

    /// The NumPy broadcast of two shapes that broadcast.
    fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
        let rank = a.len().max(b.len());
        let at = |s: &[usize], d: usize| {
            if d + s.len() >= rank {
                s[d + s.len() - rank]
            } else {
                1
            }
        };
        (0..rank)
            .map(|d| if at(a, d) == 1 { at(b, d) } else { at(a, d) })
            .collect()
    }

    /// f(a, b) elementwise with broadcasting.
    pub fn elementwise(
        a: &[f64],
        sa: &[usize],
        b: &[f64],
        sb: &[usize],
        f: impl Fn(f64, f64) -> f64,
    ) -> Vec<f64> {
        let out = broadcast_shape(sa, sb);
        (0..numel(&out))
            .map(|i| {
                let idx = unravel(i, &out);
                f(a[broadcast_offset(&idx, sa)], b[broadcast_offset(&idx, sb)])
            })
            .collect()
    }

    /// `x` of `shape` broadcast to `out`.
    pub fn broadcast_to(x: &[f64], shape: &[usize], out: &[usize]) -> Vec<f64> {
        (0..numel(out))
            .map(|i| x[broadcast_offset(&unravel(i, out), shape)])
            .collect()
    }

    /// `x` of `shape` summed down to `target`: every element added into the one of
    /// `target` that would broadcast back onto it.
    pub fn sum_to(x: &[f64], shape: &[usize], target: &[usize]) -> Vec<f64> {
        let mut y = vec![0.0; numel(target)];
        for (i, &v) in x.iter().enumerate() {
            y[broadcast_offset(&unravel(i, shape), target)] += v;
        }
        y
    }

    /// The unary ops of the `unary/` checks (scale_shift with the checks' constants).
    pub fn unary(op: UnaryOp, x: f64) -> f64 {
        match op {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Square => x * x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryOp::Relu => {
                if x > 0.0 {
                    x
                } else {
                    0.0
                }
            }
            UnaryOp::ReluMask => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            UnaryOp::ScaleShift => super::SCALE_SHIFT.0 * x + super::SCALE_SHIFT.1,
            UnaryOp::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Recip => 1.0 / x,
        }
    }

    pub fn binary(op: BinaryOp, a: f64, b: f64) -> f64 {
        let mask = |c: bool| if c { 1.0 } else { 0.0 };
        match op {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => {
                if a > b {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Min => {
                if a < b {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Gt => mask(a > b),
            BinaryOp::Ge => mask(a >= b),
            BinaryOp::Lt => mask(a < b),
            BinaryOp::Le => mask(a <= b),
            BinaryOp::Eq => mask(a == b),
        }
    }

    /// op(a)·op(b) for stored shapes `sa`, `sb` (rank 2, or rank 3 with a batch dim; a
    /// rank-2 operand next to a rank-3 one is shared), as a triple loop per batch entry.
    pub fn matmul(
        a: &[f64],
        sa: &[usize],
        b: &[f64],
        sb: &[usize],
        ta: bool,
        tb: bool,
    ) -> Vec<f64> {
        let batch = if sa.len() == 3 { sa[0] } else { sb[0] };
        let batch = if sa.len() == 3 || sb.len() == 3 {
            batch
        } else {
            1
        };
        let (ar, ac) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (br, bc) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
        let n = if tb { br } else { bc };
        let a_at = |t: usize, i: usize, p: usize| {
            let base = if sa.len() == 3 { t * ar * ac } else { 0 };
            if ta {
                a[base + p * ac + i]
            } else {
                a[base + i * ac + p]
            }
        };
        let b_at = |t: usize, p: usize, j: usize| {
            let base = if sb.len() == 3 { t * br * bc } else { 0 };
            if tb {
                b[base + j * bc + p]
            } else {
                b[base + p * bc + j]
            }
        };
        let mut c = Vec::with_capacity(batch * m * n);
        for t in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    c.push((0..k).map(|p| a_at(t, i, p) * b_at(t, p, j)).sum());
                }
            }
        }
        c
    }

    pub fn sum(x: &[f64]) -> f64 {
        x.iter().sum()
    }

    pub fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(p, q)| p * q).sum()
    }

    pub fn mse(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f64>() / a.len() as f64
    }

    #[derive(Clone, Copy)]
    pub enum Reduce {
        Sum,
        Mean,
        Max,
    }

    /// `x` of `shape` reduced along `axis`: every element goes to the output element
    /// whose multi-index is its own without `axis`.
    pub fn reduce_axis(x: &[f64], shape: &[usize], axis: usize, op: Reduce) -> Vec<f64> {
        let mut out_shape = shape.to_vec();
        out_shape.remove(axis);
        let init = match op {
            Reduce::Max => f64::NEG_INFINITY,
            _ => 0.0,
        };
        let mut y = vec![init; numel(&out_shape)];
        for (i, &v) in x.iter().enumerate() {
            let mut idx = unravel(i, shape);
            idx.remove(axis);
            let o = idx
                .iter()
                .zip(&out_shape)
                .fold(0, |off, (&j, &e)| off * e + j);
            match op {
                Reduce::Max => {
                    if v > y[o] {
                        y[o] = v;
                    }
                }
                _ => y[o] += v,
            }
        }
        if let Reduce::Mean = op {
            for v in &mut y {
                *v /= shape[axis] as f64;
            }
        }
        y
    }

    /// ln Σ_j exp(z_j) of one row, shifted by its maximum so that exp cannot overflow.
    fn logsumexp(row: &[f64]) -> f64 {
        let m = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    }

    /// z_ij − logsumexp(z_i) for rows of `c` classes.
    pub fn log_softmax(z: &[f64], c: usize) -> Vec<f64> {
        z.chunks(c)
            .flat_map(|row| {
                let l = logsumexp(row);
                row.iter().map(move |v| v - l)
            })
            .collect()
    }

    /// exp(z_ij) / Σ_j exp(z_ij) for rows of `c` classes.
    pub fn softmax(z: &[f64], c: usize) -> Vec<f64> {
        z.chunks(c)
            .flat_map(|row| {
                let total: f64 = row.iter().map(|v| v.exp()).sum();
                row.iter().map(move |v| v.exp() / total)
            })
            .collect()
    }

    /// (1/n) Σ_i w_i (logsumexp(z_i) − z_{i, y_i}), with w_i = 1 without weights.
    pub fn cross_entropy(z: &[f64], labels: &[f64], weights: Option<&[f64]>, c: usize) -> f64 {
        let n = labels.len();
        let mut total = 0.0;
        for i in 0..n {
            let row = &z[i * c..(i + 1) * c];
            let w = weights.map_or(1.0, |w| w[i]);
            total += w * (logsumexp(row) - row[labels[i] as usize]);
        }
        total / n as f64
    }

    /// The last two dims of stacked [m, n] matrices swapped.
    pub fn transpose(x: &[f64], m: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for t in 0..x.len() / (m * n) {
            for i in 0..m {
                for j in 0..n {
                    y[t * m * n + j * m + i] = x[t * m * n + i * n + j];
                }
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_passes_close_values_and_fails_far_nan_and_mismatched_ones() {
        let want = vec![vec![1.0, 2.0, 3.0]];
        assert!(verdict("a", &want, &want, 1e-4).passed);
        let close = vec![vec![1.0, 2.0, 3.0 + 1e-6]];
        assert!(verdict("a", &close, &want, 1e-4).passed);
        let far = vec![vec![1.0, 2.0, 3.1]];
        assert!(!verdict("a", &far, &want, 1e-4).passed);
        let nan = vec![vec![1.0, f64::NAN, 3.0]];
        let r = verdict("a", &nan, &want, 1e-4);
        assert!(!r.passed && r.rel_err.is_nan(), "{r:?}");
        let short = vec![vec![1.0, 2.0]];
        assert!(!verdict("a", &short, &want, 1e-4).passed);
        assert!(!verdict("a", &[], &want, 1e-4).passed);
        // The worst output decides, not the concatenation.
        let two_want = vec![vec![1000.0], vec![1.0]];
        let two_got = vec![vec![1000.0], vec![1.01]];
        assert!(!verdict("a", &two_got, &two_want, 1e-4).passed);
    }

    /// The rule of the module docs: kernel checks have a naive reference, the checks of
    /// composite computations compare with the CPU backend in f64.
    #[test]
    fn every_kernel_check_has_a_naive_reference() {
        let kernel_families = [
            "unary/", "binary/", "matmul/", "reduce/", "loss/", "index/", "shape/", "fill/",
            "update/",
        ];
        for c in checks() {
            let kernel = kernel_families.iter().any(|f| c.name.starts_with(f));
            assert_eq!(c.has_reference(), kernel, "{}", c.name);
        }
    }

    /// The naive references' own building blocks on hand-worked cases, so that a
    /// wrong reference is not mistaken for a wrong kernel.
    #[test]
    fn naive_references_on_hand_worked_cases() {
        let row = [10.0, 20.0, 30.0];
        let col = [1.0, 2.0];
        assert_eq!(
            naive::elementwise(&col, &[2, 1], &row, &[3], |p, q| p + q),
            vec![11.0, 21.0, 31.0, 12.0, 22.0, 32.0]
        );
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(naive::sum_to(&m, &[2, 3], &[3]), vec![5.0, 7.0, 9.0]);
        assert_eq!(naive::sum_to(&m, &[2, 3], &[2, 1]), vec![6.0, 15.0]);
        assert_eq!(
            naive::broadcast_to(&col, &[2, 1], &[2, 3]),
            vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
        );
        assert_eq!(
            naive::reduce_axis(&m, &[2, 3], 0, naive::Reduce::Max),
            vec![4.0, 5.0, 6.0]
        );
        assert_eq!(
            naive::reduce_axis(&m, &[2, 3], 1, naive::Reduce::Mean),
            vec![2.0, 5.0]
        );
        assert_eq!(
            naive::transpose(&m, 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        // [[1, 2, 3], [4, 5, 6]] · [[1, 0], [0, 1], [1, 1]], and its transposed forms.
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let want = vec![4.0, 5.0, 10.0, 11.0];
        assert_eq!(naive::matmul(&m, &[2, 3], &b, &[3, 2], false, false), want);
        let (mt, bt) = (naive::transpose(&m, 2, 3), naive::transpose(&b, 3, 2));
        assert_eq!(naive::matmul(&mt, &[3, 2], &bt, &[2, 3], true, true), want);
        // Batched with a shared right operand.
        let two = [m, m].concat();
        assert_eq!(
            naive::matmul(&two, &[2, 2, 3], &b, &[3, 2], false, false),
            [want.clone(), want].concat()
        );
        let ln2 = 2f64.ln();
        let ls = naive::log_softmax(&[0.0, 0.0], 2);
        assert!(ls.iter().all(|v| (v + ln2).abs() < 1e-15), "{ls:?}");
        let ce = naive::cross_entropy(&[0.0, 0.0, 5.0, 5.0], &[1.0, 0.0], Some(&[1.0, 3.0]), 2);
        assert!((ce - 2.0 * ln2).abs() < 1e-15, "{ce}");
    }

    /// The big reductions reach the multi-workgroup paths, whose partial results take a
    /// second dispatch; the sizes were chosen for it from `full_gpu` and `axis_gpu`.
    #[test]
    fn the_big_reductions_take_more_than_one_pass_on_the_gpu() {
        if crate::testing::gpu_or_skip().is_none() {
            return;
        }
        // A context of its own: the shared one counts other tests' dispatches too.
        let gpu = Device::gpu().unwrap();
        let ctx = gpu.gpu_context().unwrap().clone();
        let big: Vec<Check> = checks()
            .into_iter()
            .filter(|c| c.name.ends_with("_1000003") || c.name.ends_with("_long"))
            .collect();
        assert_eq!(big.len(), 7, "{big:?}");
        for c in big {
            let inputs: Vec<Tensor> = c
                .inputs
                .iter()
                .map(|i| i.tensor(&gpu, DType::F32).unwrap())
                .collect();
            let before = ctx.dispatch_count();
            (c.f)(&inputs).unwrap();
            let passes = ctx.dispatch_count() - before;
            assert!(passes >= 2, "{}: {passes} dispatch", c.name);
        }
    }

    #[test]
    fn names_are_unique_and_every_op_is_listed() {
        let all = checks();
        let names: Vec<&str> = all.iter().map(Check::name).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "duplicate check {n}");
        }
        for op in ALL_UNARY {
            assert!(names.contains(&format!("unary/{}", lower(op)).as_str()));
            assert!(names.contains(&format!("grad/unary/{}", lower(op)).as_str()));
        }
        for op in ALL_BINARY {
            assert!(names.contains(&format!("binary/{}", lower(op)).as_str()));
        }
        for (ta, tb) in TRANSPOSES {
            let pair = format!("{}{}", flag(ta), flag(tb));
            assert!(names.contains(&format!("matmul/{pair}").as_str()));
            assert!(names.contains(&format!("matmul/portable_{pair}").as_str()));
            assert!(names.contains(&format!("grad/matmul/{pair}").as_str()));
        }
        for n in ["sum", "mean", "sqnorm", "dot"] {
            assert!(names.contains(&format!("reduce/{n}_1000003").as_str()));
        }
        for (m, method) in methods() {
            assert!(names.contains(&format!("hypergrad/ridge/{m}").as_str()));
            // A new Method variant breaks this match: add it to methods() as well.
            match method {
                Method::Rad
                | Method::Trad { .. }
                | Method::Forward
                | Method::Cg { .. }
                | Method::Neumann { .. }
                | Method::FixedPoint { .. }
                | Method::OneStep { .. }
                | Method::Exact => {}
            }
        }
    }
}
