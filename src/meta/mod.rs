//! Meta-learning: learning an initialization θ (and, for Meta-SGD, per-parameter step
//! sizes α) that adapts to a new task in a few gradient steps. MAML, first-order MAML,
//! Meta-SGD, iMAML, ANIL and Reptile, and three meta-learners with meta-parameters of
//! their own, L2F, MT-Net (and T-Net) and WarpGrad, for a whole batch of tasks at once.
//!
//! # Set-up
//! A model is an [`Mlp`] whose parameters are one flat vector θ (layout in [`Mlp`]). A
//! [`TaskBatch`] holds B tasks as tensors with a leading task dimension; the B adapted
//! parameter sets are tensors with the same leading dimension, so every kernel serves
//! every task and the number of dispatches does not grow with B.
//!
//! For each task i, the **inner loop** is S steps of gradient descent on its support
//! loss L_i^s, every task starting from the shared θ:
//!
//! φ_i⁰ = θ,  φ_i^{t+1} = φ_i^t − α ⊙ ∇L_i^s(φ_i^t),
//!
//! with α a positive scalar, or Meta-SGD's learned vector. The **meta-loss** is the mean
//! over tasks of the query loss at the adapted parameters,
//! M(θ, α) = (1/B) Σ_i L_i^q(φ_i^S). Losses are means over a task's points: MSE without
//! a ½ factor, or cross-entropy ([`TaskLoss`]).
//!
//! # Methods
//! Each is one function returning a [`MetaGradient`] (the direction the meta-optimizer
//! descends along, and the meta-loss); [`MetaMethod`] names them for configs and
//! [`meta_gradient`] runs any of them.
//! - [`maml`]: dM/dθ exactly, second order, through all S steps.
//! - [`fomaml`]: first-order MAML, dθ_S/dθ := I, so (1/B) Σ_i ∇L_i^q(φ_i^S).
//! - [`meta_sgd`]: ∂M/∂θ and ∂M/∂α with α a learned per-parameter vector.
//! - [`imaml`]: implicit MAML, (1/B) Σ_i (I + H_i/λ)⁻¹ ∇L_i^q(φ_i) with a proximal inner
//!   problem, solved by conjugate gradient on Hessian-vector products.
//! - [`anil`]: MAML where only the last layer adapts.
//! - [`reptile`]: the direction θ − (1/B) Σ_i φ_i^S, so that a step of size ε is
//!   Reptile's θ ← θ + ε·mean_i(φ_i − θ).
//! - [`l2f`]: MAML from a per-task start γ_i ⊙ θ, the layer-wise attenuations γ_i
//!   predicted by a small network g_φ from the task's support gradient at θ; dM/dθ and
//!   dM/dφ, second order (through γ's dependence on θ too).
//! - [`mt_net`]: every layer followed by a meta-learned transformation T that the inner
//!   loop never adapts, and (MT-Net) a sampled mask over output units restricting which
//!   weights adapt; dM/dθ, dM/dT and the straight-through dM/dζ of the mask's logits,
//!   second order. Without the mask it is T-Net.
//! - [`warpgrad`]: warp layers ω interleaved with the task layers, frozen in the inner
//!   loop; ω's gradient is the mean query gradient along the inner trajectory (no
//!   back-propagation through it, memory flat in S), θ's direction Reptile's.
//!
//! # Meta-parameters beyond θ and α
//! L2F's φ, MT-Net's T and ζ and WarpGrad's ω are flat tensors listed, per method, by
//! [`MetaMethod::extra_names`] and initialised by [`MetaMethod::init_extra`]. They travel
//! in [`MetaParams::extra`] into [`meta_gradient_with`], [`adapt_with`],
//! [`evaluate_with`] and [`meta_train_with`] (whose meta-optimizer updates them with θ),
//! and their gradients come back, named, in [`MetaGradient::extra`].
//!
//! [`meta_train`] runs the outer loop (SGD or Adam) over freshly drawn task batches, and
//! [`adapt`] / [`evaluate`] score the adapted parameters on held-out tasks.
//!
//! # How the second order is computed
//! The inner loop is the bilevel core's inner trajectory ([`crate::bilevel::trajectory`]),
//! with the B adapted parameter sets as the inner variables w. MAML's meta-gradient is
//! its reverse sweep's adjoint at the start, dM/dw₀, summed over the task dimension
//! (every task starts from the same θ). Meta-SGD's α is the trajectory's step-size
//! tensor ([`Trajectory::run_scaled`]), whose adjoint the same sweep returns. The sweep
//! stores the S+1 iterates only and rebuilds each step's graph (with create_graph) on
//! the way back, so memory is O(S·B·P), not O(S·activations).
//!
//! The newer methods reuse the same sweep: MT-Net's T is the sweep's λ and its masked
//! rates α·M are the step-size tensors whose adjoint carries ζ's gradient; L2F pulls
//! the sweep's dM/dw₀ back through its start γ ⊙ θ on the tape; WarpGrad runs the inner
//! loop without a sweep, one step at a time, and keeps only the current iterate.
//!
//! # Two cores
//! On the CPU with two or more cores, [`meta_gradient`] and [`meta_gradient_with`] (and
//! so [`meta_train`]) compute the task batch of every method but iMAML in two halves at
//! once, one per core, and combine their means (see `meta/halves.rs` for why and what
//! it measured). Results agree with one core's (`BLO_CPU_THREADS=1`) to rounding.

