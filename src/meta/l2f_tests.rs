//! L2F against central finite differences of its meta-loss computed by definition (task
//! by task, the γ-network on the host), and against MAML when γ ≡ 1.

use super::tests::{f64v, fd, host, net, sin_tasks, theta0};
use super::*;
use crate::autodiff::grad;
use crate::device::Device;
use crate::tensor::DType;
use crate::testing::assert_close;

/// One task's MSE of the plain MLP at the flat parameters `p`.
fn task_loss(m: &Mlp, p: &Tensor, x: &Tensor, y: &Tensor) -> Tensor {
    let pred = m.forward(&m.unflatten(p).unwrap(), x).unwrap();
    pred.mse(y).unwrap()
}

/// L2F's meta-loss by its definition, task by task: g = ∇L^s(θ), v_k = mean of g over
/// piece k, γ = σ(relu(v·W1 + b1)·W2 + b2) on the host, start γ_k·θ_k, S gradient steps,
/// query loss; the mean over tasks. With `gamma_at`, γ comes from the support gradient
/// there instead of at θ (γ held fixed while θ moves).
#[allow(clippy::too_many_arguments)]
pub(super) fn l2f_loss(
    m: &Mlp,
    hidden: usize,
    tasks: &TaskBatch,
    theta: &[f64],
    phi: &[f64],
    alpha: f64,
    steps: usize,
    gamma_at: Option<&[f64]>,
) -> f64 {
    let dev = Device::cpu();
    let l = 2 * m.layers();
    let sizes = m.piece_sizes();
    let (w1, rest) = phi.split_at(l * hidden);
    let (b1, rest) = rest.split_at(hidden);
    let (w2, b2) = rest.split_at(hidden * l);
    let b = tasks.tasks();
    let mut total = 0.0;
    for i in 0..b {
        let one = tasks.select(i, 1).unwrap();
        let t = f64v(gamma_at.unwrap_or(theta), &dev).requires_grad();
        let g = host(
            &grad(
                &task_loss(m, &t, one.support_x(), one.support_y()),
                &[&t],
                false,
            )
            .unwrap()[0],
        );
        let mut v = vec![0.0; l];
        let mut o = 0;
        for (k, &n) in sizes.iter().enumerate() {
            v[k] = g[o..o + n].iter().sum::<f64>() / n as f64;
            o += n;
        }
        let hid: Vec<f64> = (0..hidden)
            .map(|j| {
                let z: f64 = (0..l).map(|k| v[k] * w1[k * hidden + j]).sum::<f64>() + b1[j];
                z.max(0.0)
            })
            .collect();
        let gamma: Vec<f64> = (0..l)
            .map(|k| {
                let z: f64 = (0..hidden).map(|j| hid[j] * w2[j * l + k]).sum::<f64>() + b2[k];
                1.0 / (1.0 + (-z).exp())
            })
            .collect();
        let mut start = theta.to_vec();
        let mut o = 0;
        for (k, &n) in sizes.iter().enumerate() {
            for s in &mut start[o..o + n] {
                *s *= gamma[k];
            }
            o += n;
        }
        let mut phi_t = f64v(&start, &dev);
        for _ in 0..steps {
            let p = phi_t.requires_grad();
            let gs = grad(
                &task_loss(m, &p, one.support_x(), one.support_y()),
                &[&p],
                false,
            )
            .unwrap();
            phi_t = phi_t.axpy(-alpha, &gs[0]).unwrap();
        }
        total += task_loss(m, &phi_t, one.query_x(), one.query_y())
            .to_scalar::<f64>()
            .unwrap()
            / b as f64;
    }
    total
}

