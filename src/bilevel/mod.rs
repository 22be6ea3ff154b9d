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
//! variants hold their exact definitions). [`hypergradient`] runs a [`Method`],
//! [`hypergradient_with`] any implementation, both with the same checks and
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
pub use method::{HypergradientMethod, Method, MethodOutput, hypergradient, hypergradient_with};
pub use outer::{
    OuterConfig, OuterOptimizer, Trace, TraceStep, WarmStart, optimize, optimize_with,
};
pub use solve_then::{InnerSolve, InnerSolver, SolveThen, Tolerance, solve_inner};

use std::time::Duration;

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

pub(crate) fn bytes_of(ts: &[Tensor]) -> u64 {
    ts.iter()
        .map(|t| (t.numel() * t.dtype().size()) as u64)
        .sum()
}

/// Checks λ against the problem's declared shapes.
pub(crate) fn check_lambda(problem: &dyn Problem, lambda: &[Tensor]) -> Result<()> {
    let want = problem.lambda_shapes();
    if want.len() != lambda.len() {
        return Err(invalid(
            "hypergradient",
            format!("λ must have {} tensor(s), got {}", want.len(), lambda.len()),
        ));
    }
    for (w, l) in want.iter().zip(lambda) {
        if l.shape() != &w[..] {
            return Err(Error::ShapeMismatch {
                op: "λ",
                lhs: l.shape().to_vec(),
                rhs: w.clone(),
            });
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
