//! Bilevel optimization: problems, inner optimizers, hypergradient methods and the
//! outer loop.
//!
//! A [`Problem`] gives the inner loss `L_in(w, λ)` and the outer loss `L_out(w, λ)` as
//! functions recorded on the tape (w and λ may each be several tensors). An
//! [`InnerOptimizer`] is a differentiable update map `w_{t+1} = Φ(w_t, λ)`, run for
//! [`Inner::steps`] steps.
//!
//! A hypergradient method is anything implementing [`HypergradientMethod`]: it checks
//! its settings and computes dL_out/dλ from (problem, λ, w₀, inner). The built-in ones
//! live one family per file in [`methods`] and are named by the enum [`Method`] (whose
//! variants hold their exact definitions). [`hypergradient`] runs any of them from the
//! problem's w₀ ([`hypergradient_from`] from a given one), with the same checks and
//! [`Report`]. The machinery they share, running the inner optimizer with divergence
//! detection and the reverse sweep through a stored trajectory (which also yields
//! dL/dw₀), is [`trajectory`].
//!
//! [`optimize`] runs the outer loop with any method; [`hoag`] is HOAG, an outer loop
//! that sets its own inner steps and solver tolerance per step; [`iaptt_gm`] is
//! IAPTT-GM, an outer loop that also learns the inner starting point. For inner
//! problems with several minimisers, [`Method::Bda`] aggregates the outer loss into the
//! inner steps; problems may bound their inner variables and λ
//! ([`Problem::inner_bounds`], [`Problem::lambda_bounds`]).
//!
//! Files: `inner.rs` (Φ), `trajectory.rs`, `method.rs` (the trait, [`Method`], the
//! driver), `methods/{unrolled,forward,implicit,one_step}.rs`, `outer.rs`,
//! `hoag.rs`.

#[cfg(test)]
mod beyond_lls_tests;
mod hoag;
mod iaptt;
mod inner;
mod method;
pub mod methods;
mod outer;
mod solve_then;
pub mod trajectory;

#[cfg(feature = "config")]
pub(crate) use hoag::HOAG;
pub use hoag::{HoagConfig, HoagSettings, hoag, hoag_with};
pub use iaptt::{
    IapttConfig, IapttGradient, IapttStep, IapttTrace, iaptt_gm, iaptt_gm_with, iaptt_gradient,
};
pub use inner::{Inner, InnerOptimizer};
#[cfg(feature = "config")]
pub(crate) use method::BadSetting;
pub use method::{HypergradientMethod, Method, MethodOutput, hypergradient, hypergradient_from};
pub(crate) use outer::update as outer_update;
pub use outer::{
    OuterConfig, OuterOptimizer, Trace, TraceStep, WarmStart, optimize, optimize_with,
};
pub use solve_then::{InnerSolve, InnerSolver, SolveThen, Tolerance, solve_inner};

use std::time::Duration;

use crate::autodiff::no_grad;
use crate::error::{Error, Result, invalid};
use crate::tensor::Tensor;