mod halves;
mod l2f;
mod mlp;
mod mtnet;
mod tasks;
mod train;
mod warpgrad;

#[cfg(test)]
mod extra_tests;
#[cfg(test)]
mod l2f_tests;
#[cfg(test)]
mod mtnet_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod warpgrad_tests;

pub use l2f::{l2f, l2f_gamma_net, l2f_init};
pub use mlp::{Activation, Mlp};
pub use mtnet::{MtMask, logistic_noise, mt_net, mt_net_init};
pub use tasks::{TaskBatch, TaskLoss};
pub use train::{
    AdaptResult, EVAL_NOISE_SEED, Evaluation, MetaStep, MetaTrace, MetaTrainConfig, TaskSampler,
    adapt, adapt_with, evaluate, evaluate_with, meta_train, meta_train_with,
};
pub use warpgrad::{WarpLayers, warp_init, warpgrad};

use std::time::Instant;

use crate::autodiff::{HvpOperator, grad, no_grad};
use crate::bilevel::trajectory::{Trajectory, run_to_end};
use crate::bilevel::{Inner, InnerOptimizer, Problem, bytes_of, refs, track};
use crate::error::{Result, invalid};
use crate::solvers::{CgOptions, conjugate_gradient};
use crate::tensor::{Tensor, same_place};

use mlp::batched;

/// A meta-gradient and what computing it took.
#[derive(Debug, Clone)]
pub struct MetaGradient {
    /// The direction for θ (flat layout, `[P]`): ∂M/∂θ, or the method's stand-in for it
    /// (first-order, implicit, Reptile's θ − mean φ).
    pub theta: Tensor,
    /// ∂M/∂α (`[P]`) for Meta-SGD; `None` for the others.
    pub alpha: Option<Tensor>,
    /// The meta-loss M: the mean query loss at the adapted parameters.
    pub meta_loss: f64,
    /// Inner steps S taken per task.
    pub inner_steps: usize,
    /// Conjugate-gradient iterations (iMAML); 0 otherwise.
    pub solver_iterations: usize,
    /// CG's final residual norm (iMAML).
    pub residual: Option<f64>,
    /// Bytes of inner iterates stored for the reverse sweep (MAML, Meta-SGD, ANIL, L2F,
    /// MT-Net); for WarpGrad, the bytes it holds at once (the current iterate and the
    /// warp gradient's accumulator), which do not grow with S.
    pub stored_bytes: u64,
    /// The gradients of the method's other meta-parameters, named and in the order of
    /// [`MetaMethod::extra_names`], each shaped like its parameter: L2F's `"phi"`,
    /// MT-Net's `"T"` and `"zeta"` (T-Net: `"T"`), WarpGrad's `"omega"`; empty for the
    /// others.
    pub extra: Vec<(&'static str, Tensor)>,
    /// GPU dispatches recorded (`None` on the CPU).
    pub dispatches: Option<u64>,
    /// Wall time including the final readback.
    pub wall_time: std::time::Duration,
}

/// A meta-learning method with its settings; the inner step size α and the number of
/// inner steps S are given separately.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetaMethod {
    /// [`maml`].
    Maml,
    /// [`fomaml`].
    Fomaml,
    /// [`meta_sgd`] (α is the learned vector).
    MetaSgd,
    /// [`imaml`] with proximal strength λ and CG settings.
    Imaml {
        /// λ > 0 of the proximal term (λ/2)‖φ − θ‖².
        lambda: f64,
        /// Conjugate-gradient iterations.
        cg_iters: usize,
    },
    /// [`anil`].
    Anil,
    /// [`reptile`].
    Reptile,
    /// [`l2f`] with the γ-network's hidden width (`None`: L, the number of parameter
    /// pieces).
    L2f {
        /// Hidden width of g_φ (`None`: L = 2 × layers).
        hidden: Option<usize>,
    },
    /// [`mt_net`]: `masked` is MT-Net (a Gumbel-sigmoid mask over the output units with
    /// temperature τ), unmasked is T-Net.
    MtNet {
        /// τ > 0 of the straight-through Gumbel-sigmoid (ignored without the mask).
        temperature: f64,
        /// Whether the inner update is masked (MT-Net) or not (T-Net).
        masked: bool,
    },
    /// [`warpgrad`] with warp layers after the given hidden layers (`None`: after every
    /// hidden layer).
    WarpGrad {
        /// Where the warp layers sit.
        layers: Option<WarpLayers>,
    },
}

