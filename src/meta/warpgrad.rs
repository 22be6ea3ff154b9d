//! **WarpGrad** (Flennerhag et al., "Meta-Learning with Warped Gradient Descent", ICLR
//! 2020): warp layers interleaved with the task layers, frozen in the inner loop (a
//! learned preconditioner), meta-learned from the query loss along the inner
//! trajectory without back-propagating through it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::mlp::host_tensor;
use super::{MetaGradient, Mlp, TaskBatch, check, gd, output, start, timed};
use crate::autodiff::{grad, no_grad};
use crate::bilevel::trajectory::{add_lists, check_divergence_scaled, run_to_end, step_unchecked};
use crate::bilevel::{Problem, bytes_of, refs, track};
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::tensor::{DType, Tensor, same_place};

/// Where WarpGrad's warp layers sit: after the activation of the listed hidden layers
/// (1-based: hidden layer l is layer l's output; at most 64). In configs, a list such as
/// `[1, 2]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarpLayers(u64);

impl WarpLayers {
    /// Warp layers after the hidden layers `hidden` (1-based, distinct, 1..=64, at least
    /// one).
    pub fn after(hidden: &[usize]) -> Result<Self> {
        let mut bits = 0u64;
        for &l in hidden {
            if !(1..=64).contains(&l) {
                return Err(invalid(
                    "warpgrad",
                    format!("a warp layer sits after hidden layer 1, 2, … (at most 64), got {l}"),
                ));
            }
            if bits & (1 << (l - 1)) != 0 {
                return Err(invalid(
                    "warpgrad",
                    format!("hidden layer {l} is listed twice; one warp layer per hidden layer"),
                ));
            }
            bits |= 1 << (l - 1);
        }
        if bits == 0 {
            return Err(invalid(
                "warpgrad",
                "needs at least one warp layer (leave the list unset for one after every hidden layer)",
            ));
        }
        Ok(Self(bits))
    }

    /// The hidden layers (1-based, ascending) followed by a warp layer.
    pub fn hidden(&self) -> Vec<usize> {
        (1..=64).filter(|l| self.0 & (1 << (l - 1)) != 0).collect()
    }
}

impl Serialize for WarpLayers {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.hidden().serialize(s)
    }
}

impl<'de> Deserialize<'de> for WarpLayers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Vec::<usize>::deserialize(d)?;
        WarpLayers::after(&v).map_err(serde::de::Error::custom)
    }
}

/// The hidden layers (1-based) that get a warp layer in `model`: `layers`, or every
/// hidden layer.
fn placement(model: &Mlp, layers: Option<WarpLayers>) -> Result<Vec<usize>> {
    let hidden = model.layers() - 1;
    if hidden == 0 {
        return Err(invalid(
            "warpgrad",
            format!(
                "the model {:?} has no hidden layer to put a warp layer after; add one",
                model.widths()
            ),
        ));
    }
    let at = layers.map_or_else(|| (1..=hidden).collect(), |l| l.hidden());
    if let Some(&l) = at.iter().find(|&&l| l > hidden) {
        return Err(invalid(
            "warpgrad",
            format!(
                "a warp layer after hidden layer {l}, but the model {:?} has {hidden} hidden layer(s): give at most {hidden} warp layer(s), after layers 1..={hidden}",
                model.widths()
            ),
        ));
    }
    Ok(at)
}

/// Initial ω for [`warpgrad`]: every warp matrix the identity (flat, warp layer by
/// warp layer, each `[h, h]` row-major for its hidden layer's width h), so that the
/// warped network starts as the plain one and its first inner loop is plain gradient
/// descent.
pub fn warp_init(
    model: &Mlp,
    layers: Option<WarpLayers>,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let mut v = Vec::new();
    for l in placement(model, layers)? {
        let h = model.widths()[l];
        for r in 0..h {
            for c in 0..h {
                v.push(if r == c { 1.0 } else { 0.0 });
            }
        }
    }
    host_tensor(&v, &[v.len()], device, dtype)
}

/// The task model with warp layers: w the B tasks' θ pieces, λ the warp matrices
/// (shared, frozen in the inner loop).
pub(super) struct Warped<'a> {
    model: &'a Mlp,
    tasks: &'a TaskBatch,
    /// Hidden layers (1-based) followed by a warp layer.
    at: Vec<usize>,
}

