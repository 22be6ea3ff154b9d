//! Forward mode: tangents of the optimizer state with respect to every λ element,
//! carried along the inner run.

use serde::{Deserialize, Serialize};

use crate::autodiff::{grad, no_grad};
use crate::bilevel::method::{HypergradientMethod, MethodOutput, outer_grads};
use crate::bilevel::trajectory::{add_lists, check_divergence};
use crate::bilevel::{
    Inner, Problem, bytes_of, detach_all, dot_list, flatten, refs, track, unflatten,
};
use crate::error::Result;
use crate::tensor::Tensor;

/// [`Method::Forward`](crate::bilevel::Method::Forward): forward-mode differentiation of
/// the T inner steps.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "super::NoSettings")]
pub struct Forward;

impl Forward {
    pub(crate) const NAME: &str = "forward";
}

impl HypergradientMethod for Forward {
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
        forward_mode(
            problem,
            lambda,
            inner.optimizer.init_state(w0)?,
            inner,
            w0.len(),
        )
    }
}

/// Forward mode: one tangent Z_j of the optimizer state per λ element j.
fn forward_mode(
    problem: &dyn Problem,
    lambda: &[Tensor],
    state0: Vec<Tensor>,
    inner: &Inner,
    nw: usize,
) -> Result<MethodOutput> {
    let n_lambda: usize = lambda.iter().map(Tensor::numel).sum();
    let mut tangents: Vec<Vec<Tensor>> = (0..n_lambda)
        .map(|_| state0.iter().map(Tensor::zeros_like).collect::<Result<_>>())
        .collect::<Result<_>>()?;
    let stored = bytes_of(&tangents.concat());
    let start = state0.clone();
    let mut state = state0;
    for _ in 0..inner.steps {
        let w = track(&state[..nw]);
        let l = track(lambda);
        let loss = problem.inner_loss(&w, &l)?;
        let mut wrt = refs(&w);
        wrt.extend(refs(&l));
        let mut grads = grad(&loss, &wrt, true)?;
        let gl = flatten(&grads.split_off(nw))?;
        let gw = grads;
        for (j, z) in tangents.iter_mut().enumerate() {
            // H z_w + ∂²L/∂w∂λ_j = ∇_w (∇_w L · z_w + ∂L/∂λ_j): one backward pass.
            let s = dot_list(&gw, &z[..nw])?.add(&gl.slice(j, 1)?.reshape(&[])?)?;
            let hz = grad(&s, &refs(&w), false)?;
            // Φ is linear in (state, gradient), so the tangent follows the same map.
            *z = no_grad(|| inner.optimizer.step(z, &hz))?;
        }
        let gw = detach_all(&gw);
        state = no_grad(|| inner.optimizer.step(&state, &gw))?;
    }
    check_divergence(
        problem,
        &detach_all(lambda),
        &inner.optimizer,
        &start,
        &state[..nw],
        inner.steps,
    )?;
    let w_t = state[..nw].to_vec();
    let (loss, gw, gl) = outer_grads(problem, &w_t, lambda)?;
    let columns: Vec<Tensor> = no_grad(|| {
        tangents
            .iter()
            .map(|z| dot_list(&z[..nw], &gw)?.reshape(&[1]))
            .collect::<Result<_>>()
    })?;
    let zt_g = if columns.is_empty() {
        Vec::new()
    } else {
        unflatten(&Tensor::concat(&refs(&columns))?, lambda)?
    };
    let hyper = add_lists(&gl, &zt_g)?;
    Ok(MethodOutput {
        grad: hyper,
        w: w_t,
        dw0: None,
        outer_loss: loss.to_scalar::<f64>()?,
        inner_steps: inner.steps,
        solver_iterations: 0,
        residual: None,
        stored_bytes: stored,
        inner_grad_norm: None,
    })
}
