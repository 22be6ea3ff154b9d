//! What L2F, MT-Net, T-Net and WarpGrad share with the MAML family: a batch equals
//! separate runs, adaptation reproduces the meta-loss, meta-training moves their own
//! meta-parameters, bad input is a clear error, and the GPU agrees with the CPU in f64
//! with dispatch counts that do not grow with the number of tasks.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::tests::{f64v, host, net, sin_tasks, theta0};
use super::*;
use crate::bilevel::OuterOptimizer;
use crate::device::Device;
use crate::tensor::DType;
use crate::testing::{assert_close, fresh_gpu_or_skip, gpu_or_skip, rel_err};

pub(super) fn new_methods() -> Vec<MetaMethod> {
    vec![
        MetaMethod::L2f { hidden: None },
        MetaMethod::MtNet {
            temperature: 0.7,
            masked: true,
        },
        MetaMethod::MtNet {
            temperature: 1.0,
            masked: false,
        },
        MetaMethod::WarpGrad { layers: None },
    ]
}

/// The method's extra meta-parameters moved off their initial values (seeded), so that
/// no test runs at a special point (T = I, ω = I, ζ = 0).
fn extra(method: &MetaMethod, m: &Mlp, dev: &Device, dtype: DType) -> Vec<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    method
        .init_extra(m, 1, &Device::cpu(), DType::F64)
        .unwrap()
        .iter()
        .map(|t| {
            let v: Vec<f64> = host(t)
                .into_iter()
                .map(|v| v + 0.2 * rng.random_range(-1.0..1.0))
                .collect();
            mlp::host_tensor(&v, &[v.len()], dev, dtype).unwrap()
        })
        .collect()
}

pub(super) fn params(method: &MetaMethod, m: &Mlp, dev: &Device, dtype: DType) -> MetaParams {
    let th = theta0(m, 7);
    MetaParams {
        theta: mlp::host_tensor(&th, &[th.len()], dev, dtype).unwrap(),
        alpha: StepSize::Scalar(0.05),
        extra: extra(method, m, dev, dtype),
    }
}

/// B tasks in one batch equal B separate runs: θ's and every extra gradient is the mean
/// of the single-task ones (MT-Net with each task's own noise row passed explicitly).
#[test]
fn new_methods_batch_equals_separate_runs() {
    let dev = Device::cpu();
    let m = net(Activation::Relu);
    let b = 4;
    let tasks = sin_tasks(b, 5, 61, &dev, DType::F64);
    for method in new_methods() {
        let p = params(&method, &m, &dev, DType::F64);
        let noise = logistic_noise(&m, b, 3, &dev, DType::F64).unwrap();
        let run = |tb: &TaskBatch, rows: &[Tensor]| match method {
            MetaMethod::MtNet {
                temperature,
                masked: true,
            } => {
                let mask = MtMask {
                    logits: &p.extra[1],
                    noise: rows,
                    temperature,
                };
                mt_net(&m, tb, &p.theta, &p.extra[0], Some(&mask), 0.05, 2).unwrap()
            }
            _ => meta_gradient_with(&method, &m, tb, &p, 2, 0).unwrap(),
        };
        let all = run(&tasks, &noise);
        let mut want = vec![0.0; m.dim()];
        let mut want_x: Vec<Vec<f64>> = all
            .extra
            .iter()
            .map(|(_, t)| vec![0.0; t.numel()])
            .collect();
        let mut loss = 0.0;
        for i in 0..b {
            let one = tasks.select(i, 1).unwrap();
            let rows: Vec<Tensor> = noise
                .iter()
                .map(|g| {
                    let f = g.shape()[1];
                    g.slice(i * f, f).unwrap().reshape(&[1, f]).unwrap()
                })
                .collect();
            let g = run(&one, &rows);
            for (w, v) in want.iter_mut().zip(host(&g.theta)) {
                *w += v / b as f64;
            }
            for (acc, (_, t)) in want_x.iter_mut().zip(&g.extra) {
                for (w, v) in acc.iter_mut().zip(host(t)) {
                    *w += v / b as f64;
                }
            }
            loss += g.meta_loss / b as f64;
        }
        assert_close(&host(&all.theta), &want, 1e-9, 1e-12, method.name());
        for ((name, t), w) in all.extra.iter().zip(&want_x) {
            assert_close(&host(t), w, 1e-9, 1e-12, name);
        }
        assert!((all.meta_loss - loss).abs() < 1e-12, "{}", method.name());
    }
}

/// Post-adaptation evaluation scores the same adapted parameters as the meta-gradient
/// (the same mask noise for MT-Net): its mean query loss is the meta-loss.
#[test]
fn new_methods_adapt_reproduces_the_meta_loss() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(3, 5, 62, &dev, DType::F64);
    for method in new_methods() {
        let p = params(&method, &m, &dev, DType::F64);
        for steps in [1, 4] {
            let g = meta_gradient_with(&method, &m, &tasks, &p, steps, 5).unwrap();
            let r = adapt_with(&method, &m, &tasks, &p, steps, 5).unwrap();
            let mean = r.query_losses.iter().sum::<f64>() / 3.0;
            assert!(
                (mean - g.meta_loss).abs() < 1e-12,
                "{}: {mean} vs {}",
                method.name(),
                g.meta_loss
            );
        }
    }
}

