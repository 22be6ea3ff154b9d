//! WarpGrad against its definition computed by hand (the trajectory task by task, the
//! warp gradient as the mean of query gradients at its points), plain gradient descent
//! with identity warps, and its memory flat in the number of inner steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::tests::{f64v, host, net, sin_tasks, theta0};
use super::*;
use crate::autodiff::grad;
use crate::device::Device;
use crate::tensor::DType;
use crate::testing::assert_close;

/// One task's prediction of the warped 1-8-8-1 net: tanh after layers 1 and 2, each
/// followed by its warp matrix.
fn predict(m: &Mlp, p: &Tensor, omega: &[Tensor], x: &Tensor) -> Tensor {
    let pieces = m.unflatten(p).unwrap();
    let mut h = x.clone();
    for (l, wb) in pieces.chunks(2).enumerate() {
        h = h.matmul(&wb[0]).unwrap().add(&wb[1]).unwrap();
        if l + 1 < m.layers() {
            h = h.tanh().unwrap().matmul(&omega[l]).unwrap();
        }
    }
    h
}

fn warp_pieces(m: &Mlp, omega: &[f64]) -> Vec<Tensor> {
    let dev = Device::cpu();
    let h = m.widths()[1];
    omega
        .chunks(h * h)
        .map(|c| Tensor::from_vec(c.to_vec(), &[h, h], &dev).unwrap())
        .collect()
}

/// ω's gradient is the mean over tasks and the S + 1 points θ⁰..θ^S of each task's
/// query gradient with respect to ω, the points computed by hand with ω frozen; θ's
/// direction is θ − mean θ^S, the meta-loss the mean query loss at θ^S.
#[test]
fn warpgrad_omega_gradient_is_the_mean_query_gradient_along_the_trajectory() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let b = 3;
    let tasks = sin_tasks(b, 5, 51, &dev, DType::F64);
    let th = theta0(&m, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let init = host(&warp_init(&m, None, &dev, DType::F64).unwrap());
    let omega: Vec<f64> = init
        .iter()
        .map(|v| v + 0.3 * rng.random_range(-1.0..1.0))
        .collect();
    let (alpha, steps) = (0.1, 3);
    let g = warpgrad(
        &m,
        None,
        &tasks,
        &f64v(&th, &dev),
        &f64v(&omega, &dev),
        alpha,
        steps,
    )
    .unwrap();
    let om = warp_pieces(&m, &omega);
    let mut want = vec![0.0; omega.len()];
    let mut want_theta = th.clone();
    let mut loss = 0.0;
    for i in 0..b {
        let one = tasks.select(i, 1).unwrap();
        let mut p = f64v(&th, &dev);
        for k in 0..=steps {
            let ot: Vec<Tensor> = om.iter().map(Tensor::requires_grad).collect();
            let q = predict(&m, &p, &ot, one.query_x())
                .mse(one.query_y())
                .unwrap();
            let gq = grad(&q, &ot.iter().collect::<Vec<_>>(), false).unwrap();
            let flat: Vec<f64> = gq.iter().flat_map(host).collect();
            for (w, v) in want.iter_mut().zip(flat) {
                *w += v / (b * (steps + 1)) as f64;
            }
            if k == steps {
                loss += q.to_scalar::<f64>().unwrap() / b as f64;
                for (w, v) in want_theta.iter_mut().zip(host(&p)) {
                    *w -= v / b as f64;
                }
                break;
            }
            let pt = p.requires_grad();
            let s = predict(&m, &pt, &om, one.support_x())
                .mse(one.support_y())
                .unwrap();
            let gs = grad(&s, &[&pt], false).unwrap();
            p = p.axpy(-alpha, &gs[0]).unwrap();
        }
    }
    assert_eq!(g.extra[0].0, "omega");
    assert_close(
        &host(&g.extra[0].1),
        &want,
        1e-10,
        1e-13,
        "warpgrad dω by hand",
    );
    assert_close(
        &host(&g.theta),
        &want_theta,
        1e-10,
        1e-13,
        "warpgrad dθ by hand",
    );
    assert!((g.meta_loss - loss).abs() < 1e-12);
}

/// With identity warp layers the inner loop is plain gradient descent on the plain
/// network: the same adapted losses as MAML's inner loop, and θ's direction is Reptile's.
#[test]
fn warpgrad_with_identity_warps_is_plain_gradient_descent() {
    let dev = Device::cpu();
    let m = net(Activation::Relu);
    let tasks = sin_tasks(3, 5, 52, &dev, DType::F64);
    let th = f64v(&theta0(&m, 6), &dev);
    let method = MetaMethod::WarpGrad { layers: None };
    let params = MetaParams {
        theta: th.clone(),
        alpha: StepSize::Scalar(0.05),
        extra: method.init_extra(&m, 0, &dev, DType::F64).unwrap(),
    };
    for steps in [1, 4] {
        let warped = adapt_with(&method, &m, &tasks, &params, steps, 0).unwrap();
        let plain = adapt(&MetaMethod::Maml, &m, &tasks, &th, &params.alpha, steps).unwrap();
        assert_close(
            &warped.query_losses,
            &plain.query_losses,
            1e-12,
            1e-14,
            "identity warps vs plain GD",
        );
        let g = meta_gradient_with(&method, &m, &tasks, &params, steps, 0).unwrap();
        let r = reptile(&m, &tasks, &th, 0.05, steps).unwrap();
        assert_close(
            &host(&g.theta),
            &host(&r.theta),
            1e-10,
            1e-14,
            "warpgrad θ vs reptile",
        );
        assert!((g.meta_loss - r.meta_loss).abs() < 1e-13);
    }
}

/// What WarpGrad stores does not grow with S (MAML's does, S + 1 iterates), and the
/// rustdoc's table: 1-40-40-1, B = 32, f32.
#[test]
fn warpgrad_memory_is_flat_in_steps() {
    let dev = Device::cpu();
    let m = Mlp::new(&[1, 40, 40, 1], Activation::Relu).unwrap();
    let b = 32;
    let tasks = sin_tasks(b, 10, 53, &dev, DType::F32);
    let th = m.init(0, &dev, DType::F32).unwrap();
    let om = warp_init(&m, None, &dev, DType::F32).unwrap();
    let iterate = (b * m.dim() * 4) as u64;
    let warp = (2 * 40 * 40 * 4) as u64;
    for steps in [1, 5, 20, 100] {
        let g = warpgrad(&m, None, &tasks, &th, &om, 0.01, steps).unwrap();
        assert_eq!(g.stored_bytes, iterate + warp, "S = {steps}");
    }
    for steps in [5, 20] {
        let g = maml(&m, &tasks, &th, 0.01, steps).unwrap();
        assert_eq!(
            g.stored_bytes,
            (steps as u64 + 1) * iterate,
            "MAML, S = {steps}"
        );
    }
    // The table in warpgrad's docs.
    assert_eq!(iterate + warp, 238_208);
    assert_eq!(6 * iterate, 1_352_448);
    assert_eq!(21 * iterate, 4_733_568);
    assert_eq!(101 * iterate, 22_766_208);
}
