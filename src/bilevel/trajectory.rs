//! The inner trajectory w₀ → w_T that every hypergradient method starts from: running
//! the inner optimizer (with divergence detection that costs one readback in all), and
//! the reverse sweep through the stored iterates that unrolled methods (and, through
//! dw₀, meta-learning) differentiate with.
//!
//! The optimizer state s_t is w_t followed by the optimizer's buffers (the momentum's
//! velocity, zero at s₀); see [`InnerOptimizer`].

use super::{Inner, InnerOptimizer, Problem, bytes_of, detach_all, dot_list, refs, track};
use crate::autodiff::{grad, no_grad};
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::tensor::Tensor;

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
    let norm = no_grad(|| dot_list(w_t, w_t))?.to_vec::<f64>()?[0];
    if norm.is_finite() {
        return Ok(());
    }
    let nw = w_t.len();
    let mut losses = Vec::new();
    let mut s = start.to_vec();
    for t in 0..steps {
        let w = track(&s[..nw]);
        let loss = problem.inner_loss(&w, lambda)?;
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
        s = no_grad(|| opt.step(&s, &g))?;
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
    let lambda = detach_all(lambda);
    // Both grow as the loop runs, never reserved from the user's step count: a run of
    // 10⁹ steps can start (and be stopped) instead of failing to reserve its storage.
    let mut states = Vec::new();
    let start = state.clone();
    let mut s = state;
    for _ in 0..steps {
        let w = track(&s[..nw]);
        let loss = problem.inner_loss(&w, &lambda)?;
        let g = grad(&loss, &refs(&w), false)?;
        let next = no_grad(|| opt.step(&s, &g))?;
        if keep {
            states.push(s);
        }
        s = next;
    }
    check_divergence(problem, &lambda, opt, &start, &s[..nw], steps)?;
    states.push(s);
    Ok(states)
}

/// w_T: `inner.steps` steps of the inner optimizer from `w0` at λ, without a graph and
/// without keeping the iterates. Fails naming the step where the inner loop diverged.
pub fn run_to_end(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
) -> Result<Vec<Tensor>> {
    let nw = w0.len();
    let state0 = inner.optimizer.init_state(w0)?;
    let states = run_inner(
        problem,
        lambda,
        &inner.optimizer,
        state0,
        inner.steps,
        false,
        nw,
    )?;
    Ok(states[0][..nw].to_vec())
}

/// An inner run with every state s_0..s_T stored (memory O(T·|w|)), ready for reverse
/// sweeps: each step's graph is rebuilt from its stored state on the way back, so no
/// activation outlives its step.
pub struct Trajectory<'p> {
    problem: &'p dyn Problem,
    lambda: Vec<Tensor>,
    optimizer: InnerOptimizer,
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
}

/// A rebuilt reverse step: tracked state, tracked λ, Φ(state, λ) with its graph.
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
        let nw = w0.len();
        let lambda = detach_all(lambda);
        let state0 = inner.optimizer.init_state(w0)?;
        let states = run_inner(
            problem,
            &lambda,
            &inner.optimizer,
            state0,
            inner.steps,
            true,
            nw,
        )?;
        Ok(Trajectory {
            problem,
            lambda,
            optimizer: inner.optimizer,
            states,
            nw,
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
        let mut hyper = dlambda;
        // Adjoint of the whole state: ∂L/∂w_T for w, zero for optimizer buffers.
        let mut adj: Vec<Tensor> = dw_t;
        for s in &states[t][nw..] {
            adj.push(s.zeros_like()?);
        }
        // Step `step` of the reverse sweep, rebuilt from the stored iterate: the tracked
        // state and λ and Φ(state, λ) with its graph. It does not depend on the adjoint.
        let rebuild = |step: usize| -> Result<StepGraph> {
            let s = track(&states[step]);
            let l = track(lambda);
            let g = grad(&problem.inner_loss(&s[..nw], &l)?, &refs(&s[..nw]), true)?;
            let next = self.optimizer.step(&s, &g)?;
            Ok((s, l, next))
        };
        let mut backprop = |(s, l, next): &StepGraph| -> Result<()> {
            let adj_dot = dot_list(next, &adj)?;
            let mut wrt = refs(s);
            wrt.extend(refs(l));
            let mut grads = grad(&adj_dot, &wrt, false)?;
            let gl = grads.split_off(s.len());
            hyper = add_lists(&hyper, &gl)?;
            adj = grads;
            Ok(())
        };
        let steps = (t - k..t).rev();
        if states[t].first().is_some_and(|s| s.device().is_cpu()) && Device::cpu_threads() > 1 {
            // On the CPU a second thread rebuilds step s−1 while this one back-propagates
            // through step s: the two halves of a reverse step take about as long each.
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
