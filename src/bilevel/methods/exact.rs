//! The implicit hypergradient at a closed-form inner solution, with H solved densely:
//! the oracle the other methods are tested against.

use serde::{Deserialize, Serialize};

use super::implicit::implicit_at;
use crate::bilevel::method::{HypergradientMethod, MethodOutput};
use crate::bilevel::{Inner, Problem, check_w};
use crate::error::{Result, invalid};
use crate::solvers::{SolveResult, solve_dense};
use crate::tensor::{DType, Tensor};

/// [`Method::Exact`](crate::bilevel::Method::Exact): the implicit hypergradient at
/// [`Problem::inner_solution`], solved directly.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "super::NoSettings")]
pub struct Exact;

impl Exact {
    pub(crate) const NAME: &str = "exact";
}

impl HypergradientMethod for Exact {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn validate(&self, _inner: &Inner) -> Result<()> {
        Ok(())
    }

    /// Ignores `inner`: no inner step is taken.
    fn compute(
        &self,
        problem: &dyn Problem,
        lambda: &[Tensor],
        w0: &[Tensor],
        _inner: &Inner,
    ) -> Result<MethodOutput> {
        let w = match problem.inner_solution(lambda) {
            Some(w) => w?,
            None => {
                return Err(invalid(
                    "exact",
                    "this problem has no closed-form inner solution (Problem::inner_solution returns None)",
                ));
            }
        };
        check_w(&w, w0)?;
        implicit_at(problem, lambda, w, |apply, b| dense_solve(apply, b))
    }
}

/// Solves A x = b exactly for a small operator: A's columns from n applications to the
/// unit vectors, then [`solve_dense`] on the host in f64.
fn dense_solve(apply: &dyn Fn(&Tensor) -> Result<Tensor>, b: &Tensor) -> Result<SolveResult> {
    let n = b.numel();
    let device = b.device();
    let dtype = b.dtype();
    let unit = |i: usize| -> Result<Tensor> {
        let mut e = vec![0.0f64; n];
        e[i] = 1.0;
        match dtype {
            DType::F64 => Tensor::from_vec(e, &[n], &device),
            DType::F32 => Tensor::from_vec(
                e.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                &[n],
                &device,
            ),
        }
    };
    // Columns stay on the device and are read back together: one wait, not one per
    // column.
    let mut cols = Vec::with_capacity(n);
    for j in 0..n {
        cols.push(apply(&unit(j)?)?.reshape(&[n])?);
    }
    let mut a = vec![0.0f64; n * n];
    if n > 0 {
        let all = Tensor::concat(&cols.iter().collect::<Vec<_>>())?.to_vec::<f64>()?;
        for (j, col) in all.chunks_exact(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                a[i * n + j] = v;
            }
        }
    }
    let x = solve_dense(&a, &b.to_vec::<f64>()?).map_err(|_| {
        invalid(
            "exact",
            "the inner Hessian is singular at w*; the implicit hypergradient is undefined",
        )
    })?;
    let x = match dtype {
        DType::F64 => Tensor::from_vec(x, &[n], &device)?,
        DType::F32 => Tensor::from_vec(
            x.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &[n],
            &device,
        )?,
    };
    Ok(SolveResult {
        x,
        iterations: n,
        residual_norm: 0.0,
    })
}
