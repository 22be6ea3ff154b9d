//! Meta-gradients against central finite differences in f64 (every coordinate of a
//! 1-8-8-1 net), against their definitions computed by hand, batched against separate
//! runs, and the GPU against the CPU.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::autodiff::grad;
use crate::bilevel::OuterOptimizer;
use crate::device::Device;
use crate::solvers::solve_dense;
use crate::tensor::DType;
use crate::testing::{assert_close, fresh_gpu_or_skip, gpu_or_skip, rel_err};

/// Seeded regression tasks: x uniform in [−2, 2], y = a·sin(x − p) per task.
pub(super) fn sin_tasks(b: usize, k: usize, seed: u64, device: &Device, dtype: DType) -> TaskBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut make = |n: usize, amp: &[f64], ph: &[f64]| {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for t in 0..b {
            for _ in 0..n {
                let x: f64 = rng.random_range(-2.0..2.0);
                xs.push(x);
                ys.push(amp[t] * (x - ph[t]).sin());
            }
        }
        (
            mlp::host_tensor(&xs, &[b, n, 1], device, dtype).unwrap(),
            mlp::host_tensor(&ys, &[b, n, 1], device, dtype).unwrap(),
        )
    };
    let amp: Vec<f64> = (0..b).map(|i| 0.5 + 0.3 * i as f64).collect();
    let ph: Vec<f64> = (0..b).map(|i| 0.2 * i as f64).collect();
    let (sx, sy) = make(k, &amp, &ph);
    let (qx, qy) = make(k + 1, &amp, &ph);
    TaskBatch::new(sx, sy, qx, qy, TaskLoss::Mse).unwrap()
}

pub(super) fn net(act: Activation) -> Mlp {
    Mlp::new(&[1, 8, 8, 1], act).unwrap()
}

pub(super) fn host(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

pub(super) fn f64v(v: &[f64], dev: &Device) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()], dev).unwrap()
}

/// The meta-loss M(θ, α) by its definition, with no tape beyond each inner gradient:
/// S steps φ ← φ − α ⊙ ∇L^s(φ) per task from θ, then the mean query loss. `alpha` is
/// `[P]`; `head` pieces onward adapt (0: all). `prox`: iMAML's inner problem.
pub(super) fn meta_loss(
    model: &Mlp,
    tasks: &TaskBatch,
    theta: &[f64],
    alpha: &[f64],
    steps: usize,
) -> f64 {
    let dev = Device::cpu();
    let problem = Adaptation::all(model, tasks);
    let b = tasks.tasks();
    let a = model.unflatten(&f64v(alpha, &dev)).unwrap();
    let mut w: Vec<Tensor> = model
        .unflatten(&f64v(theta, &dev))
        .unwrap()
        .iter()
        .map(|p| batched(p, b).unwrap())
        .collect();
    for _ in 0..steps {
        let wt = track(&w);
        let l = problem.inner_loss(&wt, &[]).unwrap();
        let g = grad(&l, &refs(&wt), false).unwrap();
        w = w
            .iter()
            .zip(&g)
            .zip(&a)
            .map(|((w, g), a)| w.sub(&g.mul(a).unwrap()).unwrap())
            .collect();
    }
    problem
        .outer_loss(&w, &[])
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Central differences of `f` at `x`, every coordinate, step h.
pub(super) fn fd(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let mut p = x.to_vec();
            p[i] += h;
            let up = f(&p);
            p[i] -= 2.0 * h;
            (up - f(&p)) / (2.0 * h)
        })
        .collect()
}

pub(super) fn theta0(model: &Mlp, seed: u64) -> Vec<f64> {
    host(&model.init(seed, &Device::cpu(), DType::F64).unwrap())
}