impl MetaMethod {
    /// The method's name as configs spell it.
    pub fn name(&self) -> &'static str {
        match self {
            MetaMethod::Maml => "maml",
            MetaMethod::Fomaml => "fomaml",
            MetaMethod::MetaSgd => "meta-sgd",
            MetaMethod::Imaml { .. } => "imaml",
            MetaMethod::Anil => "anil",
            MetaMethod::Reptile => "reptile",
            MetaMethod::L2f { .. } => "l2f",
            MetaMethod::MtNet { masked: true, .. } => "mt-net",
            MetaMethod::MtNet { masked: false, .. } => "t-net",
            MetaMethod::WarpGrad { .. } => "warpgrad",
        }
    }

    /// Whether the method needs S ≥ 1 inner steps (Reptile's and WarpGrad's direction
    /// and iMAML's implicit gradient are meaningless at φ = θ).
    pub fn needs_inner_steps(&self) -> bool {
        matches!(
            self,
            MetaMethod::Imaml { .. } | MetaMethod::Reptile | MetaMethod::WarpGrad { .. }
        )
    }

    /// The names of the meta-parameters the method learns besides θ (and Meta-SGD's
    /// α), in the order [`MetaParams::extra`] and [`MetaGradient::extra`] hold them:
    /// L2F `["phi"]` (the γ-network, [`l2f_init`]), MT-Net `["T", "zeta"]` and T-Net
    /// `["T"]` ([`mt_net_init`]), WarpGrad `["omega"]` ([`warp_init`]); none for the
    /// others.
    pub fn extra_names(&self) -> &'static [&'static str] {
        match self {
            MetaMethod::L2f { .. } => &["phi"],
            MetaMethod::MtNet { masked: true, .. } => &["T", "zeta"],
            MetaMethod::MtNet { masked: false, .. } => &["T"],
            MetaMethod::WarpGrad { .. } => &["omega"],
            _ => &[],
        }
    }

    /// The initial values of [`MetaMethod::extra_names`] for `model` (each method's
    /// documented initialization; `seed` seeds L2F's γ-network).
    pub fn init_extra(
        &self,
        model: &Mlp,
        seed: u64,
        device: &crate::device::Device,
        dtype: crate::tensor::DType,
    ) -> Result<Vec<Tensor>> {
        match *self {
            MetaMethod::L2f { hidden } => Ok(vec![l2f_init(model, hidden, seed, device, dtype)?]),
            MetaMethod::MtNet { masked, .. } => {
                let (t, zeta) = mt_net_init(model, device, dtype)?;
                Ok(if masked { vec![t, zeta] } else { vec![t] })
            }
            MetaMethod::WarpGrad { layers } => Ok(vec![warp_init(model, layers, device, dtype)?]),
            _ => Ok(vec![]),
        }
    }
}

/// Everything a method meta-learns: θ, the inner step size (Meta-SGD's learned α, a
/// fixed scalar for the others) and the method's other meta-parameters
/// ([`MetaMethod::extra_names`]; empty for the MAML family).
#[derive(Debug, Clone)]
pub struct MetaParams {
    /// θ, flat layout `[P]`.
    pub theta: Tensor,
    /// The inner step size.
    pub alpha: StepSize,
    /// The other meta-parameters, in the order of [`MetaMethod::extra_names`].
    pub extra: Vec<Tensor>,
}