impl<'a> Warped<'a> {
    pub(super) fn new(
        model: &'a Mlp,
        tasks: &'a TaskBatch,
        layers: Option<WarpLayers>,
        omega: &Tensor,
    ) -> Result<Self> {
        let at = placement(model, layers)?;
        let sizes: Vec<usize> = at.iter().map(|&l| model.widths()[l].pow(2)).collect();
        let total: usize = sizes.iter().sum();
        if omega.shape() != [total] {
            return Err(invalid(
                "warpgrad",
                format!(
                    "ω must be flat [{total}]: {} warp layer(s), after hidden layer(s) {at:?} of widths {:?}, each [h, h]; got shape {:?} (a wrong number of warp layers, or their sizes?); warp_init gives identities of the right size",
                    at.len(),
                    model.widths(),
                    omega.shape()
                ),
            ));
        }
        Ok(Self { model, tasks, at })
    }

    /// ω's flat vector cut into its `[h, h]` pieces.
    pub(super) fn pieces(&self, omega: &Tensor) -> Result<Vec<Tensor>> {
        let w = self.model.widths();
        let sizes: Vec<usize> = self.at.iter().map(|&l| w[l] * w[l]).collect();
        omega
            .split(&sizes)?
            .into_iter()
            .zip(&self.at)
            .map(|(p, &l)| p.reshape(&[w[l], w[l]]))
            .collect()
    }

    pub(super) fn predict(
        &self,
        w: &[Tensor],
        omega: &[Tensor],
        x: &Tensor,
        ones: &Tensor,
    ) -> Result<Tensor> {
        let mut after: Vec<Option<&Tensor>> = vec![None; self.model.layers()];
        for (&l, o) in self.at.iter().zip(omega) {
            after[l - 1] = Some(o);
        }
        self.model.forward_inserted(w, x, ones, &[], &after)
    }
}

impl Problem for Warped<'_> {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Err(invalid(
            "warpgrad",
            "the adaptation starts from the meta-parameters θ passed explicitly",
        ))
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        let w = self.model.widths();
        self.at.iter().map(|&l| vec![w[l], w[l]]).collect()
    }

    /// Σ_i L_i^s(θ_i; ω).
    fn inner_loss(&self, w: &[Tensor], omega: &[Tensor]) -> Result<Tensor> {
        let tb = self.tasks;
        let pred = self.predict(w, omega, tb.support_x(), tb.support_ones())?;
        tb.loss_sum(&pred, tb.support_y())
    }

    /// (1/B) Σ_i L_i^q(θ_i; ω).
    fn outer_loss(&self, w: &[Tensor], omega: &[Tensor]) -> Result<Tensor> {
        let tb = self.tasks;
        let pred = self.predict(w, omega, tb.query_x(), tb.query_ones())?;
        tb.loss_mean(&pred, tb.query_y())
    }
}