#[test]
fn layout_and_init_follow_the_issue() {
    let m = Mlp::new(&[1, 40, 40, 1], Activation::Relu).unwrap();
    assert_eq!(m.dim(), 1761);
    let sizes = m.piece_sizes();
    let offsets: Vec<usize> = sizes
        .iter()
        .scan(0, |o, s| {
            let start = *o;
            *o += s;
            Some(start)
        })
        .collect();
    assert_eq!(offsets, vec![0, 40, 80, 1680, 1720, 1760]);
    // W2 is [40, 40] row-major: element (i, j) at 80 + 40·i + j; the forward pass must
    // read it so. One input → one hidden unit path checked by hand on a 2-2-1 net.
    let small = Mlp::new(&[2, 2, 1], Activation::Tanh).unwrap();
    let th = [0.1, 0.2, 0.3, 0.4, 0.05, -0.05, 0.7, -0.6, 0.01];
    let dev = Device::cpu();
    let pieces = small.unflatten(&f64v(&th, &dev)).unwrap();
    let x = Tensor::from_vec(vec![1.0, 2.0], &[1, 1, 2], &dev).unwrap();
    let y = host(&small.forward(&pieces, &x).unwrap())[0];
    let h0 = (1.0 * 0.1 + 2.0 * 0.3 + 0.05f64).tanh();
    let h1 = (1.0 * 0.2 + 2.0 * 0.4 - 0.05f64).tanh();
    assert!((y - (0.7 * h0 - 0.6 * h1 + 0.01)).abs() < 1e-14);
    // PyTorch's bound 1/√fan_in per layer, and seeded.
    let t = theta0(&m, 3);
    assert_eq!(t, theta0(&m, 3));
    assert_ne!(t, theta0(&m, 4));
    assert!(t[..80].iter().all(|v| v.abs() <= 1.0));
    assert!(t[80..1720].iter().all(|v| v.abs() <= 1.0 / 40f64.sqrt()));
    assert!(t[80..1720].iter().any(|v| v.abs() > 0.9 / 40f64.sqrt()));
}

/// MAML (S = 1, 3) against central differences of the meta-loss, every coordinate.
#[test]
fn maml_matches_finite_differences() {
    let dev = Device::cpu();
    for act in [Activation::Tanh, Activation::Relu] {
        let m = net(act);
        let tasks = sin_tasks(3, 5, 11, &dev, DType::F64);
        let th = theta0(&m, 1);
        for steps in [1, 3] {
            let alpha = 0.1;
            let g = maml(&m, &tasks, &f64v(&th, &dev), alpha, steps).unwrap();
            let av = vec![alpha; m.dim()];
            let want = fd(&th, 1e-5, |t| meta_loss(&m, &tasks, t, &av, steps));
            // Central differences in f64 with h = 1e-5: truncation ~h²·M''' ≈ 1e-10,
            // rounding ~ε/h ≈ 1e-11.
            assert_close(&host(&g.theta), &want, 1e-6, 1e-8, "maml dθ vs FD");
            assert!((g.meta_loss - meta_loss(&m, &tasks, &th, &av, steps)).abs() < 1e-12);
        }
    }
}

/// Meta-SGD's ∂M/∂θ and ∂M/∂α against central differences, every coordinate.
#[test]
fn meta_sgd_matches_finite_differences() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(2, 4, 12, &dev, DType::F64);
    let th = theta0(&m, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let al: Vec<f64> = (0..m.dim()).map(|_| rng.random_range(0.02..0.2)).collect();
    for steps in [1, 3] {
        let g = meta_sgd(&m, &tasks, &f64v(&th, &dev), &f64v(&al, &dev), steps).unwrap();
        let want_t = fd(&th, 1e-5, |t| meta_loss(&m, &tasks, t, &al, steps));
        let want_a = fd(&al, 1e-5, |a| meta_loss(&m, &tasks, &th, a, steps));
        assert_close(&host(&g.theta), &want_t, 1e-6, 1e-8, "meta-sgd dθ vs FD");
        let ga = host(g.alpha.as_ref().unwrap());
        assert_close(&ga, &want_a, 1e-6, 1e-8, "meta-sgd dα vs FD");
        assert!(ga.iter().any(|v| v.abs() > 1e-4), "dα is not trivially 0");
    }
}

