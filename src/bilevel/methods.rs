//! Hypergradient methods. Notation: g = ∇_w L_out, H = ∇²_w L_in, J = ∂²L_in/∂λ∂w,
//! all at the point the method evaluates them.

use std::time::Instant;

use super::{
    Hypergradient, Inner, Problem, Report, bytes_of, check_divergence, check_lambda, check_w,
    detach_all, dot_list, flatten, refs, run_inner, track, unflatten,
};
use crate::autodiff::{HvpOperator, grad, no_grad};
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::solvers::{CgOptions, conjugate_gradient, fixed_point, neumann};
use crate::tensor::{DType, Tensor};

/// A hypergradient method. Every method first runs `inner.steps` (= T) steps of the
/// inner optimizer Φ from w₀; unrolled methods differentiate through them, implicit
/// methods evaluate at the last iterate w_T.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// `rad(T, η)`: reverse mode through all T steps of Φ, plus the direct ∇_λ L_out.
    /// Stores only the iterates w_t and rebuilds each step's graph on the reverse
    /// sweep: memory O(T·|w|).
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
    /// The implicit hypergradient at the closed-form inner solution w*(λ) (problems
    /// implementing [`Problem::inner_solution`]), with H v = g solved directly: H is
    /// built column by column from |w| Hessian-vector products and factorised on the
    /// host in f64. An oracle for tests, usable on small problems. Ignores `inner`.
    Exact,
}

impl Method {
    /// A short name ("rad", "trad", "forward", "cg", "neumann", "fixed_point", "one_step", "exact").
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rad => "rad",
            Method::Trad { .. } => "trad",
            Method::Forward => "forward",
            Method::Cg { .. } => "cg",
            Method::Neumann { .. } => "neumann",
            Method::FixedPoint { .. } => "fixed_point",
            Method::OneStep { .. } => "one_step",
            Method::Exact => "exact",
        }
    }

    fn validate(&self, inner: &Inner) -> Result<()> {
        let positive = |what: &str, v: f64| -> Result<()> {
            if !v.is_finite() || v <= 0.0 {
                return Err(invalid(
                    "method",
                    format!("{what} must be finite and > 0, got {v}"),
                ));
            }
            Ok(())
        };
        match *self {
            Method::Rad | Method::Forward | Method::Exact => Ok(()),
            Method::Trad { k } => {
                if k == 0 || k > inner.steps {
                    return Err(invalid(
                        "trad",
                        format!("K must be in 1..=T = {}, got {k}", inner.steps),
                    ));
                }
                Ok(())
            }
            Method::Cg {
                iters,
                tol,
                damping,
            } => {
                if iters == 0 {
                    return Err(invalid("cg", "K (iterations) must be at least 1"));
                }
                if let Some(t) = tol
                    && (!t.is_finite() || t < 0.0)
                {
                    return Err(invalid(
                        "cg",
                        format!("tol must be finite and ≥ 0, got {t}"),
                    ));
                }
                if !damping.is_finite() || damping < 0.0 {
                    return Err(invalid(
                        "cg",
                        format!("damping must be finite and ≥ 0, got {damping}"),
                    ));
                }
                Ok(())
            }
            Method::Neumann { k, eta } | Method::FixedPoint { k, eta } => {
                if k == 0 {
                    return Err(invalid(self.name(), "K must be at least 1"));
                }
                positive("eta", eta)
            }
            Method::OneStep { xi, .. } => positive("xi", xi),
        }
    }
}

