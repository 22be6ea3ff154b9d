//! The inner trajectory w₀ → w_T that every hypergradient method starts from: running
//! the inner optimizer (with divergence detection that costs one readback in all), and
//! the reverse sweep through the stored iterates that unrolled methods (and, through
//! dw₀, meta-learning) differentiate with.
//!
//! The optimizer state s_t is w_t followed by the optimizer's buffers (the momentum's
//! velocity, zero at s₀); see [`InnerOptimizer`].

use super::methods::bda::Aggregation;
use super::{Inner, InnerOptimizer, Problem, bytes_of, detach_all, dot_list, refs, track};
use crate::autodiff::{grad, no_grad, vjp_many};
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::tensor::Tensor;

/// The loss inner step `k` descends: L_in, or BDA's aggregation of both levels.
pub(crate) fn step_loss(
    problem: &dyn Problem,
    aggregation: Option<&Aggregation>,
    k: usize,
    w: &[Tensor],
    lambda: &[Tensor],
) -> Result<Tensor> {
    let inner = problem.inner_loss(w, lambda)?;
    match aggregation {
        None => Ok(inner),
        Some(a) => {
            let alpha = a.alpha(k);
            let outer = problem.outer_loss(w, lambda)?;
            inner
                .scale(1.0 - alpha)?
                .add(&outer.scale(alpha * a.upper_ratio())?)
        }
    }
}

/// The state with its w-part projected onto the problem's inner bounds, if it has any
/// (recorded when the state is on the graph).
pub(crate) fn project(
    problem: &dyn Problem,
    mut state: Vec<Tensor>,
    nw: usize,
) -> Result<Vec<Tensor>> {
    if let Some((lo, hi)) = problem.inner_bounds() {
        for w in &mut state[..nw] {
            *w = w.clamp(lo, hi)?;
        }
    }
    Ok(state)
}

/// Fails if the inner loop diverged, naming the step. The common case costs one
/// readback, of ‖w_T‖², and no per-step work: a step whose loss or gradient is not
/// finite makes its iterate, and every later one, non-finite. Only then are the steps
/// replayed from `start`, each loss read back, to name the first that went wrong.
pub(crate) fn check_divergence(
    problem: &dyn Problem,
    lambda: &[Tensor],
    opt: &InnerOptimizer,
    start: &[Tensor],
    w_t: &[Tensor],
    steps: usize,
) -> Result<()> {
    check_divergence_scaled(problem, lambda, opt, &[], None, start, w_t, steps)
}

/// [`check_divergence`] for an inner loop whose gradients are scaled by the step-size
/// tensors `alpha` (empty: none), see `InnerOptimizer::step_scaled`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_divergence_scaled(
    problem: &dyn Problem,
    lambda: &[Tensor],
    opt: &InnerOptimizer,
    alpha: &[Tensor],
    aggregation: Option<&Aggregation>,
    start: &[Tensor],
    w_t: &[Tensor],
    steps: usize,
) -> Result<()> {
    let norm = no_grad(|| dot_list(w_t, w_t))?.to_vec::<f64>()?[0];
    if norm.is_finite() {
        return Ok(());
    }
    let nw = w_t.len();
    let mut losses = Vec::new();
    let mut s = start.to_vec();
    for t in 0..steps {
        let w = track(&s[..nw]);
        let loss = step_loss(problem, aggregation, t, &w, lambda)?;
        let g = grad(&loss, &refs(&w), false)?;
        let value = loss.to_vec::<f64>()?[0];
        losses.push(value);
        if !value.is_finite() {
            break;
        }
        // A finite loss with a non-finite gradient: at the start, a log or a division
        // at a data or label value it cannot take, not the step size's doing.
        let g_norm = no_grad(|| dot_list(&g, &g))?.to_vec::<f64>()?[0];
        if !g_norm.is_finite() {
            let cause = if t == 0 {
                "before any inner step, so check the data and the labels (a value where the loss is not differentiable) and λ's values; the inner step size is not the cause"
            } else {
                "the inner optimizer diverged (lower its step size), or the loss is not differentiable at this iterate (check the data and the labels)"
            };
            return Err(invalid(
                "inner loop",
                format!(
                    "the gradient of the inner loss is not finite ({g_norm}) at inner step {t} of {steps} while the loss is {value}: {cause}"
                ),
            ));
        }
        s = no_grad(|| project(problem, opt.step_scaled(&s, &g, alpha)?, nw))?;
    }
    losses.push(norm);
    Err(divergence(&losses, steps))
}

