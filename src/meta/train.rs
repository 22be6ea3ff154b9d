//! The meta-training loop and post-adaptation evaluation.

use std::time::Instant;

use super::mlp::batched;
use super::{
    Adaptation, MetaGradient, MetaMethod, MetaParams, Mlp, MtMask, StepSize, TaskBatch, TaskLoss,
    check, check_extra, gd, l2f, meta_gradient_with, mtnet, warpgrad,
};
use crate::autodiff::no_grad;
use crate::bilevel::trajectory::run_to_end_scaled;
use crate::bilevel::{OuterOptimizer, outer_update};
use crate::error::{Result, invalid};
use crate::tensor::{Tensor, same_place};

/// Draws the task batch of each meta-iteration.
pub trait TaskSampler {
    /// The tasks of meta-iteration `iteration` (0-based). Seeded samplers return the same
    /// batch for the same iteration.
    fn sample(&mut self, iteration: usize) -> Result<TaskBatch>;
}

/// A fixed batch: every iteration trains on the same tasks.
impl TaskSampler for TaskBatch {
    fn sample(&mut self, _iteration: usize) -> Result<TaskBatch> {
        Ok(self.clone())
    }
}

/// Settings of [`meta_train`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetaTrainConfig {
    /// The meta-gradient.
    pub method: MetaMethod,
    /// Inner steps S.
    pub inner_steps: usize,
    /// Meta-iterations (0 computes the meta-gradient once and updates nothing).
    pub iterations: usize,
    /// How θ (and Meta-SGD's α) move along the meta-gradient: SGD (Reptile's ε is its lr)
    /// or Adam, with the bilevel outer loop's definitions.
    pub optimizer: OuterOptimizer,
}

/// One meta-iteration of a [`MetaTrace`].
#[derive(Debug, Clone, PartialEq)]
pub struct MetaStep {
    /// Iteration index (0-based).
    pub iteration: usize,
    /// The meta-loss at θ before this iteration's update.
    pub meta_loss: f64,
    /// ‖meta-gradient‖₂ (θ and α together).
    pub grad_norm: f64,
    /// Seconds since the start.
    pub elapsed_s: f64,
}

/// The result of [`meta_train`].
#[derive(Debug, Clone)]
pub struct MetaTrace {
    /// One entry per meta-iteration (one for `iterations = 0`).
    pub steps: Vec<MetaStep>,
    /// The final θ.
    pub theta: Tensor,
    /// The final step size (Meta-SGD's learned α, or the fixed scalar).
    pub alpha: StepSize,
    /// The final values of the method's other meta-parameters
    /// ([`MetaMethod::extra_names`]).
    pub extra: Vec<Tensor>,
    /// The last meta-gradient computed (at the final θ when `iterations = 0`).
    pub last: MetaGradient,
}

/// Meta-trains θ (and Meta-SGD's α) from `theta0` / `alpha0`, and the method's other
/// meta-parameters from [`MetaMethod::init_extra`] (seed 0): at each iteration, a task
/// batch from `sampler`, the meta-gradient by `config.method`, and one step of
/// `config.optimizer`. `observe` sees each [`MetaStep`] as it is recorded. Fails, naming
/// the iteration, when the meta-gradient stops being finite.
pub fn meta_train(
    model: &Mlp,
    sampler: &mut dyn TaskSampler,
    theta0: &Tensor,
    alpha0: &StepSize,
    config: &MetaTrainConfig,
    observe: &mut dyn FnMut(&MetaStep),
) -> Result<MetaTrace> {
    let extra = config
        .method
        .init_extra(model, 0, &theta0.device(), theta0.dtype())?;
    let init = MetaParams {
        theta: theta0.clone(),
        alpha: alpha0.clone(),
        extra,
    };
    meta_train_with(model, sampler, &init, config, &mut |s, _| {
        observe(s);
        Ok(())
    })
}