/// First-order MAML is the mean query gradient at the adapted parameters: computed here
/// task by task, by hand.
#[test]
fn fomaml_is_the_query_gradient_at_the_adapted_parameters() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(3, 5, 13, &dev, DType::F64);
    let th = theta0(&m, 3);
    let (alpha, steps) = (0.05, 3);
    let g = fomaml(&m, &tasks, &f64v(&th, &dev), alpha, steps).unwrap();
    let mut want = vec![0.0; m.dim()];
    for i in 0..3 {
        let one = tasks.select(i, 1).unwrap();
        let loss = |p: &Tensor, x: &Tensor, y: &Tensor| {
            let pieces = m.unflatten(p).unwrap();
            let pred = m.forward(&pieces, x).unwrap();
            pred.mse(y).unwrap()
        };
        let mut phi = f64v(&th, &dev);
        for _ in 0..steps {
            let p = phi.requires_grad();
            let gs = grad(&loss(&p, one.support_x(), one.support_y()), &[&p], false).unwrap();
            phi = phi.axpy(-alpha, &gs[0]).unwrap();
        }
        let p = phi.requires_grad();
        let gq = grad(&loss(&p, one.query_x(), one.query_y()), &[&p], false).unwrap();
        for (w, v) in want.iter_mut().zip(host(&gq[0])) {
            *w += v / 3.0;
        }
    }
    assert_close(&host(&g.theta), &want, 1e-12, 1e-14, "fomaml by hand");
}

/// iMAML against the dense solve of (I + H_i/λ) x_i = ∇L_i^q(φ_i)/B per task, with H_i
/// assembled column by column from Hessian-vector products at the same φ.
#[test]
fn imaml_matches_a_dense_solve() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(2, 5, 14, &dev, DType::F64);
    let th = theta0(&m, 4);
    let (alpha, lam) = (0.05, 2.0);
    for steps in [1, 3] {
        let g = imaml(&m, &tasks, &f64v(&th, &dev), alpha, steps, lam, 400).unwrap();
        let p = m.dim();
        let mut want = vec![0.0; p];
        for i in 0..2 {
            let one = tasks.select(i, 1).unwrap();
            let prox = |w: &Tensor| {
                let pieces = m.unflatten(w).unwrap();
                let s = m.forward(&pieces, one.support_x()).unwrap();
                let s = s.mse(one.support_y()).unwrap();
                let d = w.sub(&f64v(&th, &dev)).unwrap().sqnorm().unwrap();
                (s, d)
            };
            let mut phi = f64v(&th, &dev);
            for _ in 0..steps {
                let w = phi.requires_grad();
                let (s, d) = prox(&w);
                let l = s.add(&d.scale(0.5 * lam).unwrap()).unwrap();
                let gs = grad(&l, &[&w], false).unwrap();
                phi = phi.axpy(-alpha, &gs[0]).unwrap();
            }
            let w = phi.requires_grad();
            let (s, _) = prox(&w);
            let op = HvpOperator::new(&s, &[&w]).unwrap();
            let mut a = vec![0.0; p * p];
            for j in 0..p {
                let mut e = vec![0.0; p];
                e[j] = 1.0;
                let col = host(&op.hvp1(&f64v(&e, &dev)).unwrap());
                for r in 0..p {
                    a[r * p + j] = col[r] / lam + if r == j { 1.0 } else { 0.0 };
                }
            }
            let pieces = m.unflatten(&w).unwrap();
            let q = m.forward(&pieces, one.query_x()).unwrap();
            let gq = host(&grad(&q.mse(one.query_y()).unwrap(), &[&w], false).unwrap()[0]);
            let rhs: Vec<f64> = gq.iter().map(|v| v / 2.0).collect();
            let x = solve_dense(&a, &rhs).unwrap();
            for (w, v) in want.iter_mut().zip(x) {
                *w += v;
            }
        }
        // CG on the joint 2·97-dimensional system converges to rounding level well
        // within 400 iterations.
        assert_close(&host(&g.theta), &want, 1e-7, 1e-9, "imaml vs dense solve");
        assert!(g.residual.unwrap() < 1e-9);
    }
}

