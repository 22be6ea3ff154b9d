//! **L2F, Learning to Forget** (Baik, Hong and Lee, CVPR 2020): MAML from a per-task
//! attenuated start γ ⊙ θ, with γ predicted from the task's support gradient at θ.

use super::mlp::{batched, host_tensor};
use super::{Adaptation, MetaGradient, Mlp, TaskBatch, check, gd, output, start, timed};
use crate::autodiff::{grad, no_grad, vjp_many};
use crate::bilevel::trajectory::Trajectory;
use crate::bilevel::{detach_all, refs, track};
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::tensor::{DType, Tensor, same_place};

use super::Activation;

/// The γ-network g_φ of [`l2f`] for `model`: an [`Mlp`] with widths `[L, hidden, L]`,
/// ReLU between its layers, L = 2 × model layers (one input and one output per
/// parameter piece W1, b1, W2, b2, …), `hidden` = L when `None`. Its sigmoid output is
/// applied by [`l2f`]. φ is this MLP's flat parameter vector.
pub fn l2f_gamma_net(model: &Mlp, hidden: Option<usize>) -> Result<Mlp> {
    let l = 2 * model.layers();
    let h = hidden.unwrap_or(l);
    if h == 0 {
        return Err(invalid(
            "l2f",
            "the γ-network's hidden width must be ≥ 1 (leave it unset for L, the number of parameter pieces)",
        ));
    }
    Mlp::new(&[l, h, l], Activation::Relu)
}

/// Initial φ for [`l2f`]: W1, b1, W2 by [`Mlp::init`] (PyTorch's rule, seeded), and the
/// output bias b2 = ln 99 ≈ 4.6 on every output, so that γ starts near σ(4.6) = 0.99:
/// meta-training starts from (almost) no forgetting, where L2F is MAML.
pub fn l2f_init(
    model: &Mlp,
    hidden: Option<usize>,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let g = l2f_gamma_net(model, hidden)?;
    let mut phi = g.init(seed, &Device::cpu(), DType::F64)?.to_vec::<f64>()?;
    let l = g.outputs();
    let n = phi.len();
    for v in &mut phi[n - l..] {
        *v = 99f64.ln();
    }
    host_tensor(&phi, &[n], device, dtype)
}

/// The per-task start γ_i ⊙ θ of every task (pieces `[B, …]`), recorded on the tape from
/// `theta` (pieces of θ), `at` (θ repeated per task: where the support gradient is
/// taken) and `phi` when those are tracked, with the support gradient on the tape too
/// when `create_graph`.
pub(super) fn attenuated_start(
    model: &Mlp,
    gnet: &Mlp,
    tasks: &TaskBatch,
    theta: &[Tensor],
    at: &[Tensor],
    phi: &Tensor,
    create_graph: bool,
) -> Result<Vec<Tensor>> {
    let b = tasks.tasks();
    let l = gnet.inputs();
    let (dev, dtype) = (tasks.device(), tasks.dtype());
    let problem = Adaptation::all(model, tasks);
    // Σ_i L_i^s: each task's gradient is that of its own mean support loss.
    let loss = problem.support_loss(at, &[])?;
    let g = grad(&loss, &refs(at), create_graph)?;
    // Layer-wise means as products with a column of 1/n_l placed at column l, summed:
    // the same kernels whatever B is.
    let mut v: Option<Tensor> = None;
    for (k, (gk, n)) in g.iter().zip(model.piece_sizes()).enumerate() {
        let mut avg = vec![0.0; n * l];
        for r in 0..n {
            avg[r * l + k] = 1.0 / n as f64;
        }
        let avg = host_tensor(&avg, &[n, l], &dev, dtype)?;
        let part = gk.reshape(&[b, n])?.matmul(&avg)?;
        v = Some(match v {
            None => part,
            Some(acc) => acc.add(&part)?,
        });
    }
    let v = v
        .expect("an MLP has at least one layer")
        .reshape(&[b, 1, l])?;
    let ones = host_tensor(&vec![1.0; b], &[b, 1, 1], &dev, dtype)?;
    let gamma = gnet
        .forward_with_ones(&gnet.unflatten(phi)?, &v, &ones)?
        .sigmoid()?
        .reshape(&[b, l])?;
    // Piece k of task i is γ_ik·θ_k: the column γ_·k times θ_k as a row, one product.
    theta
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let mut pick = vec![0.0; l];
            pick[k] = 1.0;
            let pick = host_tensor(&pick, &[l, 1], &dev, dtype)?;
            let s = t.shape().to_vec();
            gamma
                .matmul(&pick)?
                .matmul(&t.reshape(&[1, s[0] * s[1]])?)?
                .reshape(&[b, s[0], s[1]])
        })
        .collect()
}

