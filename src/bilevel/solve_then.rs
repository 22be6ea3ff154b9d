//! The classic protocol (Pedregosa 2016; Franceschi et al. 2017): solve the inner
//! problem to a gradient-norm tolerance, then evaluate a hypergradient method there.

use super::method::{HypergradientMethod, MethodOutput};
use super::outer::norm;
use super::trajectory::run_inner;
use super::{
    Inner, InnerOptimizer, Problem, check_inputs, check_losses, flatten, refs, track, unflatten,
};
use crate::autodiff::{HvpOperator, grad, no_grad};
use crate::error::{Result, invalid};
use crate::solvers::{CgOptions, conjugate_gradient};
use crate::tensor::Tensor;

/// When an inner solve stops: ‖∇_w L_in(w, λ)‖₂ ≤ `tol`, checked every `check_every`
/// steps (each check is one gradient and one readback), at most `max_steps` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Gradient-norm tolerance, finite and > 0.
    pub tol: f64,
    /// The most inner steps (of the solver: optimizer steps, or Newton steps); reaching
    /// it above `tol` is an error.
    pub max_steps: usize,
    /// Steps between checks, ≥ 1 (the starting point is checked too). Newton checks
    /// every step.
    pub check_every: usize,
    /// What takes the steps.
    pub solver: InnerSolver,
}

/// The solver of an inner solve to tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InnerSolver {
    /// The inner optimizer (gradient descent or momentum), as the unrolled methods run it.
    #[default]
    Optimizer,
    /// Newton–CG, for small problems solved to a tight tolerance: each step solves
    /// H d = −∇L by conjugate gradient on Hessian-vector products (to a relative
    /// residual of min(½, √‖∇L‖), the Eisenstat–Walker forcing that gives superlinear
    /// convergence; at most 2·|w| + 10 iterations), falls back to −∇L when that is not
    /// a descent direction (a Hessian that is not positive definite there), and backtracks
    /// (Armijo, factor ½) until the inner loss decreases enough. Each step reads back
    /// a few scalars; it needs no step size.
    Newton,
}

impl Tolerance {
    fn validate(&self) -> Result<()> {
        if !self.tol.is_finite() || self.tol <= 0.0 {
            return Err(invalid(
                "inner solve",
                format!("tol must be finite and > 0, got {}", self.tol),
            ));
        }
        if self.max_steps == 0 || self.check_every == 0 {
            return Err(invalid(
                "inner solve",
                format!(
                    "max_steps and check_every must be ≥ 1, got {} and {}",
                    self.max_steps, self.check_every
                ),
            ));
        }
        Ok(())
    }
}

/// What [`solve_inner`] reached.
#[derive(Debug, Clone)]
pub struct InnerSolve {
    /// The last iterate.
    pub w: Vec<Tensor>,
    /// Inner steps taken (a multiple of `check_every`, or `max_steps`).
    pub steps: usize,
    /// ‖∇_w L_in‖₂ at `w`, ≤ tol.
    pub grad_norm: f64,
}

/// Runs `optimizer` from `w0` until ‖∇_w L_in(w, λ)‖₂ ≤ `tolerance.tol`, checking every
/// `check_every` steps, and returns where it ended. Fails, naming the norm reached, if
/// `max_steps` come first, or naming the step where the inner loop diverged.
///
/// For a fixed number of steps (the w_T that the unrolled methods differentiate), use
/// [`inner_iterate`](super::inner_iterate); for L_out there, [`outer_value`](super::outer_value).
///
/// Checks λ and `w0` against the problem (count, shapes, device, dtype, naming `λ[i]` or
/// `w₀[i]`), the settings, and that both losses are 0-d, before any step.
pub fn solve_inner(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    optimizer: &InnerOptimizer,
    tolerance: &Tolerance,
) -> Result<InnerSolve> {
    const OP: &str = "solve_inner";
    let w0 = check_inputs(OP, problem, lambda, Some(w0))?;
    optimizer.validate()?;
    tolerance.validate()?;
    check_losses(OP, problem, lambda, &w0)?;
    solve(problem, lambda, &w0, optimizer, tolerance)
}

/// [`solve_inner`] for inputs that passed its checks.
fn solve(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    optimizer: &InnerOptimizer,
    tolerance: &Tolerance,
) -> Result<InnerSolve> {
    if tolerance.solver == InnerSolver::Newton {
        return newton_solve(problem, lambda, w0, tolerance);
    }
    let nw = w0.len();
    let grad_norm = |w: &[Tensor]| -> Result<f64> {
        let wt = track(w);
        norm(&grad(&problem.inner_loss(&wt, lambda)?, &refs(&wt), false)?)
    };
    let mut state = optimizer.init_state(w0)?;
    let mut taken = 0;
    // False for NaN too: a norm that is not a number has not reached the tolerance.
    let reached = |g: f64| g <= tolerance.tol;
    let mut g = grad_norm(&state[..nw])?;
    while !reached(g) && taken < tolerance.max_steps {
        let burst = tolerance.check_every.min(tolerance.max_steps - taken);
        state = run_inner(problem, lambda, optimizer, state, burst, false, nw)?
            .pop()
            .expect("run_inner returns the last state");
        taken += burst;
        g = grad_norm(&state[..nw])?;
    }
    if !reached(g) {
        return Err(invalid(
            "inner solve",
            format!(
                "‖∇_w L_in‖ is {g:e} after max_steps = {} inner steps, above tol = {:e}: raise max_steps (or the inner step size), or loosen tol",
                tolerance.max_steps, tolerance.tol
            ),
        ));
    }
    state.truncate(nw);
    Ok(InnerSolve {
        w: state,
        steps: taken,
        grad_norm: g,
    })
}