impl MetaParams {
    /// θ and α, without other meta-parameters (the MAML family).
    pub fn new(theta: Tensor, alpha: StepSize) -> Self {
        Self {
            theta,
            alpha,
            extra: vec![],
        }
    }
}

/// The inner step size: a positive scalar, or Meta-SGD's per-parameter vector.
#[derive(Debug, Clone)]
pub enum StepSize {
    /// One α > 0 for every parameter.
    Scalar(f64),
    /// A vector `[P]` in θ's flat layout (Meta-SGD's learned α).
    PerParameter(Tensor),
}

/// Runs `method` with step size `alpha` (a [`StepSize::PerParameter`] vector for
/// Meta-SGD, a scalar for the others) and `steps` inner steps. The methods with
/// meta-parameters of their own (L2F, MT-Net, WarpGrad) need [`meta_gradient_with`].
pub fn meta_gradient(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: &StepSize,
    steps: usize,
) -> Result<MetaGradient> {
    let params = MetaParams::new(theta.clone(), alpha.clone());
    meta_gradient_with(method, model, tasks, &params, steps, 0)
}

/// Checks that `extra` holds one tensor per name of [`MetaMethod::extra_names`].
fn check_extra(method: &MetaMethod, extra: &[Tensor]) -> Result<()> {
    let names = method.extra_names();
    if extra.len() == names.len() {
        return Ok(());
    }
    let hint = match method {
        MetaMethod::MtNet { masked: true, .. } if extra.len() == 1 => {
            "; MT-Net's mask needs its logits ζ (one per output unit, from mt_net_init) after T, or use T-Net (masked = false) for no mask"
        }
        _ => "; MetaMethod::init_extra gives their initial values",
    };
    Err(invalid(
        method.name(),
        format!(
            "expects {} extra meta-parameter tensor(s) {names:?}, got {}{hint}",
            names.len(),
            extra.len()
        ),
    ))
}

/// [`meta_gradient`] for any method, with its meta-parameters in `params`. `noise_seed`
/// seeds this call's randomness: MT-Net's logistic noise for the mask (one draw per
/// task, [`logistic_noise`]); the other methods ignore it.
///
/// On the CPU with two or more cores, every method but iMAML computes the batch in two
/// halves, one per core, and combines their means: the result agrees with
/// `BLO_CPU_THREADS=1`'s to rounding (see `meta/halves.rs`). The method functions
/// ([`maml`] and the others) compute a batch as one.
pub fn meta_gradient_with(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    params: &MetaParams,
    steps: usize,
    noise_seed: u64,
) -> Result<MetaGradient> {
    let split = halves::splits(method, tasks);
    meta_gradient_split(method, model, tasks, params, steps, noise_seed, split)
}

/// [`meta_gradient_with`], with the batch computed in two halves (one per core when
/// the second is free) if `split`, else as one.
fn meta_gradient_split(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    params: &MetaParams,
    steps: usize,
    noise_seed: u64,
    split: bool,
) -> Result<MetaGradient> {
    let alpha = &params.alpha;
    check_extra(method, &params.extra)?;
    if steps == 0 && method.needs_inner_steps() {
        return Err(invalid(
            method.name(),
            "needs at least one inner step (S ≥ 1): its direction is computed from the adapted parameters",
        ));
    }
    let scalar = || match alpha {
        StepSize::Scalar(a) => Ok(*a),
        StepSize::PerParameter(_) => Err(invalid(
            method.name(),
            "takes a scalar inner step size; only Meta-SGD learns a per-parameter α",
        )),
    };
    // Drawn for the whole batch, so that a half gets its own tasks' noise.
    let noise = match *method {
        MetaMethod::MtNet { masked, .. } => mtnet::batch_noise(model, tasks, masked, noise_seed)?,
        _ => None,
    };
    let all = tasks.tasks();
    let batch = |tasks: &TaskBatch, first: usize| -> Result<MetaGradient> {
        let noise = match &noise {
            Some(noise) if tasks.tasks() < all => {
                Some(mtnet::noise_rows(noise, first, tasks.tasks())?)
            }
            whole => whole.clone(),
        };
        one_batch(
            method,
            model,
            tasks,
            params,
            steps,
            noise.as_deref(),
            scalar,
        )
    };
    if split {
        halves::in_halves(tasks, &batch)
    } else {
        batch(tasks, 0)
    }
}

