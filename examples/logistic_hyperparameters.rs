//! A complete custom problem, as a program embedding blo writes one: L2-regularised
//! binary logistic regression with one log-strength per feature,
//!
//!   L_in(w, λ)  = bce_with_logits(X_train w, y_train) + ½ Σ_j e^{λ_j} w_j²,
//!   L_out(w, λ) = bce_with_logits(X_val w, y_val),
//!
//! with w₀ = 0 (where a hand-written softplus built from relu and abs would have
//! derivative 0, and every hypergradient would silently be 0).
//!
//! It builds the problem from host data in f64 on the CPU and checks four hypergradient
//! methods against finite differences of the bilevel objective; builds the same problem
//! in f32 on the best available device (a GPU when there is one) and checks it against
//! f64; then lowers the validation loss with a few outer steps. Small sizes, so it runs
//! in seconds even in a debug build:
//!
//! `cargo run --release --example logistic_hyperparameters`
//! (`WGPU_ADAPTER_NAME=llvmpipe` to run the f32 part on Mesa's software GPU).

use blo::bilevel::{
    Inner, InnerOptimizer, Method, OuterConfig, OuterOptimizer, Problem, WarmStart, hypergradient,
    optimize, outer_value,
};
use blo::check::{fd_hypergradient, rel_err};
use blo::{DType, Device, Result, Tensor};

/// The problem's data, on one device in one dtype: everything `Problem` touches must
/// live where `init_w` puts w, in the same dtype (blo checks λ and w₀ against it).
struct LogisticPerFeature {
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    d: usize,
}

/// Host data: features and 0/1 labels of a noisy linear rule, from a small seeded
/// generator (so the example needs nothing but blo).
struct Data {
    x: Vec<f64>,
    y: Vec<f64>,
    n: usize,
}

fn data(n: usize, d: usize, seed: u64) -> Data {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        // xorshift64*, mapped to (0, 1).
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    // Only the first half of the features matter; the others are noise, which the
    // per-feature strengths should learn to shrink.
    let truth: Vec<f64> = (0..d).map(|j| if j < d / 2 { 1.5 } else { 0.0 }).collect();
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<f64> = (0..d).map(|_| 2.0 * uniform() - 1.0).collect();
        let score: f64 = row.iter().zip(&truth).map(|(a, b)| a * b).sum();
        let noise = 0.5 * (uniform() - 0.5);
        y.push(if score + noise > 0.0 { 1.0 } else { 0.0 });
        x.extend(row);
    }
    Data { x, y, n }
}

impl LogisticPerFeature {
    fn new(train: &Data, val: &Data, d: usize, device: &Device, dtype: DType) -> Result<Self> {
        Ok(LogisticPerFeature {
            x_train: Tensor::from_f64(&train.x, &[train.n, d], device, dtype)?,
            y_train: Tensor::from_f64(&train.y, &[train.n], device, dtype)?,
            x_val: Tensor::from_f64(&val.x, &[val.n, d], device, dtype)?,
            y_val: Tensor::from_f64(&val.y, &[val.n], device, dtype)?,
            d,
        })
    }
}

impl Problem for LogisticPerFeature {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        // On the data's device, in its dtype: this is what blo checks λ and w₀ against.
        let (device, dtype) = (self.x_train.device(), self.x_train.dtype());
        Ok(vec![Tensor::zeros_dtype(&[self.d], &device, dtype)?])
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.d]]
    }

    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let logits = self.x_train.matvec(&w[0], false)?;
        let fit = logits.bce_with_logits(&self.y_train, None)?;
        // ½ Σ_j e^{λ_j} w_j², a 0-d tensor like the loss.
        let penalty = lambda[0].exp()?.dot(&w[0].square()?)?.scale(0.5)?;
        fit.add(&penalty)
    }

    fn outer_loss(&self, w: &[Tensor], _lambda: &[Tensor]) -> Result<Tensor> {
        let logits = self.x_val.matvec(&w[0], false)?;
        logits.bce_with_logits(&self.y_val, None)
    }
}

fn values(ts: &[Tensor]) -> Result<Vec<f64>> {
    Ok(ts
        .iter()
        .map(|t| t.to_vec::<f64>())
        .collect::<Result<Vec<_>>>()?
        .concat())
}