/// [`meta_train`] from the meta-parameters `init` (θ, α and the method's others),
/// calling `observe` with each [`MetaStep`] and the meta-parameters it was computed at
/// (before that iteration's update), so that a caller can evaluate them along the way;
/// an error from `observe` stops the run. The meta-optimizer updates every
/// meta-parameter the method learns (θ, Meta-SGD's α, the extra ones) as one list.
/// Iteration i draws MT-Net's mask noise with seed i.
pub fn meta_train_with(
    model: &Mlp,
    sampler: &mut dyn TaskSampler,
    init: &MetaParams,
    config: &MetaTrainConfig,
    observe: &mut dyn FnMut(&MetaStep, &MetaParams) -> Result<()>,
) -> Result<MetaTrace> {
    config.optimizer.validate()?;
    check_extra(&config.method, &init.extra)?;
    let (theta0, alpha0) = (&init.theta, &init.alpha);
    let t0 = Instant::now();
    let mut theta = theta0.detach();
    let mut extra: Vec<Tensor> = init.extra.iter().map(Tensor::detach).collect();
    let learn_alpha = config.method == MetaMethod::MetaSgd;
    let mut alpha = match (alpha0, learn_alpha) {
        (StepSize::PerParameter(a), true) => StepSize::PerParameter(a.detach()),
        (StepSize::Scalar(a), true) => StepSize::PerParameter(theta.full_like(*a)?),
        (a, false) => a.clone(),
    };
    let mut adam = None;
    let mut steps = Vec::new();
    let mut it = 0;
    loop {
        let tasks = sampler.sample(it)?;
        let params = MetaParams {
            theta: theta.clone(),
            alpha: alpha.clone(),
            extra: extra.clone(),
        };
        let g = meta_gradient_with(
            &config.method,
            model,
            &tasks,
            &params,
            config.inner_steps,
            it as u64,
        )
        .map_err(|e| at_iteration(e, it))?;
        let mut grads = vec![g.theta.clone()];
        grads.extend(g.alpha.clone());
        grads.extend(g.extra.iter().map(|(_, t)| t.clone()));
        let norm = no_grad(|| -> Result<f64> {
            let mut total = 0.0;
            for t in &grads {
                total += t.sqnorm()?.to_scalar::<f64>()?;
            }
            Ok(total.sqrt())
        })?;
        if !norm.is_finite() || !g.meta_loss.is_finite() {
            return Err(invalid(
                "meta_train",
                format!(
                    "the meta-loss ({}) or meta-gradient norm ({norm}) is not finite at iteration {it}; lower the meta or inner step size",
                    g.meta_loss
                ),
            ));
        }
        let step = MetaStep {
            iteration: it,
            meta_loss: g.meta_loss,
            grad_norm: norm,
            elapsed_s: t0.elapsed().as_secs_f64(),
        };
        observe(&step, &params)?;
        steps.push(step);
        if it >= config.iterations || config.iterations == 0 {
            return Ok(MetaTrace {
                steps,
                theta,
                alpha,
                extra,
                last: g,
            });
        }
        let mut params = vec![theta.clone()];
        if let StepSize::PerParameter(a) = &alpha {
            params.push(a.clone());
        }
        params.extend(extra.iter().cloned());
        let mut new = outer_update(&config.optimizer, &mut adam, &params, &grads)?;
        extra = new.split_off(new.len() - extra.len());
        if learn_alpha {
            alpha = StepSize::PerParameter(new.pop().expect("α follows θ"));
        }
        theta = new.pop().expect("θ");
        it += 1;
    }
}

fn at_iteration(e: crate::Error, it: usize) -> crate::Error {
    match e {
        crate::Error::InvalidArgument { op, msg } if it > 0 => crate::Error::InvalidArgument {
            op,
            msg: format!("{msg} (at meta-iteration {it})"),
        },
        other => other,
    }
}

/// What adapting to a task batch gave.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptResult {
    /// Each task's query loss after adaptation.
    pub query_losses: Vec<f64>,
    /// Each task's query accuracy after adaptation (classification only).
    pub query_accuracy: Option<Vec<f64>>,
}

