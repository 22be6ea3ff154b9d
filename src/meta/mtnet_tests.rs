//! MT-Net and T-Net against MAML (T = I, mask all ones), against central finite
//! differences of the meta-loss computed by definition task by task (T and θ, with a
//! fixed mask sample), and the straight-through ζ-gradient against its formula.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::tests::{f64v, fd, host, net, sin_tasks, theta0};
use super::*;
use crate::autodiff::grad;
use crate::device::Device;
use crate::tensor::DType;
use crate::testing::assert_close;

/// One task's prediction with every layer h ↦ (h·W + b)·T_l, tanh between layers.
fn predict(m: &Mlp, p: &Tensor, t: &[f64], x: &Tensor) -> Tensor {
    let dev = Device::cpu();
    let pieces = m.unflatten(p).unwrap();
    let mut h = x.clone();
    let mut o = 0;
    for (l, wb) in pieces.chunks(2).enumerate() {
        let f = m.widths()[l + 1];
        let tl = Tensor::from_vec(t[o..o + f * f].to_vec(), &[f, f], &dev).unwrap();
        o += f * f;
        h = h.matmul(&wb[0]).unwrap().add(&wb[1]).unwrap();
        h = h.matmul(&tl).unwrap();
        if l + 1 < m.layers() {
            h = h.tanh().unwrap();
        }
    }
    h
}

/// MT-Net's meta-loss by definition: per task, S steps W ← W − α·(m ⊙ ∇_W L^s),
/// b ← b − α·∇_b L^s with `mask[i]` the task's (possibly fractional) per-unit mask, flat
/// over the layers' output units; then the query loss, averaged over tasks.
fn mt_loss(
    m: &Mlp,
    tasks: &TaskBatch,
    theta: &[f64],
    t: &[f64],
    mask: &[Vec<f64>],
    alpha: f64,
    steps: usize,
) -> f64 {
    let dev = Device::cpu();
    let w = m.widths();
    // The mask as a flat per-parameter vector: W_l's entry (r, c) gets unit c's value.
    let flat = |mi: &[f64]| {
        let mut v = Vec::with_capacity(m.dim());
        let mut u = 0;
        for l in 0..m.layers() {
            for _ in 0..w[l] {
                v.extend_from_slice(&mi[u..u + w[l + 1]]);
            }
            v.extend(std::iter::repeat_n(1.0, w[l + 1]));
            u += w[l + 1];
        }
        v
    };
    let b = tasks.tasks();
    let mut total = 0.0;
    for (i, mi) in mask.iter().enumerate().take(b) {
        let one = tasks.select(i, 1).unwrap();
        let mv = f64v(&flat(mi), &dev);
        let mut p = f64v(theta, &dev);
        for _ in 0..steps {
            let pt = p.requires_grad();
            let l = predict(m, &pt, t, one.support_x())
                .mse(one.support_y())
                .unwrap();
            let g = grad(&l, &[&pt], false).unwrap().remove(0);
            p = p.axpy(-alpha, &g.mul(&mv).unwrap()).unwrap();
        }
        total += predict(m, &p, t, one.query_x())
            .mse(one.query_y())
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            / b as f64;
    }
    total
}

/// T near the identity, seeded: I + 0.3·U(−1, 1).
fn some_t(m: &Mlp, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (t, _) = mt_net_init(m, &Device::cpu(), DType::F64).unwrap();
    host(&t)
        .into_iter()
        .map(|v| v + 0.3 * rng.random_range(-1.0..1.0))
        .collect()
}

/// The hard mask per task from ζ and the noise rows: 1[ζ_j + g_ij > 0].
fn hard_mask(zeta: &[f64], noise: &[Tensor], b: usize) -> Vec<Vec<f64>> {
    let rows: Vec<Vec<f64>> = noise.iter().map(host).collect();
    (0..b)
        .map(|i| {
            let mut v = Vec::new();
            let mut u = 0;
            for g in &rows {
                let f = g.len() / b;
                for j in 0..f {
                    v.push(if zeta[u + j] + g[i * f + j] > 0.0 {
                        1.0
                    } else {
                        0.0
                    });
                }
                u += f;
            }
            v
        })
        .collect()
}

/// T = I with no mask (T-Net), and with a mask that samples all ones (ζ = 50), is MAML.
#[test]
fn mt_net_with_identity_and_full_mask_is_maml() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(3, 5, 41, &dev, DType::F64);
    let th = f64v(&theta0(&m, 4), &dev);
    let (t, _) = mt_net_init(&m, &dev, DType::F64).unwrap();
    let units: usize = m.widths()[1..].iter().sum();
    let zeta = f64v(&vec![50.0; units], &dev);
    let noise = logistic_noise(&m, 3, 7, &dev, DType::F64).unwrap();
    let mask = MtMask {
        logits: &zeta,
        noise: &noise,
        temperature: 1.0,
    };
    for steps in [0, 1, 3] {
        let want = maml(&m, &tasks, &th, 0.1, steps).unwrap();
        for mk in [None, Some(&mask)] {
            let g = mt_net(&m, &tasks, &th, &t, mk, 0.1, steps).unwrap();
            assert_close(
                &host(&g.theta),
                &host(&want.theta),
                1e-12,
                1e-14,
                "mt-net vs maml",
            );
            assert!((g.meta_loss - want.meta_loss).abs() < 1e-14);
            assert_eq!(g.extra.len(), 1 + usize::from(mk.is_some()));
        }
    }
}

