//! RAD and T-RAD: reverse mode through the stored inner trajectory.

use serde::{Deserialize, Serialize};

use crate::bilevel::method::{BadSetting, HypergradientMethod, MethodOutput, outer_grads};
use crate::bilevel::trajectory::Trajectory;
use crate::bilevel::{Inner, Problem};
use crate::error::{Result, invalid};
use crate::tensor::Tensor;

/// [`Method::Rad`](crate::bilevel::Method::Rad): reverse mode through all T steps.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "super::NoSettings")]
pub struct Rad;

/// [`Method::Trad`](crate::bilevel::Method::Trad): reverse mode through the last K of
/// T steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trad {
    /// Steps to differentiate through, 1 ≤ K ≤ T.
    pub k: usize,
}

impl Rad {
    pub(crate) const NAME: &str = "rad";
}

impl Trad {
    pub(crate) const NAME: &str = "trad";

    pub(crate) fn check(&self, inner: &Inner) -> std::result::Result<(), BadSetting> {
        if self.k == 0 || self.k > inner.steps {
            return Err(BadSetting {
                key: "k",
                error: invalid(
                    "trad",
                    format!("K must be in 1..=T = {}, got {}", inner.steps, self.k),
                ),
            });
        }
        Ok(())
    }
}

impl HypergradientMethod for Rad {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn validate(&self, _inner: &Inner) -> Result<()> {
        Ok(())
    }

    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<MethodOutput> {
        unrolled(problem, lambda, w0, inner, inner.steps)
    }

    fn supports_inner_bounds(&self) -> bool {
        true
    }
}

impl HypergradientMethod for Trad {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn validate(&self, inner: &Inner) -> Result<()> {
        Ok(self.check(inner)?)
    }

    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<MethodOutput> {
        unrolled(problem, lambda, w0, inner, self.k)
    }

    fn supports_inner_bounds(&self) -> bool {
        true
    }
}

/// RAD (k = T) and T-RAD: the reverse sweep over the last `k` of T stored steps, seeded
/// with the outer loss's gradients at w_T.
fn unrolled(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
    k: usize,
) -> Result<MethodOutput> {
    let trajectory = Trajectory::run(problem, lambda, w0, inner)?;
    let stored = trajectory.stored_bytes();
    let t = trajectory.steps();
    let w_t = trajectory.w(t).to_vec();
    let (loss, gw, gl) = outer_grads(problem, &w_t, lambda)?;
    let adjoint = trajectory.reverse(k, gw, gl)?;
    Ok(MethodOutput {
        grad: adjoint.dlambda,
        w: w_t,
        // T-RAD's sweep stops at w_{T−K}: its adjoint there is not dL/dw₀.
        dw0: (k == t).then_some(adjoint.dw),
        outer_loss: loss.to_scalar::<f64>()?,
        inner_steps: t,
        solver_iterations: 0,
        residual: None,
        stored_bytes: stored,
        inner_grad_norm: None,
    })
}
