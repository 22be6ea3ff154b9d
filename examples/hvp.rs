//! Hessian-vector products and a conjugate-gradient solve for a small softmax-regression
//! loss, on the best available device, checked against the CPU backend in f64.
//!
//! `cargo run --release --example hvp`

use blo::check::rel_err;
use blo::solvers::{CgOptions, conjugate_gradient};
use blo::{DType, Device, HvpOperator, Tensor};

fn loss(x: &Tensor, labels: &Tensor, w: &Tensor, d: usize, c: usize) -> blo::Result<Tensor> {
    let logits = x.matmul(&w.reshape(&[d, c])?)?;
    // Softmax cross-entropy plus a small L2 term, so the Hessian is positive definite.
    logits
        .cross_entropy(labels, None)?
        .add(&w.sqnorm()?.scale(0.05)?)
}

fn run(
    dev: &Device,
    x: &Tensor,
    labels: &Tensor,
    w0: &Tensor,
    d: usize,
    c: usize,
) -> blo::Result<(Vec<f64>, Vec<f64>, usize)> {
    let (x, labels, w) = (
        x.to_device(dev)?,
        labels.to_device(dev)?,
        w0.to_device(dev)?.requires_grad(),
    );
    let l = loss(&x, &labels, &w, d, c)?;
    let op = HvpOperator::new(&l, &[&w])?;
    let v = w.detach().ones_like()?;
    let hv = op.hvp1(&v)?.to_vec::<f64>()?;
    let g = op.gradient().remove(0);
    let opts = CgOptions {
        max_iters: 30,
        tol: Some(1e-5),
        check_every: 5,
        damping: 0.0,
    };
    let sol = conjugate_gradient(|p| op.hvp1(p), &g, &opts)?;
    Ok((hv, sol.x.to_vec::<f64>()?, sol.iterations))
}

fn main() -> blo::Result<()> {
    let choice = Device::best_available();
    println!("device: {}", choice.reason);
    let (n, d, c) = (200, 16, 5);
    let cpu = Device::cpu();
    let x = Tensor::rand_normal(&[n, d], 0.0, 1.0, 1, &cpu)?;
    let labels = Tensor::from_vec(
        (0..n).map(|i| (i % c) as f32).collect::<Vec<_>>(),
        &[n],
        &cpu,
    )?;
    let w0 = Tensor::rand_normal(&[d * c], 0.0, 0.1, 2, &cpu)?;

    let (hv, sol, iters) = run(&choice.device, &x, &labels, &w0, d, c)?;
    let f64s = |t: &Tensor| t.to_dtype(DType::F64);
    let (hv_ref, sol_ref, _) = run(&cpu, &f64s(&x)?, &f64s(&labels)?, &f64s(&w0)?, d, c)?;
    println!(
        "H·1: relative error vs CPU f64 = {:.2e}",
        rel_err(&hv, &hv_ref)
    );
    println!(
        "CG solve of H v = g: {iters} iterations, relative error vs CPU f64 = {:.2e}",
        rel_err(&sol, &sol_ref)
    );
    Ok(())
}
