//! **MT-Net and T-Net** (Lee and Choi, "Gradient-Based Meta-Learning with Learned
//! Layerwise Metric and Subspace", ICML 2018): every layer followed by a meta-learned
//! square transformation T that the inner loop never adapts, and (MT-Net) a sampled mask
//! choosing which output units' weights the inner loop updates.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::mlp::{batched, host_tensor};
use super::{MetaGradient, Mlp, TaskBatch, check, gd, output, start, timed};
use crate::autodiff::{grad, no_grad, vjp_many};
use crate::bilevel::trajectory::{Trajectory, run_to_end_scaled};
use crate::bilevel::{Problem, refs, track};
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::tensor::{DType, Tensor, same_place};

/// MT-Net's mask settings for one meta-gradient: the logits ζ (flat `[U]`, U = Σ_l
/// fan_out_l, layer by layer), this call's logistic noise (one `[B, fan_out_l]` tensor
/// per layer, [`logistic_noise`]) and the temperature τ > 0.
#[derive(Debug, Clone, Copy)]
pub struct MtMask<'a> {
    /// ζ, flat `[U]`.
    pub logits: &'a Tensor,
    /// g, one `[B, fan_out_l]` tensor per layer.
    pub noise: &'a [Tensor],
    /// τ > 0.
    pub temperature: f64,
}

/// The noise of a task batch's mask sample ([`logistic_noise`] seeded with `seed`), or
/// `None` for T-Net (`masked` false): what both meta-gradients and adaptation draw.
pub(super) fn batch_noise(
    model: &Mlp,
    tasks: &TaskBatch,
    masked: bool,
    seed: u64,
) -> Result<Option<Vec<Tensor>>> {
    if !masked {
        return Ok(None);
    }
    logistic_noise(model, tasks.tasks(), seed, &tasks.device(), tasks.dtype()).map(Some)
}

/// The rows `first..first + len` (tasks) of each layer's noise.
pub(super) fn noise_rows(noise: &[Tensor], first: usize, len: usize) -> Result<Vec<Tensor>> {
    noise
        .iter()
        .map(|g| {
            let f = g.shape()[1];
            g.slice(first * f, len * f)?.reshape(&[len, f])
        })
        .collect()
}

/// Seeded logistic noise g = ln u − ln(1 − u), u ~ U(0, 1), for MT-Net's mask: one
/// `[B, fan_out_l]` tensor per layer of `model`, drawn task by task from one ChaCha8
/// stream seeded with `seed` (so a task run alone gets other noise than in a batch:
/// pass the rows explicitly to [`mt_net`] to compare them).
pub fn logistic_noise(
    model: &Mlp,
    tasks: usize,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Vec<Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let outs: Vec<usize> = model.widths()[1..].to_vec();
    let mut per: Vec<Vec<f64>> = outs
        .iter()
        .map(|&f| Vec::with_capacity(tasks * f))
        .collect();
    for _ in 0..tasks {
        for (v, &f) in per.iter_mut().zip(&outs) {
            for _ in 0..f {
                // Open interval: u = 0 or 1 would give an infinite logit.
                let u: f64 = rng.random_range(f64::EPSILON..1.0 - f64::EPSILON);
                v.push(u.ln() - (1.0 - u).ln());
            }
        }
    }
    per.iter()
        .zip(&outs)
        .map(|(v, &f)| host_tensor(v, &[tasks, f], device, dtype))
        .collect()
}

/// Initial T and ζ for [`mt_net`]: every T_l the identity (flat, layer by layer, each
/// `[fan_out_l, fan_out_l]` row-major), every logit ζ = 0 (P(mask = 1) = ½ under the
/// logistic noise: no unit preferred at the start).
pub fn mt_net_init(model: &Mlp, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let mut t = Vec::new();
    for &f in &model.widths()[1..] {
        for r in 0..f {
            for c in 0..f {
                t.push(if r == c { 1.0 } else { 0.0 });
            }
        }
    }
    let units: usize = model.widths()[1..].iter().sum();
    Ok((
        host_tensor(&t, &[t.len()], device, dtype)?,
        host_tensor(&vec![0.0; units], &[units], device, dtype)?,
    ))
}

/// The inner problem with T: w the B tasks' W and b, λ the T_l (shared, never adapted).
struct Transformed<'a> {
    model: &'a Mlp,
    tasks: &'a TaskBatch,
}

impl Transformed<'_> {
    fn predict(&self, w: &[Tensor], t: &[Tensor], x: &Tensor, ones: &Tensor) -> Result<Tensor> {
        let after: Vec<Option<&Tensor>> = t.iter().map(Some).collect();
        self.model.forward_inserted(w, x, ones, &after, &[])
    }
}

