//! What a hypergradient method is: the [`HypergradientMethod`] trait, the
//! [`hypergradient`] / [`hypergradient_from`] drivers that run any of them (checks,
//! timing, dispatch count, report), and [`Method`], the enum of the built-in ones.

use std::time::Instant;

use super::methods::{Bda, Cg, FixedPoint, Forward, Implicit, Neumann, OneStep, Rad, Trad};
use super::{
    Hypergradient, Inner, Problem, Report, check_inputs, check_losses, detach_all, refs, track,
};
use crate::autodiff::grad;
use crate::device::Device;
use crate::error::{Error, Result, invalid};
use crate::tensor::Tensor;

/// A way to compute dL_out/dλ. Implement it in a file of your own to add a method:
/// [`hypergradient`] and [`optimize`](super::optimize) run any implementation, with
/// the same checks and report as the built-in ones ([`Method`]).
///
/// The building blocks are public: [`trajectory`](super::trajectory) runs the inner
/// optimizer ([`run_to_end`](super::trajectory::run_to_end)) or stores its trajectory
/// for reverse sweeps ([`Trajectory`](super::trajectory::Trajectory)), and
/// [`crate::HvpOperator`] gives Hessian-vector and mixed products.
///
/// A method that approximates H⁻¹ by η·I (one term of the Neumann series) at w_T:
///
/// ```
/// use blo::bilevel::{
///     hypergradient, trajectory, HypergradientMethod, Inner, InnerOptimizer, Method,
///     MethodOutput, Problem,
/// };
/// use blo::problems::Ridge;
/// use blo::{grad, DType, Device, Error, HvpOperator, Result, Tensor};
///
/// struct IdentityInverse {
///     eta: f64,
/// }
///
/// impl HypergradientMethod for IdentityInverse {
///     fn name(&self) -> &str {
///         "identity_inverse"
///     }
///
///     fn validate(&self, _inner: &Inner) -> Result<()> {
///         if self.eta > 0.0 {
///             Ok(())
///         } else {
///             let msg = format!("eta must be > 0, got {}", self.eta);
///             Err(Error::InvalidArgument { op: "identity_inverse", msg })
///         }
///     }
///
///     fn compute(
///         &self,
///         problem: &dyn Problem,
///         lambda: &[Tensor],
///         w0: &[Tensor],
///         inner: &Inner,
///     ) -> Result<MethodOutput> {
///         let w = trajectory::run_to_end(problem, lambda, w0, inner)?;
///         let wt: Vec<Tensor> = w.iter().map(Tensor::requires_grad).collect();
///         let lt: Vec<Tensor> = lambda.iter().map(Tensor::requires_grad).collect();
///         let outer = problem.outer_loss(&wt, &lt)?;
///         let wrt: Vec<&Tensor> = wt.iter().chain(&lt).collect();
///         let mut g = grad(&outer, &wrt, false)?;
///         let g_lambda = g.split_off(wt.len());
///         // J·(η g) with J = ∂²L_in/∂λ∂w, at w_T.
///         let op = HvpOperator::new(&problem.inner_loss(&wt, &lt)?, &wt.iter().collect::<Vec<_>>())?;
///         let jg = op.mixed(&lt.iter().collect::<Vec<_>>(), &g.iter().collect::<Vec<_>>())?;
///         let grad = g_lambda
///             .iter()
///             .zip(&jg)
///             .map(|(a, b)| a.axpy(-self.eta, b))
///             .collect::<Result<Vec<_>>>()?;
///         Ok(MethodOutput {
///             grad,
///             w,
///             dw0: None,
///             outer_loss: outer.to_scalar::<f64>()?,
///             inner_steps: inner.steps,
///             solver_iterations: 0,
///             residual: None,
///             stored_bytes: 0,
///             inner_grad_norm: None,
///         })
///     }
/// }
///
/// # fn main() -> Result<()> {
/// let dev = Device::cpu();
/// let p = Ridge::synthetic(40, 30, 5, 3, &dev, DType::F64)?;
/// let lambda = vec![Tensor::from_vec(vec![0.1f64; 5], &[5], &dev)?];
/// let inner = Inner { optimizer: InnerOptimizer::Gd { lr: 0.2 }, steps: 20 };
/// let mine = hypergradient(&p, &lambda, &inner, &IdentityInverse { eta: 0.2 })?;
/// assert_eq!(mine.report.method, "identity_inverse");
/// // One fixed-point iteration is the same approximation.
/// let fp = hypergradient(&p, &lambda, &inner, &Method::fixed_point(1, 0.2))?;
/// let (a, b) = (mine.grad[0].to_vec::<f64>()?, fp.grad[0].to_vec::<f64>()?);
/// assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs().max(1.0)));
/// # Ok(()) }
/// ```
pub trait HypergradientMethod {
    /// A short name for reports ("rad", "cg", ...).
    fn name(&self) -> &str;