/// [`meta_gradient_with`]'s method on one batch, with MT-Net's mask noise drawn.
fn one_batch(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    params: &MetaParams,
    steps: usize,
    noise: Option<&[Tensor]>,
    scalar: impl Fn() -> Result<f64>,
) -> Result<MetaGradient> {
    let (theta, alpha) = (&params.theta, &params.alpha);
    match *method {
        MetaMethod::Maml => maml(model, tasks, theta, scalar()?, steps),
        MetaMethod::Fomaml => fomaml(model, tasks, theta, scalar()?, steps),
        MetaMethod::MetaSgd => match alpha {
            StepSize::PerParameter(a) => meta_sgd(model, tasks, theta, a, steps),
            StepSize::Scalar(a) => {
                let v = theta.detach().full_like(*a)?;
                meta_sgd(model, tasks, theta, &v, steps)
            }
        },
        MetaMethod::Imaml { lambda, cg_iters } => {
            imaml(model, tasks, theta, scalar()?, steps, lambda, cg_iters)
        }
        MetaMethod::Anil => anil(model, tasks, theta, scalar()?, steps),
        MetaMethod::Reptile => reptile(model, tasks, theta, scalar()?, steps),
        MetaMethod::L2f { hidden } => l2f(
            model,
            hidden,
            tasks,
            theta,
            &params.extra[0],
            scalar()?,
            steps,
        ),
        MetaMethod::MtNet { temperature, .. } => {
            let mask = noise.map(|noise| MtMask {
                logits: &params.extra[1],
                noise,
                temperature,
            });
            mt_net(
                model,
                tasks,
                theta,
                &params.extra[0],
                mask.as_ref(),
                scalar()?,
                steps,
            )
        }
        MetaMethod::WarpGrad { layers } => warpgrad(
            model,
            layers,
            tasks,
            theta,
            &params.extra[0],
            scalar()?,
            steps,
        ),
    }
}

/// The inner problem of a task batch as a bilevel [`Problem`]: w is the adapted part of
/// the B parameter sets (batched pieces, from piece `head` on), λ the shared pieces
/// before it (ANIL's body; empty otherwise).
pub(crate) struct Adaptation<'a> {
    model: &'a Mlp,
    tasks: &'a TaskBatch,
    /// Index of the first adapted piece (0: all adapt).
    head: usize,
    /// iMAML's proximal term (λ/2)‖w − anchor‖², summed over tasks.
    prox: Option<(f64, Vec<Tensor>)>,
}

impl<'a> Adaptation<'a> {
    /// Every piece adapts, with no proximal term (all methods but ANIL and iMAML).
    fn all(model: &'a Mlp, tasks: &'a TaskBatch) -> Self {
        Adaptation {
            model,
            tasks,
            head: 0,
            prox: None,
        }
    }

    fn params(&self, w: &[Tensor], lambda: &[Tensor]) -> Vec<Tensor> {
        lambda.iter().chain(w).cloned().collect()
    }

    /// The support loss without the proximal term.
    fn support_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let pred = self.model.forward_with_ones(
            &self.params(w, lambda),
            self.tasks.support_x(),
            self.tasks.support_ones(),
        )?;
        self.tasks.loss_sum(&pred, self.tasks.support_y())
    }
}

impl Problem for Adaptation<'_> {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Err(invalid(
            "meta-learning",
            "the adaptation problem starts from the meta-parameters θ passed explicitly",
        ))
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        self.model.piece_shapes()[..self.head].to_vec()
    }

    /// Σ_i L_i^s(φ_i) (each task's gradient is its own), plus (λ/2) Σ_i ‖φ_i − θ‖² for
    /// iMAML.
    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let loss = self.support_loss(w, lambda)?;
        match &self.prox {
            None => Ok(loss),
            Some((strength, anchor)) => {
                let mut total = loss;
                for (p, a) in w.iter().zip(anchor) {
                    total = total.add(&p.sub(a)?.sqnorm()?.scale(0.5 * strength)?)?;
                }
                Ok(total)
            }
        }
    }

    /// (1/B) Σ_i L_i^q(φ_i): the meta-loss.
    fn outer_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let pred = self.model.forward_with_ones(
            &self.params(w, lambda),
            self.tasks.query_x(),
            self.tasks.query_ones(),
        )?;
        self.tasks.loss_mean(&pred, self.tasks.query_y())
    }
}

