//! Bilevel optimization: problems, inner optimizers, hypergradient methods and the
//! outer loop.
//!
//! A [`Problem`] gives the inner loss `L_in(w, λ)` and the outer loss `L_out(w, λ)` as
//! functions recorded on the tape (w and λ may each be several tensors). An
//! [`InnerOptimizer`] is a differentiable update map `w_{t+1} = Φ(w_t, λ)`.
//! [`hypergradient`] computes `dL_out/dλ` with any [`Method`]; [`optimize`] runs the
//! outer loop. The exact definitions of the methods are on [`Method`]'s variants.

mod methods;
mod outer;

use std::time::Duration;

pub use methods::{Method, hypergradient};
pub use outer::{
    HoagConfig, OuterConfig, OuterOptimizer, Trace, TraceStep, WarmStart, hoag, hoag_with,
    optimize, optimize_with,
};

use crate::autodiff::{grad, no_grad};
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
    /// (used by [`Method::Exact`]); `None` otherwise.
    fn inner_solution(&self, _lambda: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        None
    }
}

/// A differentiable inner update map Φ. The optimizer state is w followed by any extra
/// buffers (the momentum's velocity), one tensor per w-tensor each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InnerOptimizer {
    /// Gradient descent: w ← w − lr·∇_w L_in(w, λ).
    Gd {
        /// Step size η > 0.
        lr: f64,
    },
    /// Heavy-ball momentum: m ← μ·m + ∇_w L_in(w, λ); w ← w − lr·m, with m₀ = 0.
    Momentum {
        /// Step size η > 0.
        lr: f64,
        /// Momentum μ in [0, 1).
        momentum: f64,
    },
}

impl InnerOptimizer {
    /// The step size η.
    pub fn lr(&self) -> f64 {
        match self {
            InnerOptimizer::Gd { lr } | InnerOptimizer::Momentum { lr, .. } => *lr,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let lr = self.lr();
        if !lr.is_finite() || lr <= 0.0 {
            return Err(invalid(
                "inner optimizer",
                format!("the step size must be finite and > 0, got {lr}"),
            ));
        }
        if let InnerOptimizer::Momentum { momentum, .. } = self
            && !(0.0..1.0).contains(momentum)
        {
            return Err(invalid(
                "inner optimizer",
                format!("momentum must be in [0, 1), got {momentum}"),
            ));
        }
        Ok(())
    }

    /// Initial state for w₀: [w₀] or [w₀, 0].
    pub(crate) fn init_state(&self, w0: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut state: Vec<Tensor> = w0.iter().map(Tensor::detach).collect();
        if let InnerOptimizer::Momentum { .. } = self {
            for w in w0 {
                state.push(w.detach().zeros_like()?);
            }
        }
        Ok(state)
    }

    /// Φ applied to a state given the gradient ∇_w L_in at its w. Recorded when the
    /// inputs are on the graph (RAD rebuilds steps through it).
    pub(crate) fn step(&self, state: &[Tensor], g: &[Tensor]) -> Result<Vec<Tensor>> {
        let n = g.len();
        match *self {
            InnerOptimizer::Gd { lr } => state[..n]
                .iter()
                .zip(g)
                .map(|(w, gi)| w.axpy(-lr, gi))
                .collect(),
            InnerOptimizer::Momentum { lr, momentum } => {
                let m: Vec<Tensor> = state[n..]
                    .iter()
                    .zip(g)
                    .map(|(m, gi)| gi.axpy(momentum, m))
                    .collect::<Result<_>>()?;
                let mut next: Vec<Tensor> = state[..n]
                    .iter()
                    .zip(&m)
                    .map(|(w, mi)| w.axpy(-lr, mi))
                    .collect::<Result<_>>()?;
                next.extend(m);
                Ok(next)
            }
        }
    }
}

/// The inner problem's solver: an optimizer and a number of steps T.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inner {
    /// The update map Φ.
    pub optimizer: InnerOptimizer,
    /// Number of inner steps T run from w₀ before (or, for unrolled methods, while)
    /// computing the hypergradient.
    pub steps: usize,
}

/// A hypergradient and what computing it took.
#[derive(Debug, Clone)]
pub struct Hypergradient {
    /// dL_out/dλ, shaped like λ.
    pub grad: Vec<Tensor>,
    /// The inner variables the hypergradient was evaluated at (w_T, or w* for
    /// [`Method::Exact`], or w' for one-step), for warm starts and metrics.
    pub w: Vec<Tensor>,
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

/// Fails with the step where the inner loop diverged. `losses` holds each step's inner
/// loss as a 1-element device tensor; they and ‖w_T‖² (which catches a blow-up in the
/// last step) are read back once, together, so detection costs no readback per step.
pub(crate) fn check_divergence(
    mut losses: Vec<Tensor>,
    w_t: &[Tensor],
    steps: usize,
) -> Result<()> {
    losses.push(no_grad(|| dot_list(w_t, w_t))?.reshape(&[1])?);
    let values = Tensor::concat(&refs(&losses))?.to_vec::<f64>()?;
    if let Some(t) = values.iter().position(|v| !v.is_finite()) {
        let what = if t < steps {
            format!("the inner loss became {} at inner step {t}", values[t])
        } else {
            format!("the inner iterate became non-finite at step {steps}")
        };
        return Err(invalid(
            "inner loop",
            format!("{what} of {steps}: the inner optimizer diverged; lower its step size"),
        ));
    }
    Ok(())
}

/// Runs the inner optimizer for `steps` steps from `state`, without a graph. With
/// `keep`, returns every state s_0..s_T (RAD stores them); otherwise just [s_T].
///
/// Divergence is detected without a readback per step: every step's inner loss is
/// kept as a 0-d device tensor and all are read once at the end; the first non-finite
/// one names the step.
pub(crate) fn run_inner(
    problem: &dyn Problem,
    lambda: &[Tensor],
    opt: &InnerOptimizer,
    state: Vec<Tensor>,
    steps: usize,
    keep: bool,
    nw: usize,
) -> Result<Vec<Vec<Tensor>>> {
    let lambda = detach_all(lambda);
    let mut states = Vec::with_capacity(if keep { steps + 1 } else { 1 });
    let mut losses = Vec::with_capacity(steps + 1);
    let mut s = state;
    for _ in 0..steps {
        let w = track(&s[..nw]);
        let loss = problem.inner_loss(&w, &lambda)?;
        let g = grad(&loss, &refs(&w), false)?;
        losses.push(loss.detach().reshape(&[1])?);
        let next = no_grad(|| opt.step(&s, &g))?;
        if keep {
            states.push(s);
        }
        s = next;
    }
    check_divergence(losses, &s[..nw], steps)?;
    states.push(s);
    Ok(states)
}