impl AdaptResult {
    /// Mean and half-width of the 95 % confidence interval (1.96·sd/√n) of per-task
    /// values.
    pub fn mean_ci95(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        if values.len() < 2 {
            return (mean, 0.0);
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, 1.96 * (var / n).sqrt())
    }
}

/// Adapts θ to every task of `tasks` with `steps` inner steps of the method's inner loop
/// (only the last layer for ANIL, the proximal problem for iMAML, α ⊙ ∇ for Meta-SGD)
/// and scores each task's query set. The methods with meta-parameters of their own
/// need [`adapt_with`].
pub fn adapt(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: &StepSize,
    steps: usize,
) -> Result<AdaptResult> {
    let params = MetaParams::new(theta.clone(), alpha.clone());
    adapt_with(method, model, tasks, &params, steps, EVAL_NOISE_SEED)
}

/// The seed of MT-Net's mask noise in [`adapt`] and [`evaluate`].
pub const EVAL_NOISE_SEED: u64 = u64::MAX;

/// [`adapt`] for any method, with its meta-parameters in `params`: L2F adapts from its
/// attenuated start, MT-Net with T and its mask (sampled with `noise_seed`, as in
/// [`super::meta_gradient_with`]), WarpGrad with its warp layers frozen.
pub fn adapt_with(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    params: &MetaParams,
    steps: usize,
    noise_seed: u64,
) -> Result<AdaptResult> {
    let theta = &params.theta;
    check(model, tasks, theta, None)?;
    check_extra(method, &params.extra)?;
    let pred = predictions(method, model, tasks, params, steps, noise_seed)?;
    no_grad(|| {
        let query_losses = per_task_losses(tasks, &pred)?;
        let query_accuracy = match tasks.loss() {
            TaskLoss::CrossEntropy => Some(tasks.query_accuracy(&pred)?),
            TaskLoss::Mse => None,
        };
        Ok(AdaptResult {
            query_losses,
            query_accuracy,
        })
    })
}

/// The query predictions `[B, N_q, out]` after adaptation.
fn predictions(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    params: &MetaParams,
    steps: usize,
    noise_seed: u64,
) -> Result<Tensor> {
    let (theta, alpha) = (&params.theta, &params.alpha);
    let scalar = || match alpha {
        StepSize::Scalar(a) if a.is_finite() && *a > 0.0 => Ok(*a),
        StepSize::Scalar(a) => Err(invalid(
            "adapt",
            format!("the inner step size α must be finite and > 0, got {a}"),
        )),
        StepSize::PerParameter(_) => Err(invalid(
            method.name(),
            "takes a scalar inner step size; only Meta-SGD learns a per-parameter α",
        )),
    };
    match *method {
        MetaMethod::L2f { hidden } => {
            let w = l2f::adapted(
                model,
                hidden,
                tasks,
                theta,
                &params.extra[0],
                scalar()?,
                steps,
            )?;
            return no_grad(|| model.forward_with_ones(&w, tasks.query_x(), tasks.query_ones()));
        }
        MetaMethod::MtNet {
            temperature,
            masked,
        } => {
            let noise = mtnet::batch_noise(model, tasks, masked, noise_seed)?;
            let mask = noise.as_ref().map(|noise| MtMask {
                logits: &params.extra[1],
                noise,
                temperature,
            });
            return mtnet::adapted_predictions(
                model,
                tasks,
                theta,
                &params.extra[0],
                mask.as_ref(),
                scalar()?,
                steps,
            );
        }
        MetaMethod::WarpGrad { layers } => {
            return warpgrad::adapted_predictions(
                model,
                layers,
                tasks,
                theta,
                &params.extra[0],
                scalar()?,
                steps,
            );
        }
        _ => {}
    }
    let b = tasks.tasks();
    let head = if *method == MetaMethod::Anil {
        2 * (model.layers() - 1)
    } else {
        0
    };
    // Not under no_grad: the inner loop takes gradients (and records nothing else).
    let phi = (|| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let pieces = no_grad(|| model.unflatten(&theta.detach()))?;
        let body = pieces[..head].to_vec();
        let w0: Vec<Tensor> = pieces[head..]
            .iter()
            .map(|p| batched(p, b))
            .collect::<Result<_>>()?;
        let prox = match method {
            MetaMethod::Imaml { lambda, .. } => Some((*lambda, w0.clone())),
            _ => None,
        };
        let problem = Adaptation {
            model,
            tasks,
            head,
            prox,
        };
        let (lr, a) = match alpha {
            StepSize::Scalar(_) => (scalar()?, vec![]),
            StepSize::PerParameter(a) => {
                model.check_theta("Meta-SGD's α", a)?;
                same_place("α vs θ", a, theta)?;
                (1.0, super::start(model, a, b)?.split_off(head))
            }
        };
        let w = run_to_end_scaled(&problem, &body, &w0, &gd(lr, steps), &a)?;
        Ok((body, w))
    })()?;
    let (body, w) = phi;
    let params: Vec<Tensor> = body.into_iter().chain(w).collect();
    no_grad(|| model.forward_with_ones(&params, tasks.query_x(), tasks.query_ones()))
}

