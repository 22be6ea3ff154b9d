//! The outer loop: λ ← λ − lr·hypergradient (or Adam), with any hypergradient method.

use std::time::Instant;

use super::method::evaluate;
use super::{
    Hypergradient, HypergradientMethod, Inner, Problem, Report, check_inputs, check_losses,
    detach_all, dot_list,
};
use crate::autodiff::no_grad;
use crate::error::{Error, Result, invalid};
use crate::tensor::Tensor;

/// How λ moves along the hypergradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OuterOptimizer {
    /// λ ← λ − lr·h.
    Sgd {
        /// Step size.
        lr: f64,
    },
    /// Adam (Kingma & Ba) on λ with bias correction.
    Adam {
        /// Step size.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator offset.
        eps: f64,
    },
}

impl OuterOptimizer {
    /// Adam with the usual defaults (β₁ 0.9, β₂ 0.999, ε 1e-8).
    pub fn adam(lr: f64) -> Self {
        OuterOptimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let ok = match *self {
            OuterOptimizer::Sgd { lr } => lr.is_finite() && lr > 0.0,
            OuterOptimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                lr.is_finite()
                    && lr > 0.0
                    && (0.0..1.0).contains(&beta1)
                    && (0.0..1.0).contains(&beta2)
                    && eps.is_finite()
                    && eps > 0.0
            }
        };
        if !ok {
            return Err(invalid(
                "outer optimizer",
                format!("{self:?}: need lr > 0, betas in [0, 1), eps > 0, all finite"),
            ));
        }
        Ok(())
    }
}

/// Where each outer step starts the inner optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmStart {
    /// From the problem's w₀ every time.
    Reinit,
    /// From the inner iterate the previous outer step ended at.
    Warm,
}

/// Configuration of [`optimize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OuterConfig {
    /// Outer steps: updates of λ. The hypergradient is computed `steps + 1` times, at
    /// λ₀, …, λ_steps (the last one measures where the run ended); 0 computes it at the
    /// initial λ once.
    pub steps: usize,
    /// The update of λ.
    pub optimizer: OuterOptimizer,
    /// Re-initialise w or warm-start it.
    pub warm_start: WarmStart,
}

/// One hypergradient evaluation of a [`Trace`]: the one at λ_step, before that step's
/// update (none after the last).
#[derive(Debug, Clone)]
pub struct TraceStep {
    /// Outer step index k (0-based): this entry is at λ_k.
    pub step: usize,
    /// L_out at the point the hypergradient was evaluated (before this step's update).
    pub outer_loss: f64,
    /// ‖hypergradient‖₂.
    pub hypergrad_norm: f64,
    /// Seconds since the start of the run.
    pub elapsed_s: f64,
    /// The hypergradient computation's report.
    pub report: Report,
}

/// The result of an outer loop.
#[derive(Debug, Clone)]
pub struct Trace {
    /// `steps + 1` entries: entry k is the hypergradient evaluation at λ_k, so entry 0
    /// is at the initial λ and the last at the final λ (one entry for `steps = 0`).
    pub steps: Vec<TraceStep>,
    /// Final λ.
    pub lambda: Vec<Tensor>,
    /// The inner iterate of the last hypergradient evaluation.
    pub w: Vec<Tensor>,
    /// The last hypergradient.
    pub last: Hypergradient,
}

/// λ projected onto the problem's λ bounds, if it has any.
pub(super) fn project_lambda(problem: &dyn Problem, lambda: Vec<Tensor>) -> Result<Vec<Tensor>> {
    match problem.lambda_bounds() {
        None => Ok(lambda),
        Some((lo, hi)) => no_grad(|| lambda.iter().map(|l| l.clamp(lo, hi)).collect()),
    }
}

pub(super) fn norm(ts: &[Tensor]) -> Result<f64> {
    Ok(no_grad(|| dot_list(ts, ts))?.to_scalar::<f64>()?.sqrt())
}

/// Adam's moments and step count, kept across [`update`] calls.
pub(crate) struct AdamState {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i32,
}