/// Entry checks shared by every method: the model fits the tasks, θ is `[P]` on their
/// device and dtype, α is finite and > 0.
fn check(model: &Mlp, tasks: &TaskBatch, theta: &Tensor, alpha: Option<f64>) -> Result<()> {
    model.check_theta("θ", theta)?;
    same_place("θ vs tasks", theta, tasks.support_x())?;
    if tasks.features() != model.inputs() {
        return Err(invalid(
            "meta-learning",
            format!(
                "the tasks have {} input features but the model's input width is {} (widths {:?})",
                tasks.features(),
                model.inputs(),
                model.widths()
            ),
        ));
    }
    if tasks.loss() == TaskLoss::Mse && tasks.support_y().shape()[2] != model.outputs() {
        return Err(invalid(
            "meta-learning",
            format!(
                "the tasks have {} target(s) per point but the model's output width is {}",
                tasks.support_y().shape()[2],
                model.outputs()
            ),
        ));
    }
    if let Some(a) = alpha
        && !(a.is_finite() && a > 0.0)
    {
        return Err(invalid(
            "meta-learning",
            format!("the inner step size α must be finite and > 0, got {a}"),
        ));
    }
    Ok(())
}

/// θ's pieces repeated for the B tasks: the starting point w₀ of every task.
fn start(model: &Mlp, theta: &Tensor, tasks: usize) -> Result<Vec<Tensor>> {
    no_grad(|| {
        model
            .unflatten(&theta.detach())?
            .iter()
            .map(|p| batched(p, tasks))
            .collect()
    })
}

fn gd(alpha: f64, steps: usize) -> Inner {
    Inner {
        optimizer: InnerOptimizer::Gd { lr: alpha },
        steps,
    }
}

/// The meta-loss and its gradient with respect to the adapted (w) and shared (λ) parts.
fn query_grads(
    problem: &Adaptation,
    w: &[Tensor],
    lambda: &[Tensor],
) -> Result<(f64, Vec<Tensor>, Vec<Tensor>)> {
    let (wt, lt) = (track(w), track(lambda));
    let loss = problem.outer_loss(&wt, &lt)?;
    let mut all = refs(&wt);
    all.extend(refs(&lt));
    let mut g = grad(&loss, &all, false)?;
    let gl = g.split_off(wt.len());
    Ok((loss.to_scalar::<f64>()?, g, gl))
}

/// Times a method and counts its dispatches.
fn timed(tasks: &TaskBatch, f: impl FnOnce() -> Result<MetaGradient>) -> Result<MetaGradient> {
    let t0 = Instant::now();
    let device = tasks.device();
    let before = device.gpu_context().map(|c| c.dispatch_count());
    let mut out = f()?;
    out.dispatches = device
        .gpu_context()
        .zip(before)
        .map(|(c, b)| c.dispatch_count() - b);
    out.wall_time = t0.elapsed();
    Ok(out)
}

fn output(theta: Tensor, alpha: Option<Tensor>, meta_loss: f64, steps: usize) -> MetaGradient {
    MetaGradient {
        theta,
        alpha,
        meta_loss,
        inner_steps: steps,
        solver_iterations: 0,
        residual: None,
        stored_bytes: 0,
        extra: vec![],
        dispatches: None,
        wall_time: std::time::Duration::ZERO,
    }
}

/// **MAML** (Finn et al. 2017), full second order: dM/dθ for
/// M(θ) = (1/B) Σ_i L_i^q(φ_i^S(θ)), φ_i^{t+1} = φ_i^t − α ∇L_i^s(φ_i^t), φ_i⁰ = θ,
/// differentiated through all S steps including their Hessians:
/// dM/dθ = (1/B) Σ_i Π_{t=S−1..0} (I − α ∇²L_i^s(φ_i^t)) ∇L_i^q(φ_i^S).
///
/// S = 0 gives the plain query gradient at θ.
pub fn maml(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: f64,
    steps: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, Some(alpha))?;
    timed(tasks, || {
        through_steps(model, tasks, theta, alpha, steps, 0)
    })
}