/// ANIL equals Meta-SGD with α = 0 on every layer but the last (and α on the last).
#[test]
fn anil_is_maml_with_only_the_head_adapting() {
    let dev = Device::cpu();
    let m = net(Activation::Relu);
    let tasks = sin_tasks(3, 5, 15, &dev, DType::F64);
    let th = theta0(&m, 5);
    let alpha = 0.1;
    let head_start = m.dim() - (8 + 1);
    let al: Vec<f64> = (0..m.dim())
        .map(|i| if i >= head_start { alpha } else { 0.0 })
        .collect();
    for steps in [0, 1, 3] {
        let a = anil(&m, &tasks, &f64v(&th, &dev), alpha, steps).unwrap();
        let s = meta_sgd(&m, &tasks, &f64v(&th, &dev), &f64v(&al, &dev), steps).unwrap();
        assert_close(
            &host(&a.theta),
            &host(&s.theta),
            1e-10,
            1e-13,
            "anil vs meta-sgd",
        );
        assert!((a.meta_loss - s.meta_loss).abs() < 1e-13);
    }
}

/// S = 0: every gradient-based method gives the plain query gradient at θ.
#[test]
fn zero_inner_steps_give_the_query_gradient() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(2, 5, 16, &dev, DType::F64);
    let th = theta0(&m, 6);
    let t = f64v(&th, &dev).requires_grad();
    let pieces = m.unflatten(&t).unwrap();
    let pred = m.forward(&pieces, tasks.query_x()).unwrap();
    let want = host(&grad(&pred.mse(tasks.query_y()).unwrap(), &[&t], false).unwrap()[0]);
    let alpha = StepSize::Scalar(0.1);
    for method in [
        MetaMethod::Maml,
        MetaMethod::Fomaml,
        MetaMethod::MetaSgd,
        MetaMethod::Anil,
    ] {
        let g = meta_gradient(&method, &m, &tasks, &f64v(&th, &dev), &alpha, 0).unwrap();
        assert_close(&host(&g.theta), &want, 1e-12, 1e-14, method.name());
    }
    for method in [
        MetaMethod::Reptile,
        MetaMethod::Imaml {
            lambda: 1.0,
            cg_iters: 5,
        },
    ] {
        let e = meta_gradient(&method, &m, &tasks, &f64v(&th, &dev), &alpha, 0).unwrap_err();
        assert!(e.to_string().contains("S ≥ 1"), "{e}");
    }
}

fn all_methods() -> Vec<MetaMethod> {
    vec![
        MetaMethod::Maml,
        MetaMethod::Fomaml,
        MetaMethod::MetaSgd,
        MetaMethod::Imaml {
            lambda: 2.0,
            cg_iters: 300,
        },
        MetaMethod::Anil,
        MetaMethod::Reptile,
    ]
}

/// B tasks in one batch equal B separate runs (the meta-gradient is their mean).
#[test]
fn a_batch_equals_separate_runs() {
    let dev = Device::cpu();
    let m = net(Activation::Relu);
    let b = 4;
    let tasks = sin_tasks(b, 5, 17, &dev, DType::F64);
    let th = f64v(&theta0(&m, 7), &dev);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let al: Vec<f64> = (0..m.dim()).map(|_| rng.random_range(0.02..0.1)).collect();
    for method in all_methods() {
        let alpha = if method == MetaMethod::MetaSgd {
            StepSize::PerParameter(f64v(&al, &dev))
        } else {
            StepSize::Scalar(0.05)
        };
        let all = meta_gradient(&method, &m, &tasks, &th, &alpha, 2).unwrap();
        let mut want = vec![0.0; m.dim()];
        let mut want_a = vec![0.0; m.dim()];
        let mut loss = 0.0;
        for i in 0..b {
            let one = tasks.select(i, 1).unwrap();
            let g = meta_gradient(&method, &m, &one, &th, &alpha, 2).unwrap();
            for (w, v) in want.iter_mut().zip(host(&g.theta)) {
                *w += v / b as f64;
            }
            if let Some(a) = &g.alpha {
                for (w, v) in want_a.iter_mut().zip(host(a)) {
                    *w += v / b as f64;
                }
            }
            loss += g.meta_loss / b as f64;
        }
        assert_close(&host(&all.theta), &want, 1e-6, 1e-9, method.name());
        if let Some(a) = &all.alpha {
            assert_close(&host(a), &want_a, 1e-6, 1e-9, "meta-sgd dα batched");
        }
        assert!((all.meta_loss - loss).abs() < 1e-12);
    }
}