/// The error for a diverged inner loop: `values` holds the inner loss of steps 0, 1, …
/// up to the first non-finite one, or all of them and then ‖w_T‖².
fn divergence(values: &[f64], steps: usize) -> crate::error::Error {
    let t = values
        .iter()
        .position(|v| !v.is_finite())
        .unwrap_or(values.len().saturating_sub(1));
    // At step 0 no inner step has been taken: the loss at the starting point is
    // already non-finite, so λ (or the data) is to blame, not the step size.
    if t == 0 && steps > 0 {
        return invalid(
            "inner loop",
            format!(
                "the inner loss is {} at the starting w, before any inner step: check the data and the labels (a label outside what the loss accepts, a NaN in the data) and λ's values (one that makes the loss overflow); the inner step size is not the cause",
                values[0]
            ),
        );
    }
    let what = if t < steps {
        format!("the inner loss became {} at inner step {t}", values[t])
    } else {
        format!("the inner iterate became non-finite at step {steps}")
    };
    invalid(
        "inner loop",
        format!("{what} of {steps}: the inner optimizer diverged; lower its step size"),
    )
}

/// Runs the inner optimizer for `steps` steps from `state`, without a graph. With
/// `keep`, returns every state s_0..s_T (RAD stores them); otherwise just [s_T].
///
/// Divergence is detected without a readback per step (see [`check_divergence`]), and
/// without computing the inner loss's value at all: on a GPU only the gradient's
/// kernels run.
pub(crate) fn run_inner(
    problem: &dyn Problem,
    lambda: &[Tensor],
    opt: &InnerOptimizer,
    state: Vec<Tensor>,
    steps: usize,
    keep: bool,
    nw: usize,
) -> Result<Vec<Vec<Tensor>>> {
    run_inner_scaled(problem, lambda, opt, &[], None, state, steps, keep, nw)
}

/// [`run_inner`] with the gradients scaled by the step-size tensors `alpha` (empty:
/// none), see `InnerOptimizer::step_scaled`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_inner_scaled(
    problem: &dyn Problem,
    lambda: &[Tensor],
    opt: &InnerOptimizer,
    alpha: &[Tensor],
    aggregation: Option<&Aggregation>,
    state: Vec<Tensor>,
    steps: usize,
    keep: bool,
    nw: usize,
) -> Result<Vec<Vec<Tensor>>> {
    let alpha = detach_all(alpha);
    let lambda = detach_all(lambda);
    // Both grow as the loop runs, never reserved from the user's step count: a run of
    // 10⁹ steps can start (and be stopped) instead of failing to reserve its storage.
    let mut states = Vec::new();
    let start = state.clone();
    let mut s = state;
    for k in 0..steps {
        let next = step_unchecked(problem, &lambda, opt, &alpha, aggregation, k, &s, nw)?;
        if keep {
            states.push(s);
        }
        s = next;
    }
    check_divergence_scaled(
        problem,
        &lambda,
        opt,
        &alpha,
        aggregation,
        &start,
        &s[..nw],
        steps,
    )?;
    states.push(s);
    Ok(states)
}

/// Inner step k from optimizer state `s` (w first, `nw` tensors), without a graph and
/// without the divergence check: a caller that steps one at a time (WarpGrad, which
/// keeps only the current iterate) checks once at the end with
/// [`check_divergence_scaled`], not with a readback per step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_unchecked(
    problem: &dyn Problem,
    lambda: &[Tensor],
    opt: &InnerOptimizer,
    alpha: &[Tensor],
    aggregation: Option<&Aggregation>,
    k: usize,
    s: &[Tensor],
    nw: usize,
) -> Result<Vec<Tensor>> {
    let w = track(&s[..nw]);
    let loss = step_loss(problem, aggregation, k, &w, lambda)?;
    let g = grad(&loss, &refs(&w), false)?;
    no_grad(|| project(problem, opt.step_scaled(s, &g, alpha)?, nw))
}

/// w_T: `inner.steps` steps of the inner optimizer from `w0` at λ, without a graph and
/// without keeping the iterates. Fails naming the step where the inner loop diverged.
pub fn run_to_end(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
) -> Result<Vec<Tensor>> {
    run_to_end_scaled(problem, lambda, w0, inner, &[])
}