/// A bilevel problem: min_λ L_out(w*(λ), λ) with w*(λ) = argmin_w L_in(w, λ).
///
/// Implement this trait (and nothing else) to use every method of blo on your own
/// problem. Losses must be computed with blo's tensor ops from the given tensors, so
/// the tape can differentiate them to second order. Problems are `Sync`: on the CPU,
/// RAD evaluates the inner loss of one reverse step on a second thread while the
/// first back-propagates through the next.
pub trait Problem: Sync {
    /// The initial inner variables w₀. Their shapes define w's structure and their
    /// device is where the problem runs.
    fn init_w(&self) -> Result<Vec<Tensor>>;
    /// The shapes λ must have.
    fn lambda_shapes(&self) -> Vec<Vec<usize>>;
    /// The inner (training) loss L_in(w, λ), a 0-d tensor.
    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor>;
    /// The outer (validation) loss L_out(w, λ), a 0-d tensor.
    fn outer_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor>;
    /// The exact minimiser w*(λ) of the inner loss, for problems that have a closed form
    /// (used by [`Method::Implicit`]); `None` otherwise.
    fn inner_solution(&self, _lambda: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        None
    }
    /// Box constraints lo ≤ w ≤ hi on every inner variable, elementwise, or `None` (the
    /// default: unconstrained). The inner optimizer's iterates are projected onto the box
    /// after every step, w ← clamp(Φ(w), lo, hi), and unrolled methods (RAD, T-RAD, BDA,
    /// IAPTT-GM) differentiate through the clamp (derivative 1 inside the box, 0 where
    /// it binds); the other methods reject a problem with bounds.
    fn inner_bounds(&self) -> Option<(f64, f64)> {
        None
    }
    /// Box constraints on every element of λ, or `None` (the default). The outer loops
    /// ([`optimize`], [`iaptt_gm`]) project λ onto the box after every update.
    fn lambda_bounds(&self) -> Option<(f64, f64)> {
        None
    }
}

/// A hypergradient and what computing it took.
#[derive(Debug, Clone)]
pub struct Hypergradient {
    /// dL_out/dλ, shaped like λ.
    pub grad: Vec<Tensor>,
    /// The inner variables the hypergradient was evaluated at (w_T, or w* for
    /// [`Method::Implicit`] with a closed form, or w' for one-step), for warm starts and
    /// metrics.
    pub w: Vec<Tensor>,
    /// dL_out(w_T(w₀), λ)/dw₀, shaped like w₀, from methods whose computation yields it
    /// (RAD: the reverse sweep's adjoint at the start); `None` for the others. What a
    /// meta-learner needs to learn w₀.
    pub dw0: Option<Vec<Tensor>>,
    /// What was done.
    pub report: Report,
}

/// What a hypergradient computation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The method's name.
    pub method: String,
    /// Inner optimizer steps taken.
    pub inner_steps: usize,
    /// Linear-solver iterations (CG) or series terms (Neumann, fixed point).
    pub solver_iterations: usize,
    /// Final residual norm of the linear solve, where there is one.
    pub residual: Option<f64>,
    /// Bytes of state the method stored (iterates for RAD, tangents for forward mode,
    /// solver vectors for implicit methods).
    pub stored_bytes: u64,
    /// ‖∇_w L_in‖ at the evaluation point, when an inner solve to tolerance measured it
    /// ([`SolveThen`]); `None` otherwise.
    pub inner_grad_norm: Option<f64>,
    /// L_out at the point the hypergradient was evaluated.
    pub outer_loss: f64,
    /// Wall time, including the final readbacks.
    pub wall_time: Duration,
    /// GPU dispatches recorded (None on the CPU).
    pub dispatches: Option<u64>,
}

/// w_T(λ): `inner.steps` steps of the inner optimizer from `w0` at λ, without a graph,
/// the point every unrolled method differentiates through. Fails naming the step where
/// the inner loop diverged. For a solve to a gradient-norm tolerance instead, use
/// [`solve_inner`].
///
/// Checks λ and `w0` against the problem (count, shapes, device, dtype, naming `λ[i]` or
/// `w₀[i]`), the inner optimizer, and that both losses are 0-d, before any step. (Inside a
/// [`HypergradientMethod`], whose inputs passed these checks already,
/// [`trajectory::run_to_end`] is the same run without them.)
pub fn inner_iterate(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
) -> Result<Vec<Tensor>> {
    const OP: &str = "inner_iterate";
    let w0 = check_inputs(OP, problem, lambda, Some(w0))?;
    inner.optimizer.validate()?;
    check_losses(OP, problem, lambda, &w0)?;
    trajectory::run_to_end(problem, lambda, &w0, inner)
}