/// Post-adaptation evaluation scores the same adapted parameters the meta-gradient
/// does: its mean query loss is the meta-loss, for every method's inner loop.
#[test]
fn adapt_reproduces_the_meta_loss() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(3, 5, 22, &dev, DType::F64);
    let th = f64v(&theta0(&m, 9), &dev);
    let al = StepSize::PerParameter(th.full_like(0.07).unwrap());
    for method in all_methods() {
        let alpha = match method {
            MetaMethod::MetaSgd => al.clone(),
            _ => StepSize::Scalar(0.07),
        };
        for steps in [1, 4] {
            let g = meta_gradient(&method, &m, &tasks, &th, &alpha, steps).unwrap();
            let r = adapt(&method, &m, &tasks, &th, &alpha, steps).unwrap();
            let mean = r.query_losses.iter().sum::<f64>() / 3.0;
            assert!(
                (mean - g.meta_loss).abs() < 1e-12,
                "{}: {mean} vs {}",
                method.name(),
                g.meta_loss
            );
        }
        let one = adapt(&method, &m, &tasks, &th, &alpha, 1).unwrap();
        let four = adapt(&method, &m, &tasks, &th, &alpha, 4).unwrap();
        assert_ne!(
            one,
            four,
            "{}: more inner steps must change the result",
            method.name()
        );
    }
}

/// Entry checks: θ and α of the wrong length, tasks that do not fit the model or each
/// other, a non-positive step size: typed errors before any work.
#[test]
fn bad_inputs_are_clear_errors() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(2, 3, 18, &dev, DType::F64);
    let th = f64v(&theta0(&m, 1), &dev);
    let short = f64v(&vec![0.1; m.dim() - 1], &dev);
    let e = maml(&m, &tasks, &short, 0.1, 1).unwrap_err();
    assert!(e.to_string().contains("97 parameters"), "{e}");
    let e = meta_sgd(&m, &tasks, &th, &short, 1).unwrap_err();
    assert!(e.to_string().contains("α"), "{e}");
    let e = maml(&m, &tasks, &th, -0.1, 1).unwrap_err();
    assert!(e.to_string().contains("> 0"), "{e}");
    let e = maml(&m, &tasks, &th.to_dtype(DType::F32).unwrap(), 0.1, 1).unwrap_err();
    assert!(matches!(e, crate::Error::DTypeMismatch { .. }), "{e}");
    let wide = Mlp::new(&[2, 8, 1], Activation::Tanh).unwrap();
    let e = maml(&wide, &tasks, &f64v(&vec![0.0; wide.dim()], &dev), 0.1, 1).unwrap_err();
    assert!(e.to_string().contains("input width"), "{e}");
    let x = Tensor::zeros(&[2, 3, 1], &dev)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let y3 = Tensor::zeros(&[3, 3, 1], &dev)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let e = TaskBatch::new(x.clone(), x.clone(), y3.clone(), y3, TaskLoss::Mse).unwrap_err();
    assert!(matches!(e, crate::Error::ShapeMismatch { .. }), "{e}");
    let e = MetaMethod::Anil;
    let r = meta_gradient(&e, &m, &tasks, &th, &StepSize::PerParameter(th.clone()), 1);
    assert!(r.unwrap_err().to_string().contains("scalar"));
}

