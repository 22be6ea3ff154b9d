//! IAPTT-GM (Liu et al., ICML 2021, "Towards Gradient-based Bilevel Optimization with
//! Non-convex Followers and Beyond"): initialization auxiliary and pessimistic
//! trajectory truncation, for inner problems whose trajectory depends on where it
//! starts (non-convex lower levels).
//!
//! The inner loop's starting point z is an upper-level variable, optimised with λ. Each
//! outer step runs K inner steps from z (projected onto the problem's inner bounds, if
//! any), picks the pessimistic step k* = argmax_{1 ≤ k ≤ K} L_out(w_k, λ) (the first
//! maximiser), and differentiates L_out(w_{k*}, λ) with respect to λ and z through the
//! first k* steps only (reverse mode over the stored iterates, as RAD). Both then take a
//! projected gradient step.

use std::time::Instant;

use super::method::{check_bounds, outer_grads};
use super::outer::{norm, project_lambda};
use super::trajectory::{Trajectory, project};
use super::{Inner, Problem, check_inputs, check_losses, detach_all};
use crate::autodiff::no_grad;
use crate::error::{Result, invalid};
use crate::tensor::Tensor;

/// IAPTT-GM's outer loop settings. The step size is `lr` for the first `decay_after`
/// steps, then multiplied by `decay` every step: the paper's constant 0.1 leaves x
/// oscillating ±0.06 around the optimum of its non-convex toy ([`IapttToy`]), which a
/// decay over the last steps settles (measured: within 3·10⁻⁴ with 400 steps at 0.1,
/// then ×0.95 per step for 100).
///
/// [`IapttToy`]: crate::problems::IapttToy
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IapttConfig {
    /// Outer steps.
    pub steps: usize,
    /// Step size of the projected gradient steps on λ and z.
    pub lr: f64,
    /// Steps taken at `lr` before it decays.
    pub decay_after: usize,
    /// Factor applied to the step size every step after `decay_after`, in (0, 1]
    /// (1: constant).
    pub decay: f64,
    /// Pessimistic trajectory truncation (the method); `false` differentiates through
    /// all K steps (the initialization auxiliary alone).
    pub truncate: bool,
}

impl Default for IapttConfig {
    /// The paper's toy settings (500 steps at 0.1) with the decay above.
    fn default() -> Self {
        IapttConfig {
            steps: 500,
            lr: 0.1,
            decay_after: 400,
            decay: 0.95,
            truncate: true,
        }
    }
}

impl IapttConfig {
    fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid(
                "iaptt_gm",
                format!("lr must be finite and > 0, got {}", self.lr),
            ));
        }
        if !(self.decay > 0.0 && self.decay <= 1.0) {
            return Err(invalid(
                "iaptt_gm",
                format!("decay must be in (0, 1], got {}", self.decay),
            ));
        }
        Ok(())
    }

    /// The step size of outer step `t`.
    pub fn lr_at(&self, t: usize) -> f64 {
        let decayed = t.saturating_sub(self.decay_after);
        self.lr * self.decay.powi(decayed.min(i32::MAX as usize) as i32)
    }
}

/// IAPTT-GM's hypergradient at (λ, z): the derivatives of L_out(w_{k*}, λ) and what
/// computing them found.
#[derive(Debug, Clone)]
pub struct IapttGradient {
    /// dL_out(w_{k*}(λ, z), λ)/dλ.
    pub dlambda: Vec<Tensor>,
    /// dL_out(w_{k*}(λ, z), λ)/dz.
    pub dz: Vec<Tensor>,
    /// The truncation step k* (K without truncation, or when K = 0).
    pub k_star: usize,
    /// L_out(w_{k*}, λ).
    pub outer_at_k_star: f64,
    /// L_out(w_K, λ) and L_in(w_K, λ), at the end of the inner run.
    pub outer_loss: f64,
    /// L_in(w_K, λ).
    pub inner_loss: f64,
    /// w_K.
    pub w: Vec<Tensor>,
}

/// IAPTT-GM's hypergradient with respect to λ and the inner starting point z, with
/// (`truncate`) or without pessimistic trajectory truncation. Reads back the K outer
/// losses (one readback) to pick k*.
pub fn iaptt_gradient(
    problem: &dyn Problem,
    lambda: &[Tensor],
    z: &[Tensor],
    inner: &Inner,
    truncate: bool,
) -> Result<IapttGradient> {
    let lambda = detach_all(lambda);
    let trajectory = Trajectory::run(problem, &lambda, z, inner)?;
    let t = trajectory.steps();
    let k_star = if truncate && t > 0 {
        let losses = no_grad(|| -> Result<Vec<f64>> {
            let each: Vec<Tensor> = (1..=t)
                .map(|k| problem.outer_loss(trajectory.w(k), &lambda)?.reshape(&[1]))
                .collect::<Result<_>>()?;
            Tensor::concat(&each.iter().collect::<Vec<_>>())?.to_vec::<f64>()
        })?;
        // The first maximiser; a NaN loss is caught by the outer-loss check below.
        let mut best = 0;
        for (k, v) in losses.iter().enumerate() {
            if *v > losses[best] {
                best = k;
            }
        }
        best + 1
    } else {
        t
    };
    let w_end = trajectory.w(t).to_vec();
    let (outer_loss, inner_loss) = no_grad(|| -> Result<(f64, f64)> {
        Ok((
            problem.outer_loss(&w_end, &lambda)?.to_scalar::<f64>()?,
            problem.inner_loss(&w_end, &lambda)?.to_scalar::<f64>()?,
        ))
    })?;
    let truncated = trajectory.truncated(k_star)?;
    let w_k = truncated.w(k_star).to_vec();
    let (loss, gw, gl) = outer_grads(problem, &w_k, &lambda)?;
    let outer_at_k_star = loss.to_scalar::<f64>()?;
    if !outer_at_k_star.is_finite() || !outer_loss.is_finite() {
        return Err(invalid(
            "iaptt_gm",
            format!(
                "the outer loss along the inner trajectory is not finite ({outer_at_k_star} at step {k_star}, {outer_loss} at step {t}): lower the inner step size"
            ),
        ));
    }
    let adjoint = truncated.reverse(k_star, gw, gl)?;
    Ok(IapttGradient {
        dlambda: adjoint.dlambda,
        dz: adjoint.dw,
        k_star,
        outer_at_k_star,
        outer_loss,
        inner_loss,
        w: w_end,
    })
}

