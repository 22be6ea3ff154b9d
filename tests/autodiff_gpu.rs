//! Gradients, Hessian-vector products and mixed products on the GPU (f32) against the
//! CPU in f64 on the same inputs; no readbacks inside them; no memory growth.

use blo::solvers::{CgOptions, conjugate_gradient, neumann};
use blo::testing::{gpu_or_skip, oracle_pair, rel_err};
use blo::{Device, HvpOperator, Result, Tensor, grad, mixed, mixed_t};

/// The same seeded values as an f32 tensor on `dev` or an f64 tensor on the CPU.
fn input(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    let (v32, v64) = oracle_pair(shape, seed);
    if dev.is_cpu() {
        Tensor::from_vec(v64, shape, dev).unwrap()
    } else {
        Tensor::from_vec(v32, shape, dev).unwrap()
    }
}

fn labels(n: usize, c: usize, dev: &Device) -> Tensor {
    let v: Vec<f64> = (0..n).map(|i| ((i * 7 + 3) % c) as f64).collect();
    if dev.is_cpu() {
        Tensor::from_vec(v, &[n], dev).unwrap()
    } else {
        Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), &[n], dev).unwrap()
    }
}

/// A loss L(w, λ) on `dev`, its w and λ (untracked), described by name.
type Setup = (
    Box<dyn Fn(&Tensor, &Tensor) -> Result<Tensor>>,
    Tensor,
    Tensor,
);