impl Problem for Transformed<'_> {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Err(invalid(
            "mt-net",
            "the adaptation starts from the meta-parameters θ passed explicitly",
        ))
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        self.model.widths()[1..]
            .iter()
            .map(|&f| vec![f, f])
            .collect()
    }

    /// Σ_i L_i^s(W_i, b_i; T).
    fn inner_loss(&self, w: &[Tensor], t: &[Tensor]) -> Result<Tensor> {
        let tb = self.tasks;
        let pred = self.predict(w, t, tb.support_x(), tb.support_ones())?;
        tb.loss_sum(&pred, tb.support_y())
    }

    /// (1/B) Σ_i L_i^q(W_i, b_i; T).
    fn outer_loss(&self, w: &[Tensor], t: &[Tensor]) -> Result<Tensor> {
        let tb = self.tasks;
        let pred = self.predict(w, t, tb.query_x(), tb.query_ones())?;
        tb.loss_mean(&pred, tb.query_y())
    }
}

/// T's flat vector cut into its `[fan_out, fan_out]` pieces.
fn transforms(model: &Mlp, t: &Tensor) -> Result<Vec<Tensor>> {
    let outs = &model.widths()[1..];
    let sizes: Vec<usize> = outs.iter().map(|f| f * f).collect();
    let total: usize = sizes.iter().sum();
    if t.shape() != [total] {
        return Err(invalid(
            "mt-net",
            format!(
                "T must be flat [{total}]: one [fan_out, fan_out] matrix per layer for output widths {outs:?}, got shape {:?}; mt_net_init gives identities of the right size",
                t.shape()
            ),
        ));
    }
    t.split(&sizes)?
        .into_iter()
        .zip(outs)
        .map(|(p, &f)| p.reshape(&[f, f]))
        .collect()
}

/// The inner step-size tensors: α·M_l over W_l (the mask of each output unit repeated
/// over fan_in), α over b_l; with `mask`, the straight-through mask recorded on the tape
/// from `logits` (a tracked ζ to differentiate).
fn step_sizes(
    model: &Mlp,
    tasks: usize,
    alpha: f64,
    mask: Option<(&Tensor, &MtMask)>,
    device: &Device,
    dtype: DType,
) -> Result<Vec<Tensor>> {
    let w = model.widths();
    let logits = match mask {
        Some((zeta, _)) => Some(zeta.split(&w[1..])?),
        None => None,
    };
    let mut out = Vec::with_capacity(2 * model.layers());
    for l in 0..model.layers() {
        let (fan_in, f) = (w[l], w[l + 1]);
        let full = host_tensor(
            &vec![alpha; tasks * fan_in * f],
            &[tasks, fan_in, f],
            device,
            dtype,
        )?;
        let aw = match (&logits, mask) {
            (Some(z), Some((_, m))) => {
                // x = (ζ + g)/τ per task; forward value 1[x > 0] = 1[σ(x) > ½], gradient
                // that of σ(x): hard + (σ(x) − σ(x)) with the second σ(x) detached.
                let x = batched(&z[l].reshape(&[1, f])?, tasks)?
                    .reshape(&[tasks, f])?
                    .add(&m.noise[l])?
                    .scale(1.0 / m.temperature)?;
                let soft = x.sigmoid()?;
                let hard = x.detach().gt(&x.detach().zeros_like()?)?;
                let st = hard.add(&soft.sub(&soft.detach())?)?;
                // Repeated over fan_in by a product with a column of ones, not a broadcast
                // (whose kernels a single task would skip).
                let ones = host_tensor(
                    &vec![1.0; tasks * fan_in],
                    &[tasks, fan_in, 1],
                    device,
                    dtype,
                )?;
                ones.matmul(&st.reshape(&[tasks, 1, f])?)?.mul(&full)?
            }
            _ => full,
        };
        out.push(aw);
        out.push(host_tensor(
            &vec![alpha; tasks * f],
            &[tasks, 1, f],
            device,
            dtype,
        )?);
    }
    Ok(out)
}

/// Checks T, ζ and the noise against the model and the tasks.
fn check_mt(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    t: &Tensor,
    mask: Option<&MtMask>,
) -> Result<()> {
    same_place("T vs θ", t, theta)?;
    transforms(model, t)?;
    if let Some(m) = mask {
        let units: usize = model.widths()[1..].iter().sum();
        if m.logits.shape() != [units] {
            return Err(invalid(
                "mt-net",
                format!(
                    "the mask logits ζ must be flat [{units}] (one per output unit of every layer, widths {:?}), got shape {:?}",
                    model.widths(),
                    m.logits.shape()
                ),
            ));
        }
        same_place("ζ vs θ", m.logits, theta)?;
        if !(m.temperature.is_finite() && m.temperature > 0.0) {
            return Err(invalid(
                "mt-net",
                format!(
                    "the mask temperature τ must be finite and > 0, got {}",
                    m.temperature
                ),
            ));
        }
        let outs = &model.widths()[1..];
        let fits = m.noise.len() == outs.len()
            && m.noise
                .iter()
                .zip(outs)
                .all(|(g, &f)| g.shape() == [tasks.tasks(), f]);
        if !fits {
            return Err(invalid(
                "mt-net",
                format!(
                    "the mask noise must be one [{}, fan_out] tensor per layer (output widths {outs:?}); logistic_noise draws it",
                    tasks.tasks()
                ),
            ));
        }
        for g in m.noise {
            same_place("mask noise vs θ", g, theta)?;
        }
    }
    Ok(())
}