/// [`InnerSolver::Newton`]'s solve.
fn newton_solve(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    tolerance: &Tolerance,
) -> Result<InnerSolve> {
    let loss_at = |w: &[Tensor]| -> Result<f64> {
        no_grad(|| problem.inner_loss(w, lambda))?.to_scalar::<f64>()
    };
    let mut w: Vec<Tensor> = w0.iter().map(Tensor::detach).collect();
    let dim: usize = w.iter().map(Tensor::numel).sum();
    let mut steps = 0;
    loop {
        let wt = track(&w);
        let loss = problem.inner_loss(&wt, lambda)?;
        let op = HvpOperator::new(&loss, &refs(&wt))?;
        let g = flatten(&op.gradient())?;
        let g_norm = g.sqnorm()?.to_scalar::<f64>()?.sqrt();
        if g_norm <= tolerance.tol {
            return Ok(InnerSolve {
                w,
                steps,
                grad_norm: g_norm,
            });
        }
        if !g_norm.is_finite() || steps == tolerance.max_steps {
            return Err(invalid(
                "inner solve",
                format!(
                    "Newton: ‖∇_w L_in‖ is {g_norm:e} after max_steps = {steps} Newton steps, above tol = {:e}: raise max_steps or loosen tol",
                    tolerance.tol
                ),
            ));
        }
        let neg_g = g.neg()?;
        let cg = conjugate_gradient(
            |v| flatten(&op.hvp(&refs(&unflatten(v, &w)?))?),
            &neg_g,
            &CgOptions {
                max_iters: 2 * dim + 10,
                tol: Some(g_norm.sqrt().min(0.5) * g_norm),
                check_every: 5,
                damping: 0.0,
            },
        );
        // A direction that does not descend (H not positive definite along it, or a
        // CG that broke down) is replaced by steepest descent.
        let direction = match cg {
            Ok(solved) => {
                let slope = solved.x.dot(&g)?.to_scalar::<f64>()?;
                if slope < 0.0 && slope.is_finite() {
                    Some((solved.x, slope))
                } else {
                    None
                }
            }
            Err(_) => None,
        };
        let (d, slope) = match direction {
            Some(found) => found,
            None => (neg_g, -g_norm * g_norm),
        };
        let d = unflatten(&d, &w)?;
        let f0 = loss.to_scalar::<f64>()?;
        let mut t = 1.0;
        let next = loop {
            let trial: Vec<Tensor> = no_grad(|| {
                w.iter()
                    .zip(&d)
                    .map(|(wi, di)| wi.axpy(t, di))
                    .collect::<Result<_>>()
            })?;
            let f = loss_at(&trial)?;
            if f.is_finite() && f <= f0 + 1e-4 * t * slope {
                break trial;
            }
            t *= 0.5;
            if t < 1e-12 {
                return Err(invalid(
                    "inner solve",
                    format!(
                        "Newton: no step along the search direction decreases the inner loss at ‖∇_w L_in‖ = {g_norm:e} (step {steps}); the tolerance tol = {:e} may be below what the precision allows",
                        tolerance.tol
                    ),
                ));
            }
        };
        w = next;
        steps += 1;
    }
}

/// A hypergradient method evaluated at an inner solution to tolerance: [`solve_inner`]
/// from w₀, then `method` at the point reached with no further inner step. The report
/// gives the steps taken and the final ‖∇_w L_in‖. For methods that evaluate at a point
/// (CG, Neumann, fixed point, one-step, implicit); unrolled ones (RAD, T-RAD, forward)
/// would differentiate through zero steps.
///
/// With `Inner`, only its optimizer is used: the tolerance replaces the step count.
pub struct SolveThen<'m> {
    /// The method evaluated at the solution.
    pub method: &'m dyn HypergradientMethod,
    /// When the inner solve stops.
    pub tolerance: Tolerance,
}

impl HypergradientMethod for SolveThen<'_> {
    fn name(&self) -> &str {
        self.method.name()
    }

    fn validate(&self, inner: &Inner) -> Result<()> {
        self.tolerance.validate()?;
        self.method.validate(&Inner {
            optimizer: inner.optimizer,
            steps: 0,
        })
    }

    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<MethodOutput> {
        let solved = solve(problem, lambda, w0, &inner.optimizer, &self.tolerance)?;
        let at = Inner {
            optimizer: inner.optimizer,
            steps: 0,
        };
        let out = self.method.compute(problem, lambda, &solved.w, &at)?;
        Ok(MethodOutput {
            inner_steps: solved.steps,
            inner_grad_norm: Some(solved.grad_norm),
            ..out
        })
    }

    fn warm_starts(&self) -> bool {
        self.method.warm_starts()
    }
}
