//! Hypergradient benchmarks: ridge (n = 2,000, m = 1,000, d = 200) with rad(T = 100),
//! forward(T = 100), cg(K = 20) at w_100 and 100 GD steps then cg(K = 20); data
//! hyper-cleaning (n = 500, d = 64, c = 10) with rad(T = 100) and cg(K = 20); on the CPU
//! and GPU devices. `cargo bench --bench hypergrad`. Also prints dispatches per inner
//! step and per CG iteration on the GPU.

use std::time::{Duration, Instant};

use blo::bilevel::{Inner, InnerOptimizer, Method, Problem, hypergradient_from};
use blo::problems::{HyperCleaning, Ridge};
use blo::{DType, Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};

fn gd(steps: usize, lr: f64) -> Inner {
    Inner {
        optimizer: InnerOptimizer::Gd { lr },
        steps,
    }
}

fn run(p: &dyn Problem, lambda: &[Tensor], w0: &[Tensor], inner: &Inner, m: &Method) {
    hypergradient_from(p, lambda, w0, inner, m).expect("hypergradient");
}

/// A benchmark problem: name, problem, initial λ and the inner step size.
type Case = (&'static str, Box<dyn Problem>, Vec<Tensor>, f64);

fn cases(dev: &Device) -> Vec<Case> {
    let dtype = DType::F32;
    let ridge = Ridge::synthetic(2000, 1000, 200, 1, dev, dtype).unwrap();
    let hc = HyperCleaning::digits(0, dev, dtype).unwrap();
    let lr = |v: Vec<f32>| Tensor::from_vec(v, &[200], dev).unwrap();
    vec![
        (
            "ridge",
            Box::new(ridge) as Box<dyn Problem>,
            vec![lr(vec![0.0; 200])],
            0.3,
        ),
        (
            "hyper_cleaning",
            Box::new(hc),
            vec![Tensor::zeros(&[500], dev).unwrap()],
            1.0,
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let mut devices = vec![("cpu", Device::Cpu)];
    match Device::gpu() {
        Ok(g) => devices.push(("gpu", g)),
        Err(e) => eprintln!("notice: GPU benchmarks skipped: {e}"),
    }
    let mut group = c.benchmark_group("hypergrad");
    for (label, dev) in &devices {
        for (name, p, lambda, lr) in cases(dev) {
            let w0 = p.init_w().unwrap();
            let w100 = hypergradient_from(
                p.as_ref(),
                &lambda,
                &w0,
                &gd(100, lr),
                &Method::Cg {
                    iters: 1,
                    tol: None,
                    damping: 0.0,
                },
            )
            .unwrap()
            .w;
            let cg20 = Method::Cg {
                iters: 20,
                tol: None,
                damping: 0.0,
            };
            let mut methods: Vec<(&str, Inner, Method, &Vec<Tensor>)> = vec![
                ("rad_T100", gd(100, lr), Method::Rad, &w0),
                ("cg_K20_at_w100", gd(0, lr), cg20, &w100),
                ("gd100_then_cg_K20", gd(100, lr), cg20, &w0),
            ];
            if name == "ridge" && dev.is_cpu() {
                methods.push(("forward_T100", gd(100, lr), Method::Forward, &w0));
            }
            for (mname, inner, m, start) in &methods {
                group.bench_function(format!("{label}/{name}/{mname}"), |b| {
                    b.iter(|| run(p.as_ref(), &lambda, start, inner, m))
                });
            }
            if name == "ridge" && !dev.is_cpu() {
                // 200 λ-tangents × 100 steps = 20,000 backward passes: one timed run.
                let t = Instant::now();
                run(p.as_ref(), &lambda, &w0, &gd(100, lr), &Method::Forward);
                println!(
                    "{label}/{name}/forward_T100: one run {:.1} ms",
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            if let Some(ctx) = dev.gpu_context() {
                let count = |inner: Inner, m: Method, start: &[Tensor]| {
                    let before = ctx.dispatch_count();
                    run(p.as_ref(), &lambda, start, &inner, &m);
                    ctx.dispatch_count() - before
                };
                let cg = |k| Method::Cg {
                    iters: k,
                    tol: None,
                    damping: 0.0,
                };
                let per_step =
                    (count(gd(100, lr), cg(1), &w0) - count(gd(0, lr), cg(1), &w0)) as f64 / 100.0;
                let per_cg = (count(gd(0, lr), cg(21), &w100) - count(gd(0, lr), cg(1), &w100))
                    as f64
                    / 20.0;
                let rad_step = (count(gd(100, lr), Method::Rad, &w0)
                    - count(gd(0, lr), Method::Rad, &w0)) as f64
                    / 100.0;
                println!(
                    "{name} on {label}: dispatches per inner GD step {per_step:.1}, per CG iteration {per_cg:.1}, \
                     per rad step (forward + reverse) {rad_step:.1}"
                );
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