    /// Checks the method's settings against the inner solver. Runs before any inner
    /// step, so that a bad setting costs nothing.
    fn validate(&self, inner: &Inner) -> Result<()>;

    /// dL_out/dλ at λ, with the inner optimizer started from `w0`. `lambda` and `w0`
    /// passed the entry checks (the problem's shapes, device and dtype; `lambda` has no
    /// graph); `inner` and the settings passed [`validate`](Self::validate).
    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<MethodOutput>;

    /// Whether an outer loop that warm-starts ([`WarmStart::Warm`](super::WarmStart))
    /// may start the next inner run from the returned `w`. False for methods whose `w`
    /// is not an inner iterate (one-step's virtual step w').
    fn warm_starts(&self) -> bool {
        true
    }

    /// Whether the method differentiates through the projection onto a problem's inner
    /// bounds ([`Problem::inner_bounds`]): true for those that unroll the inner loop
    /// (RAD, T-RAD, BDA). Methods that assume an unconstrained inner optimum (implicit,
    /// one-step) or carry tangents through the plain update (forward) do not, and
    /// [`hypergradient`] rejects a problem with bounds for them.
    fn supports_inner_bounds(&self) -> bool {
        false
    }
}

/// What a [`HypergradientMethod`] computed; [`hypergradient`] turns it into a
/// [`Hypergradient`] with its [`Report`].
#[derive(Debug, Clone)]
pub struct MethodOutput {
    /// dL_out/dλ, shaped like λ.
    pub grad: Vec<Tensor>,
    /// The inner variables the hypergradient was evaluated at.
    pub w: Vec<Tensor>,
    /// dL_out(w_T(w₀), λ)/dw₀, for methods that get it for free (RAD's reverse sweep).
    pub dw0: Option<Vec<Tensor>>,
    /// L_out at (w, λ).
    pub outer_loss: f64,
    /// Inner optimizer steps taken.
    pub inner_steps: usize,
    /// Linear-solver iterations or series terms, where there are any.
    pub solver_iterations: usize,
    /// Final residual norm of a linear solve, where there is one.
    pub residual: Option<f64>,
    /// Bytes of state the method stored.
    pub stored_bytes: u64,
    /// ‖∇_w L_in‖ at the evaluation point, where the method measured it (an inner solve
    /// to tolerance, [`SolveThen`](super::SolveThen)); `None` otherwise.
    pub inner_grad_norm: Option<f64>,
}