/// [`run_to_end`] with a tensor step size: every inner gradient g is replaced by α ⊙ g
/// before the optimizer uses it (gradient descent: w ← w − lr·α ⊙ ∇_w L_in; momentum
/// accumulates α ⊙ ∇_w L_in); `alpha` holds
/// one tensor per w-tensor (0-d, or broadcastable to that w-tensor's shape), or is
/// empty for none.
pub fn run_to_end_scaled(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
    alpha: &[Tensor],
) -> Result<Vec<Tensor>> {
    check_alpha(w0, alpha)?;
    let nw = w0.len();
    let state0 = inner.optimizer.init_state(w0)?;
    let states = run_inner_scaled(
        problem,
        lambda,
        &inner.optimizer,
        alpha,
        None,
        state0,
        inner.steps,
        false,
        nw,
    )?;
    Ok(states[0][..nw].to_vec())
}

/// Checks step-size tensors against w: none, or one per w-tensor, each on w's device
/// and dtype and broadcasting to exactly that w-tensor's shape.
pub(crate) fn check_alpha(w0: &[Tensor], alpha: &[Tensor]) -> Result<()> {
    if alpha.is_empty() {
        return Ok(());
    }
    if alpha.len() != w0.len() {
        return Err(invalid(
            "inner step size",
            format!(
                "give one step-size tensor per w-tensor ({}), got {}",
                w0.len(),
                alpha.len()
            ),
        ));
    }
    for (i, (w, a)) in w0.iter().zip(alpha).enumerate() {
        crate::tensor::same_place("inner step size", w, a)?;
        let fits = crate::ops::binary::broadcast_shape("inner step size", w.shape(), a.shape())
            .is_ok_and(|s| s == w.shape());
        if !fits {
            return Err(invalid(
                "inner step size",
                format!(
                    "step-size tensor {i} has shape {:?}, which does not broadcast to its w-tensor's shape {:?}; use a 0-d tensor or one of w's shape",
                    a.shape(),
                    w.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// An inner run with every state s_0..s_T stored (memory O(T·|w|)), ready for reverse
/// sweeps: each step's graph is rebuilt from its stored state on the way back, so no
/// activation outlives its step.
pub struct Trajectory<'p> {
    problem: &'p dyn Problem,
    lambda: Vec<Tensor>,
    optimizer: InnerOptimizer,
    /// Step-size tensors scaling each inner gradient (empty: none).
    alpha: Vec<Tensor>,
    /// BDA's aggregation of the outer loss into each step, if any.
    aggregation: Option<Aggregation>,
    states: Vec<Vec<Tensor>>,
    nw: usize,
}

/// What a reverse sweep through the last K steps of a [`Trajectory`] returns.
#[derive(Debug, Clone)]
pub struct Adjoint {
    /// The seed's λ-part plus Σ over the K steps of each step's λ-contribution: with the
    /// seed (∂L/∂w_T, ∂L/∂λ), dL/dλ with w_{T−K} held fixed.
    pub dlambda: Vec<Tensor>,
    /// dL/dw_{T−K}: the adjoint at the state the sweep stopped at (its w-part; the
    /// optimizer's buffers start at zero). For K = T this is dL/dw₀.
    pub dw: Vec<Tensor>,
    /// dL/dα for a trajectory run with step-size tensors α
    /// ([`Trajectory::run_scaled`]), shaped like them, summed over the K steps; empty
    /// otherwise.
    pub dalpha: Vec<Tensor>,
}

/// A rebuilt reverse step: tracked state, tracked λ followed by tracked α, Φ(state, λ)
/// with its graph.
type StepGraph = (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>);

impl<'p> Trajectory<'p> {
    /// Runs `inner.steps` steps of the inner optimizer from `w0` at λ, storing every
    /// state. Fails naming the step where the inner loop diverged.
    pub fn run(
        problem: &'p dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
    ) -> Result<Self> {
        Self::run_scaled(problem, lambda, w0, inner, &[])
    }

    /// [`Trajectory::run`] with a step size that is a tensor: each inner gradient g is
    /// replaced by α ⊙ g before the optimizer uses it (gradient descent:
    /// w ← w − lr·α ⊙ ∇_w L_in), `alpha` holding one
    /// tensor per w-tensor (0-d for a scalar rate, w's shape for a per-parameter one, or
    /// anything broadcasting to w's shape), or nothing. The reverse sweep then also
    /// returns dL/dα ([`Adjoint::dalpha`]): Meta-SGD's learned rates.
    pub fn run_scaled(
        problem: &'p dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
        alpha: &[Tensor],
    ) -> Result<Self> {
        Self::run_with(problem, lambda, w0, inner, alpha, None)
    }

    /// [`Trajectory::run`] for BDA: inner step k descends (1 − α_k)·L_in + α_k·ρ·L_out
    /// (see [`Aggregation`]), so the reverse sweep differentiates the aggregated
    /// trajectory.
    pub fn run_aggregated(
        problem: &'p dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
        aggregation: &Aggregation,
    ) -> Result<Self> {
        aggregation.validate()?;
        Self::run_with(problem, lambda, w0, inner, &[], Some(*aggregation))
    }

    fn run_with(
        problem: &'p dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        inner: &Inner,
        alpha: &[Tensor],
        aggregation: Option<Aggregation>,
    ) -> Result<Self> {
        check_alpha(w0, alpha)?;
        let nw = w0.len();
        let lambda = detach_all(lambda);
        let alpha = detach_all(alpha);
        let state0 = inner.optimizer.init_state(w0)?;
        let states = run_inner_scaled(
            problem,
            &lambda,
            &inner.optimizer,
            &alpha,
            aggregation.as_ref(),
            state0,
            inner.steps,
            true,
            nw,
        )?;
        Ok(Trajectory {
            problem,
            lambda,
            optimizer: inner.optimizer,
            alpha,
            aggregation,
            states,
            nw,
        })
    }

    /// The same trajectory stopped after its first `k` steps (k ≤ T), sharing the
    /// stored iterates: IAPTT-GM's truncation differentiates through steps 0..k only.
    pub fn truncated(&self, k: usize) -> Result<Trajectory<'p>> {
        if k > self.steps() {
            return Err(invalid(
                "trajectory",
                format!("cannot keep {k} of {} steps", self.steps()),
            ));
        }
        Ok(Trajectory {
            problem: self.problem,
            lambda: self.lambda.clone(),
            optimizer: self.optimizer,
            alpha: self.alpha.clone(),
            aggregation: self.aggregation,
            states: self.states[..=k].to_vec(),
            nw: self.nw,
        })
    }

    /// The number of steps T.
    pub fn steps(&self) -> usize {
        self.states.len() - 1
    }

    /// The iterate w_t, for t in 0..=T (panics for t > T).
    pub fn w(&self, t: usize) -> &[Tensor] {
        &self.states[t][..self.nw]
    }

    /// Bytes of the stored states.
    pub fn stored_bytes(&self) -> u64 {
        bytes_of(&self.states.concat())
    }

    /// Back-propagates the seed (`dw_t` = ∂L/∂w_T, `dlambda` = ∂L/∂λ, the direct term)
    /// through the last `k` steps of Φ, 1 ≤ k ≤ T (k = 0 returns the seed).
    ///
    /// On the CPU with two cores, a second thread rebuilds step t−1 while this one
    /// back-propagates through step t.
    pub fn reverse(&self, k: usize, dw_t: Vec<Tensor>, dlambda: Vec<Tensor>) -> Result<Adjoint> {
        let t = self.steps();
        if k > t || dw_t.len() != self.nw || dlambda.len() != self.lambda.len() {
            return Err(invalid(
                "reverse sweep",
                format!(
                    "expected k ≤ T = {t}, {} w-tensor(s) and {} λ-tensor(s); got k = {k}, {} and {}",
                    self.nw,
                    self.lambda.len(),
                    dw_t.len(),
                    dlambda.len()
                ),
            ));
        }
        let (problem, lambda, nw, states) = (self.problem, &self.lambda, self.nw, &self.states);
        let (nl, alpha) = (lambda.len(), &self.alpha);
        let mut hyper = dlambda;
        let mut dalpha: Vec<Tensor> = alpha
            .iter()
            .map(Tensor::zeros_like)
            .collect::<Result<_>>()?;
        // Adjoint of the whole state: ∂L/∂w_T for w, zero for optimizer buffers.
        let mut adj: Vec<Tensor> = dw_t;
        for s in &states[t][nw..] {
            adj.push(s.zeros_like()?);
        }
        // Step `step` of the reverse sweep, rebuilt from the stored iterate: the tracked
        // state and λ and Φ(state, λ) with its graph. It does not depend on the adjoint.
        let rebuild = |step: usize| -> Result<StepGraph> {
            let s = track(&states[step]);
            let mut l = track(lambda);
            let a = track(alpha);
            let loss = step_loss(problem, self.aggregation.as_ref(), step, &s[..nw], &l)?;
            let g = grad(&loss, &refs(&s[..nw]), true)?;
            let next = project(problem, self.optimizer.step_scaled(&s, &g, &a)?, nw)?;
            l.extend(a);
            Ok((s, l, next))
        };
        let on_cpu = states[t].first().is_some_and(|s| s.device().is_cpu());
        let mut backprop = |(s, l, next): &StepGraph| -> Result<()> {
            let mut wrt = refs(s);
            wrt.extend(refs(l));
            // One sweep seeded with the adjoint on the CPU (no inner products and no
            // backward passes through them: a MAML step on one core took 2.09 ms with
            // them, 1.93 without). On the GPU the fused inner products
            // read the adjoint out each step; seeded, its deferred expression grew
            // across steps (ridge RAD: 28.5 dispatches per step instead of 24, and
            // 39 kernels compiled instead of 10).
            let mut grads = if on_cpu {
                vjp_many(&refs(next), &refs(&adj), &wrt, false)?
            } else {
                grad(&dot_list(next, &adj)?, &wrt, false)?
            };
            let mut gl = grads.split_off(s.len());
            let ga = gl.split_off(nl);
            hyper = add_lists(&hyper, &gl)?;
            if !ga.is_empty() {
                dalpha = add_lists(&dalpha, &ga)?;
            }
            adj = grads;
            Ok(())
        };
        let steps = (t - k..t).rev();
        if on_cpu && Device::cpu_threads() > 1 && !crate::backend::cpu::threads::inside_half() {
            // On the CPU a second thread rebuilds step s−1 while this one back-propagates
            // through step s: the two halves of a reverse step take about as long each.
            // Not inside half of a split batch, whose other half has the second core.
            pipeline(steps, &rebuild, &mut backprop)?;
        } else {
            for step in steps {
                backprop(&rebuild(step)?)?;
            }
        }
        adj.truncate(nw);
        Ok(Adjoint {
            dlambda: hyper,
            dw: adj,
            dalpha,
        })
    }
}

/// a + b elementwise over two lists, without a graph.
pub(crate) fn add_lists(a: &[Tensor], b: &[Tensor]) -> Result<Vec<Tensor>> {
    no_grad(|| a.iter().zip(b).map(|(x, y)| x.add(y)).collect())
}

/// How many produced items may wait for the consumer in [`pipeline`].
const AHEAD: usize = 2;

/// `consume(&produce(i))` for every i of `items` in order, with `produce` running on a
/// second thread up to [`AHEAD`] items ahead. The first error of either side is
/// returned. Matrix–vector passes inside stay on their own thread meanwhile (both
/// cores are busy).
fn pipeline<G: Send>(
    items: impl Iterator<Item = usize> + Clone + Send,
    produce: &(dyn Fn(usize) -> Result<G> + Sync),
    consume: &mut dyn FnMut(&G) -> Result<()>,
) -> Result<()> {
    use std::sync::mpsc::{TryRecvError, TrySendError};
    // Both sides poll rather than block: a futex sleep and wake-up per item costs as
    // much as the item, and the two sides alternate waiting on each other.
    let _both_busy = Device::both_cpu_cores_busy();
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<G>>(AHEAD);
        // Spent items go back to be freed by the thread that allocated them: freeing
        // into another thread's malloc arena serialised both threads on the arena's
        // lock (measured: no overlap at all).
        let (spent_tx, spent_rx) = std::sync::mpsc::channel::<G>();
        let ahead = items.clone();
        scope.spawn(move || {
            for i in ahead {
                while let Ok(spent) = spent_rx.try_recv() {
                    drop(spent);
                }
                let mut item = produce(i);
                let failed = item.is_err();
                loop {
                    match tx.try_send(item) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            item = back;
                            std::thread::yield_now();
                        }
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
                if failed {
                    return;
                }
            }
            // The last items: wait for them so that they are freed here too.
            while let Ok(spent) = spent_rx.recv() {
                drop(spent);
            }
        });
        for _ in items {
            let item = loop {
                match rx.try_recv() {
                    Ok(item) => break item,
                    Err(TryRecvError::Empty) => std::thread::yield_now(),
                    Err(TryRecvError::Disconnected) => {
                        return Err(invalid(
                            "rad",
                            "the thread rebuilding reverse steps stopped early",
                        ));
                    }
                }
            }?;
            consume(&item)?;
            // If the producer already returned, the item is simply dropped here.
            let _ = spent_tx.send(item);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problems::Ridge;
    use crate::tensor::DType;
    use crate::testing::assert_close;

    /// L_out(w_T) for ridge, with w_T from w₀ by T steps whose gradients are scaled by
    /// α, computed without the tape's reverse sweep.
    fn outer_at_end(p: &Ridge, lam: &[Tensor], w0: &[f64], alpha: &[f64], inner: &Inner) -> f64 {
        let dev = Device::cpu();
        let w0 = [Tensor::from_vec(w0.to_vec(), &[w0.len()], &dev).unwrap()];
        let a = [Tensor::from_vec(alpha.to_vec(), &[alpha.len()], &dev).unwrap()];
        let w = run_to_end_scaled(p, lam, &w0, inner, &a).unwrap();
        p.outer_loss(&w, lam).unwrap().to_scalar::<f64>().unwrap()
    }

    fn fd(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        (0..x.len())
            .map(|i| {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                a[i] += 1e-6;
                b[i] -= 1e-6;
                (f(&a) - f(&b)) / 2e-6
            })
            .collect()
    }

    /// With a per-parameter step-size tensor α, the reverse sweep's dL/dα, dL/dw₀ and
    /// dL/dλ all match central differences in f64, for gradient descent and momentum.
    #[test]
    fn tensor_step_size_gradients_match_finite_differences() {
        let dev = Device::cpu();
        let p = Ridge::synthetic(12, 9, 5, 3, &dev, DType::F64).unwrap();
        let l0 = vec![0.3, 0.1, 0.5, 0.2, 0.4];
        let lam = vec![Tensor::from_vec(l0.clone(), &[5], &dev).unwrap()];
        let w0 = vec![0.2, -0.1, 0.4, 0.0, -0.3];
        let alpha = vec![0.05, 0.1, 0.02, 0.08, 0.06];
        for optimizer in [
            InnerOptimizer::Gd { lr: 1.0 },
            InnerOptimizer::Momentum {
                lr: 0.7,
                momentum: 0.5,
            },
        ] {
            let inner = Inner {
                optimizer,
                steps: 4,
            };
            let t = |v: &[f64]| Tensor::from_vec(v.to_vec(), &[v.len()], &dev).unwrap();
            let traj = Trajectory::run_scaled(&p, &lam, &[t(&w0)], &inner, &[t(&alpha)]).unwrap();
            let (wt, lt) = (track(traj.w(4)), track(&lam));
            let loss = p.outer_loss(&wt, &lt).unwrap();
            let mut g = grad(&loss, &[&wt[0], &lt[0]], false).unwrap();
            let gl = g.split_off(1);
            let adj = traj.reverse(4, g, gl).unwrap();
            let host = |x: &Tensor| x.to_vec::<f64>().unwrap();
            let want_a = fd(&alpha, |a| outer_at_end(&p, &lam, &w0, a, &inner));
            let want_w = fd(&w0, |w| outer_at_end(&p, &lam, w, &alpha, &inner));
            let want_l = fd(&l0, |l| {
                let lam = [Tensor::from_vec(l.to_vec(), &[5], &dev).unwrap()];
                outer_at_end(&p, &lam, &w0, &alpha, &inner)
            });
            // Central differences with h = 1e-6 in f64: error ~1e-10 absolute.
            assert_close(&host(&adj.dalpha[0]), &want_a, 1e-6, 1e-9, "dα");
            assert_close(&host(&adj.dw[0]), &want_w, 1e-6, 1e-9, "dw₀");
            assert_close(&host(&adj.dlambda[0]), &want_l, 1e-6, 1e-9, "dλ");
        }
        // A step-size tensor that does not fit w is a clear error.
        let bad = [Tensor::from_vec(vec![0.1f64; 3], &[3], &dev).unwrap()];
        let w = [Tensor::from_vec(w0.clone(), &[5], &dev).unwrap()];
        let inner = Inner {
            optimizer: InnerOptimizer::Gd { lr: 1.0 },
            steps: 1,
        };
        let e = Trajectory::run_scaled(&p, &lam, &w, &inner, &bad)
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not broadcast"), "{e}");
    }
}
