//! Autodiff benchmarks: gradient, Hessian-vector product and one CG iteration for a
//! 784-256-10 MLP softmax loss on 1,000 samples and for least squares with d = 1,000,
//! n = 10,000, on the CPU and GPU devices. `cargo bench --bench autodiff`.
//!
//! Besides criterion's times, each case prints the dispatches one HVP / one CG
//! iteration records on the GPU.

use std::time::{Duration, Instant};

use blo::solvers::{CgOptions, conjugate_gradient};
use blo::{Device, HvpOperator, Result, Tensor, grad};
use criterion::{Criterion, criterion_group, criterion_main};

/// A scalar loss of flat parameters.
type Loss = Box<dyn Fn(&Tensor) -> Result<Tensor>>;

/// A loss of flat parameters w, with its parameter count.
struct Case {
    name: &'static str,
    params: usize,
    loss: Loss,
}

fn mlp_case(dev: &Device) -> Case {
    let (n, d, h, c) = (1000, 784, 256, 10);
    let x = Tensor::rand_normal(&[n, d], 0.0, 1.0, 1, dev).unwrap();
    let labels = Tensor::from_vec(
        (0..n).map(|i| (i % c) as f32).collect::<Vec<_>>(),
        &[n],
        dev,
    )
    .unwrap();
    Case {
        name: "mlp_784_256_10",
        params: d * h + h + h * c + c,
        loss: Box::new(move |w: &Tensor| {
            let p = w.split(&[d * h, h, h * c, c])?;
            let a = x.matmul(&p[0].reshape(&[d, h])?)?.add(&p[1])?.tanh()?;
            a.matmul(&p[2].reshape(&[h, c])?)?
                .add(&p[3])?
                .cross_entropy(&labels, None)
        }),
    }
}

fn lsq_case(dev: &Device) -> Case {
    let (n, d) = (10_000, 1000);
    let x = Tensor::rand_normal(&[n, d], 0.0, 1.0, 2, dev).unwrap();
    let y = Tensor::rand_normal(&[n], 0.0, 1.0, 3, dev).unwrap();
    Case {
        name: "least_squares_d1000_n10000",
        params: d,
        loss: Box::new(move |w: &Tensor| {
            x.matmul(&w.reshape(&[d, 1])?)?
                .reshape(&[n])?
                .sub(&y)?
                .sqnorm()?
                .scale(0.5 / n as f64)
        }),
    }
}

fn timed(dev: &Device, iters: u64, mut f: impl FnMut() -> Result<()>) -> Duration {
    dev.sync().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        f().unwrap();
    }
    dev.sync().unwrap();
    t.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut devices = vec![("cpu", Device::Cpu)];
    match Device::gpu() {
        Ok(g) => devices.push(("gpu", g)),
        Err(e) => eprintln!("notice: GPU benchmarks skipped: {e}"),
    }
    let mut group = c.benchmark_group("autodiff");
    for (label, dev) in &devices {
        for case in [mlp_case(dev), lsq_case(dev)] {
            let w = Tensor::rand_normal(&[case.params], 0.0, 0.05, 4, dev)
                .unwrap()
                .requires_grad();
            let v = Tensor::rand_normal(&[case.params], 0.0, 1.0, 5, dev).unwrap();
            let loss = &case.loss;
            group.bench_function(format!("{label}/{}/grad", case.name), |b| {
                b.iter_custom(|iters| {
                    timed(dev, iters, || grad(&loss(&w)?, &[&w], false).map(drop))
                })
            });
            group.bench_function(format!("{label}/{}/hvp", case.name), |b| {
                b.iter_custom(|iters| {
                    timed(dev, iters, || {
                        let op = HvpOperator::new(&loss(&w)?, &[&w])?;
                        op.hvp1(&v).map(drop)
                    })
                })
            });
            // One CG iteration: HVP on a fixed graph plus the fused vector updates.
            let op = HvpOperator::new(&loss(&w).unwrap(), &[&w]).unwrap();
            let g = op.gradient().remove(0);
            let opts = CgOptions {
                max_iters: 1,
                ..CgOptions::default()
            };
            group.bench_function(format!("{label}/{}/cg_iteration", case.name), |b| {
                b.iter_custom(|iters| {
                    timed(dev, iters, || {
                        conjugate_gradient(|p| op.hvp1(p), &g, &opts).map(drop)
                    })
                })
            });
            if let Some(ctx) = dev.gpu_context() {
                let count = |f: &mut dyn FnMut()| {
                    let before = ctx.dispatch_count();
                    f();
                    ctx.dispatch_count() - before
                };
                let grad_d = count(&mut || drop(grad(&loss(&w).unwrap(), &[&w], false).unwrap()));
                let fwd_d = count(&mut || drop(loss(&w).unwrap()));
                let hvp_d = count(&mut || drop(op.hvp1(&v).unwrap()));
                let cg1 =
                    count(&mut || drop(conjugate_gradient(|p| op.hvp1(p), &g, &opts).unwrap()));
                let cg5 = count(&mut || {
                    let o = CgOptions {
                        max_iters: 5,
                        ..CgOptions::default()
                    };
                    drop(conjugate_gradient(|p| op.hvp1(p), &g, &o).unwrap())
                });
                println!(
                    "{}: dispatches: forward {fwd_d}, forward+gradient {grad_d}, HVP on a built gradient graph {hvp_d}, \
                     CG iteration {} (HVP + {})",
                    case.name,
                    (cg5 - cg1) / 4,
                    (cg5 - cg1) / 4 - hvp_d
                );
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