/// Meta-training moves θ and the method's own meta-parameters and lowers the meta-loss
/// on a fixed batch.
#[test]
fn meta_training_updates_the_extra_meta_parameters() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let mut tasks = sin_tasks(4, 5, 63, &dev, DType::F64);
    for method in new_methods() {
        let th = f64v(&theta0(&m, 8), &dev);
        let config = MetaTrainConfig {
            method,
            inner_steps: 2,
            iterations: 30,
            optimizer: OuterOptimizer::adam(3e-3),
        };
        let r = meta_train(
            &m,
            &mut tasks,
            &th,
            &StepSize::Scalar(0.05),
            &config,
            &mut |_| {},
        )
        .unwrap();
        let init = method.init_extra(&m, 0, &dev, DType::F64).unwrap();
        assert_eq!(r.extra.len(), init.len(), "{}", method.name());
        for (a, b) in r.extra.iter().zip(&init) {
            assert_ne!(
                host(a),
                host(b),
                "{}: an extra meta-parameter did not move",
                method.name()
            );
        }
        let (first, last) = (r.steps[0].meta_loss, r.steps.last().unwrap().meta_loss);
        assert!(last < first, "{}: {first} → {last}", method.name());
    }
}

/// Wrong extra meta-parameters are typed errors that say what to give.
#[test]
fn new_methods_bad_inputs_are_clear_errors() {
    let dev = Device::cpu();
    let m = net(Activation::Tanh);
    let tasks = sin_tasks(2, 3, 64, &dev, DType::F64);
    let th = f64v(&theta0(&m, 1), &dev);
    let a = StepSize::Scalar(0.1);
    let with = |method: MetaMethod, extra: Vec<Tensor>| {
        let p = MetaParams {
            theta: th.clone(),
            alpha: a.clone(),
            extra,
        };
        meta_gradient_with(&method, &m, &tasks, &p, 1, 0)
            .unwrap_err()
            .to_string()
    };
    // None given at all.
    let e = maml_family_entry(&m, &tasks, &th, MetaMethod::L2f { hidden: None });
    assert!(e.contains("init_extra"), "{e}");
    // A γ-network whose size does not match the model.
    let small = l2f_init(&net(Activation::Tanh), Some(3), 0, &dev, DType::F64).unwrap();
    let e = with(MetaMethod::L2f { hidden: None }, vec![small]);
    assert!(e.contains("γ-network") && e.contains("84"), "{e}");
    let e = with(MetaMethod::L2f { hidden: Some(0) }, vec![th.clone()]);
    assert!(e.contains("hidden width"), "{e}");
    // A mask without logits.
    let (t, _) = mt_net_init(&m, &dev, DType::F64).unwrap();
    let mt = MetaMethod::MtNet {
        temperature: 1.0,
        masked: true,
    };
    let e = with(mt, vec![t.clone()]);
    assert!(e.contains("logits ζ") && e.contains("T-Net"), "{e}");
    let e = with(mt, vec![t.clone(), f64v(&[0.0; 3], &dev)]);
    assert!(e.contains("mask logits ζ must be flat [17]"), "{e}");
    let bad_tau = MetaMethod::MtNet {
        temperature: 0.0,
        masked: true,
    };
    let (_, z) = mt_net_init(&m, &dev, DType::F64).unwrap();
    let e = with(bad_tau, vec![t.clone(), z]);
    assert!(e.contains("temperature"), "{e}");
    let e = with(
        MetaMethod::MtNet {
            temperature: 1.0,
            masked: false,
        },
        vec![f64v(&[1.0; 4], &dev)],
    );
    assert!(e.contains("T must be flat [129]"), "{e}");
    // A wrong number of warp layers.
    let one = WarpLayers::after(&[2]).unwrap();
    let om1 = warp_init(&m, Some(one), &dev, DType::F64).unwrap();
    let e = with(MetaMethod::WarpGrad { layers: None }, vec![om1]);
    assert!(e.contains("2 warp layer(s)"), "{e}");
    let three = WarpLayers::after(&[1, 2, 3]).unwrap();
    let e = warp_init(&m, Some(three), &dev, DType::F64)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("after hidden layer 3") && e.contains("2 hidden layer"),
        "{e}"
    );
    assert!(WarpLayers::after(&[]).is_err());
    assert!(WarpLayers::after(&[1, 1]).is_err());
    assert!(WarpLayers::after(&[0]).is_err());
    let om = warp_init(&m, None, &dev, DType::F64).unwrap();
    let p = MetaParams {
        theta: th.clone(),
        alpha: a.clone(),
        extra: vec![om],
    };
    let e = meta_gradient_with(&MetaMethod::WarpGrad { layers: None }, &m, &tasks, &p, 0, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("S ≥ 1"), "{e}");
}