/// MAML's meta-gradient with the first `head` pieces of θ shared by every task (λ of
/// the reverse sweep) and the rest adapted (w, batched per task): `head = 0` is MAML,
/// the last layer alone adapting is ANIL. dM/dθ is the sweep's λ-part followed by its
/// dw₀.
fn through_steps(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: f64,
    steps: usize,
    head: usize,
) -> Result<MetaGradient> {
    let problem = Adaptation {
        model,
        tasks,
        head,
        prox: None,
    };
    let pieces = no_grad(|| model.unflatten(&theta.detach()))?;
    let body = pieces[..head].to_vec();
    let w0 = no_grad(|| -> Result<Vec<Tensor>> {
        pieces[head..]
            .iter()
            .map(|p| batched(p, tasks.tasks()))
            .collect()
    })?;
    let trajectory = Trajectory::run(&problem, &body, &w0, &gd(alpha, steps))?;
    let (loss, gw, gl) = query_grads(&problem, trajectory.w(steps), &body)?;
    let adjoint = trajectory.reverse(steps, gw, gl)?;
    let mut all = adjoint.dlambda;
    all.extend(adjoint.dw);
    let dtheta = no_grad(|| model.flatten(&all))?;
    let mut out = output(dtheta, None, loss, steps);
    out.stored_bytes = trajectory.stored_bytes();
    Ok(out)
}

/// **First-order MAML**: MAML's gradient with dφ_i^S/dθ replaced by I,
/// (1/B) Σ_i ∇L_i^q(φ_i^S), where φ_i^S are the same S inner steps as [`maml`]'s.
pub fn fomaml(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: f64,
    steps: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, Some(alpha))?;
    timed(tasks, || {
        let problem = Adaptation::all(model, tasks);
        let w0 = start(model, theta, tasks.tasks())?;
        let phi = run_to_end(&problem, &[], &w0, &gd(alpha, steps))?;
        let (loss, gw, _) = query_grads(&problem, &phi, &[])?;
        let dtheta = no_grad(|| model.flatten(&gw))?;
        Ok(output(dtheta, None, loss, steps))
    })
}

/// **Meta-SGD** (Li et al. 2017): the inner steps are φ_i^{t+1} = φ_i^t − α ⊙ ∇L_i^s(φ_i^t)
/// with α `[P]` a learned per-parameter vector (the same at every step), and both
/// ∂M/∂θ and ∂M/∂α are returned, second order through all S steps:
/// ∂M/∂α = −(1/B) Σ_i Σ_t ∇L_i^s(φ_i^t) ⊙ a_i^{t+1}, with a_i^{t+1} the adjoint
/// dM/dφ_i^{t+1}.
pub fn meta_sgd(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: &Tensor,
    steps: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, None)?;
    model.check_theta("Meta-SGD's α", alpha)?;
    same_place("α vs θ", alpha, theta)?;
    timed(tasks, || {
        let problem = Adaptation::all(model, tasks);
        let w0 = start(model, theta, tasks.tasks())?;
        // α's pieces repeated for the B tasks like θ's: the same rates for every task,
        // multiplied elementwise without a broadcast (whose kernels B = 1 would skip);
        // the sweep's dα per task is summed over tasks at the end.
        let a = start(model, alpha, tasks.tasks())?;
        let trajectory = Trajectory::run_scaled(&problem, &[], &w0, &gd(1.0, steps), &a)?;
        let (loss, gw, _) = query_grads(&problem, trajectory.w(steps), &[])?;
        let adjoint = trajectory.reverse(steps, gw, vec![])?;
        let (dtheta, dalpha) = no_grad(|| -> Result<_> {
            Ok((model.flatten(&adjoint.dw)?, model.flatten(&adjoint.dalpha)?))
        })?;
        let mut out = output(dtheta, Some(dalpha), loss, steps);
        out.stored_bytes = trajectory.stored_bytes();
        Ok(out)
    })
}