/// **WarpGrad** (Flennerhag et al., ICLR 2020).
///
/// The network interleaves the task layers θ (the [`Mlp`]'s W and b) with warp layers
/// ω: a square linear map h ↦ h·Ω_l after the activation of each chosen hidden layer l
/// (`layers`; default every hidden layer), with no bias (the next task layer's bias
/// would absorb one). This is the paper's experimental set-up in spirit (its warp
/// layers are convolutions interleaved with the task's convolutional blocks); [`warp_init`]
/// starts every Ω_l at the identity.
///
/// The inner loop adapts θ only, ω frozen: θ_i⁰ = θ,
/// θ_i^{k+1} = θ_i^k − α ∇_θ L_i^s(θ_i^k; ω), k < S, which is plain gradient descent
/// on the warped network (ω acts as a preconditioner of the task layers' gradients).
///
/// - **ω's gradient** is that of the trajectory-agnostic meta-objective
///   L(ω) = (1/(S+1)) Σ_{k=0..S} (1/B) Σ_i L_i^q(θ_i^k; ω), each θ_i^k a constant: the
///   mean of the query gradients ∇_ω L^q at the trajectory's points θ⁰..θ^S (all S+1 of
///   them), returned as `extra` `"omega"`. Nothing is back-propagated through the inner
///   loop: each point's gradient is taken when the loop reaches it and added to an
///   accumulator, so memory does not grow with S ([`MetaGradient::stored_bytes`]: the
///   current iterate and the accumulator).
/// - **θ's direction** is first order, Reptile's as in the paper's experiments:
///   θ − (1/B) Σ_i θ_i^S ([`super::reptile`]), so that an SGD step of size ε is
///   θ ← θ + ε·mean_i(θ_i^S − θ).
///
/// The reported meta-loss is the mean query loss at θ^S, as for the other methods.
/// Needs S ≥ 1.
///
/// Memory per meta-step, f32, 1-40-40-1 (two 40 × 40 warp layers), B = 32 (measured
/// by the test `warpgrad_memory_is_flat_in_steps` and printed by `cargo run --example
/// meta_memory`; MAML stores its S + 1 iterates):
///
/// | S | MAML | WarpGrad |
/// | --- | --- | --- |
/// | 5 | 1,352,448 B | 238,208 B |
/// | 20 | 4,733,568 B | 238,208 B |
/// | 100 | 22,766,208 B | 238,208 B |
pub fn warpgrad(
    model: &Mlp,
    layers: Option<WarpLayers>,
    tasks: &TaskBatch,
    theta: &Tensor,
    omega: &Tensor,
    alpha: f64,
    steps: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, Some(alpha))?;
    let warped = Warped::new(model, tasks, layers, omega)?;
    same_place("ω vs θ", omega, theta)?;
    if steps == 0 {
        return Err(invalid(
            "warpgrad",
            "needs at least one inner step (S ≥ 1): its θ direction is Reptile's, zero at θ",
        ));
    }
    timed(tasks, || {
        let om = no_grad(|| warped.pieces(&omega.detach()))?;
        let w0 = start(model, theta, tasks.tasks())?;
        let opt = gd(alpha, steps).optimizer;
        let nw = w0.len();
        let mut s = opt.init_state(&w0)?;
        let mut acc: Vec<Tensor> = Vec::new();
        let mut loss = None;
        for k in 0..=steps {
            let ot = track(&om);
            let l = warped.outer_loss(&s[..nw], &ot)?;
            let g = grad(&l, &refs(&ot), false)?;
            acc = if acc.is_empty() {
                g
            } else {
                add_lists(&acc, &g)?
            };
            if k == steps {
                loss = Some(l.detach());
            } else {
                // One step of the shared inner loop at a time, so that no point of the
                // trajectory outlives the next; divergence is checked once, below.
                s = step_unchecked(&warped, &om, &opt, &[], None, k, &s, nw)?;
            }
        }
        check_divergence_scaled(&warped, &om, &opt, &[], None, &w0, &s[..nw], steps)?;
        let w = &s[..nw];
        let loss = loss.expect("the loop ends at k = S").to_scalar::<f64>()?;
        let b = tasks.tasks() as f64;
        let (dtheta, domega) = no_grad(|| -> Result<_> {
            let mean_phi = model.flatten(w)?.scale(1.0 / b)?;
            let parts: Vec<&Tensor> = acc.iter().collect();
            Ok((
                theta.detach().sub(&mean_phi)?,
                Tensor::concat(&parts)?.scale(1.0 / (steps + 1) as f64)?,
            ))
        })?;
        let mut out = output(dtheta, None, loss, steps);
        out.stored_bytes = bytes_of(w) + bytes_of(&acc);
        out.extra = vec![("omega", domega)];
        Ok(out)
    })
}

/// WarpGrad's query predictions after S inner steps on θ with ω frozen (no graph kept).
pub(super) fn adapted_predictions(
    model: &Mlp,
    layers: Option<WarpLayers>,
    tasks: &TaskBatch,
    theta: &Tensor,
    omega: &Tensor,
    alpha: f64,
    steps: usize,
) -> Result<Tensor> {
    let warped = Warped::new(model, tasks, layers, omega)?;
    same_place("ω vs θ", omega, theta)?;
    let om = no_grad(|| warped.pieces(&omega.detach()))?;
    let w0 = start(model, theta, tasks.tasks())?;
    let w = run_to_end(&warped, &om, &w0, &gd(alpha, steps))?;
    no_grad(|| warped.predict(&w, &om, tasks.query_x(), tasks.query_ones()))
}