/// Every method on the GPU (f32) against the CPU in f64 on the same inputs.
#[test]
fn gpu_matches_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let cpu = Device::cpu();
    let m = net(Activation::Tanh);
    let th = theta0(&m, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let al: Vec<f64> = (0..m.dim()).map(|_| rng.random_range(0.02..0.1)).collect();
    let on = |dev: &Device, dtype: DType, v: &[f64]| mlp::host_tensor(v, &[v.len()], dev, dtype);
    for method in all_methods() {
        let run = |dev: &Device, dtype: DType| {
            let tasks = sin_tasks(3, 5, 19, dev, dtype);
            let alpha = if method == MetaMethod::MetaSgd {
                StepSize::PerParameter(on(dev, dtype, &al).unwrap())
            } else {
                StepSize::Scalar(0.05)
            };
            let method = match method {
                // CG in f32 stops at its rounding floor; 50 iterations reach it here.
                MetaMethod::Imaml { lambda, .. } => MetaMethod::Imaml {
                    lambda,
                    cg_iters: 50,
                },
                other => other,
            };
            meta_gradient(
                &method,
                &m,
                &tasks,
                &on(dev, dtype, &th).unwrap(),
                &alpha,
                3,
            )
            .unwrap()
        };
        let want = run(&cpu, DType::F64);
        let got = run(&gpu, DType::F32);
        let e = rel_err(&host(&got.theta), &host(&want.theta));
        assert!(
            e <= 1e-4,
            "{}: GPU vs CPU relative error {e}",
            method.name()
        );
        if let (Some(a), Some(b)) = (&got.alpha, &want.alpha) {
            let e = rel_err(&host(a), &host(b));
            assert!(e <= 1e-4, "meta-sgd dα: GPU vs CPU relative error {e}");
        }
    }
}

/// The dispatches of one meta-gradient step do not depend on the number of tasks, and
/// repeated meta-iterations leave the GPU's live and pooled bytes unchanged.
#[test]
fn gpu_dispatches_do_not_grow_with_tasks_and_memory_is_flat() {
    // Without buffer poisoning (which adds a fill per new buffer, so counts would
    // depend on the pool's state) and on a context of its own.
    if gpu_or_skip().is_none() {
        return;
    }
    let gpu = Device::gpu().unwrap();
    let m = net(Activation::Relu);
    let th = m.init(1, &gpu, DType::F32).unwrap();
    let alpha = StepSize::PerParameter(th.full_like(0.05).unwrap());
    for method in all_methods() {
        let count = |b: usize| {
            let tasks = sin_tasks(b, 5, 20, &gpu, DType::F32);
            let a = match method {
                MetaMethod::MetaSgd => alpha.clone(),
                _ => StepSize::Scalar(0.05),
            };
            meta_gradient(&method, &m, &tasks, &th, &a, 3)
                .unwrap()
                .dispatches
                .unwrap()
        };
        // The first call also runs one-time work (autotuning); count after it.
        count(32);
        let at_32 = count(32);
        assert_eq!(count(2), at_32, "{}", method.name());
        // One task may take fewer: with one row, a per-task operand is no broadcast, and
        // fusion moves more scalar factors past the products (Meta-SGD: one fewer).
        assert!(count(1) <= at_32, "{}", method.name());
    }
    // A context of its own: tests running beside this one would change a shared pool.
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let th = m.init(1, &gpu, DType::F32).unwrap();
    let ctx = gpu.gpu_context().unwrap();
    let mut tasks = sin_tasks(4, 5, 21, &gpu, DType::F32);
    let config = MetaTrainConfig {
        method: MetaMethod::Maml,
        inner_steps: 2,
        iterations: 1,
        optimizer: OuterOptimizer::adam(1e-3),
    };
    let step = |tasks: &mut TaskBatch, iterations: usize| {
        let c = MetaTrainConfig {
            iterations,
            ..config
        };
        let r = meta_train(&m, tasks, &th, &StepSize::Scalar(0.05), &c, &mut |_| {}).unwrap();
        r.theta.to_vec::<f32>().unwrap();
    };
    step(&mut tasks, 2);
    let before = ctx.memory();
    // 1,000 meta-iterations (each a MAML meta-gradient with S = 2 and an Adam step).
    step(&mut tasks, 1000);
    let after = ctx.memory();
    assert_eq!(before.live_bytes, after.live_bytes);
    assert_eq!(before.pooled_bytes, after.pooled_bytes);
}