/// A built-in hypergradient method, by its settings. Every method first runs
/// `inner.steps` (= T) steps of the inner optimizer Φ from the given w₀; unrolled methods
/// differentiate through them, implicit methods evaluate at the last iterate w_T.
///
/// T = 0 is allowed and evaluates the method at w₀ itself: CG, Neumann, fixed point and
/// one-step at a given w, as other libraries call them. For RAD and forward mode the
/// derivative through zero steps is the direct term ∇_λ L_out(w₀, λ) alone (w₀ does not
/// depend on λ; zero for the built-in problems), and RAD's dw₀ is ∇_w L_out(w₀, λ);
/// T-RAD needs 1 ≤ K ≤ T, so T ≥ 1.
///
/// Each variant is implemented by the type of the same name in
/// [`methods`](super::methods) (one file per family); this enum is the convenient
/// spelling, and implements [`HypergradientMethod`] by delegating to them. Each variant
/// has a constructor with the common defaults: [`Method::rad`], [`Method::trad`],
/// [`Method::forward`], [`Method::cg`], [`Method::neumann`], [`Method::fixed_point`],
/// [`Method::one_step`], [`Method::implicit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// `rad(T, η)`: reverse mode through all T steps of Φ, plus the direct ∇_λ L_out.
    /// Stores only the iterates w_t and rebuilds each step's graph on the reverse
    /// sweep: memory O(T·|w|). Also returns dL_out/dw₀ ([`Hypergradient::dw0`]).
    Rad,
    /// `trad(T, K, η)`: the same trajectory, back-propagating through the last K steps
    /// only (w_{T−K} is treated as a constant). `trad(T, T) = rad(T)`.
    Trad {
        /// Steps to differentiate through, 1 ≤ K ≤ T.
        k: usize,
    },
    /// `forward(T, η)` (Franceschi et al. 2017): Z₀ = 0,
    /// Z_{t+1} = Z_t − η (H_t Z_t + ∂²L_in/∂w∂λ), hypergradient = Z_Tᵀ g + ∇_λ L_out
    /// (for momentum, Z also carries the velocity's tangent). Equal to `rad(T)` up to
    /// rounding; memory O(|w|·|λ|), independent of T; cost per step 1 + |λ| backward passes.
    Forward,
    /// `cg(K)`: v solves H v = g by K conjugate-gradient iterations from v₀ = 0 (or fewer,
    /// once ‖r‖ ≤ tol); hypergradient = ∇_λ L_out − J v.
    Cg {
        /// Maximum iterations K ≥ 1.
        iters: usize,
        /// Optional residual tolerance, checked on the host every 10 iterations.
        tol: Option<f64>,
        /// Damping ρ ≥ 0: solve (H + ρI) v = g.
        damping: f64,
    },
    /// `neumann(K, η)`: v = η Σ_{k=0..K} (I − ηH)^k g; hypergradient = ∇_λ L_out − J v.
    Neumann {
        /// Number of terms after the first, K ≥ 1.
        k: usize,
        /// Series step η > 0 (converges for η < 2/λ_max(H)).
        eta: f64,
    },
    /// `fixed_point(K, η)`: u₀ = 0, u_{k+1} = (I − ηH) u_k + g (K times), v = η u_K;
    /// equals `neumann(K − 1, η)`.
    FixedPoint {
        /// Iterations K ≥ 1.
        k: usize,
        /// Step η > 0.
        eta: f64,
    },
    /// `one_step(ξ)` (DARTS): w' = w − ξ ∇_w L_in(w, λ); hypergradient =
    /// ∇_λ L_out(w', λ) − ξ J(w) ∇_{w'} L_out(w', λ). With `exact`, J·u is the mixed
    /// product; otherwise DARTS's central difference
    /// (∇_λ L_in(w + εu) − ∇_λ L_in(w − εu)) / 2ε with ε = 0.01/‖u‖.
    OneStep {
        /// The virtual step ξ > 0.
        xi: f64,
        /// Exact mixed product (true) or DARTS's finite difference (false).
        exact: bool,
    },
    /// `implicit`: the implicit hypergradient ∇_λ L_out − J H⁺ g with H solved directly,
    /// evaluated at the closed-form inner solution w*(λ) when the problem has one
    /// ([`Problem::inner_solution`]; `inner` and w₀ are then unused), otherwise at w_T
    /// (`inner.steps` steps from w₀, so w₀ itself with 0 steps). H is built column by
    /// column from |w| Hessian-vector products and decomposed on the host in f64
    /// ([`crate::solvers::solve_symmetric_min_norm`], a symmetric eigendecomposition):
    /// eigenvalues below |w|·ε·max|λ| (ε of the problem's dtype) count as zero, so a
    /// singular H (hyper-cleaning's softmax bias) gets the minimum-norm solution H⁺ g,
    /// the implicit hypergradient whenever g is orthogonal to H's null space. Reports
    /// the residual ‖H v − g‖ and |w| as solver iterations. |w| ≤
    /// [`MAX_DENSE_DIM`](super::methods::MAX_DENSE_DIM). Formerly `Exact`
    /// ([`Method::Exact`] is kept as an alias).
    Implicit,
    /// `bda(T)` (Liu et al. 2020): reverse mode through T inner steps that descend
    /// (1 − α_k)·L_in + α_k·(s_u/s_l)·L_out ([`Aggregation`](super::methods::Aggregation)),
    /// for inner problems whose minimisers form a set: the trajectory drifts towards the
    /// minimiser the outer loss prefers. Stores the iterates as RAD does and returns
    /// dL_out/dw₀ too.
    Bda(Bda),
}