pub(crate) fn update(
    opt: &OuterOptimizer,
    adam: &mut Option<AdamState>,
    lambda: &[Tensor],
    h: &[Tensor],
) -> Result<Vec<Tensor>> {
    no_grad(|| match *opt {
        OuterOptimizer::Sgd { lr } => lambda.iter().zip(h).map(|(l, g)| l.axpy(-lr, g)).collect(),
        OuterOptimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => {
            let st = match adam {
                Some(s) => s,
                None => adam.insert(AdamState {
                    m: h.iter().map(Tensor::zeros_like).collect::<Result<_>>()?,
                    v: h.iter().map(Tensor::zeros_like).collect::<Result<_>>()?,
                    t: 0,
                }),
            };
            st.t += 1;
            let c1 = 1.0 - beta1.powi(st.t);
            let c2 = 1.0 - beta2.powi(st.t);
            let mut out = Vec::with_capacity(lambda.len());
            for i in 0..lambda.len() {
                st.m[i] = st.m[i].axpby(beta1, 1.0 - beta1, &h[i])?;
                st.v[i] = st.v[i].axpby(beta2, 1.0 - beta2, &h[i].square()?)?;
                let denom = st.v[i].scale(1.0 / c2)?.sqrt()?.scale_shift(1.0, eps)?;
                let step = st.m[i].div(&denom)?;
                out.push(lambda[i].axpy(-lr / c1, &step)?);
            }
            Ok(out)
        }
    })
}

/// Runs the outer loop: at each step, the hypergradient by `method` (a [`Method`] or
/// any [`HypergradientMethod`]) at λ, then an update of λ. Returns the trace (one
/// readback of the loss and the norm per step). The inner optimizer starts from
/// `problem.init_w()` (and, with [`WarmStart::Warm`], later from the previous end).
///
/// Checks once, before any work, what [`hypergradient`](super::hypergradient) checks:
/// λ₀'s count, shapes, device and dtype against the problem (naming `λ[i]`),
/// the settings, and that both losses are 0-d.
///
/// [`Method`]: super::Method
pub fn optimize(
    problem: &dyn Problem,
    lambda0: &[Tensor],
    inner: &Inner,
    method: &dyn HypergradientMethod,
    config: &OuterConfig,
) -> Result<Trace> {
    optimize_with(problem, lambda0, inner, method, config, &mut |_| {})
}

/// [`optimize`], calling `observe` with each [`TraceStep`] as soon as it is recorded
/// (for progress bars and live logs).
pub fn optimize_with(
    problem: &dyn Problem,
    lambda0: &[Tensor],
    inner: &Inner,
    method: &dyn HypergradientMethod,
    config: &OuterConfig,
    observe: &mut dyn FnMut(&TraceStep),
) -> Result<Trace> {
    const OP: &str = "optimize";
    let w0 = check_inputs(OP, problem, lambda0, None)?;
    config.optimizer.validate()?;
    inner.optimizer.validate()?;
    method.validate(inner)?;
    super::method::check_method_bounds(problem, method.name(), method.supports_inner_bounds())?;
    check_losses(OP, problem, lambda0, &w0)?;
    let start = Instant::now();
    let mut lambda = detach_all(lambda0);
    let mut w_start = w0.clone();
    let mut adam = None;
    let mut steps = Vec::new();
    let mut step = 0;
    let lr = match config.optimizer {
        OuterOptimizer::Sgd { lr } | OuterOptimizer::Adam { lr, .. } => lr,
    };
    loop {
        // After an update, a failure is the outer step's doing as much as the inner
        // loop's: the message says which outer step and learning rate led there.
        let hg = evaluate(None, problem, &lambda, &w_start, inner, method).map_err(|e| {
            if step == 0 {
                return e;
            }
            match e {
                Error::InvalidArgument { op, msg } => Error::InvalidArgument {
                    op,
                    msg: format!(
                        "{msg} (at outer step {step}, after {step} update(s) of λ with outer lr {lr:?}: \
                         if the outer loss was fine before, lower the outer step size)"
                    ),
                },
                other => other,
            }
        })?;
        let hnorm = norm(&hg.grad)?;
        if !hnorm.is_finite() {
            return Err(invalid(
                "optimize",
                format!(
                    "the hypergradient at outer step {step} is not finite ({hnorm}); lower the outer step size"
                ),
            ));
        }
        steps.push(TraceStep {
            step,
            outer_loss: hg.report.outer_loss,
            hypergrad_norm: hnorm,
            elapsed_s: start.elapsed().as_secs_f64(),
            report: hg.report.clone(),
        });
        observe(&steps[steps.len() - 1]);
        if step >= config.steps || config.steps == 0 {
            return Ok(Trace {
                steps,
                lambda,
                w: hg.w.clone(),
                last: hg,
            });
        }
        // A non-finite λ needs no readback here: the next hypergradient's inner loop finds
        // its loss non-finite at the starting w, which blames λ, and the error gains the
        // outer step and learning rate above.
        lambda = update(&config.optimizer, &mut adam, &lambda, &hg.grad)?;
        lambda = project_lambda(problem, lambda)?;
        if config.warm_start == WarmStart::Warm && method.warm_starts() {
            w_start = hg.w.clone();
        }
        step += 1;
    }
}
