//! Ridge regression with one log-regularisation weight per feature.
//!
//! L_in(w, λ) = 1/(2n) ‖X w − y‖² + ½ Σ_j exp(λ_j) w_j²,
//! L_out(w)   = 1/(2m) ‖X_val w − y_val‖²,
//! w*(λ)      = (XᵀX/n + diag(exp λ))⁻¹ Xᵀy / n.

use crate::bilevel::Problem;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::problems::data::{Matrix, synthetic_regression_pair};
use crate::tensor::{DType, Tensor};

/// The ridge problem (λ ∈ R^d). w is one tensor `[d]` (flat, as an experiment's
/// `inner.init`, the same d values).
#[derive(Debug, Clone)]
pub struct Ridge {
    x: Tensor,
    y: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    /// Host copies for the closed form.
    host: (Matrix, Vec<f64>),
}

impl Ridge {
    /// A ridge problem on `device` in `dtype` (f64 only on the CPU). Shapes are checked:
    /// X `[n, d]`, y `[n]`, X_val `[m, d]`, y_val `[m]`.
    pub fn new(
        x: &Matrix,
        y: &[f64],
        x_val: &Matrix,
        y_val: &[f64],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mismatch = |what: &'static str, a: Vec<usize>, b: Vec<usize>| Error::ShapeMismatch {
            op: what,
            lhs: a,
            rhs: b,
        };
        if y.len() != x.rows {
            return Err(mismatch(
                "ridge: y must have one value per row of X",
                vec![y.len()],
                vec![x.rows, x.cols],
            ));
        }
        if x_val.cols != x.cols {
            return Err(mismatch(
                "ridge: X_val must have X's columns",
                vec![x_val.rows, x_val.cols],
                vec![x.rows, x.cols],
            ));
        }
        if y_val.len() != x_val.rows {
            return Err(mismatch(
                "ridge: y_val must have one value per row of X_val",
                vec![y_val.len()],
                vec![x_val.rows, x_val.cols],
            ));
        }
        Ok(Self {
            x: x.to_tensor(device, dtype)?,
            y: Tensor::from_f64(y, &[y.len()], device, dtype)?,
            x_val: x_val.to_tensor(device, dtype)?,
            y_val: Tensor::from_f64(y_val, &[y_val.len()], device, dtype)?,
            host: (x.clone(), y.to_vec()),
        })
    }

    /// Seeded synthetic data: n training rows, m validation rows, d features, noise 0.5.
    pub fn synthetic(
        n: usize,
        m: usize,
        d: usize,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let ((x, y), (xv, yv)) = synthetic_regression_pair(n, m, d, 0.5, seed);
        Self::new(&x, &y, &xv, &yv, device, dtype)
    }

    /// Number of features d.
    pub fn dim(&self) -> usize {
        self.x.shape()[1]
    }
}

impl Problem for Ridge {
    fn init_w(&self) -> Result<Vec<Tensor>> {
        let d = self.dim();
        Ok(vec![Tensor::from_f64(
            &vec![0.0; d],
            &[d],
            &self.x.device(),
            self.x.dtype(),
        )?])
    }

    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.dim()]]
    }

    fn inner_loss(&self, w: &[Tensor], lambda: &[Tensor]) -> Result<Tensor> {
        let n = self.x.shape()[0] as f64;
        let fit = self
            .x
            .matvec(&w[0], false)?
            .sub(&self.y)?
            .sqnorm()?
            .scale(0.5 / n)?;
        let reg = lambda[0].exp()?.mul(&w[0].square()?)?.sum()?.scale(0.5)?;
        fit.add(&reg)
    }

    fn outer_loss(&self, w: &[Tensor], _lambda: &[Tensor]) -> Result<Tensor> {
        let m = self.x_val.shape()[0] as f64;
        self.x_val
            .matvec(&w[0], false)?
            .sub(&self.y_val)?
            .sqnorm()?
            .scale(0.5 / m)
    }

    fn inner_solution(&self, lambda: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        Some((|| {
            let (x, y) = &self.host;
            let (n, d) = (x.rows, x.cols);
            let lam = lambda[0].to_vec::<f64>()?;
            // Normal equations in f64 on the host: (XᵀX/n + diag(e^λ)) w = Xᵀy/n.
            let mut a = vec![0.0; d * d];
            let mut rhs = vec![0.0; d];
            for (row, yi) in x.data.chunks_exact(d).zip(y) {
                for p in 0..d {
                    rhs[p] += row[p] * yi / n as f64;
                    for q in 0..d {
                        a[p * d + q] += row[p] * row[q] / n as f64;
                    }
                }
            }
            for (j, l) in lam.iter().enumerate() {
                a[j * d + j] += l.exp();
            }
            let w = crate::solvers::solve_dense(&a, &rhs)?;
            Ok(vec![Tensor::from_f64(
                &w,
                &[d],
                &self.x.device(),
                self.x.dtype(),
            )?])
        })())
    }
}
