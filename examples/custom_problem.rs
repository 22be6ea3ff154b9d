//! Define your own bilevel problem by implementing one trait, then compute its
//! hypergradient with several methods on the best available device.
//!
//! Inner: L_in(w, λ) = ½‖w − a‖² + ½·exp(λ)·‖w‖², so w*(λ) = a / (1 + e^λ).
//! Outer: L_out(w) = ½‖w − b‖².  `cargo run --release --example custom_problem`

use blo::bilevel::{Inner, InnerOptimizer, Method, Problem, hypergradient};
use blo::{Device, Result, Tensor};

struct Shrinkage {
    a: Tensor,
    b: Tensor,
}

impl Problem for Shrinkage {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Ok(vec![self.a.zeros_like()?])
    }
    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![1]]
    }
    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let fit = w[0].sub(&self.a)?.sqnorm()?;
        let reg = w[0].sqnorm()?.mul(&lambda[0].exp()?.reshape(&[])?)?;
        fit.add(&reg)?.scale(0.5)
    }
    fn outer_loss(&self, w: &[Tensor], _lambda: &[Tensor]) -> Result<Tensor> {
        w[0].sub(&self.b)?.sqnorm()?.scale(0.5)
    }
}

fn main() -> Result<()> {
    let choice = Device::best_available();
    println!("{}", choice.reason);
    let dev = choice.device;
    let a = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], &[3], &dev)?;
    let b = Tensor::from_vec(vec![0.5f32, -0.5, 1.0], &[3], &dev)?;
    let problem = Shrinkage { a, b };
    let lambda = vec![Tensor::from_vec(vec![0.3f32], &[1], &dev)?];

    // Closed form: dL_out/dλ = (w* − b)·dw*/dλ with dw*/dλ = −a e^λ / (1 + e^λ)².
    let e = 0.3f64.exp();
    let exact: f64 = [(1.0, 0.5), (-2.0, -0.5), (3.0, 1.0)]
        .iter()
        .map(|&(a, b)| (a / (1.0 + e) - b) * (-a * e / ((1.0 + e) * (1.0 + e))))
        .sum();
    println!("closed form: {exact:.6}");

    let inner = Inner {
        optimizer: InnerOptimizer::Gd { lr: 0.5 },
        steps: 60,
    };
    for method in [
        Method::rad(),
        Method::forward(),
        Method::cg(3),
        Method::neumann(50, 0.5),
    ] {
        let h = hypergradient(&problem, &lambda, &inner, &method)?;
        let got = h.grad[0].to_vec::<f64>()?[0];
        println!(
            "{:>8}: {got:.6}  (|error| {:.1e})",
            method.name(),
            (got - exact).abs()
        );
        assert!(
            (got - exact).abs() < 1e-4 * exact.abs().max(1.0),
            "{} disagrees with the closed form",
            method.name()
        );
    }
    Ok(())
}