/// Checks φ against the γ-network's size for `model`.
pub(super) fn check_phi(model: &Mlp, hidden: Option<usize>, phi: &Tensor) -> Result<Mlp> {
    let gnet = l2f_gamma_net(model, hidden)?;
    if phi.shape() != [gnet.dim()] {
        return Err(invalid(
            "l2f",
            format!(
                "φ must be the γ-network's {} parameters (widths {:?}: L = {} parameter pieces of the model {:?}, hidden {}), got shape {:?}; l2f_init gives a φ of the right size",
                gnet.dim(),
                gnet.widths(),
                gnet.inputs(),
                model.widths(),
                gnet.widths()[1],
                phi.shape()
            ),
        ));
    }
    Ok(gnet)
}

/// **L2F** (Baik, Hong and Lee, "Learning to Forget for Meta-Learning", CVPR 2020).
///
/// For each task i:
/// 1. the support gradient at θ, g_i = ∇L_i^s(θ), is averaged over each parameter
///    piece, giving v_i ∈ ℝ^L with L = 2 × layers (v_ik = mean of g_i over W_1, b_1, W_2,
///    …; the paper's layer-wise input);
/// 2. the γ-network gives attenuations γ_i = σ(g_φ(v_i)) ∈ (0, 1)^L, g_φ an MLP
///    `[L, hidden, L]` with ReLU ([`l2f_gamma_net`]: two layers, hidden = L by
///    default);
/// 3. the task starts at θ_i⁰ = γ_i ⊙ θ, γ_ik multiplying every entry of piece k;
/// 4. S steps of MAML's inner loop follow, θ_i^{t+1} = θ_i^t − α ∇L_i^s(θ_i^t).
///
/// (φ names the γ-network's parameters here, so the adapted parameters are θ_i^t.)
/// The meta-loss is M(θ, φ) = (1/B) Σ_i L_i^q(θ_i^S), and the returned gradients are
/// dM/dθ ([`MetaGradient::theta`]) and dM/dφ (`extra`, `"phi"`), full second order: the
/// S steps through the reverse sweep as for [`super::maml`], then the start's
/// vector–Jacobian product on the tape, where γ depends on θ through g_i (a
/// Hessian-vector product of the support loss).
/// φ's layout is the γ-network's flat layout ([`Mlp`]); [`l2f_init`] is the
/// initialization (γ ≈ 0.99 at the start). With γ ≡ 1 this is MAML.
pub fn l2f(
    model: &Mlp,
    hidden: Option<usize>,
    tasks: &TaskBatch,
    theta: &Tensor,
    phi: &Tensor,
    alpha: f64,
    steps: usize,
) -> Result<MetaGradient> {
    check(model, tasks, theta, Some(alpha))?;
    let gnet = check_phi(model, hidden, phi)?;
    same_place("φ vs θ", phi, theta)?;
    timed(tasks, || {
        let problem = Adaptation::all(model, tasks);
        let theta_t = theta.detach().requires_grad();
        let phi_t = phi.detach().requires_grad();
        let at = track(&start(model, theta, tasks.tasks())?);
        let pieces = model.unflatten(&theta_t)?;
        let w0 = attenuated_start(model, &gnet, tasks, &pieces, &at, &phi_t, true)?;
        let trajectory = Trajectory::run(&problem, &[], &detach_all(&w0), &gd(alpha, steps))?;
        let (loss, gw, _) = super::query_grads(&problem, trajectory.w(steps), &[])?;
        let adjoint = trajectory.reverse(steps, gw, vec![])?;
        // dM/dw₀ pulled back through the start: one sweep from w₀(θ, φ) seeded with a₀.
        let mut wrt = vec![&theta_t, &phi_t];
        wrt.extend(refs(&at));
        let mut g = vjp_many(&refs(&w0), &refs(&adjoint.dw), &wrt, false)?;
        let through_at = g.split_off(2);
        let (dtheta, dphi) = no_grad(|| -> Result<_> {
            let via_gradient = model.flatten(&through_at)?;
            Ok((g[0].add(&via_gradient)?, g[1].clone()))
        })?;
        let mut out = output(dtheta, None, loss, steps);
        out.extra = vec![("phi", dphi)];
        out.stored_bytes = trajectory.stored_bytes();
        Ok(out)
    })
}

/// L2F's adapted parameters of every task: the attenuated start, then S plain inner
/// steps (no graph kept).
pub(super) fn adapted(
    model: &Mlp,
    hidden: Option<usize>,
    tasks: &TaskBatch,
    theta: &Tensor,
    phi: &Tensor,
    alpha: f64,
    steps: usize,
) -> Result<Vec<Tensor>> {
    let gnet = check_phi(model, hidden, phi)?;
    same_place("φ vs θ", phi, theta)?;
    let problem = Adaptation::all(model, tasks);
    let pieces = no_grad(|| model.unflatten(&theta.detach()))?;
    let at: Vec<Tensor> = no_grad(|| {
        pieces
            .iter()
            .map(|p| batched(p, tasks.tasks()))
            .collect::<Result<_>>()
    })?;
    let w0 = attenuated_start(
        model,
        &gnet,
        tasks,
        &pieces,
        &track(&at),
        &phi.detach(),
        false,
    )?;
    crate::bilevel::trajectory::run_to_end(&problem, &[], &detach_all(&w0), &gd(alpha, steps))
}
