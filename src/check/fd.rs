//! Finite-difference checks for code that embeds blo: a hypergradient by central
//! differences of the bilevel objective, and the relative error blo's own tests use to
//! compare results.

use crate::bilevel::{Inner, Problem, outer_value};
use crate::error::{Result, invalid};
use crate::tensor::Tensor;

/// Norm-wise relative error ‖got − want‖₂ / ‖want‖₂ (the absolute error ‖got − want‖₂
/// when `want` is all zeros). NaN when either side holds a NaN, ∞ when the lengths
/// differ, so a comparison against a tolerance fails in both cases. The measure behind
/// every tolerance of blo's tests and of `blo check`.
///
/// ```
/// use blo::check::rel_err;
/// assert!(rel_err(&[1.0, 2.0], &[1.0, 2.0]) == 0.0);
/// assert!((rel_err(&[3.0, 4.1], &[3.0, 4.0]) - 0.02).abs() < 1e-12);
/// assert!(rel_err(&[1.0], &[1.0, 2.0]).is_infinite());
/// ```
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w) * (g - w))
        .sum::<f64>()
        .sqrt();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    if den == 0.0 { num } else { num / den }
}

/// dL/dλ by central finite differences of the bilevel objective
/// L(λ) = L_out(w_T(λ), λ) ([`outer_value`]: `inner.steps` inner steps from
/// `problem.init_w()`): element j of `λ[i]` is (L(λ + h·e_ij) − L(λ − h·e_ij)) / 2h.
/// Returns tensors shaped like λ, on its device and in its dtype, to compare with
/// [`Hypergradient::grad`](crate::bilevel::Hypergradient::grad) (through
/// [`rel_err`] of their values).
///
/// What to expect: RAD, T-RAD with K = T and forward mode differentiate exactly this
/// L, so they agree to the differences' own error, about h²·|L'''| + ε·|L|/h (with
/// h = 1e-5 in f64, ~1e-8 relative or better for a smooth problem); the implicit methods
/// (CG, Neumann, fixed point, implicit) agree only as far as w_T is converged. Use f64
/// on the CPU: in f32 the rounding term ε·|L|/h swamps any useful h. Costs 2·|λ| runs of
/// the inner optimizer. Fails if `h` is not finite and > 0, and with
/// [`outer_value`]'s errors (λ not matching the problem, a diverging inner loop).
///
/// ```
/// use blo::bilevel::{hypergradient, Inner, InnerOptimizer, Method};
/// use blo::check::{fd_hypergradient, rel_err};
/// use blo::problems::Ridge;
/// use blo::{DType, Device, Tensor};
/// # fn main() -> blo::Result<()> {
/// let dev = Device::cpu();
/// let p = Ridge::synthetic(40, 30, 5, 3, &dev, DType::F64)?;
/// let lambda = vec![Tensor::from_f64(&[0.1; 5], &[5], &dev, DType::F64)?];
/// let inner = Inner { optimizer: InnerOptimizer::Gd { lr: 0.2 }, steps: 20 };
/// let fd = fd_hypergradient(&p, &lambda, &inner, 1e-5)?;
/// let rad = hypergradient(&p, &lambda, &inner, &Method::rad())?;
/// let err = rel_err(&rad.grad[0].to_vec::<f64>()?, &fd[0].to_vec::<f64>()?);
/// assert!(err < 1e-7, "{err}");
/// # Ok(()) }
/// ```
pub fn fd_hypergradient(
    problem: &dyn Problem,
    lambda: &[Tensor],
    inner: &Inner,
    h: f64,
) -> Result<Vec<Tensor>> {
    if !h.is_finite() || h <= 0.0 {
        return Err(invalid(
            "fd_hypergradient",
            format!("the step h must be finite and > 0, got {h} (1e-5 suits f64)"),
        ));
    }
    // Fails early, naming the mismatch, if λ does not fit the problem.
    outer_value(problem, lambda, inner)?;
    let values = lambda
        .iter()
        .map(|l| l.to_vec::<f64>())
        .collect::<Result<Vec<_>>>()?;
    let at = |i: usize, j: usize, delta: f64| -> Result<f64> {
        let mut moved = lambda.to_vec();
        let mut v = values[i].clone();
        v[j] += delta;
        let l = &lambda[i];
        moved[i] = Tensor::from_f64(&v, l.shape(), &l.device(), l.dtype())?;
        outer_value(problem, &moved, inner)
    };
    let mut out = Vec::with_capacity(lambda.len());
    for (i, l) in lambda.iter().enumerate() {
        let grad = (0..values[i].len())
            .map(|j| Ok((at(i, j, h)? - at(i, j, -h)?) / (2.0 * h)))
            .collect::<Result<Vec<f64>>>()?;
        out.push(Tensor::from_f64(&grad, l.shape(), &l.device(), l.dtype())?);
    }
    Ok(out)
}