/// dL_out/dλ at λ by `method`, starting the inner optimizer from `w0`.
pub fn hypergradient(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w0: &[Tensor],
    inner: &Inner,
    method: &Method,
) -> Result<Hypergradient> {
    let start = Instant::now();
    check_lambda(problem, lambda)?;
    inner.optimizer.validate()?;
    method.validate(inner)?;
    let device = w0.first().map(Tensor::device).unwrap_or(Device::Cpu);
    let dispatches_before = device.gpu_context().map(|c| c.dispatch_count());
    let nw = w0.len();
    let lambda = detach_all(lambda);
    let state0 = inner.optimizer.init_state(w0)?;
    // w_T for the methods that take the inner loop's end point as given.
    let inner_end = |state0: Vec<Tensor>| -> Result<Vec<Tensor>> {
        let states = run_inner(
            problem,
            &lambda,
            &inner.optimizer,
            state0,
            inner.steps,
            false,
            nw,
        )?;
        Ok(states[0][..nw].to_vec())
    };

    let (grad_l, w, solver_iterations, residual, stored_bytes, outer_loss) = match *method {
        Method::Rad => unrolled(problem, &lambda, state0, inner, inner.steps, nw)?,
        Method::Trad { k } => unrolled(problem, &lambda, state0, inner, k, nw)?,
        Method::Forward => forward_mode(problem, &lambda, state0, inner, nw)?,
        Method::Cg { .. } | Method::Neumann { .. } | Method::FixedPoint { .. } => {
            implicit(problem, &lambda, inner_end(state0)?, method)?
        }
        Method::Exact => {
            let w = match problem.inner_solution(&lambda) {
                Some(w) => w?,
                None => {
                    return Err(invalid(
                        "exact",
                        "this problem has no closed-form inner solution (Problem::inner_solution returns None)",
                    ));
                }
            };
            check_w(&w, w0)?;
            implicit(problem, &lambda, w, method)?
        }
        Method::OneStep { xi, exact } => one_step(problem, &lambda, inner_end(state0)?, xi, exact)?,
    };
    // The inner loop's checks see the losses of steps 0..T−1 and ‖w_T‖²; an iterate that
    // is finite but overflows the losses shows first here (read back anyway).
    if !outer_loss.is_finite() {
        return Err(invalid(
            "hypergradient",
            format!(
                "the outer loss at the evaluation point is {outer_loss}: the inner optimizer probably diverged in its last step (lower its step size), or the outer loss overflows there"
            ),
        ));
    }
    let dispatches = match (device.gpu_context(), dispatches_before) {
        (Some(c), Some(b)) => Some(c.dispatch_count() - b),
        _ => None,
    };
    let inner_steps = if matches!(method, Method::Exact) {
        0
    } else {
        inner.steps
    };
    Ok(Hypergradient {
        grad: grad_l,
        w,
        report: Report {
            method: method.name().to_string(),
            inner_steps,
            solver_iterations,
            residual,
            stored_bytes,
            outer_loss,
            wall_time: start.elapsed(),
            dispatches,
        },
    })
}

type Parts = (Vec<Tensor>, Vec<Tensor>, usize, Option<f64>, u64, f64);