/// **iMAML** (Rajeswaran et al. 2019): each task adapts on the proximal problem
/// L_i^s(φ) + (λ/2)‖φ − θ‖², approximately solved by S steps of gradient descent from θ
/// with step α, and the meta-gradient comes from the implicit function theorem at the
/// φ_i reached: (1/B) Σ_i (I + ∇²L_i^s(φ_i)/λ)⁻¹ ∇L_i^q(φ_i).
///
/// The B systems are one block-diagonal system, solved together by [`conjugate_gradient`]
/// with `cg_iters` iterations on Hessian-vector products (no readback until the end).
///
/// **Choosing α, λ and S.** The implicit gradient is exact only at the proximal
/// problem's solution, and nothing here differentiates through the S steps, so they
/// must nearly reach it: (1 − αλ)^S should be small. The steps are also stable only
/// while the support curvature stays below 2/α − λ, and meta-training tends to raise
/// it. On sinusoid (1-40-40-1, K = 10, 25 tasks, Adam 10⁻³), α = 0.01, λ ≤ 2, S = 5
/// did not learn at all (post-adaptation MSE stayed near the predict-zero 4.3);
/// α = 0.002, λ = 100, S = 10 learned, then diverged after about 1,900
/// meta-iterations; α = 0.0005, λ = 100, S = 40 reached a 10-shot, 10-step MSE of 0.54
/// after 3,000 (`examples/configs/meta/long/sinusoid-imaml.toml`).
pub fn imaml(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: f64,
    steps: usize,
    lambda: f64,
    cg_iters: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, Some(alpha))?;
    if !(lambda.is_finite() && lambda > 0.0) || cg_iters == 0 {
        return Err(invalid(
            "imaml",
            format!(
                "needs a proximal strength λ > 0 (got {lambda}) and at least one CG iteration (got {cg_iters})"
            ),
        ));
    }
    timed(tasks, || {
        let w0 = start(model, theta, tasks.tasks())?;
        let problem = Adaptation {
            model,
            tasks,
            head: 0,
            prox: Some((lambda, w0.clone())),
        };
        let phi = run_to_end(&problem, &[], &w0, &gd(alpha, steps))?;
        let (loss, gw, _) = query_grads(&problem, &phi, &[])?;
        let phit = track(&phi);
        let support = problem.support_loss(&phit, &[])?;
        let op = HvpOperator::new(&support, &refs(&phit))?;
        let b = crate::bilevel::flatten(&gw)?;
        let solved = conjugate_gradient(
            |v| {
                let parts = crate::bilevel::unflatten(v, &phi)?;
                let hv = crate::bilevel::flatten(&op.hvp(&refs(&parts))?)?;
                no_grad(|| v.axpy(1.0 / lambda, &hv))
            },
            &b,
            &CgOptions {
                max_iters: cg_iters,
                ..CgOptions::default()
            },
        )?;
        let x = crate::bilevel::unflatten(&solved.x, &phi)?;
        let dtheta = no_grad(|| model.flatten(&x))?;
        let mut out = output(dtheta, None, loss, steps);
        out.solver_iterations = solved.iterations;
        out.residual = Some(solved.residual_norm);
        // The adapted parameters and CG's four vectors (x, r, p, Ap) of the same size.
        out.stored_bytes = bytes_of(&phi) * 5;
        Ok(out)
    })
}

/// **ANIL** (Raghu et al. 2020): MAML where only the last layer (W_L, b_L) adapts in the
/// inner loop; the body is shared by every task's adaptation. Full second order: the
/// body's gradient flows through the head's S adaptation steps
/// (the reverse sweep's λ-part), the head's through its start (dM/dw₀).
/// Equals [`meta_sgd`] with α = 0 on every layer but the last.
pub fn anil(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: f64,
    steps: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, Some(alpha))?;
    let head = 2 * (model.layers() - 1);
    timed(tasks, || {
        through_steps(model, tasks, theta, alpha, steps, head)
    })
}

/// **Reptile** (Nichol et al. 2018): S inner steps per task as for [`maml`], then the
/// direction θ − (1/B) Σ_i φ_i^S, so that the meta-optimizer's step of size ε,
/// θ ← θ − ε·direction, is Reptile's θ ← θ + ε·mean_i(φ_i − θ). Needs S ≥ 1.
pub fn reptile(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: f64,
    steps: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, Some(alpha))?;
    if steps == 0 {
        return Err(invalid(
            "reptile",
            "needs at least one inner step (S ≥ 1): with S = 0 every φ equals θ",
        ));
    }
    timed(tasks, || {
        let problem = Adaptation::all(model, tasks);
        let w0 = start(model, theta, tasks.tasks())?;
        let phi = run_to_end(&problem, &[], &w0, &gd(alpha, steps))?;
        let loss = no_grad(|| problem.outer_loss(&phi, &[]))?.to_scalar::<f64>()?;
        let b = tasks.tasks() as f64;
        let dtheta = no_grad(|| -> Result<Tensor> {
            let diff: Vec<Tensor> = w0
                .iter()
                .zip(&phi)
                .map(|(t, p)| t.sub(p)?.scale(1.0 / b))
                .collect::<Result<_>>()?;
            model.flatten(&diff)
        })?;
        Ok(output(dtheta, None, loss, steps))
    })
}