/// The MAML-family entry point ([`meta_gradient`]) with a method that needs extras.
fn maml_family_entry(m: &Mlp, tasks: &TaskBatch, th: &Tensor, method: MetaMethod) -> String {
    meta_gradient(&method, m, tasks, th, &StepSize::Scalar(0.1), 1)
        .unwrap_err()
        .to_string()
}

/// Every new method on the GPU (f32) against the CPU in f64, θ's and the extra
/// gradients.
#[test]
fn new_methods_gpu_match_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let cpu = Device::cpu();
    let m = net(Activation::Tanh);
    for method in new_methods() {
        let run = |dev: &Device, dtype: DType| {
            let tasks = sin_tasks(3, 5, 65, dev, dtype);
            let p = params(&method, &m, dev, dtype);
            meta_gradient_with(&method, &m, &tasks, &p, 3, 4).unwrap()
        };
        let want = run(&cpu, DType::F64);
        let got = run(&gpu, DType::F32);
        let e = rel_err(&host(&got.theta), &host(&want.theta));
        assert!(
            e <= 1e-4,
            "{}: GPU vs CPU relative error {e}",
            method.name()
        );
        for ((name, a), (_, b)) in got.extra.iter().zip(&want.extra) {
            let e = rel_err(&host(a), &host(b));
            assert!(
                e <= 1e-4,
                "{} d{name}: GPU vs CPU relative error {e}",
                method.name()
            );
        }
    }
}

/// The dispatches of one meta-gradient step do not depend on the number of tasks.
#[test]
fn new_methods_dispatches_do_not_grow_with_tasks() {
    // Without buffer poisoning (which adds a fill per new buffer): a context of its own.
    if gpu_or_skip().is_none() {
        return;
    }
    let gpu = Device::gpu().unwrap();
    let m = net(Activation::Relu);
    for method in new_methods() {
        let count = |b: usize| {
            let tasks = sin_tasks(b, 5, 66, &gpu, DType::F32);
            let p = params(&method, &m, &gpu, DType::F32);
            meta_gradient_with(&method, &m, &tasks, &p, 3, 0)
                .unwrap()
                .dispatches
                .unwrap()
        };
        // The first call also runs one-time work (autotuning); count after it.
        count(32);
        // The GPU registry's tests switch matvec's kernel shape process-wide for a while
        // (test builds only), which changes every count made meanwhile. A measurement
        // is kept only when the counts at B = 32 before and after it agree; a count that
        // truly depends on B fails every attempt.
        let mut last = None;
        for _ in 0..5 {
            let (before, at_2, at_1, after) = (count(32), count(2), count(1), count(32));
            if before == after {
                last = Some((before, at_2, at_1));
                if at_2 == before && at_1 <= before {
                    break;
                }
            }
        }
        let (at_32, at_2, at_1) = last.expect("the B = 32 counts never agreed twice in a row");
        assert_eq!(at_2, at_32, "{}", method.name());
        assert!(at_1 <= at_32, "{}", method.name());
    }
}

/// Repeated meta-iterations of each new method leave the GPU's live and pooled bytes
/// unchanged (nothing from one meta-gradient outlives it).
#[test]
fn new_methods_gpu_memory_is_flat() {
    // A context of its own: tests running beside this one would change a shared pool.
    let Some(gpu) = fresh_gpu_or_skip() else {
        return;
    };
    let ctx = gpu.gpu_context().unwrap();
    let m = net(Activation::Relu);
    let th = m.init(1, &gpu, DType::F32).unwrap();
    let mut tasks = sin_tasks(4, 5, 67, &gpu, DType::F32);
    for method in new_methods() {
        let step = |tasks: &mut TaskBatch, iterations: usize| {
            let c = MetaTrainConfig {
                method,
                inner_steps: 2,
                iterations,
                optimizer: OuterOptimizer::adam(1e-3),
            };
            let r = meta_train(&m, tasks, &th, &StepSize::Scalar(0.05), &c, &mut |_| {}).unwrap();
            r.theta.to_vec::<f32>().unwrap();
        };
        step(&mut tasks, 2);
        // A window in which the registry's tests switch matvec's kernel shape
        // process-wide (test builds only) can pool a buffer of another size once; a leak
        // grows on every attempt, so one attempt of three must leave both counts as they
        // were.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let before = ctx.memory();
            step(&mut tasks, 40);
            let after = ctx.memory();
            let pair = |m: &crate::MemoryStats| (m.live_bytes, m.pooled_bytes);
            seen.push((pair(&before), pair(&after)));
            if pair(&before) == pair(&after) {
                break;
            }
        }
        let (before, after) = *seen.last().unwrap();
        assert_eq!(
            before,
            after,
            "{}: (live, pooled) bytes {seen:?}",
            method.name()
        );
    }
}
