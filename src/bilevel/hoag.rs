//! HOAG (Pedregosa 2016): an outer loop of its own, not a hypergradient method. Each
//! outer step chooses how far to run the inner optimizer (to ‖∇_w L_in‖ ≤ ε_k) and how
//! precisely to solve H v = g (CG to residual ε_k) from a decreasing tolerance ε_k, then
//! takes a gradient step on λ. An experiment config's `kind = "hoag"` selects it in
//! place of [`optimize`](super::optimize), with [`HoagSettings`] as its `[method]` table.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::method::{BadSetting, HypergradientMethod, evaluate};
use super::outer::norm;
use super::trajectory::run_inner;
use super::{
    Inner, InnerOptimizer, Method, Problem, Trace, TraceStep, check_inputs, check_losses,
    detach_all, refs, track,
};
use crate::autodiff::{grad, no_grad};
use crate::error::{Result, invalid};
use crate::tensor::Tensor;

/// Configuration of [`hoag`] (Pedregosa 2016).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoagConfig {
    /// Outer steps.
    pub outer_steps: usize,
    /// Step size of λ ← λ − lr·h.
    pub lr: f64,
    /// Initial tolerance ε₀.
    pub eps0: f64,
    /// Tolerance decay: ε_k = ε₀·decay^k, in (0, 1).
    pub decay: f64,
    /// The inner optimizer (warm-started across outer steps).
    pub inner: InnerOptimizer,
    /// Cap on inner steps per outer step.
    pub max_inner_steps: usize,
    /// Cap on CG iterations per outer step.
    pub max_cg_iters: usize,
    /// The inner gradient norm is read back every this many inner steps.
    pub check_every: usize,
}

/// HOAG's name in reports and configs.
pub(crate) const HOAG: &str = "hoag";

/// HOAG: at outer step k, run the inner optimizer (warm-started) until
/// ‖∇_w L_in‖ ≤ ε_k, solve H v = g by CG to residual ε_k, step λ; ε_k = ε₀·decay^k.
/// Checks λ₀ (count, shapes, device, dtype), the settings and the losses' shapes before
/// any work, as [`hypergradient`](super::hypergradient) does.
pub fn hoag(problem: &dyn Problem, lambda0: &[Tensor], config: &HoagConfig) -> Result<Trace> {
    hoag_with(problem, lambda0, config, &mut |_| {})
}