impl Method {
    /// The former name of [`Method::Implicit`], kept so that code written for it still
    /// builds (as a value; a `match` names `Method::Implicit`).
    #[allow(non_upper_case_globals)]
    pub const Exact: Method = Method::Implicit;

    /// [`Method::Rad`]: reverse mode through every inner step.
    pub fn rad() -> Method {
        Method::Rad
    }

    /// [`Method::Trad`]: reverse mode through the last `k` inner steps (1 ≤ k ≤ T).
    pub fn trad(k: usize) -> Method {
        Method::Trad { k }
    }

    /// [`Method::Forward`]: forward mode through every inner step.
    pub fn forward() -> Method {
        Method::Forward
    }

    /// [`Method::Cg`] with `iters` iterations, no residual tolerance (all `iters` run)
    /// and no damping. For a tolerance or damping write the variant:
    /// `Method::Cg { iters: 50, tol: Some(1e-6), damping: 1e-3 }`.
    pub fn cg(iters: usize) -> Method {
        Method::Cg {
            iters,
            tol: None,
            damping: 0.0,
        }
    }

    /// [`Method::Neumann`] with `k` terms after the first and series step `eta`
    /// (converges for eta < 2/λ_max(H); the inner step size is a natural choice).
    pub fn neumann(k: usize, eta: f64) -> Method {
        Method::Neumann { k, eta }
    }

    /// [`Method::FixedPoint`] with `k` iterations of step `eta`.
    pub fn fixed_point(k: usize, eta: f64) -> Method {
        Method::FixedPoint { k, eta }
    }

    /// [`Method::OneStep`] with virtual step `xi` and the exact mixed product (DARTS's
    /// finite difference: `Method::OneStep { xi, exact: false }`).
    pub fn one_step(xi: f64) -> Method {
        Method::OneStep { xi, exact: true }
    }

    /// `bda(T)` with blo's default aggregation: α_k = 0.5/(k+1), s_u = s_l.
    pub fn bda() -> Method {
        Method::Bda(Bda::default())
    }

    /// [`Method::Implicit`]: the implicit hypergradient with H solved directly.
    pub fn implicit() -> Method {
        Method::Implicit
    }

    /// A short name ("rad", "trad", "forward", "cg", "neumann", "fixed_point", "one_step", "implicit").
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rad => Rad::NAME,
            Method::Trad { .. } => Trad::NAME,
            Method::Forward => Forward::NAME,
            Method::Cg { .. } => Cg::NAME,
            Method::Neumann { .. } => Neumann::NAME,
            Method::FixedPoint { .. } => FixedPoint::NAME,
            Method::OneStep { .. } => OneStep::NAME,
            Method::Implicit => Implicit::NAME,
            Method::Bda(_) => Bda::NAME,
        }
    }

    /// Calls `f` with the type that implements this method.
    fn with<R>(&self, f: impl FnOnce(&dyn HypergradientMethod) -> R) -> R {
        match *self {
            Method::Rad => f(&Rad),
            Method::Trad { k } => f(&Trad { k }),
            Method::Forward => f(&Forward),
            Method::Cg {
                iters,
                tol,
                damping,
            } => f(&Cg {
                iters,
                tol,
                damping,
            }),
            Method::Neumann { k, eta } => f(&Neumann { k, eta }),
            Method::FixedPoint { k, eta } => f(&FixedPoint { k, eta }),
            Method::OneStep { xi, exact } => f(&OneStep { xi, exact }),
            Method::Implicit => f(&Implicit),
            Method::Bda(b) => f(&b),
        }
    }
}

impl HypergradientMethod for Method {
    fn name(&self) -> &str {
        Method::name(self)
    }

    fn validate(&self, inner: &Inner) -> Result<()> {
        self.with(|m| m.validate(inner))
    }

    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<MethodOutput> {
        self.with(|m| m.compute(problem, lambda, w0, inner))
    }

    fn warm_starts(&self) -> bool {
        self.with(|m| m.warm_starts())
    }

    fn supports_inner_bounds(&self) -> bool {
        self.with(|m| m.supports_inner_bounds())
    }
}

