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
//! [`Check::run`] evaluates it twice, on the device with f32 inputs and on the CPU
//! with the same values widened to f64, and reports the worst norm-wise relative
//! error ([`crate::testing::rel_err`]) over the outputs. Tolerances follow the
//! project's rule: [`KERNEL_TOL`] for single kernels, gradients and second-order
//! products, [`HYPERGRADIENT_TOL`] for whole hypergradients.

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
use crate::testing::{oracle_pair, rel_err};

/// Relative-error tolerance of single kernels, gradients, HVPs, mixed products and
/// solver outputs (f32 against f64).
pub const KERNEL_TOL: f64 = 1e-4;
/// Relative-error tolerance of whole hypergradients, which chain hundreds of kernels.
pub const HYPERGRADIENT_TOL: f64 = 1e-3;

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

/// One check: a name, a tolerance, seeded inputs and the computation. The function
/// must build everything from its inputs (their device and dtype say where it runs),
/// so the same code serves the device under test and the oracle.
pub struct Check {
    name: String,
    tol: f64,
    inputs: Vec<Input>,
    f: CheckFn,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("tol", &self.tol)
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
        }
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the check on `device` (f32) and on the CPU in f64, and compares. Errors
    /// and panics inside the check become a failed result, never a panic here.
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
        let guarded = |device: &Device, dtype: DType, side: &str| -> Result<Vec<Vec<f64>>> {
            catch_unwind(AssertUnwindSafe(|| eval(device, dtype))).unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(invalid("check", format!("{side} panicked: {msg}")))
            })
        };
        let outcome = guarded(device, DType::F32, "the device").and_then(|got| {
            let want = guarded(&Device::Cpu, DType::F64, "the f64 oracle")?;
            Ok((got, want))
        });
        let mut result = match outcome {
            Ok((got, want)) => verdict(&self.name, &got, &want, self.tol),
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

fn apply_unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    match op {
        UnaryOp::ScaleShift => x.scale_shift(0.75, -0.5),
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
        v.push(Check::new(
            format!("unary/{}", lower(op)),
            k,
            vec![unary_input(op, &shape, 1)],
            move |t| Ok(vec![apply_unary(&t[0], op)?]),
        ));
    }
    for op in ALL_BINARY {
        if is_comparison(op) {
            // b = max(a, c) equals a in about half the places, so ties are exercised.
            v.push(Check::new(
                format!("binary/{}", lower(op)),
                k,
                vec![u(&[31, 17], 2), u(&[17], 3)],
                move |t| Ok(vec![t[0].binary(&t[0].maximum(&t[1])?, op)?]),
            ));
        } else {
            let b = if op == BinaryOp::Div {
                Range(vec![17], 3, 0.5, 1.5)
            } else {
                u(&[17], 3)
            };
            v.push(Check::new(
                format!("binary/{}", lower(op)),
                k,
                vec![u(&[31, 17], 2), b],
                move |t| Ok(vec![t[0].binary(&t[1], op)?]),
            ));
        }
    }
    v.push(Check::new(
        "binary/add_outer_broadcast",
        k,
        vec![u(&[31, 1], 4), u(&[1, 17], 5)],
        |t| Ok(vec![t[0].add(&t[1])?]),
    ));
    v.push(Check::new(
        "binary/mul_0d",
        k,
        vec![u(&[257], 4), u(&[], 5)],
        |t| Ok(vec![t[0].mul(&t[1])?, t[1].mul(&t[0])?]),
    ));

    let (m, kk, n) = (33, 47, 29);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = if ta { [kk, m] } else { [m, kk] };
        let b = if tb { [n, kk] } else { [kk, n] };
        v.push(Check::new(
            format!("matmul/{}{}", flag(ta), flag(tb)),
            k,
            vec![u(&a, 6), u(&b, 7)],
            move |t| Ok(vec![t[0].matmul_t(&t[1], ta, tb)?]),
        ));
    }
    v.push(Check::new(
        "matmul/large_257x131x65",
        k,
        vec![u(&[257, 131], 8), u(&[131, 65], 9)],
        |t| Ok(vec![t[0].matmul(&t[1])?]),
    ));
    v.push(Check::new(
        "matmul/long_k_1031",
        k,
        vec![u(&[9, 1031], 8), u(&[1031, 7], 9)],
        |t| Ok(vec![t[0].matmul(&t[1])?]),
    ));
    v.push(Check::new(
        "matmul/vector_1x1",
        k,
        vec![u(&[1, 1], 8), u(&[1, 1], 9)],
        |t| Ok(vec![t[0].matmul(&t[1])?]),
    ));
    v.push(Check::new(
        "matmul/batched",
        k,
        vec![u(&[3, 17, 29], 10), u(&[3, 29, 11], 11)],
        |t| Ok(vec![t[0].matmul(&t[1])?]),
    ));
    v.push(Check::new(
        "matmul/batched_shared_rhs",
        k,
        vec![u(&[3, 17, 29], 10), u(&[29, 11], 11)],
        |t| Ok(vec![t[0].matmul(&t[1])?]),
    ));
    v.push(Check::new(
        "matmul/batched_tt",
        k,
        vec![u(&[3, 29, 17], 10), u(&[3, 11, 29], 11)],
        |t| Ok(vec![t[0].matmul_t(&t[1], true, true)?]),
    ));

    // 37 × 195 = 7215 elements.
    let r = [37, 195];
    type Reduction = fn(&Tensor) -> Result<Tensor>;
    let reductions: [(&str, Reduction); 10] = [
        ("sum", |x| x.sum()),
        ("mean", |x| x.mean()),
        ("sqnorm", |x| x.sqnorm()),
        ("sum_axis0", |x| x.sum_axis(0, false)),
        ("sum_axis1_keepdim", |x| x.sum_axis(1, true)),
        ("mean_axis0", |x| x.mean_axis(0, false)),
        ("mean_axis1", |x| x.mean_axis(1, false)),
        ("max_axis0", |x| x.max_axis(0, false)),
        ("max_axis1", |x| x.max_axis(1, true)),
        ("sum_axis1_3d", |x| {
            x.reshape(&[5, 37, 39])?.sum_axis(1, false)
        }),
    ];
    for (name, f) in reductions {
        v.push(Check::new(
            format!("reduce/{name}"),
            k,
            vec![u(&r, 12)],
            move |t| Ok(vec![f(&t[0])?]),
        ));
    }
    v.push(Check::new("reduce/sum_1", k, vec![u(&[1], 12)], |t| {
        Ok(vec![t[0].sum()?])
    }));
    v.push(Check::new(
        "reduce/dot",
        k,
        vec![u(&[7215], 12), u(&[7215], 13)],
        |t| Ok(vec![t[0].dot(&t[1])?]),
    ));

    let (ln, lc) = (33, 10);
    v.push(Check::new(
        "loss/log_softmax",
        k,
        vec![u(&[ln, lc], 14)],
        |t| Ok(vec![t[0].log_softmax()?]),
    ));
    v.push(Check::new("loss/softmax", k, vec![u(&[ln, lc], 14)], |t| {
        Ok(vec![t[0].softmax()?])
    }));
    v.push(Check::new(
        "loss/cross_entropy",
        k,
        vec![u(&[ln, lc], 14), labels(ln, lc)],
        |t| Ok(vec![t[0].cross_entropy(&t[1], None)?]),
    ));
    v.push(Check::new(
        "loss/cross_entropy_weighted",
        k,
        vec![u(&[ln, lc], 14), labels(ln, lc), u(&[ln], 15)],
        |t| Ok(vec![t[0].cross_entropy(&t[1], Some(&t[2]))?]),
    ));
    v.push(Check::new(
        "loss/mse",
        k,
        vec![u(&[257], 16), u(&[257], 17)],
        |t| Ok(vec![t[0].mse(&t[1])?]),
    ));

    v.push(Check::new(
        "index/one_hot",
        k,
        vec![labels(ln, lc)],
        move |t| Ok(vec![Tensor::one_hot(&t[0], lc)?]),
    ));
    v.push(Check::new(
        "index/gather",
        k,
        vec![u(&[ln, lc], 18), labels(ln, lc)],
        |t| Ok(vec![t[0].gather(&t[1])?]),
    ));
    v.push(Check::new(
        "index/transpose",
        k,
        vec![u(&[31, 17], 19)],
        |t| Ok(vec![t[0].transpose()?]),
    ));
    v.push(Check::new(
        "index/transpose_batched",
        k,
        vec![u(&[3, 31, 17], 19)],
        |t| Ok(vec![t[0].transpose()?]),
    ));
    v.push(Check::new(
        "index/concat",
        k,
        vec![u(&[7, 3], 20), u(&[1], 21), u(&[257], 22)],
        |t| Ok(vec![Tensor::concat(&[&t[0], &t[1], &t[2]])?]),
    ));
    v.push(Check::new("index/slice", k, vec![u(&[257], 23)], |t| {
        Ok(vec![t[0].slice(5, 101)?, t[0].slice(256, 1)?])
    }));
    v.push(Check::new("index/split", k, vec![u(&[257], 23)], |t| {
        t[0].split(&[1, 100, 156])
    }));

    v.push(Check::new(
        "shape/broadcast_to",
        k,
        vec![u(&[17], 24)],
        |t| Ok(vec![t[0].broadcast_to(&[31, 17])?]),
    ));
    v.push(Check::new("shape/sum_to", k, vec![u(&[31, 17], 25)], |t| {
        Ok(vec![t[0].sum_to(&[17])?, t[0].sum_to(&[31, 1])?])
    }));
    v.push(Check::new("fill/full_like", k, vec![u(&[257], 26)], |t| {
        Ok(vec![t[0].full_like(0.5)?, t[0].zeros_like()?])
    }));

    let vecs = || vec![u(&[257], 27), u(&[257], 28)];
    v.push(Check::new("update/axpy_host", k, vecs(), |t| {
        Ok(vec![t[0].axpy(-0.3, &t[1])?])
    }));
    v.push(Check::new(
        "update/axpy_device",
        k,
        [vecs(), vec![u(&[], 29)]].concat(),
        |t| Ok(vec![t[0].axpy(&t[2], &t[1])?]),
    ));
    v.push(Check::new(
        "update/axpby_device",
        k,
        [vecs(), vec![u(&[], 29), u(&[1], 30)]].concat(),
        |t| {
            Ok(vec![
                t[0].axpby(&t[3], &t[2], &t[1])?,
                t[0].axpby(0.5, 2.0, &t[1])?,
            ])
        },
    ));
    v.push(Check::new(
        "update/axpy_ratio",
        k,
        [vecs(), vec![u(&[], 29), Range(vec![], 30, 0.5, 1.5)]].concat(),
        |t| {
            Ok(vec![
                t[0].axpy_ratio(&t[2], &t[3], 1.0, &t[1])?,
                t[0].axpy_ratio(&t[2], &t[3], -1.0, &t[1])?,
            ])
        },
    ));
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