/// dM/dT and dM/dθ against central differences of the meta-loss by definition, every
/// coordinate (T: 8² + 8² + 1, θ: 97), with a fixed mask sample (ζ and noise fixed, so
/// the hard mask is constant).
#[test]
fn mt_net_gradient_matches_finite_differences() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let b = 3;
    let tasks = sin_tasks(b, 5, 42, &dev, DType::F64);
    let th = theta0(&m, 5);
    let t = some_t(&m, 6);
    let units: usize = m.widths()[1..].iter().sum();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let zeta: Vec<f64> = (0..units).map(|_| rng.random_range(-1.0..1.0)).collect();
    let noise = logistic_noise(&m, b, 9, &dev, DType::F64).unwrap();
    let hard = hard_mask(&zeta, &noise, b);
    // A mixed sample: some units adapt, some do not.
    let ones: f64 = hard.iter().flatten().sum();
    assert!(ones > 5.0 && ones < (b * units) as f64 - 5.0, "{ones}");
    let zt = f64v(&zeta, &dev);
    let alpha = 0.1;
    for (masked, steps) in [(true, 1), (true, 2), (false, 2)] {
        let all = vec![vec![1.0; units]; b];
        let mk = if masked { &hard } else { &all };
        let mask = MtMask {
            logits: &zt,
            noise: &noise,
            temperature: 0.7,
        };
        let g = mt_net(
            &m,
            &tasks,
            &f64v(&th, &dev),
            &f64v(&t, &dev),
            masked.then_some(&mask),
            alpha,
            steps,
        )
        .unwrap();
        let want_t = fd(&t, 1e-5, |tt| {
            mt_loss(&m, &tasks, &th, tt, mk, alpha, steps)
        });
        let want_th = fd(&th, 1e-5, |p| mt_loss(&m, &tasks, p, &t, mk, alpha, steps));
        // Central differences in f64, h = 1e-5, as for MAML.
        assert_eq!(g.extra[0].0, "T");
        assert_close(&host(&g.extra[0].1), &want_t, 1e-6, 1e-8, "mt-net dT vs FD");
        assert_close(&host(&g.theta), &want_th, 1e-6, 1e-8, "mt-net dθ vs FD");
        let loss = mt_loss(&m, &tasks, &th, &t, mk, alpha, steps);
        assert!((g.meta_loss - loss).abs() < 1e-12);
    }
}

/// The straight-through dM/dζ_j = Σ_i ∂M/∂m_ij · σ'(x_ij)/τ, x_ij = (ζ_j + g_ij)/τ,
/// with ∂M/∂m_ij by central differences of the meta-loss in a continuous mask at the
/// hard sample.
#[test]
fn mt_net_mask_gradient_is_straight_through() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let b = 2;
    let tasks = sin_tasks(b, 5, 43, &dev, DType::F64);
    let th = theta0(&m, 7);
    let t = some_t(&m, 8);
    let units: usize = m.widths()[1..].iter().sum();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let zeta: Vec<f64> = (0..units).map(|_| rng.random_range(-1.0..1.0)).collect();
    let noise = logistic_noise(&m, b, 11, &dev, DType::F64).unwrap();
    let hard = hard_mask(&zeta, &noise, b);
    let tau = 0.7;
    let (alpha, steps) = (0.1, 2);
    let zt = f64v(&zeta, &dev);
    let mask = MtMask {
        logits: &zt,
        noise: &noise,
        temperature: tau,
    };
    let g = mt_net(
        &m,
        &tasks,
        &f64v(&th, &dev),
        &f64v(&t, &dev),
        Some(&mask),
        alpha,
        steps,
    )
    .unwrap();
    let rows: Vec<Vec<f64>> = noise.iter().map(host).collect();
    let mut want = vec![0.0; units];
    for i in 0..b {
        let dm = fd(&hard[i], 1e-5, |mi| {
            let mut all = hard.clone();
            all[i] = mi.to_vec();
            mt_loss(&m, &tasks, &th, &t, &all, alpha, steps)
        });
        let mut u = 0;
        for r in &rows {
            let f = r.len() / b;
            for j in 0..f {
                let s = 1.0 / (1.0 + (-(zeta[u + j] + r[i * f + j]) / tau).exp());
                want[u + j] += dm[u + j] * s * (1.0 - s) / tau;
            }
            u += f;
        }
    }
    assert_eq!(g.extra[1].0, "zeta");
    // Central differences in f64, h = 1e-5.
    assert_close(
        &host(&g.extra[1].1),
        &want,
        1e-6,
        1e-9,
        "mt-net dζ (straight-through)",
    );
    assert!(want.iter().any(|v| v.abs() > 1e-4));
}