/// Fails if the problem's inner bounds are not a box, or if it has bounds and the method
/// `name` does not differentiate through them (`supported`).
pub(crate) fn check_method_bounds(
    problem: &dyn Problem,
    name: &str,
    supported: bool,
) -> Result<()> {
    if let Some((lo, hi)) = problem.inner_bounds() {
        check_bounds("the problem's inner bounds", lo, hi)?;
        if !supported {
            return Err(invalid(
                "hypergradient",
                format!(
                    "the problem bounds its inner variables to [{lo}, {hi}], which `{name}` does not differentiate through: use rad, trad or bda (or iaptt_gm)"
                ),
            ));
        }
    }
    Ok(())
}

/// Fails unless [lo, hi] is a box: both finite (or infinite on the open side) and
/// lo ≤ hi.
pub(crate) fn check_bounds(what: &str, lo: f64, hi: f64) -> Result<()> {
    if lo.is_nan() || hi.is_nan() || lo > hi || lo == f64::INFINITY || hi == f64::NEG_INFINITY {
        return Err(invalid(
            "bounds",
            format!("{what} [{lo}, {hi}] are not a box: need lo ≤ hi, neither NaN"),
        ));
    }
    Ok(())
}

/// A built-in method's setting out of its domain: the setting's name (as the method's
/// field and an experiment config's key spell it) and the error `validate` returns.
#[derive(Debug)]
pub(crate) struct BadSetting {
    // Read by the experiment config, which names the key in its error.
    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    pub(crate) key: &'static str,
    pub(crate) error: Error,
}

impl From<BadSetting> for Error {
    fn from(b: BadSetting) -> Error {
        b.error
    }
}

/// Checks that `v` (the setting `key`) is finite and > 0.
pub(crate) fn positive(key: &'static str, v: f64) -> std::result::Result<(), BadSetting> {
    if !v.is_finite() || v <= 0.0 {
        return Err(BadSetting {
            key,
            error: invalid("method", format!("{key} must be finite and > 0, got {v}")),
        });
    }
    Ok(())
}

/// dL_out/dλ at λ by `method` (a [`Method`] or any [`HypergradientMethod`]), starting
/// the inner optimizer from the problem's own w₀, [`Problem::init_w`]. Same as
/// [`hypergradient_from`] with `problem.init_w()?`.
///
/// Checks before any work, each error naming what is wrong: λ's count, shapes (the
/// problem's [`lambda_shapes`](Problem::lambda_shapes)), device and dtype (those of
/// `init_w()`, where the problem runs); the inner optimizer's and the method's
/// settings; that both losses are 0-d. Then fails if the inner loop diverges (naming
/// the step) or if the outer loss at the evaluation point is not finite. Times the call
/// and counts its GPU dispatches ([`Report`]).
///
/// ```
/// use blo::bilevel::{hypergradient, Inner, InnerOptimizer, Method};
/// use blo::problems::Ridge;
/// use blo::{DType, Device, Tensor};
/// # fn main() -> blo::Result<()> {
/// let dev = Device::cpu();
/// let p = Ridge::synthetic(40, 30, 5, 3, &dev, DType::F64)?;
/// let lambda = vec![Tensor::from_f64(&[0.1; 5], &[5], &dev, DType::F64)?];
/// let inner = Inner { optimizer: InnerOptimizer::Gd { lr: 0.2 }, steps: 20 };
/// let h = hypergradient(&p, &lambda, &inner, &Method::rad())?;
/// assert_eq!(h.grad[0].shape(), &[5]);
/// # Ok(()) }
/// ```
pub fn hypergradient(
    problem: &dyn Problem,
    lambda: &[Tensor],
    inner: &Inner,
    method: &dyn HypergradientMethod,
) -> Result<Hypergradient> {
    let start = Start::now(lambda);
    let w0 = check_inputs(OP, problem, lambda, None)?;
    checked(start, problem, lambda, &w0, inner, method)
}

/// [`hypergradient`] with the inner optimizer started from the given `w0` (a warm start,
/// or a meta-learned initialisation) instead of `problem.init_w()`. `w0` must match
/// `init_w()` in count, shapes, device and dtype (checked, naming `w₀[i]`).
pub fn hypergradient_from(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
    method: &dyn HypergradientMethod,
) -> Result<Hypergradient> {
    let start = Start::now(lambda);
    let w0 = check_inputs(OP, problem, lambda, Some(w0))?;
    checked(start, problem, lambda, &w0, inner, method)
}

