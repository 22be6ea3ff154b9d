//! The numerical problems of the papers that go beyond a unique inner minimiser, each
//! with a known answer: BDA's merely convex toy ([`BdaToy`], T1), a strongly convex
//! control ([`QuadraticToy`], T2) and IAPTT-GM's non-convex toy ([`IapttToy`], T3).
//! λ is x and w is y in the papers' notation; F is the outer loss, f the inner one.

use crate::bilevel::Problem;
use crate::device::Device;
use crate::error::{Result, invalid};
use crate::tensor::{DType, Tensor};

fn check_n(n: usize) -> Result<()> {
    if n == 0 {
        return Err(invalid("problem", "the dimension n must be at least 1"));
    }
    Ok(())
}

/// T1, BDA's merely convex toy (Liu et al. 2020), y = (y₁, y₂) ∈ R^{2n}, x ∈ Rⁿ:
/// F(x, y) = ½‖x − y₂‖² + ½‖y₁ − e‖², f(x, y) = ½‖y₁‖² − xᵀy₁, e the all-ones vector.
///
/// The inner minimisers are {y₁ = x, y₂ free}; the optimistic optimum is
/// x* = y₁* = y₂* = e with F* = 0. Methods that follow the inner loss alone never move
/// y₂ from its start y₂⁰ (f does not depend on it), so they minimise
/// ½‖x − y₂⁰‖² + ½‖x − e‖² and stall at x = (e + y₂⁰)/2; BDA's aggregated inner loop
/// moves y₂ towards x. w₀ = (0, y₂⁰) with y₂⁰ = 0 by default.
#[derive(Debug, Clone)]
pub struct BdaToy {
    n: usize,
    y2_start: f64,
    device: Device,
    dtype: DType,
}

impl BdaToy {
    /// T1 in dimension n (the paper uses n = 100), y₂⁰ = 0.
    pub fn new(n: usize, device: &Device, dtype: DType) -> Result<Self> {
        check_n(n)?;
        Ok(BdaToy {
            n,
            y2_start: 0.0,
            device: device.clone(),
            dtype,
        })
    }

    /// The same with y₂⁰ = `value` (every element).
    pub fn with_y2_start(mut self, value: f64) -> Self {
        self.y2_start = value;
        self
    }

    /// The optimum x* = e.
    pub fn solution(&self) -> Vec<f64> {
        vec![1.0; self.n]
    }
}

impl Problem for BdaToy {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Ok(vec![
            Tensor::from_f64(&vec![0.0; self.n], &[self.n], &self.device, self.dtype)?,
            Tensor::from_f64(
                &vec![self.y2_start; self.n],
                &[self.n],
                &self.device,
                self.dtype,
            )?,
        ])
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.n]]
    }

    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        w[0].sqnorm()?.scale(0.5)?.sub(&lambda[0].dot(&w[0])?)
    }

    fn outer_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let fit = lambda[0].sub(&w[1])?.sqnorm()?.scale(0.5)?;
        let target = w[0].scale_shift(1.0, -1.0)?.sqnorm()?.scale(0.5)?;
        fit.add(&target)
    }
}

/// T2, a strongly convex control: f(x, y) = ½yᵀAy − xᵀBy,
/// F(x, y) = ½yᵀAy + ½(x − x̂)ᵀD(x − x̂), with A = B = D = I and x̂ = e here, x, y ∈ Rⁿ.
///
/// y*(x) = A⁻¹Bᵀx = x and x* = (BA⁻¹Bᵀ + D)⁻¹ D x̂ = ½·e. The inner minimiser is unique,
/// so every method, BDA included, must reach x*. w₀ = 0.
#[derive(Debug, Clone)]
pub struct QuadraticToy {
    n: usize,
    device: Device,
    dtype: DType,
}

impl QuadraticToy {
    /// T2 in dimension n.
    pub fn new(n: usize, device: &Device, dtype: DType) -> Result<Self> {
        check_n(n)?;
        Ok(QuadraticToy {
            n,
            device: device.clone(),
            dtype,
        })
    }

    /// The optimum x* = ½·e.
    pub fn solution(&self) -> Vec<f64> {
        vec![0.5; self.n]
    }
}

impl Problem for QuadraticToy {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::from_f64(
            &vec![0.0; self.n],
            &[self.n],
            &self.device,
            self.dtype,
        )?])
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.n]]
    }

    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        w[0].sqnorm()?.scale(0.5)?.sub(&lambda[0].dot(&w[0])?)
    }

    fn outer_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let energy = w[0].sqnorm()?.scale(0.5)?;
        energy.add(&lambda[0].scale_shift(1.0, -1.0)?.sqnorm()?.scale(0.5)?)
    }

    fn inner_solution(&self, lambda: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        Some(Ok(vec![lambda[0].detach()]))
    }
}

/// T3, IAPTT-GM's non-convex toy (Liu et al. 2021), elementwise in any dimension n:
/// min_{x ∈ [1, 10]} Σᵢ (xᵢ + xᵢyᵢ) subject to y ∈ argmin_{y ∈ [−2, 2]} Σᵢ −sin(xᵢyᵢ).
///
/// Optimum: xᵢ* = 11π/4 ≈ 8.6394, yᵢ* = −2 (where −2 is an inner minimiser), F* = −n·11π/4.
/// The boxes are [`Problem::inner_bounds`] and [`Problem::lambda_bounds`]; the paper
/// starts from x⁰ = 1, y⁰ = 2 (w₀ here) and runs 40 inner steps of size 5·10⁻⁴.
#[derive(Debug, Clone)]
pub struct IapttToy {
    n: usize,
    device: Device,
    dtype: DType,
}

impl IapttToy {
    /// T3 in dimension n (the paper's is 1).
    pub fn new(n: usize, device: &Device, dtype: DType) -> Result<Self> {
        check_n(n)?;
        Ok(IapttToy {
            n,
            device: device.clone(),
            dtype,
        })
    }

    /// The optimum x* = 11π/4 (every element).
    pub fn solution(&self) -> Vec<f64> {
        vec![11.0 * std::f64::consts::PI / 4.0; self.n]
    }

    /// The paper's start x⁰ = 1.
    pub fn lambda0(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::from_f64(
            &vec![1.0; self.n],
            &[self.n],
            &self.device,
            self.dtype,
        )?])
    }
}

impl Problem for IapttToy {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::from_f64(
            &vec![2.0; self.n],
            &[self.n],
            &self.device,
            self.dtype,
        )?])
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.n]]
    }

    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        lambda[0].mul(&w[0])?.sin()?.sum()?.neg()
    }

    fn outer_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        lambda[0].sum()?.add(&lambda[0].dot(&w[0])?)
    }

    fn inner_bounds(&self) -> Option<(f64, f64)> {
        Some((-2.0, 2.0))
    }

    fn lambda_bounds(&self) -> Option<(f64, f64)> {
        Some((1.0, 10.0))
    }
}