/// [`hoag`], calling `observe` with each [`TraceStep`] as soon as it is recorded.
pub fn hoag_with(
    problem: &dyn Problem,
    lambda0: &[Tensor],
    config: &HoagConfig,
    observe: &mut dyn FnMut(&TraceStep),
) -> Result<Trace> {
    const OP: &str = "hoag";
    let w0 = check_inputs(OP, problem, lambda0, None)?;
    config.inner.validate()?;
    super::method::check_method_bounds(problem, "hoag", false)?;
    let c = config;
    if !(c.lr.is_finite()
        && c.lr > 0.0
        && c.eps0.is_finite()
        && c.eps0 > 0.0
        && c.decay > 0.0
        && c.decay < 1.0)
        || c.max_inner_steps == 0
        || c.max_cg_iters == 0
        || c.check_every == 0
    {
        return Err(invalid(
            "hoag",
            format!("{c:?}: need lr > 0, eps0 > 0, decay in (0, 1), and positive step caps"),
        ));
    }
    check_losses(OP, problem, lambda0, &w0)?;
    let start = Instant::now();
    let mut lambda = detach_all(lambda0);
    let mut w = w0;
    let nw = w.len();
    let mut steps = Vec::new();
    let mut last = None;
    for k in 0..=c.outer_steps {
        let eps = c.eps0 * c.decay.powi(k as i32);
        // Inner solve to ‖∇_w L_in‖ ≤ ε_k, checking every `check_every` steps.
        let mut state = c.inner.init_state(&w)?;
        let mut taken = 0;
        while taken < c.max_inner_steps {
            let burst = c.check_every.min(c.max_inner_steps - taken);
            let states = run_inner(problem, &lambda, &c.inner, state, burst, false, nw)?;
            state = states
                .into_iter()
                .next()
                .expect("run_inner returns the last state");
            taken += burst;
            let wt = track(&state[..nw]);
            let g = grad(&problem.inner_loss(&wt, &lambda)?, &refs(&wt), false)?;
            if norm(&g)? <= eps {
                break;
            }
        }
        w = state[..nw].to_vec();
        let method = Method::Cg {
            iters: c.max_cg_iters,
            tol: Some(eps),
            damping: 0.0,
        };
        let inner = Inner {
            optimizer: c.inner,
            steps: 0,
        };
        method.validate(&inner)?;
        let mut hg = evaluate(None, problem, &lambda, &w, &inner, &method)?;
        hg.report.method = HOAG.to_string();
        hg.report.inner_steps = taken;
        let hnorm = norm(&hg.grad)?;
        steps.push(TraceStep {
            step: k,
            outer_loss: hg.report.outer_loss,
            hypergrad_norm: hnorm,
            elapsed_s: start.elapsed().as_secs_f64(),
            report: hg.report.clone(),
        });
        observe(&steps[steps.len() - 1]);
        if k < c.outer_steps {
            lambda = no_grad(|| {
                lambda
                    .iter()
                    .zip(&hg.grad)
                    .map(|(l, g)| l.axpy(-c.lr, g))
                    .collect::<Result<Vec<_>>>()
            })?;
        }
        last = Some(hg);
    }
    let last = last.expect("at least one outer step runs");
    Ok(Trace {
        steps,
        lambda,
        w: last.w.clone(),
        last,
    })
}

/// HOAG's own settings: a [`HoagConfig`] less what the inner optimizer and the outer
/// loop give (the `[method]` table of an experiment config with `kind = "hoag"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HoagSettings {
    /// Cap on CG iterations per outer step, ≥ 1 (default 100; `iters` in configs).
    #[serde(rename = "iters")]
    pub max_cg_iters: usize,
    /// Initial tolerance ε₀ > 0 (default 1e-2).
    pub eps0: f64,
    /// Tolerance decay in (0, 1) (default 0.9).
    pub decay: f64,
    /// Read the inner gradient norm every this many steps, ≥ 1 (default 10).
    pub check_every: usize,
}

impl Default for HoagSettings {
    fn default() -> Self {
        HoagSettings {
            max_cg_iters: 100,
            eps0: 1e-2,
            decay: 0.9,
            check_every: 10,
        }
    }
}

impl HoagSettings {
    /// The whole configuration: these settings, `inner` (its steps are the cap per outer
    /// step), and the outer loop's steps and step size.
    pub fn config(&self, inner: &Inner, outer_steps: usize, lr: f64) -> HoagConfig {
        HoagConfig {
            outer_steps,
            lr,
            eps0: self.eps0,
            decay: self.decay,
            inner: inner.optimizer,
            max_inner_steps: inner.steps,
            max_cg_iters: self.max_cg_iters,
            check_every: self.check_every,
        }
    }

    /// The settings' domains, each failure naming its config key.
    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    pub(crate) fn check(&self) -> std::result::Result<(), BadSetting> {
        let bad = |key, msg: String| {
            Err(BadSetting {
                key,
                error: invalid("hoag", msg),
            })
        };
        if !(self.decay > 0.0 && self.decay < 1.0) {
            return bad(
                "decay",
                format!("expected a number in (0, 1), got {}", self.decay),
            );
        }
        if !self.eps0.is_finite() || self.eps0 <= 0.0 {
            return bad(
                "eps0",
                format!("expected a finite number > 0, got {}", self.eps0),
            );
        }
        if self.max_cg_iters == 0 {
            return bad("iters", "expected an integer ≥ 1, got 0".into());
        }
        if self.check_every == 0 {
            return bad("check_every", "expected an integer ≥ 1, got 0".into());
        }
        Ok(())
    }
}