/// Each task's mean query loss, read back.
fn per_task_losses(tasks: &TaskBatch, pred: &Tensor) -> Result<Vec<f64>> {
    let (b, n) = (tasks.tasks(), tasks.query_points());
    let y = tasks.query_y();
    match tasks.loss() {
        TaskLoss::Mse => {
            let per = pred.shape()[1] * pred.shape()[2];
            pred.sub(y)?
                .square()?
                .reshape(&[b, per])?
                .mean_axis(1, false)?
                .to_vec::<f64>()
        }
        TaskLoss::CrossEntropy => {
            let c = pred.shape()[2];
            let logp = pred.reshape(&[b * n, c])?.log_softmax()?;
            let picked = logp.gather(&y.reshape(&[b * n])?)?;
            picked
                .reshape(&[b, n])?
                .mean_axis(1, false)?
                .neg()?
                .to_vec::<f64>()
        }
    }
}

/// Post-adaptation scores over a batch of test tasks: means and 95 % confidence
/// half-widths (1.96·sd/√n over tasks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean query loss after adaptation.
    pub loss: f64,
    /// Its 95 % confidence half-width.
    pub loss_ci95: f64,
    /// Mean query accuracy (classification only).
    pub accuracy: Option<f64>,
    /// Its 95 % confidence half-width.
    pub accuracy_ci95: Option<f64>,
}

/// The mean post-adaptation query loss over `tasks` and its 95 % confidence half-width,
/// plus the mean accuracy and its half-width for classification ([`adapt`] with
/// the same arguments, summarised).
pub fn evaluate(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    alpha: &StepSize,
    steps: usize,
) -> Result<Evaluation> {
    let params = MetaParams::new(theta.clone(), alpha.clone());
    evaluate_with(method, model, tasks, &params, steps)
}

/// [`evaluate`] for any method, with its meta-parameters in `params` ([`adapt_with`];
/// MT-Net's mask noise seeded with [`EVAL_NOISE_SEED`]).
pub fn evaluate_with(
    method: &MetaMethod,
    model: &Mlp,
    tasks: &TaskBatch,
    params: &MetaParams,
    steps: usize,
) -> Result<Evaluation> {
    let r = adapt_with(method, model, tasks, params, steps, EVAL_NOISE_SEED)?;
    let (loss, loss_ci95) = AdaptResult::mean_ci95(&r.query_losses);
    let acc = r.query_accuracy.as_deref().map(AdaptResult::mean_ci95);
    Ok(Evaluation {
        loss,
        loss_ci95,
        accuracy: acc.map(|a| a.0),
        accuracy_ci95: acc.map(|a| a.1),
    })
}
