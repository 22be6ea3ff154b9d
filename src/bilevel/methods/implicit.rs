//! Implicit methods: at w_T, v ≈ H⁻¹ g by a linear solver, hypergradient = ∇_λ L_out − J v.

use serde::{Deserialize, Serialize};

use crate::autodiff::{HvpOperator, no_grad};
use crate::bilevel::method::{
    BadSetting, HypergradientMethod, MethodOutput, outer_grads, positive,
};
use crate::bilevel::trajectory::run_to_end;
use crate::bilevel::{Inner, Problem, bytes_of, flatten, refs, track, unflatten};
use crate::error::{Result, invalid};
use crate::solvers::{CgOptions, SolveResult, conjugate_gradient, fixed_point, neumann};
use crate::tensor::Tensor;

/// [`Method::Cg`](crate::bilevel::Method::Cg): H v = g by conjugate gradient.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cg {
    /// Maximum iterations K ≥ 1.
    pub iters: usize,
    /// Optional residual tolerance ≥ 0, checked on the host every 10 iterations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tol: Option<f64>,
    /// Damping ρ ≥ 0 (default 0): solve (H + ρI) v = g.
    #[serde(default)]
    pub damping: f64,
}

/// [`Method::Neumann`](crate::bilevel::Method::Neumann): v by K + 1 terms of the
/// Neumann series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neumann {
    /// Number of terms after the first, K ≥ 1.
    pub k: usize,
    /// Series step η > 0.
    pub eta: f64,
}

/// [`Method::FixedPoint`](crate::bilevel::Method::FixedPoint): v by K fixed-point
/// iterations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedPoint {
    /// Iterations K ≥ 1.
    pub k: usize,
    /// Step η > 0.
    pub eta: f64,
}

impl Cg {
    pub(crate) const NAME: &str = "cg";

    pub(crate) fn check(&self) -> std::result::Result<(), BadSetting> {
        let bad = |key, msg: String| {
            Err(BadSetting {
                key,
                error: invalid("cg", msg),
            })
        };
        if self.iters == 0 {
            return bad("iters", "K (iterations) must be at least 1".into());
        }
        if let Some(t) = self.tol
            && (!t.is_finite() || t < 0.0)
        {
            return bad("tol", format!("tol must be finite and ≥ 0, got {t}"));
        }
        if !self.damping.is_finite() || self.damping < 0.0 {
            return bad(
                "damping",
                format!("damping must be finite and ≥ 0, got {}", self.damping),
            );
        }
        Ok(())
    }
}

/// K ≥ 1 and η > 0, the settings of the two series methods.
fn check_series(name: &'static str, k: usize, eta: f64) -> std::result::Result<(), BadSetting> {
    if k == 0 {
        return Err(BadSetting {
            key: "k",
            error: invalid(name, "K must be at least 1"),
        });
    }
    positive("eta", eta)
}

impl Neumann {
    pub(crate) const NAME: &str = "neumann";

    pub(crate) fn check(&self) -> std::result::Result<(), BadSetting> {
        check_series(Self::NAME, self.k, self.eta)
    }
}

impl FixedPoint {
    pub(crate) const NAME: &str = "fixed_point";

    pub(crate) fn check(&self) -> std::result::Result<(), BadSetting> {
        check_series(Self::NAME, self.k, self.eta)
    }
}

impl HypergradientMethod for Cg {
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
        let opts = CgOptions {
            max_iters: self.iters,
            tol: self.tol,
            check_every: 10,
            damping: self.damping,
        };
        after_inner(problem, lambda, w0, inner, |apply, b| {
            conjugate_gradient(apply, b, &opts)
        })
    }
}

impl HypergradientMethod for Neumann {
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
        after_inner(problem, lambda, w0, inner, |apply, b| {
            neumann(apply, b, self.k, self.eta)
        })
    }
}

impl HypergradientMethod for FixedPoint {
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
        after_inner(problem, lambda, w0, inner, |apply, b| {
            fixed_point(apply, b, self.k, self.eta)
        })
    }
}

/// The inner loop's `inner.steps` steps from `w0`, then the implicit hypergradient at
/// the last iterate with `solve`: what CG, Neumann and fixed point share.
fn after_inner(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
    solve: impl FnOnce(&dyn Fn(&Tensor) -> Result<Tensor>, &Tensor) -> Result<SolveResult>,
) -> Result<MethodOutput> {
    let w = run_to_end(problem, lambda, w0, inner)?;
    let out = implicit_at(problem, lambda, w, solve)?;
    Ok(MethodOutput {
        inner_steps: inner.steps,
        ..out
    })
}

/// The implicit hypergradient at a given w: v = `solve`(H, g) with H applied by
/// Hessian-vector products (on flattened vectors), then ∇_λ L_out − J v. Reports no
/// inner steps (the caller took them).
pub(super) fn implicit_at(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w: Vec<Tensor>,
    solve: impl FnOnce(&dyn Fn(&Tensor) -> Result<Tensor>, &Tensor) -> Result<SolveResult>,
) -> Result<MethodOutput> {
    let (loss, gw, gl) = outer_grads(problem, &w, lambda)?;
    let (wt, lt) = (track(&w), track(lambda));
    let op = HvpOperator::new(&problem.inner_loss(&wt, &lt)?, &refs(&wt))?;
    let apply = |p: &Tensor| -> Result<Tensor> {
        let parts = unflatten(p, &w)?;
        flatten(&op.hvp(&refs(&parts))?)
    };
    let b = flatten(&gw)?;
    let solved = solve(&apply, &b)?;
    let stored = 4 * bytes_of(std::slice::from_ref(&b));
    let v = unflatten(&solved.x, &w)?;
    let jv = op.mixed(&refs(&lt), &refs(&v))?;
    let hyper = no_grad(|| {
        gl.iter()
            .zip(&jv)
            .map(|(a, b)| a.sub(b))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(MethodOutput {
        grad: hyper,
        w,
        dw0: None,
        outer_loss: loss.to_scalar::<f64>()?,
        inner_steps: 0,
        solver_iterations: solved.iterations,
        residual: Some(solved.residual_norm),
        stored_bytes: stored,
    })
}