/// The bilevel objective at λ, L_out(w_T(λ), λ), with w_T(λ) the inner optimizer's
/// iterate after `inner.steps` steps from `problem.init_w()` ([`inner_iterate`]): the
/// number the hypergradient methods differentiate (the unrolled ones exactly), and what
/// a finite-difference check ([`crate::check::fd_hypergradient`]) or an evaluation of
/// a run's result reads. One readback. Checks as [`inner_iterate`] does.
pub fn outer_value(problem: &dyn Problem, lambda: &[Tensor], inner: &Inner) -> Result<f64> {
    const OP: &str = "outer_value";
    let w0 = check_inputs(OP, problem, lambda, None)?;
    inner.optimizer.validate()?;
    check_losses(OP, problem, lambda, &w0)?;
    let w = trajectory::run_to_end(problem, lambda, &w0, inner)?;
    let value = no_grad(|| problem.outer_loss(&w, lambda))?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Err(invalid(
            OP,
            format!(
                "the outer loss at w_T is {value}: the inner optimizer probably diverged in its last step (lower its step size), or the outer loss overflows there"
            ),
        ));
    }
    Ok(value)
}

pub(crate) fn bytes_of(ts: &[Tensor]) -> u64 {
    ts.iter()
        .map(|t| (t.numel() * t.dtype().size()) as u64)
        .sum()
}

/// The checks every entry point (`hypergradient`, `optimize`, `hoag`, `solve_inner`,
/// `outer_value`, and any later one, such as meta-learning's) runs on what the caller
/// passed, before any work: λ's and w₀'s count, shapes, device and dtype against the
/// problem, each error naming `λ[i]` or `w₀[i]` and `op`. The reference is the problem's
/// `init_w()`: its shapes are w's, and its device and dtype are where the problem runs.
/// Returns w₀: the given one, or `init_w()` when `w0` is `None`.
///
/// Runs none of the problem's losses; [`check_losses`] does, once the settings passed.
pub(crate) fn check_inputs(
    op: &'static str,
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: Option<&[Tensor]>,
) -> Result<Vec<Tensor>> {
    let init = problem.init_w()?;
    let Some(first) = init.first() else {
        return Err(invalid(
            op,
            "the problem's init_w() returned no tensors: a problem needs at least one inner variable",
        ));
    };
    let (device, dtype) = (first.device(), first.dtype());
    let place = |name: String, t: &Tensor| -> Result<()> {
        if t.device() != device {
            return Err(invalid(
                op,
                format!(
                    "{name} lives on {}, but the problem runs on {device} (where its init_w() is): \
                     make it there (Tensor::from_f64(values, shape, &device, DType::{dtype:?})) or move it with .to_device(&device)",
                    t.device()
                ),
            ));
        }
        if t.dtype() != dtype {
            return Err(invalid(
                op,
                format!(
                    "{name} is {:?}, but the problem computes in {dtype:?} (its init_w()'s dtype): \
                     convert it with .to_dtype(DType::{dtype:?}) or make it with Tensor::from_f64",
                    t.dtype()
                ),
            ));
        }
        Ok(())
    };
    let want = problem.lambda_shapes();
    if want.len() != lambda.len() {
        return Err(invalid(
            op,
            format!(
                "λ must have {} tensor(s), one per entry of the problem's lambda_shapes(), got {}",
                want.len(),
                lambda.len()
            ),
        ));
    }
    for (i, (w, l)) in want.iter().zip(lambda).enumerate() {
        if l.shape() != &w[..] {
            return Err(invalid(
                op,
                format!(
                    "λ[{i}] has shape {:?}, but the problem's lambda_shapes()[{i}] is {w:?}",
                    l.shape()
                ),
            ));
        }
        place(format!("λ[{i}]"), l)?;
    }
    let Some(w0) = w0 else {
        for (i, w) in init.iter().enumerate() {
            place(format!("the problem's init_w()[{i}]"), w)?;
        }
        return Ok(init);
    };
    if w0.is_empty() {
        return Err(invalid(
            op,
            "w₀ is empty: start from the problem's inner variables (problem.init_w())",
        ));
    }
    if w0.len() != init.len() {
        return Err(invalid(
            op,
            format!(
                "w₀ must have {} tensor(s), like the problem's init_w(), got {}",
                init.len(),
                w0.len()
            ),
        ));
    }
    for (i, (w, like)) in w0.iter().zip(&init).enumerate() {
        if w.shape() != like.shape() {
            return Err(invalid(
                op,
                format!(
                    "w₀[{i}] has shape {:?}, but the problem's init_w()[{i}] has {:?}",
                    w.shape(),
                    like.shape()
                ),
            ));
        }
        place(format!("w₀[{i}]"), w)?;
    }
    Ok(w0.to_vec())
}