/// One outer step of [`iaptt_gm`].
#[derive(Debug, Clone)]
pub struct IapttStep {
    /// 0-based outer step.
    pub step: usize,
    /// L_out(w_K, λ) before this step's update.
    pub outer_loss: f64,
    /// L_in(w_K, λ) before this step's update.
    pub inner_loss: f64,
    /// The truncation step k*.
    pub k_star: usize,
    /// ‖(dλ, dz)‖.
    pub hypergrad_norm: f64,
    /// The step size used.
    pub lr: f64,
    /// Seconds since the loop started.
    pub elapsed_s: f64,
}

/// What [`iaptt_gm`] ran and ended at.
#[derive(Debug, Clone)]
pub struct IapttTrace {
    /// One entry per outer step.
    pub steps: Vec<IapttStep>,
    /// λ after the last step.
    pub lambda: Vec<Tensor>,
    /// z after the last step.
    pub z: Vec<Tensor>,
    /// w_K from the final (λ, z).
    pub w: Vec<Tensor>,
    /// L_out(w_K, λ) at the final (λ, z).
    pub outer_loss: f64,
}

/// IAPTT-GM: `config.steps` projected gradient steps on (λ, z) with
/// [`iaptt_gradient`], z starting at `z0` (shaped like the problem's w), λ projected onto
/// [`Problem::lambda_bounds`] and z onto [`Problem::inner_bounds`].
pub fn iaptt_gm(
    problem: &dyn Problem,
    lambda0: &[Tensor],
    z0: &[Tensor],
    inner: &Inner,
    config: &IapttConfig,
) -> Result<IapttTrace> {
    iaptt_gm_with(problem, lambda0, z0, inner, config, &mut |_| {})
}

/// [`iaptt_gm`], calling `observe` after every outer step.
pub fn iaptt_gm_with(
    problem: &dyn Problem,
    lambda0: &[Tensor],
    z0: &[Tensor],
    inner: &Inner,
    config: &IapttConfig,
    observe: &mut dyn FnMut(&IapttStep),
) -> Result<IapttTrace> {
    const OP: &str = "iaptt_gm";
    let z0 = check_inputs(OP, problem, lambda0, Some(z0))?;
    inner.optimizer.validate()?;
    config.validate()?;
    check_losses(OP, problem, lambda0, &z0)?;
    for (what, bounds) in [
        ("the problem's inner bounds", problem.inner_bounds()),
        ("the problem's λ bounds", problem.lambda_bounds()),
    ] {
        if let Some((lo, hi)) = bounds {
            check_bounds(what, lo, hi)?;
        }
    }
    if let Some((lo, hi)) = problem.lambda_bounds() {
        let outside = lambda0
            .iter()
            .map(|l| l.to_vec::<f64>())
            .collect::<Result<Vec<_>>>()?
            .concat()
            .into_iter()
            .any(|v| !(lo..=hi).contains(&v));
        if outside {
            return Err(invalid(
                "iaptt_gm",
                format!("λ₀ lies outside the problem's λ bounds [{lo}, {hi}]: start inside them"),
            ));
        }
    }
    let start = Instant::now();
    let mut lambda = detach_all(lambda0);
    let nz = z0.len();
    let mut z = no_grad(|| project(problem, detach_all(&z0), nz))?;
    let mut steps = Vec::with_capacity(config.steps);
    for step in 0..config.steps {
        let g = iaptt_gradient(problem, &lambda, &z, inner, config.truncate)?;
        let lr = config.lr_at(step);
        let mut all = g.dlambda.clone();
        all.extend(g.dz.iter().cloned());
        let record = IapttStep {
            step,
            outer_loss: g.outer_loss,
            inner_loss: g.inner_loss,
            k_star: g.k_star,
            hypergrad_norm: norm(&all)?,
            lr,
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        observe(&record);
        steps.push(record);
        let step_all = |ts: &[Tensor], gs: &[Tensor]| -> Result<Vec<Tensor>> {
            no_grad(|| ts.iter().zip(gs).map(|(t, g)| t.axpy(-lr, g)).collect())
        };
        lambda = project_lambda(problem, step_all(&lambda, &g.dlambda)?)?;
        z = no_grad(|| project(problem, step_all(&z, &g.dz)?, nz))?;
    }
    let end = iaptt_gradient(problem, &lambda, &z, inner, false)?;
    Ok(IapttTrace {
        steps,
        lambda,
        z,
        w: end.w,
        outer_loss: end.outer_loss,
    })
}