/// A φ whose γ depends strongly on the support gradient (W1 scaled up, γ around ½), so
/// that the second-order path through γ weighs in the meta-gradient.
pub(super) fn lively_phi(m: &Mlp, hidden: usize) -> Vec<f64> {
    let mut phi = host(&l2f_init(m, Some(hidden), 3, &Device::cpu(), DType::F64).unwrap());
    let l = 2 * m.layers();
    for v in &mut phi[..l * hidden] {
        *v *= 8.0;
    }
    let n = phi.len();
    for (k, v) in phi[n - l..].iter_mut().enumerate() {
        *v = 0.3 * k as f64 - 0.5;
    }
    phi
}

/// dM/dθ and dM/dφ against central differences of the meta-loss by definition, every
/// coordinate of θ (97) and φ (84), on a 1-8-8-1 net, S = 1 and 2.
#[test]
fn l2f_matches_finite_differences() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let hidden = 6;
    let tasks = sin_tasks(3, 5, 31, &dev, DType::F64);
    let th = theta0(&m, 2);
    let phi = lively_phi(&m, hidden);
    let alpha = 0.1;
    for steps in [1, 2] {
        let g = l2f(
            &m,
            None,
            &tasks,
            &f64v(&th, &dev),
            &f64v(&phi, &dev),
            alpha,
            steps,
        )
        .unwrap();
        let want_t = fd(&th, 1e-5, |t| {
            l2f_loss(&m, hidden, &tasks, t, &phi, alpha, steps, None)
        });
        let want_p = fd(&phi, 1e-5, |p| {
            l2f_loss(&m, hidden, &tasks, &th, p, alpha, steps, None)
        });
        // Central differences in f64 with h = 1e-5, as for MAML: truncation ~1e-10,
        // rounding ~1e-11.
        assert_close(&host(&g.theta), &want_t, 1e-6, 1e-8, "l2f dθ vs FD");
        assert_eq!(g.extra[0].0, "phi");
        assert_close(&host(&g.extra[0].1), &want_p, 1e-6, 1e-8, "l2f dφ vs FD");
        let loss = l2f_loss(&m, hidden, &tasks, &th, &phi, alpha, steps, None);
        assert!(
            (g.meta_loss - loss).abs() < 1e-12,
            "{} vs {loss}",
            g.meta_loss
        );
        // The path through γ weighs in: with γ held fixed, dθ is measurably different, so
        // the comparison above would fail without the second-order term through γ.
        let fixed = fd(&th, 1e-5, |t| {
            l2f_loss(&m, hidden, &tasks, t, &phi, alpha, steps, Some(&th))
        });
        let gap = crate::testing::rel_err(&fixed, &want_t);
        assert!(
            gap > 1e-3,
            "the γ path is negligible here ({gap}): the test cannot fail"
        );
    }
}

/// With g_φ's output fixed at γ = 1 (zero weights, output bias 40: σ(40) rounds to 1 in
/// f64 and its derivative, 4e-18, vanishes), L2F is MAML.
#[test]
fn l2f_with_gamma_one_is_maml() {
    let dev = Device::cpu();
    let m = net(Activation::Relu);
    let tasks = sin_tasks(3, 5, 32, &dev, DType::F64);
    let th = f64v(&theta0(&m, 3), &dev);
    let gnet = l2f_gamma_net(&m, None).unwrap();
    let mut phi = vec![0.0; gnet.dim()];
    let n = phi.len();
    for v in &mut phi[n - gnet.outputs()..] {
        *v = 40.0;
    }
    for steps in [0, 1, 3] {
        let a = l2f(&m, None, &tasks, &th, &f64v(&phi, &dev), 0.1, steps).unwrap();
        let b = maml(&m, &tasks, &th, 0.1, steps).unwrap();
        assert_close(
            &host(&a.theta),
            &host(&b.theta),
            1e-12,
            1e-14,
            "l2f γ=1 vs maml",
        );
        assert!((a.meta_loss - b.meta_loss).abs() < 1e-14);
        assert!(host(&a.extra[0].1).iter().all(|v| v.abs() < 1e-15));
        assert_eq!(a.stored_bytes, b.stored_bytes);
    }
}