const OP: &str = "hypergradient";

/// When a hypergradient's report starts counting: its wall time and, on a GPU, the
/// context's dispatch count (so the entry checks' loss evaluations are counted too).
#[derive(Clone, Copy)]
pub(crate) struct Start {
    time: Instant,
    dispatches: Option<u64>,
}

impl Start {
    /// Now, on the device of `on` (λ, or w₀ where λ is empty).
    pub(crate) fn now(on: &[Tensor]) -> Start {
        let dispatches = on
            .first()
            .and_then(|t| t.device().gpu_context().map(|c| c.dispatch_count()));
        Start {
            time: Instant::now(),
            dispatches,
        }
    }
}

/// The settings' checks and the losses' shapes, then [`evaluate`].
fn checked(
    start: Start,
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
    method: &dyn HypergradientMethod,
) -> Result<Hypergradient> {
    inner.optimizer.validate()?;
    method.validate(inner)?;
    check_method_bounds(problem, method.name(), method.supports_inner_bounds())?;
    check_losses(OP, problem, lambda, w0)?;
    evaluate(Some(start), problem, lambda, w0, inner, method)
}

/// The hypergradient for inputs and settings that passed the entry checks (the outer
/// loops check once, then call this every step): runs the method, checks its outer loss
/// and gradient shapes, and reports, counting from `start` (from now when `None`).
pub(crate) fn evaluate(
    start: Option<Start>,
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
    method: &dyn HypergradientMethod,
) -> Result<Hypergradient> {
    let device = w0.first().map(Tensor::device).unwrap_or(Device::Cpu);
    let start = start.unwrap_or_else(|| Start::now(w0));
    let dispatches_before = start
        .dispatches
        .or_else(|| device.gpu_context().map(|c| c.dispatch_count()));
    let lambda = detach_all(lambda);
    let out = method.compute(problem, &lambda, w0, inner)?;
    // The inner loop's checks see the losses of steps 0..T−1 and ‖w_T‖²; an iterate that
    // is finite but overflows the losses shows first here (read back anyway).
    if !out.outer_loss.is_finite() {
        return Err(invalid(
            OP,
            format!(
                "the outer loss at the evaluation point is {}: the inner optimizer probably diverged in its last step (lower its step size), or the outer loss overflows there",
                out.outer_loss
            ),
        ));
    }
    if out.grad.len() != lambda.len()
        || out
            .grad
            .iter()
            .zip(&lambda)
            .any(|(g, l)| g.shape() != l.shape())
    {
        return Err(invalid(
            OP,
            format!(
                "method {} returned a gradient of shapes {:?} for λ of shapes {:?}",
                method.name(),
                out.grad.iter().map(Tensor::shape).collect::<Vec<_>>(),
                lambda.iter().map(Tensor::shape).collect::<Vec<_>>()
            ),
        ));
    }
    let dispatches = match (device.gpu_context(), dispatches_before) {
        (Some(c), Some(b)) => Some(c.dispatch_count() - b),
        _ => None,
    };
    Ok(Hypergradient {
        grad: out.grad,
        w: out.w,
        dw0: out.dw0,
        report: Report {
            method: method.name().to_string(),
            inner_steps: out.inner_steps,
            solver_iterations: out.solver_iterations,
            residual: out.residual,
            stored_bytes: out.stored_bytes,
            inner_grad_norm: out.inner_grad_norm,
            outer_loss: out.outer_loss,
            wall_time: start.time.elapsed(),
            dispatches,
        },
    })
}

/// L_out at (w, λ) with its gradients: (value, ∇_w L_out, ∇_λ L_out).
pub(crate) fn outer_grads(
    problem: &dyn Problem,
    w: &[Tensor],
    lambda: &[Tensor],
) -> Result<(Tensor, Vec<Tensor>, Vec<Tensor>)> {
    let (wt, lt) = (track(w), track(lambda));
    let loss = problem.outer_loss(&wt, &lt)?;
    let mut all = refs(&wt);
    all.extend(refs(&lt));
    let mut grads = grad(&loss, &all, false)?;
    let gl = grads.split_off(wt.len());
    Ok((loss.detach(), grads, gl))
}