fn main() -> Result<()> {
    let d = 8;
    let (train, val) = (data(200, d, 1), data(200, d, 2));
    // λ = ln 0.05 for every feature; the inner Hessian's largest eigenvalue is about
    // ¼‖X‖²/n + e^λ < 1, so a step of 1 is stable, and the smallest is ≥ e^λ, so 150
    // steps converge (to (1 − 0.05)^150 ≈ 5e-4 of the start) for the implicit methods.
    let lambda_values = vec![0.05f64.ln(); d];
    let inner = Inner {
        optimizer: InnerOptimizer::Gd { lr: 1.0 },
        steps: 150,
    };

    // 1. f64 on the CPU: every method against finite differences.
    let cpu = Device::cpu();
    let p64 = LogisticPerFeature::new(&train, &val, d, &cpu, DType::F64)?;
    let lambda64 = vec![Tensor::from_f64(&lambda_values, &[d], &cpu, DType::F64)?];
    println!(
        "validation loss at the start: {:.6}",
        outer_value(&p64, &lambda64, &inner)?
    );
    let fd = values(&fd_hypergradient(&p64, &lambda64, &inner, 1e-5)?)?;
    // Unrolled methods differentiate exactly what the differences measure (their error
    // is the differences' own, ~1e-8); CG and Neumann assume w_T = w*, which 150 steps
    // reach to ~5e-4 relative.
    let checks = [
        (Method::rad(), 1e-6),
        (Method::forward(), 1e-6),
        (Method::cg(20), 1e-2),
        (Method::neumann(200, 1.0), 1e-2),
    ];
    let mut rad64 = Vec::new();
    for (method, tol) in checks {
        let h = hypergradient(&p64, &lambda64, &inner, &method)?;
        let got = values(&h.grad)?;
        let err = rel_err(&got, &fd);
        println!(
            "{:>8}: relative error vs finite differences {err:.1e} (tolerance {tol:.0e}), {:?}",
            method.name(),
            h.report.wall_time
        );
        assert!(
            err <= tol,
            "{} disagrees with finite differences: {err:e}",
            method.name()
        );
        if method == Method::Rad {
            rad64 = got;
        }
    }
    // The hypergradient is not zero at w₀ = 0 (softplus'(0) = ½).
    assert!(rad64.iter().any(|g| g.abs() > 1e-6), "{rad64:?}");

    // 2. f32 on the best available device, against f64.
    let choice = Device::best_available();
    println!("device: {}", choice.reason);
    let dev = choice.device;
    let p32 = LogisticPerFeature::new(&train, &val, d, &dev, DType::F32)?;
    // λ must live on the problem's device, in its dtype.
    let lambda32 = vec![Tensor::from_f64(&lambda_values, &[d], &dev, DType::F32)?];
    let h = hypergradient(&p32, &lambda32, &inner, &Method::rad())?;
    let err = rel_err(&values(&h.grad)?, &rad64);
    println!(
        "     rad in f32: relative error vs f64 {err:.1e}, {} GPU dispatches, {:?}",
        h.report
            .dispatches
            .map_or("no".to_string(), |n| n.to_string()),
        h.report.wall_time
    );
    // f32 rounding through 150 steps of a well-conditioned problem: ~1e-6 in practice.
    assert!(err <= 1e-3, "f32 on {dev} disagrees with f64: {err:e}");

    // 3. A few outer steps of Adam on λ (f64, CPU) lower the validation loss, and
    //    strengthen the penalty on the noise features (the last half) more.
    let config = OuterConfig {
        steps: 10,
        optimizer: OuterOptimizer::adam(0.05),
        warm_start: WarmStart::Warm,
    };
    let trace = optimize(&p64, &lambda64, &inner, &Method::rad(), &config)?;
    let (first, last) = (&trace.steps[0], &trace.steps[trace.steps.len() - 1]);
    println!(
        "outer loop: validation loss {:.6} -> {:.6} in {} steps; λ = {:.2?}",
        first.outer_loss,
        last.outer_loss,
        config.steps,
        trace.lambda[0].to_vec::<f64>()?
    );
    assert!(last.outer_loss < first.outer_loss);
    let strengths = trace.lambda[0].to_vec::<f64>()?;
    assert!(strengths[d - 1] > strengths[0], "{strengths:?}");
    Ok(())
}
