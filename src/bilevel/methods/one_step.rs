//! DARTS's one-step approximation: one virtual inner step from w_T.

use serde::{Deserialize, Serialize};

use crate::autodiff::{HvpOperator, grad, no_grad};
use crate::bilevel::method::{
    BadSetting, HypergradientMethod, MethodOutput, outer_grads, positive,
};
use crate::bilevel::trajectory::run_to_end;
use crate::bilevel::{Inner, Problem, bytes_of, dot_list, refs, track};
use crate::error::Result;
use crate::tensor::Tensor;

/// [`Method::OneStep`](crate::bilevel::Method::OneStep): DARTS's one virtual step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneStep {
    /// The virtual step ξ > 0.
    pub xi: f64,
    /// Exact mixed product (true, the default) or DARTS's finite difference (false).
    #[serde(default = "yes")]
    pub exact: bool,
}

fn yes() -> bool {
    true
}

impl OneStep {
    pub(crate) const NAME: &str = "one_step";

    pub(crate) fn check(&self) -> std::result::Result<(), BadSetting> {
        positive("xi", self.xi)
    }
}

impl HypergradientMethod for OneStep {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn validate(&self, _inner: &Inner) -> Result<()> {
        Ok(self.check()?)
    }

    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<MethodOutput> {
        let w = run_to_end(problem, lambda, w0, inner)?;
        one_step(problem, lambda, w, self.xi, self.exact, inner.steps)
    }

    /// Its `w` is the virtual step w', not an inner iterate.
    fn warm_starts(&self) -> bool {
        false
    }
}

fn one_step(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w: Vec<Tensor>,
    xi: f64,
    exact: bool,
    inner_steps: usize,
) -> Result<MethodOutput> {
    let wt = track(&w);
    let g = grad(&problem.inner_loss(&wt, lambda)?, &refs(&wt), false)?;
    let w_virtual: Vec<Tensor> = no_grad(|| {
        w.iter()
            .zip(&g)
            .map(|(a, b)| a.axpy(-xi, b))
            .collect::<Result<_>>()
    })?;
    let (loss, u, gl) = outer_grads(problem, &w_virtual, lambda)?;
    let ju: Vec<Tensor> = if exact {
        let (wt, lt) = (track(&w), track(lambda));
        HvpOperator::new(&problem.inner_loss(&wt, &lt)?, &refs(&wt))?
            .mixed(&refs(&lt), &refs(&u))?
    } else {
        // ε = 0.01/‖u‖ stays on the device: w ± ε u = w ± 0.01·u/‖u‖, and the
        // difference quotient multiplies by ‖u‖/0.02.
        let norm = no_grad(|| dot_list(&u, &u)?.sqrt())?;
        let c = norm.full_like(0.01)?;
        let grad_lambda_at = |sign: f64| -> Result<Vec<Tensor>> {
            let shifted: Vec<Tensor> = no_grad(|| {
                w.iter()
                    .zip(&u)
                    .map(|(wi, ui)| wi.axpy_ratio(&c, &norm, sign, ui))
                    .collect::<Result<_>>()
            })?;
            let lt = track(lambda);
            grad(&problem.inner_loss(&shifted, &lt)?, &refs(&lt), false)
        };
        let (plus, minus) = (grad_lambda_at(1.0)?, grad_lambda_at(-1.0)?);
        no_grad(|| {
            plus.iter()
                .zip(&minus)
                .map(|(p, m)| p.sub(m)?.mul(&norm)?.scale(1.0 / 0.02))
                .collect::<Result<_>>()
        })?
    };
    let hyper = no_grad(|| {
        gl.iter()
            .zip(&ju)
            .map(|(a, b)| a.axpy(-xi, b))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(MethodOutput {
        grad: hyper,
        w: w_virtual,
        dw0: None,
        outer_loss: loss.to_scalar::<f64>()?,
        inner_steps,
        solver_iterations: 0,
        residual: None,
        stored_bytes: bytes_of(&w),
        inner_grad_norm: None,
    })
}