fn setups(dev: &Device) -> Vec<(&'static str, Setup)> {
    let mut out: Vec<(&'static str, Setup)> = Vec::new();
    // Least squares with per-feature L2 weights exp(λ).
    {
        let (n, d) = (37, 7);
        let (x, y) = (input(&[n, d], 1, dev), input(&[n], 2, dev));
        let f = move |w: &Tensor, l: &Tensor| -> Result<Tensor> {
            let r = x.matmul(&w.reshape(&[d, 1])?)?.reshape(&[n])?.sub(&y)?;
            r.sqnorm()?
                .scale(0.5 / n as f64)?
                .add(&l.exp()?.mul(&w.square()?)?.sum()?.scale(0.5)?)
        };
        out.push((
            "least squares",
            (Box::new(f), input(&[d], 3, dev), input(&[d], 4, dev)),
        ));
    }
    // Softmax regression with per-example weights sigmoid(λ_i).
    {
        let (n, d, c) = (31, 5, 4);
        let (x, y) = (input(&[n, d], 5, dev), labels(n, c, dev));
        let f = move |w: &Tensor, l: &Tensor| -> Result<Tensor> {
            x.matmul(&w.reshape(&[d, c])?)?
                .cross_entropy(&y, Some(&l.sigmoid()?))
        };
        out.push((
            "weighted softmax regression",
            (Box::new(f), input(&[d * c], 6, dev), input(&[n], 7, dev)),
        ));
    }
    // Two-layer MLPs (tanh and ReLU) with per-example weights exp(λ).
    for relu in [false, true] {
        let (n, d, h, c) = (19, 6, 9, 3);
        let (x, y) = (input(&[n, d], 8, dev), labels(n, c, dev));
        let f = move |w: &Tensor, l: &Tensor| -> Result<Tensor> {
            let p = w.split(&[d * h, h, h * c, c])?;
            let z = x.matmul(&p[0].reshape(&[d, h])?)?.add(&p[1])?;
            let a = if relu { z.relu()? } else { z.tanh()? };
            a.matmul(&p[2].reshape(&[h, c])?)?
                .add(&p[3])?
                .cross_entropy(&y, Some(&l.exp()?))
        };
        let name = if relu { "mlp relu" } else { "mlp tanh" };
        out.push((
            name,
            (
                Box::new(f),
                input(&[d * h + h + h * c + c], 9, dev),
                input(&[n], 10, dev),
            ),
        ));
    }
    out
}

fn v64(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

#[test]
fn gradients_hvps_and_mixed_products_match_the_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    for ((name, (fg, wg, lg)), (_, (fc, wc, lc))) in
        setups(&gpu).into_iter().zip(setups(&Device::Cpu))
    {
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
                   w: &Tensor,
                   l: &Tensor,
                   dev: &Device| {
            let (w, l) = (w.requires_grad(), l.requires_grad());
            let loss = f(&w, &l).unwrap();
            let g = grad(&loss, &[&w, &l], false).unwrap();
            let v = input(w.shape(), 20, dev);
            let u = input(l.shape(), 21, dev);
            let op = HvpOperator::new(&loss, &[&w]).unwrap();
            let hv = op.hvp1(&v).unwrap();
            let jv = mixed(&loss, &[&w], &[&l], &[&v]).unwrap().remove(0);
            let jtu = mixed_t(&loss, &[&w], &[&l], &[&u]).unwrap().remove(0);
            [v64(&g[0]), v64(&g[1]), v64(&hv), v64(&jv), v64(&jtu)]
        };
        let got = run(fg.as_ref(), &wg, &lg, &gpu);
        let want = run(fc.as_ref(), &wc, &lc, &Device::Cpu);
        for (what, (a, b)) in ["∇_w", "∇_λ", "H v", "J v", "Jᵀ u"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            let e = rel_err(a, b);
            assert!(
                e <= 1e-4,
                "{name}: {what}: GPU vs CPU f64 relative error {e:e}"
            );
        }
    }
}

#[test]
fn hvp_mixed_and_cg_read_nothing_back() {
    if gpu_or_skip().is_none() {
        return;
    }
    // A context of its own: the shared one counts other tests' readbacks too.
    let gpu = Device::gpu().unwrap();
    let ctx = gpu.gpu_context().unwrap().clone();
    for (name, (f, w, l)) in setups(&gpu) {
        let (w, l) = (w.requires_grad(), l.requires_grad());
        let v = input(w.shape(), 30, &gpu);
        let before = ctx.readback_count();
        let loss = f(&w, &l).unwrap();
        let op = HvpOperator::new(&loss, &[&w]).unwrap();
        let hv = op.hvp1(&v).unwrap();
        let jv = op.mixed(&[&l], &[&v]).unwrap();
        let _ = mixed_t(&loss, &[&w], &[&l], &[&input(l.shape(), 31, &gpu)]).unwrap();
        assert_eq!(
            ctx.readback_count(),
            before,
            "{name}: HVP and mixed products must not read back"
        );
        // CG with a fixed K reads back once, at the end (the final residual).
        let g = op.gradient().remove(0);
        let opts = CgOptions {
            max_iters: 7,
            damping: 0.1,
            ..CgOptions::default()
        };
        let before = ctx.readback_count();
        let _ = conjugate_gradient(|p| op.hvp1(p), &g, &opts).unwrap();
        assert_eq!(
            ctx.readback_count(),
            before + 1,
            "{name}: CG reads only its final residual"
        );
        let before = ctx.readback_count();
        let _ = neumann(|p| op.hvp1(p), &g, 5, 0.1).unwrap();
        assert_eq!(
            ctx.readback_count(),
            before + 1,
            "{name}: Neumann reads only its final term norm"
        );
        drop((hv, jv));
    }
}

#[test]
fn a_thousand_hvps_do_not_grow_device_memory() {
    const WARMUP: usize = 3;
    if gpu_or_skip().is_none() {
        return;
    }
    // A context of its own, so other tests' tensors do not move the live-byte count.
    let gpu = Device::gpu().unwrap();
    let ctx = gpu.gpu_context().unwrap().clone();
    let (name, (f, w, l)) = setups(&gpu).remove(3);
    let w = w.requires_grad();
    let loss = f(&w, &l).unwrap();
    let op = HvpOperator::new(&loss, &[&w]).unwrap();
    let v = input(w.shape(), 40, &gpu);
    // Warm up with the loop's own body so every size class it needs is in the pool.
    // Twice, each ending in a sync as the measured loop does: with fusion, what is still
    // deferred at a sync (and so what the next step holds) differs from the first round.
    let mut hv = op.hvp1(&v).unwrap();
    for _ in 0..2 {
        for _ in 0..WARMUP {
            hv = op.hvp1(&hv.scale(1e-3).unwrap()).unwrap();
        }
        gpu.sync().unwrap();
    }
    let live = ctx.memory().live_bytes;
    let pooled = ctx.memory().pooled_bytes;
    for _ in 0..1000 {
        hv = op.hvp1(&hv.scale(1e-3).unwrap()).unwrap();
    }
    gpu.sync().unwrap();
    let after = ctx.memory();
    assert_eq!(
        after.live_bytes, live,
        "{name}: live bytes grew over 1,000 HVPs"
    );
    assert_eq!(
        after.pooled_bytes, pooled,
        "{name}: the pool grew over 1,000 HVPs"
    );
    assert!(hv.to_vec::<f32>().unwrap().iter().all(|x| x.is_finite()));
}