/// L_out at (w, λ) with its gradients: (value, ∇_w L_out, ∇_λ L_out).
fn outer_grads(
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

fn add_lists(a: &[Tensor], b: &[Tensor]) -> Result<Vec<Tensor>> {
    no_grad(|| a.iter().zip(b).map(|(x, y)| x.add(y)).collect())
}

/// RAD (k = T) and T-RAD: reverse sweep over the last `k` of T stored steps.
fn unrolled(
    problem: &dyn Problem,
    lambda: &[Tensor],
    state0: Vec<Tensor>,
    inner: &Inner,
    k: usize,
    nw: usize,
) -> Result<Parts> {
    let t = inner.steps;
    let states = run_inner(problem, lambda, &inner.optimizer, state0, t, true, nw)?;
    let stored = bytes_of(&states.concat());
    let w_t = states[t][..nw].to_vec();
    let (loss, gw, mut hyper) = outer_grads(problem, &w_t, lambda)?;
    // Adjoint of the whole state: ∂L_out/∂w_T for w, zero for optimizer buffers.
    let mut adj: Vec<Tensor> = gw;
    for s in &states[t][nw..] {
        adj.push(s.zeros_like()?);
    }
    // Step `step` of the reverse sweep, rebuilt from the stored iterate: the tracked
    // state and λ and Φ(state, λ) with its graph. It does not depend on the adjoint.
    let rebuild = |step: usize| -> Result<StepGraph> {
        let s = track(&states[step]);
        let l = track(lambda);
        let g = grad(&problem.inner_loss(&s[..nw], &l)?, &refs(&s[..nw]), true)?;
        let next = inner.optimizer.step(&s, &g)?;
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
    if w_t.first().is_some_and(|w| w.device().is_cpu()) && crate::ops::cpu_pair::cores() > 1 {
        // On the CPU a second thread rebuilds step s−1 while this one back-propagates
        // through step s: the two halves of a reverse step take about as long each.
        pipeline(steps, &rebuild, &mut backprop)?;
    } else {
        for step in steps {
            backprop(&rebuild(step)?)?;
        }
    }
    Ok((hyper, w_t, 0, None, stored, loss.to_scalar::<f64>()?))
}

/// A rebuilt reverse step: tracked state, tracked λ, Φ(state, λ) with its graph.
type StepGraph = (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>);

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
    let _both_busy = crate::ops::cpu_pair::both_cores_busy();
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

/// Forward mode: one tangent Z_j of the optimizer state per λ element j.
fn forward_mode(
    problem: &dyn Problem,
    lambda: &[Tensor],
    state0: Vec<Tensor>,
    inner: &Inner,
    nw: usize,
) -> Result<Parts> {
    let n_lambda: usize = lambda.iter().map(Tensor::numel).sum();
    let mut tangents: Vec<Vec<Tensor>> = (0..n_lambda)
        .map(|_| state0.iter().map(Tensor::zeros_like).collect::<Result<_>>())
        .collect::<Result<_>>()?;
    let stored = bytes_of(&tangents.concat());
    let mut losses = Vec::with_capacity(inner.steps);
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
        losses.push(loss.detach().reshape(&[1])?);
        let gw = detach_all(&gw);
        state = no_grad(|| inner.optimizer.step(&state, &gw))?;
    }
    check_divergence(losses, &state[..nw], inner.steps)?;
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
    Ok((hyper, w_t, 0, None, stored, loss.to_scalar::<f64>()?))
}

/// Implicit methods at a given w: v ≈ H⁻¹ g, hypergradient = ∇_λ L_out − J v.
fn implicit(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w: Vec<Tensor>,
    method: &Method,
) -> Result<Parts> {
    let (loss, gw, gl) = outer_grads(problem, &w, lambda)?;
    let (wt, lt) = (track(&w), track(lambda));
    let op = HvpOperator::new(&problem.inner_loss(&wt, &lt)?, &refs(&wt))?;
    let apply = |p: &Tensor| -> Result<Tensor> {
        let parts = unflatten(p, &w)?;
        flatten(&op.hvp(&refs(&parts))?)
    };
    let b = flatten(&gw)?;
    let solved = match *method {
        Method::Cg {
            iters,
            tol,
            damping,
        } => {
            let opts = CgOptions {
                max_iters: iters,
                tol,
                check_every: 10,
                damping,
            };
            conjugate_gradient(apply, &b, &opts)?
        }
        Method::Neumann { k, eta } => neumann(apply, &b, k, eta)?,
        Method::FixedPoint { k, eta } => fixed_point(apply, &b, k, eta)?,
        Method::Exact => dense_solve(apply, &b)?,
        _ => unreachable!("implicit() is called for implicit methods only"),
    };
    let stored = 4 * bytes_of(std::slice::from_ref(&b));
    let v = unflatten(&solved.x, &w)?;
    let jv = op.mixed(&refs(&lt), &refs(&v))?;
    let hyper = no_grad(|| {
        gl.iter()
            .zip(&jv)
            .map(|(a, b)| a.sub(b))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((
        hyper,
        w,
        solved.iterations,
        Some(solved.residual_norm),
        stored,
        loss.to_scalar::<f64>()?,
    ))
}

/// Solves A x = b exactly for a small operator: A's columns from n applications to the
/// unit vectors, then [`crate::solvers::solve_dense`] on the host in f64.
fn dense_solve(
    mut apply: impl FnMut(&Tensor) -> Result<Tensor>,
    b: &Tensor,
) -> Result<crate::solvers::SolveResult> {
    let n = b.numel();
    let device = b.device();
    let dtype = b.dtype();
    let unit = |i: usize| -> Result<Tensor> {
        let mut e = vec![0.0f64; n];
        e[i] = 1.0;
        match dtype {
            DType::F64 => Tensor::from_vec(e, &[n], &device),
            DType::F32 => Tensor::from_vec(
                e.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                &[n],
                &device,
            ),
        }
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
    let x = crate::solvers::solve_dense(&a, &b.to_vec::<f64>()?).map_err(|_| {
        invalid(
            "exact",
            "the inner Hessian is singular at w*; the implicit hypergradient is undefined",
        )
    })?;
    let x = match dtype {
        DType::F64 => Tensor::from_vec(x, &[n], &device)?,
        DType::F32 => Tensor::from_vec(
            x.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &[n],
            &device,
        )?,
    };
    Ok(crate::solvers::SolveResult {
        x,
        iterations: n,
        residual_norm: 0.0,
    })
}

/// DARTS's one-step approximation.
fn one_step(
    problem: &dyn Problem,
    lambda: &[Tensor],
    w: Vec<Tensor>,
    xi: f64,
    exact: bool,
) -> Result<Parts> {
    let wt = track(&w);
    let g = grad(&problem.inner_loss(&wt, lambda)?, &refs(&wt), false)?;
    let w_virtual: Vec<Tensor> = no_grad(|| {
        w.iter()
            .zip(&g)
            .map(|(a, b)| a.axpy(-xi, b))
            .collect::<Result<_>>()
    })?;
    let (loss, u, gl) = outer_grads(problem, &w_virtual, lambda)?;
    let ju: Vec<Tensor> = if exact {
        let (wt, lt) = (track(&w), track(lambda));
        HvpOperator::new(&problem.inner_loss(&wt, &lt)?, &refs(&wt))?
            .mixed(&refs(&lt), &refs(&u))?
    } else {
        // ε = 0.01/‖u‖ stays on the device: w ± ε u = w ± 0.01·u/‖u‖, and the
        // difference quotient multiplies by ‖u‖/0.02.
        let norm = no_grad(|| dot_list(&u, &u)?.sqrt())?;
        let c = norm.full_like(0.01)?;
        let grad_lambda_at = |sign: f64| -> Result<Vec<Tensor>> {
            let shifted: Vec<Tensor> = no_grad(|| {
                w.iter()
                    .zip(&u)
                    .map(|(wi, ui)| wi.axpy_ratio(&c, &norm, sign, ui))
                    .collect::<Result<_>>()
            })?;
            let lt = track(lambda);
            grad(&problem.inner_loss(&shifted, &lt)?, &refs(&lt), false)
        };
        let (plus, minus) = (grad_lambda_at(1.0)?, grad_lambda_at(-1.0)?);
        no_grad(|| {
            plus.iter()
                .zip(&minus)
                .map(|(p, m)| p.sub(m)?.mul(&norm)?.scale(1.0 / 0.02))
                .collect::<Result<_>>()
        })?
    };
    let hyper = no_grad(|| {
        gl.iter()
            .zip(&ju)
            .map(|(a, b)| a.axpy(-xi, b))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((
        hyper,
        w_virtual,
        0,
        None,
        bytes_of(&w),
        loss.to_scalar::<f64>()?,
    ))
}
