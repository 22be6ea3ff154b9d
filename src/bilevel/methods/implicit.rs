//! Implicit methods: at w_T, v ≈ H⁻¹ g by a linear solver, hypergradient = ∇_λ L_out − J v;
//! [`Implicit`] solves H v = g exactly (densely), at the closed-form w* when there is one.

use serde::{Deserialize, Serialize};

use crate::autodiff::{HvpOperator, no_grad};
use crate::bilevel::method::{
    BadSetting, HypergradientMethod, MethodOutput, outer_grads, positive,
};
use crate::bilevel::trajectory::run_to_end;
use crate::bilevel::{Inner, Problem, bytes_of, check_w, flatten, refs, track, unflatten};
use crate::device::Device;
use crate::error::{Error, Result, invalid};
use crate::solvers::{
    CgOptions, SolveResult, conjugate_gradient, fixed_point, neumann, solve_symmetric_min_norm,
};
use crate::tensor::{DType, Tensor};

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

/// [`Method::Implicit`](crate::bilevel::Method::Implicit): the implicit hypergradient with
/// H v = g solved directly, at the closed-form w*(λ) when the problem has one
/// ([`Problem::inner_solution`]), otherwise at w_T (`inner.steps` steps from w₀; w₀
/// itself with 0 steps).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "super::NoSettings")]
pub struct Implicit;

/// The largest |w| (all inner variables together) [`Implicit`] solves densely. H is
/// built from |w| Hessian-vector products and decomposed in f64 on the host in O(|w|³)
/// time and 2·|w|² values of memory: about 2 s at |w| = 650 (hyper-cleaning on the
/// digits), ~16 s at the limit. Larger problems: `cg` with a tolerance.
pub const MAX_DENSE_DIM: usize = 1024;

impl Implicit {
    pub(crate) const NAME: &str = "implicit";
}

impl HypergradientMethod for Implicit {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn validate(&self, _inner: &Inner) -> Result<()> {
        Ok(())
    }

    /// With a closed form, ignores `inner` and `w0` (beyond their shapes): no inner
    /// step is taken.
    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<MethodOutput> {
        let n: usize = w0.iter().map(Tensor::numel).sum();
        if n > MAX_DENSE_DIM {
            return Err(invalid(
                Self::NAME,
                format!(
                    "|w| = {n} is above the dense solve's limit of {MAX_DENSE_DIM} (H is built and decomposed on the host in O(|w|³)); use cg with a tolerance"
                ),
            ));
        }
        let (w, steps) = match problem.inner_solution(lambda) {
            Some(w) => {
                let w = w?;
                check_w(&w, w0)?;
                (w, 0)
            }
            None => (run_to_end(problem, lambda, w0, inner)?, inner.steps),
        };
        let out = implicit_at(problem, lambda, w, dense_min_norm_solve)?;
        Ok(MethodOutput {
            inner_steps: steps,
            stored_bytes: (n * n * 8) as u64,
            ..out
        })
    }
}

/// Solves H x = b for the operator `apply` (symmetric, maybe singular): H's columns from
/// n applications to the unit vectors, then [`solve_symmetric_min_norm`] on the host in
/// f64, eigenvalues below n·ε(dtype)·max|λ| counting as zero. For a singular H (the
/// softmax bias of hyper-cleaning) that is the minimum-norm solution, unique, and exact
/// when b is orthogonal to H's null space, as g is when L_out shares the invariance.
/// The residual reported is ‖H x − b‖ with H as built.
fn dense_min_norm_solve(
    apply: &dyn Fn(&Tensor) -> Result<Tensor>,
    b: &Tensor,
) -> Result<SolveResult> {
    let n = b.numel();
    let device = b.device();
    let dtype = b.dtype();
    let unit = |i: usize| -> Result<Tensor> {
        let mut e = vec![0.0f64; n];
        e[i] = 1.0;
        tensor(&e, &[n], &device, dtype)
    };
    // Columns stay on the device and are read back together: one wait, not one per
    // column.
    let mut cols = Vec::with_capacity(n);
    for j in 0..n {
        cols.push(apply(&unit(j)?)?.reshape(&[n])?);
    }
    let mut a = vec![0.0f64; n * n];
    if n > 0 {
        let all = Tensor::concat(&cols.iter().collect::<Vec<_>>())?.to_vec::<f64>()?;
        for (j, col) in all.chunks_exact(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                a[i * n + j] = v;
            }
        }
    }
    let eps = match dtype {
        DType::F64 => f64::EPSILON,
        DType::F32 => f64::from(f32::EPSILON),
    };
    let solved =
        solve_symmetric_min_norm(&a, &b.to_vec::<f64>()?, n.max(1) as f64 * eps).map_err(|e| {
            match e {
                Error::InvalidArgument { msg, .. } => invalid(
                    Implicit::NAME,
                    format!("the dense solve with the inner Hessian failed: {msg}"),
                ),
                other => other,
            }
        })?;
    Ok(SolveResult {
        x: tensor(&solved.x, &[n], &device, dtype)?,
        iterations: n,
        residual_norm: solved.residual_norm,
    })
}

/// A tensor of `dtype` on `device` from f64 host values.
fn tensor(v: &[f64], shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
    match dtype {
        DType::F64 => Tensor::from_vec(v.to_vec(), shape, device),
        DType::F32 => Tensor::from_vec(
            v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            shape,
            device,
        ),
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
        inner_grad_norm: None,
    })
}