/// **MT-Net** (with `mask`) and **T-Net** (without), Lee and Choi, ICML 2018.
///
/// Every layer l computes T_l·(W_l x + b_l), in blo's row layout h ↦ (h·W_l + b_l)·T_l,
/// then the activation (none after the last layer; T is on every layer, the output
/// layer's included). T_l (`[fan_out, fan_out]`) is meta-learned and never adapted.
///
/// The mask is over the rows of the paper's W (`[out, in]`), i.e. over **output
/// units**: in blo's `[fan_in, fan_out]` layout, over the columns of W_l. Per task i and
/// unit j it is sampled by a straight-through Gumbel-sigmoid with temperature τ
/// (default 1): x = (ζ_j + g_ij)/τ with g_ij logistic noise ([`logistic_noise`]); the
/// forward value is the hard M_ij = 1[σ(x) > ½], the gradient that of σ(x). The inner
/// steps are, from (W_l, b_l) = θ's pieces,
///
/// W_l ← W_l − α·(M_l ⊙ ∇_{W_l} L_i^s),  b_l ← b_l − α·∇_{b_l} L_i^s,
///
/// (the update rule masks W only, so b is always adapted). T-Net is M ≡ 1.
///
/// The meta-loss is M = (1/B) Σ_i L_i^q(W_i^S, b_i^S; T), and the gradients are dM/dθ
/// (the initial W and b), dM/dT (`extra` `"T"`, flat like T) and, for MT-Net, the
/// straight-through dM/dζ (`extra` `"zeta"`), all full second order through the S
/// steps: one reverse sweep of the trajectory with T as its λ and α·M as its step-size
/// tensors (whose adjoint carries dζ). With T = I and M ≡ 1 this is MAML.
///
/// T is flat `[Σ_l fan_out_l²]`, layer by layer row-major, ζ flat `[Σ_l fan_out_l]`;
/// [`mt_net_init`] gives T = I, ζ = 0.
pub fn mt_net(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    t: &Tensor,
    mask: Option<&MtMask>,
    alpha: f64,
    steps: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, Some(alpha))?;
    check_mt(model, tasks, theta, t, mask)?;
    timed(tasks, || {
        let problem = Transformed { model, tasks };
        let tp = no_grad(|| transforms(model, &t.detach()))?;
        let w0 = start(model, theta, tasks.tasks())?;
        let zeta = mask.map(|m| m.logits.detach().requires_grad());
        let (dev, dtype) = (tasks.device(), tasks.dtype());
        let rates = step_sizes(
            model,
            tasks.tasks(),
            alpha,
            zeta.as_ref().zip(mask),
            &dev,
            dtype,
        )?;
        let trajectory = Trajectory::run_scaled(&problem, &tp, &w0, &gd(1.0, steps), &rates)?;
        let (wt, lt) = (track(trajectory.w(steps)), track(&tp));
        let loss = problem.outer_loss(&wt, &lt)?;
        let mut all = refs(&wt);
        all.extend(refs(&lt));
        let mut gw = grad(&loss, &all, false)?;
        let gt = gw.split_off(wt.len());
        let adjoint = trajectory.reverse(steps, gw, gt)?;
        let (dtheta, dt) = no_grad(|| -> Result<_> {
            let refs_t: Vec<&Tensor> = adjoint.dlambda.iter().collect();
            Ok((model.flatten(&adjoint.dw)?, Tensor::concat(&refs_t)?))
        })?;
        let mut out = output(dtheta, None, loss.to_scalar::<f64>()?, steps);
        out.extra = vec![("T", dt)];
        if let Some(z) = &zeta {
            // The step sizes' adjoint pulled back to ζ through the straight-through mask.
            let dz = vjp_many(&refs(&rates), &refs(&adjoint.dalpha), &[z], false)?.remove(0);
            out.extra.push(("zeta", dz));
        }
        out.stored_bytes = trajectory.stored_bytes();
        Ok(out)
    })
}

/// MT-Net's adapted W and b of every task and its query predictions (no graph kept).
pub(super) fn adapted_predictions(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &Tensor,
    t: &Tensor,
    mask: Option<&MtMask>,
    alpha: f64,
    steps: usize,
) -> Result<Tensor> {
    check_mt(model, tasks, theta, t, mask)?;
    let problem = Transformed { model, tasks };
    let tp = no_grad(|| transforms(model, &t.detach()))?;
    let w0 = start(model, theta, tasks.tasks())?;
    let detached = mask.map(|m| m.logits.detach());
    let rates = no_grad(|| {
        step_sizes(
            model,
            tasks.tasks(),
            alpha,
            detached.as_ref().zip(mask),
            &tasks.device(),
            tasks.dtype(),
        )
    })?;
    let w = run_to_end_scaled(&problem, &tp, &w0, &gd(1.0, steps), &rates)?;
    no_grad(|| problem.predict(&w, &tp, tasks.query_x(), tasks.query_ones()))
}