/// Evaluates both losses once at (w₀, λ), without a graph, and checks that each is a 0-d
/// tensor, naming the inner or the outer loss. On a GPU nothing is read back (shapes
/// are known on the host), and with fusion the unread losses never run.
pub(crate) fn check_losses(
    op: &'static str,
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
) -> Result<()> {
    let (inner, outer) = no_grad(|| -> Result<(Tensor, Tensor)> {
        Ok((
            problem.inner_loss(w0, lambda)?,
            problem.outer_loss(w0, lambda)?,
        ))
    })?;
    for (which, loss) in [("inner", &inner), ("outer", &outer)] {
        if !loss.shape().is_empty() {
            return Err(invalid(
                op,
                format!(
                    "the problem's {which} loss must be a 0-d tensor (shape []), got shape {:?}: \
                     reduce it with .sum() or .mean(), or .reshape(&[]) a one-element tensor",
                    loss.shape()
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_w(w0: &[Tensor], like: &[Tensor]) -> Result<()> {
    if w0.len() != like.len() {
        return Err(invalid(
            "hypergradient",
            format!("w must have {} tensor(s), got {}", like.len(), w0.len()),
        ));
    }
    for (a, b) in w0.iter().zip(like) {
        if a.shape() != b.shape() {
            return Err(Error::ShapeMismatch {
                op: "w",
                lhs: a.shape().to_vec(),
                rhs: b.shape().to_vec(),
            });
        }
    }
    Ok(())
}

pub(crate) fn track(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::requires_grad).collect()
}

pub(crate) fn detach_all(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter().map(Tensor::detach).collect()
}

pub(crate) fn refs(ts: &[Tensor]) -> Vec<&Tensor> {
    ts.iter().collect()
}

/// Σ_i ⟨a_i, b_i⟩ as a 0-d tensor (recorded when inputs are tracked).
pub(crate) fn dot_list(a: &[Tensor], b: &[Tensor]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for (x, y) in a.iter().zip(b) {
        let d = x.dot(y)?;
        total = Some(match total {
            Some(t) => t.add(&d)?,
            None => d,
        });
    }
    total.ok_or_else(|| invalid("dot", "empty parameter list"))
}

/// Flattens a list of tensors into one vector (for the linear solvers).
pub(crate) fn flatten(ts: &[Tensor]) -> Result<Tensor> {
    if ts.len() == 1 {
        return ts[0].reshape(&[ts[0].numel()]);
    }
    Tensor::concat(&refs(ts))
}

/// The inverse of [`flatten`] for tensors shaped like `like`.
pub(crate) fn unflatten(v: &Tensor, like: &[Tensor]) -> Result<Vec<Tensor>> {
    if like.len() == 1 {
        return Ok(vec![v.reshape(like[0].shape())?]);
    }
    let sizes: Vec<usize> = like.iter().map(Tensor::numel).collect();
    v.split(&sizes)?
        .into_iter()
        .zip(like)
        .map(|(p, l)| p.reshape(l.shape()))
        .collect()
}
