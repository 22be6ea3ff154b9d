//! Linear solvers over a linear operator given as a closure (normally a Hessian-vector
//! product, see [`crate::autodiff::HvpOperator`]), running entirely on the device.
//!
//! Vectors are single tensors of any shape (a model with several parameter tensors
//! works on their flattened concatenation). Scalars the solvers produce (CG's α and β)
//! stay on the device; the host reads a residual norm only every `check_every`
//! iterations when a tolerance is set, and once at the end.

use crate::autodiff::no_grad;
use crate::error::{Error, Result, invalid};
use crate::tensor::Tensor;

/// Options of [`conjugate_gradient`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgOptions {
    /// Maximum number of iterations K (each applies the operator once). Must be ≥ 1.
    pub max_iters: usize,
    /// Stop once ‖r‖ ≤ tol (checked on the host every `check_every` iterations).
    /// `None` runs exactly `max_iters` iterations with no readback until the end.
    pub tol: Option<f64>,
    /// How often the residual is read back when `tol` is set (≥ 1).
    pub check_every: usize,
    /// Damping ρ ≥ 0: solves (A + ρI) x = b.
    pub damping: f64,
}

impl Default for CgOptions {
    fn default() -> Self {
        Self {
            max_iters: 20,
            tol: None,
            check_every: 10,
            damping: 0.0,
        }
    }
}

/// What a solver returns.
#[derive(Debug, Clone)]
pub struct SolveResult {
    /// The solution after the last completed iteration.
    pub x: Tensor,
    /// Operator applications done.
    pub iterations: usize,
    /// ‖b − A x‖ for the returned x, as the recurrence tracks it (CG), or the norm of the
    /// last series term η(I − ηA)^K b (Neumann); read once at the end.
    pub residual_norm: f64,
}

fn check_finite(op: &'static str, name: &str, v: f64) -> Result<()> {
    if !v.is_finite() {
        return Err(invalid(op, format!("{name} must be finite, got {v}")));
    }
    Ok(())
}

/// Solves the dense system A x = b on the host in f64 by Gaussian elimination with
/// partial pivoting; `a` is n×n row-major with n = `b.len()`. For oracles and small exact
/// solves (ridge's closed form). Errors when A is
/// singular to working precision.
pub fn solve_dense(a: &[f64], b: &[f64]) -> Result<Vec<f64>> {
    let n = b.len();
    if a.len() != n * n {
        return Err(Error::ShapeMismatch {
            op: "solve_dense",
            lhs: vec![a.len()],
            rhs: vec![n, n],
        });
    }
    let mut m: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let mut row = a[i * n..(i + 1) * n].to_vec();
            row.push(b[i]);
            row
        })
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs()))
            .expect("c < n");
        if m[p][c] == 0.0 || !m[p][c].is_finite() {
            return Err(invalid(
                "solve_dense",
                "the matrix is singular (or holds NaN/inf)",
            ));
        }
        m.swap(c, p);
        let pivot = m[c].clone();
        for row in m.iter_mut().skip(c + 1) {
            let f = row[c] / pivot[c];
            for (x, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                *x -= f * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| m[r][k] * x[k]).sum();
        x[r] = (m[r][n] - s) / m[r][r];
    }
    Ok(x)
}

/// The eigendecomposition A = Σ_k λ_k u_k u_kᵀ of a symmetric n×n matrix (row-major; only
/// symmetric input gives a meaningful answer), in f64 on the host: Householder reduction
/// to tridiagonal form and the implicit QL iteration (EISPACK's `tred2` and `tql2`, as in
/// JAMA). Returns the eigenvalues (unsorted) and the eigenvectors as the rows of an n×n
/// row-major matrix, orthonormal to rounding. O(n³): about 2 s at n = 650 here.
// The index loops follow the published algorithm line by line, so that it can be
// checked against it.
#[allow(clippy::needless_range_loop)]
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    const OP: &str = "symmetric_eigen";
    if a.len() != n * n {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: vec![a.len()],
            rhs: vec![n, n],
        });
    }
    if let Some(i) = a.iter().position(|x| !x.is_finite()) {
        return Err(invalid(
            OP,
            format!("element {i} of the matrix is {}", a[i]),
        ));
    }
    if n == 0 {
        return Ok((vec![], vec![]));
    }
    // tred2 (JAMA / EISPACK): Householder reduction to tridiagonal form; V accumulates
    // the transformations. v[r * n + c] is V[r][c].
    let mut v = a.to_vec();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    for j in 0..n {
        d[j] = v[(n - 1) * n + j];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[(i - 1) * n + j];
                v[i * n + j] = 0.0;
                v[j * n + i] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for x in e.iter_mut().take(i) {
                *x = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[j * n + i] = f;
                g = e[j] + v[j * n + j] * f;
                for k in j + 1..i {
                    g += v[k * n + j] * d[k];
                    e[k] += v[k * n + j] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[k * n + j] -= f * e[k] + g * d[k];
                }
                d[j] = v[(i - 1) * n + j];
                v[i * n + j] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[(n - 1) * n + i] = v[i * n + i];
        v[i * n + i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[k * n + i + 1] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[k * n + i + 1] * v[k * n + j];
                }
                for k in 0..=i {
                    v[k * n + j] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[k * n + i + 1] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[(n - 1) * n + j];
        v[(n - 1) * n + j] = 0.0;
    }
    v[(n - 1) * n + n - 1] = 1.0;
    e[0] = 0.0;
    // tql2 on the rows of Vᵀ (each row an eigenvector), so the rotations touch
    // contiguous memory.
    let mut vt = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            vt[c * n + r] = v[r * n + c];
        }
    }
    drop(v);
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > 60 {
                    return Err(invalid(
                        OP,
                        format!(
                            "the QL iteration did not converge for eigenvalue {l} in 60 iterations"
                        ),
                    ));
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in d.iter_mut().skip(l + 2) {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = vt.split_at_mut((i + 1) * n);
                    let (vi, vi1) = (&mut lo[i * n..], &mut hi[..n]);
                    for (x, y) in vi.iter_mut().zip(vi1.iter_mut()) {
                        let hk = *y;
                        *y = s * *x + c * hk;
                        *x = c * *x - s * hk;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok((d, vt))
}

/// What [`solve_symmetric_min_norm`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct MinNormSolution {
    /// The minimum-norm least-squares solution.
    pub x: Vec<f64>,
    /// How many eigenvalues were kept (above the cutoff): the numerical rank.
    pub rank: usize,
    /// ‖A x − b‖ with A as given.
    pub residual_norm: f64,
}

/// The minimum-norm least-squares solution x = A⁺ b of A x = b for a symmetric n×n
/// matrix A (row-major; symmetrised as (A + Aᵀ)/2 first, since one built from
/// Hessian-vector products is symmetric only to rounding), in f64 on the host.
///
/// From the eigendecomposition A = Σ λ_k u_k u_kᵀ ([`symmetric_eigen`]): x = Σ (u_kᵀb/λ_k) u_k
/// over the eigenvalues with |λ_k| > `rcond`·max|λ|; the others count as zero. For a
/// singular A and b orthogonal to its null space this is the unique solution in the
/// range of A; a b with a null-space component gets the same x (and a residual that says
/// so). Errors on NaN/inf or a non-finite, negative `rcond`.
pub fn solve_symmetric_min_norm(a: &[f64], b: &[f64], rcond: f64) -> Result<MinNormSolution> {
    const OP: &str = "solve_symmetric_min_norm";
    let n = b.len();
    if a.len() != n * n {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: vec![a.len()],
            rhs: vec![n, n],
        });
    }
    check_finite(OP, "rcond", rcond)?;
    if rcond < 0.0 {
        return Err(invalid(OP, format!("rcond must be ≥ 0, got {rcond}")));
    }
    if let Some(i) = b.iter().position(|v| !v.is_finite()) {
        return Err(invalid(OP, format!("element {i} of b is {}", b[i])));
    }
    let mut sym = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            sym[i * n + j] = 0.5 * (a[i * n + j] + a[j * n + i]);
        }
    }
    let (values, vectors) = symmetric_eigen(&sym, n)?;
    let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let cutoff = rcond * largest;
    let mut x = vec![0.0; n];
    let mut rank = 0;
    for (k, &lambda) in values.iter().enumerate() {
        if lambda.abs() <= cutoff || lambda == 0.0 {
            continue;
        }
        rank += 1;
        let u = &vectors[k * n..(k + 1) * n];
        let c = u.iter().zip(b).map(|(p, q)| p * q).sum::<f64>() / lambda;
        x.iter_mut().zip(u).for_each(|(xi, ui)| *xi += c * ui);
    }
    let residual_norm = (0..n)
        .map(|i| {
            let r: f64 = (0..n).map(|j| a[i * n + j] * x[j]).sum::<f64>() - b[i];
            r * r
        })
        .sum::<f64>()
        .sqrt();
    Ok(MinNormSolution {
        x,
        rank,
        residual_norm,
    })
}

/// Conjugate gradient for A x = b with A symmetric positive definite, from x₀ = 0.
///
/// Each iteration costs one operator application plus a fixed number of small fused
/// kernels: α = rᵀr / pᵀAp and β = r'ᵀr' / rᵀr are 0-d device tensors that feed the
/// update kernels directly. The returned `x` is the iterate of the last completed
/// iteration (a common bug returns the one before it). Once the residual reaches the
/// rounding floor ‖r‖ ≤ √n·ε·‖b‖ (ε of the dtype) the iterate stops moving (decided on
/// the device, no readback), so running longer never makes the answer worse.
pub fn conjugate_gradient(
    mut apply: impl FnMut(&Tensor) -> Result<Tensor>,
    b: &Tensor,
    opts: &CgOptions,
) -> Result<SolveResult> {
    const OP: &str = "conjugate_gradient";
    if opts.max_iters == 0 {
        return Err(invalid(OP, "max_iters must be at least 1"));
    }
    if opts.check_every == 0 {
        return Err(invalid(OP, "check_every must be at least 1"));
    }
    check_finite(OP, "damping", opts.damping)?;
    if opts.damping < 0.0 {
        return Err(invalid(
            OP,
            format!("damping must be ≥ 0, got {}", opts.damping),
        ));
    }
    if let Some(tol) = opts.tol {
        check_finite(OP, "tol", tol)?;
        if tol < 0.0 {
            return Err(invalid(OP, format!("tol must be ≥ 0, got {tol}")));
        }
    }
    let b = b.detach();
    let mut x = b.zeros_like()?;
    let mut r = b.clone();
    let mut p = b.clone();
    let mut rr = no_grad(|| r.sqnorm())?;
    // The rounding floor ‖r‖² ≤ n·ε²·‖b‖²: below it the recurrence's residual no longer
    // says how far x is from the solution, and on a singular H (hyper-cleaning's) f32
    // CG run on past it drifts along the near-null direction rounding created (an f32
    // run at K = 650 ended 1000× further from the answer than at K = 100 on lavapipe).
    // Once there, α is masked to 0 on the device, so x stops moving and no readback is
    // needed: a longer run is never worse than a shorter one.
    let eps = match b.dtype() {
        crate::DType::F32 => f64::from(f32::EPSILON),
        crate::DType::F64 => f64::EPSILON,
    };
    let floor = no_grad(|| rr.scale(b.numel() as f64 * eps * eps))?;
    let mut done = 0;
    for k in 1..=opts.max_iters {
        let ap = apply(&p)?.detach();
        if ap.shape() != p.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: p.shape().to_vec(),
                rhs: ap.shape().to_vec(),
            });
        }
        (x, r, rr, p) = no_grad(|| -> Result<_> {
            let ap = if opts.damping > 0.0 {
                ap.axpy(opts.damping, &p)?
            } else {
                ap
            };
            let pap = p.dot(&ap)?;
            let moving = rr.mul(&rr.gt(&floor)?)?;
            let x = x.axpy_ratio(&moving, &pap, 1.0, &p)?;
            let r = r.axpy_ratio(&moving, &pap, -1.0, &ap)?;
            let rr_new = r.sqnorm()?;
            let p = r.axpy_ratio(&rr_new, &rr, 1.0, &p)?;
            // p is read by the next iteration's operator; x, which nothing reads until
            // the end, is computed in the same kernel.
            Tensor::compute_together(&[&p, &x])?;
            Ok((x, r, rr_new, p))
        })?;
        done = k;
        if let Some(tol) = opts.tol
            && k % opts.check_every == 0
            && k < opts.max_iters
            && rr.to_scalar::<f64>()?.sqrt() <= tol
        {
            break;
        }
    }
    let residual_norm = rr.to_scalar::<f64>()?.sqrt();
    if !residual_norm.is_finite() {
        return Err(invalid(
            OP,
            format!(
                "the residual became {residual_norm} after {done} iterations; the operator is probably not positive definite (add damping) or the input holds NaN"
            ),
        ));
    }
    Ok(SolveResult {
        x,
        iterations: done,
        residual_norm,
    })
}

/// Truncated Neumann series v = η Σ_{k=0..K} (I − ηA)^k b, which converges to A⁻¹b as
/// K → ∞ when 0 < η < 2/λ_max(A) and A is positive definite. Applies the operator K times.
///
/// The fixed-point iteration u₀ = 0, u_{k+1} = (I − ηA) u_k + b, v = η u_K is the same
/// sum (u_K = Σ_{k<K} (I − ηA)^k b), so it is not implemented twice: it equals
/// `neumann(apply, b, K − 1, η)`; see [`fixed_point`].
pub fn neumann(
    mut apply: impl FnMut(&Tensor) -> Result<Tensor>,
    b: &Tensor,
    k: usize,
    eta: f64,
) -> Result<SolveResult> {
    const OP: &str = "neumann";
    check_finite(OP, "eta", eta)?;
    if eta <= 0.0 {
        return Err(invalid(OP, format!("the step eta must be > 0, got {eta}")));
    }
    let b = b.detach();
    let mut term = b.clone();
    let mut sum = b.clone();
    for _ in 0..k {
        let a_term = apply(&term)?.detach();
        if a_term.shape() != term.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: term.shape().to_vec(),
                rhs: a_term.shape().to_vec(),
            });
        }
        (term, sum) = no_grad(|| -> Result<_> {
            let term = term.axpy(-eta, &a_term)?;
            let sum = sum.add(&term)?;
            // As CG's x and p: the sum is computed with the term the operator reads next.
            Tensor::compute_together(&[&term, &sum])?;
            Ok((term, sum))
        })?;
    }
    let (x, last) = no_grad(|| -> Result<_> { Ok((sum.scale(eta)?, term.sqnorm()?)) })?;
    let residual_norm = eta * last.to_scalar::<f64>()?.sqrt();
    if !residual_norm.is_finite() {
        return Err(invalid(
            OP,
            format!(
                "the series diverged (term norm {residual_norm}); use a smaller eta (< 2/λ_max)"
            ),
        ));
    }
    Ok(SolveResult {
        x,
        iterations: k,
        residual_norm,
    })
}

/// Fixed-point iteration u₀ = 0, u_{k+1} = (I − ηA) u_k + b (K times), v = η u_K.
/// Identical to [`neumann`] with K − 1 terms, which is how it is computed. K ≥ 1.
pub fn fixed_point(
    apply: impl FnMut(&Tensor) -> Result<Tensor>,
    b: &Tensor,
    k: usize,
    eta: f64,
) -> Result<SolveResult> {
    if k == 0 {
        return Err(invalid(
            "fixed_point",
            "K must be at least 1 (u_0 = 0 gives v = 0)",
        ));
    }
    // Computed as the series, but its errors name the method the caller chose.
    neumann(apply, b, k - 1, eta).map_err(|e| match e {
        Error::InvalidArgument { op: "neumann", msg } => Error::InvalidArgument {
            op: "fixed_point",
            msg: msg.replace("the series diverged", "the iteration diverged"),
        },
        Error::ShapeMismatch {
            op: "neumann",
            lhs,
            rhs,
        } => Error::ShapeMismatch {
            op: "fixed_point",
            lhs,
            rhs,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use crate::testing::{gpu_or_skip, oracle_pair, rel_err};

    /// A = Q diag(eig) Qᵀ with Q orthonormal (Gram–Schmidt of a seeded random matrix) and
    /// eigenvalues spread geometrically from 1 to `cond`.
    fn spd(n: usize, cond: f64, seed: u64) -> Vec<f64> {
        let raw = oracle_pair(&[n, n], seed).1;
        let mut q: Vec<Vec<f64>> = Vec::new();
        for j in 0..n {
            let mut v: Vec<f64> = (0..n).map(|i| raw[i * n + j]).collect();
            for u in &q {
                let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            q.push(v.into_iter().map(|a| a / norm).collect());
        }
        let eig: Vec<f64> = (0..n)
            .map(|k| cond.powf(k as f64 / (n - 1) as f64))
            .collect();
        let mut a = vec![0.0; n * n];
        for (k, u) in q.iter().enumerate() {
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] += eig[k] * u[i] * u[j];
                }
            }
        }
        a
    }

    fn solve(a: &[f64], b: &[f64]) -> Vec<f64> {
        solve_dense(a, b).unwrap()
    }

    #[test]
    fn solve_dense_solves_and_rejects_singular_systems() {
        // A permuted system that needs pivoting: [[0, 2], [3, 1]] x = [4, 5] ⇒ x = [1, 2].
        let x = solve_dense(&[0.0, 2.0, 3.0, 1.0], &[4.0, 5.0]).unwrap();
        assert!((x[0] - 1.0).abs() < 1e-15 && (x[1] - 2.0).abs() < 1e-15);
        assert!(solve_dense(&[1.0, 2.0, 2.0, 4.0], &[1.0, 1.0]).is_err());
        assert!(solve_dense(&[1.0, 2.0, 3.0], &[1.0, 1.0]).is_err());
    }

    #[test]
    fn symmetric_eigen_reconstructs_the_matrix_with_orthonormal_vectors() {
        for (n, seed) in [(1, 1), (2, 2), (7, 3), (40, 4)] {
            let raw = oracle_pair(&[n, n], seed).1;
            let a: Vec<f64> = (0..n * n)
                .map(|k| raw[k] + raw[(k % n) * n + k / n])
                .collect();
            let (values, vectors) = symmetric_eigen(&a, n).unwrap();
            let mut worst: f64 = 0.0;
            for i in 0..n {
                for j in 0..n {
                    let rebuilt: f64 = (0..n)
                        .map(|k| values[k] * vectors[k * n + i] * vectors[k * n + j])
                        .sum();
                    let dot: f64 = (0..n)
                        .map(|k| vectors[i * n + k] * vectors[j * n + k])
                        .sum();
                    let eye = if i == j { 1.0 } else { 0.0 };
                    worst = worst
                        .max((rebuilt - a[i * n + j]).abs())
                        .max((dot - eye).abs());
                }
            }
            // f64 rounding, growing slowly with n.
            assert!(worst <= 1e-12, "n {n}: {worst:e}");
        }
        assert!(symmetric_eigen(&[1.0, f64::NAN, f64::NAN, 1.0], 2).is_err());
        assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_err());
        assert_eq!(symmetric_eigen(&[], 0).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn min_norm_solve_of_a_singular_system_ignores_the_null_space() {
        // A = Q diag(3, 1, 0) Qᵀ: b in the range gives the solution in the range; a
        // null-space component of b changes neither x nor anything but the residual.
        let n = 3;
        let q = spd(n, 2.0, 9); // any orthonormal basis: the eigenvectors of an SPD matrix
        let (_, basis) = symmetric_eigen(&q, n).unwrap();
        let eig = [3.0, 1.0, 0.0];
        let mut a = vec![0.0; n * n];
        for k in 0..n {
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] += eig[k] * basis[k * n + i] * basis[k * n + j];
                }
            }
        }
        let u = |k: usize| basis[k * n..(k + 1) * n].to_vec();
        let b: Vec<f64> = (0..n).map(|i| 6.0 * u(0)[i] + 2.0 * u(1)[i]).collect();
        let want: Vec<f64> = (0..n).map(|i| 2.0 * u(0)[i] + 2.0 * u(1)[i]).collect();
        let out = solve_symmetric_min_norm(&a, &b, 1e-12).unwrap();
        assert!(rel_err(&out.x, &want) < 1e-13);
        assert_eq!(out.rank, 2);
        assert!(out.residual_norm < 1e-13);
        let with_null: Vec<f64> = b.iter().zip(u(2)).map(|(b, z)| b + 0.5 * z).collect();
        let out = solve_symmetric_min_norm(&a, &with_null, 1e-12).unwrap();
        assert!(rel_err(&out.x, &want) < 1e-13);
        assert!((out.residual_norm - 0.5).abs() < 1e-13);
        assert!(solve_symmetric_min_norm(&a, &b, -1.0).is_err());
        assert!(solve_symmetric_min_norm(&a, &[1.0, f64::NAN, 0.0], 0.0).is_err());
    }

    fn matvec_op(a: &Tensor) -> impl FnMut(&Tensor) -> Result<Tensor> + '_ {
        move |v: &Tensor| {
            let n = v.numel();
            a.matmul(&v.reshape(&[n, 1])?)?.reshape(&[n])
        }
    }

    fn system(n: usize, cond: f64, dev: &Device) -> (Tensor, Tensor, Vec<f64>) {
        let a = spd(n, cond, 1);
        let b = oracle_pair(&[n], 2).1;
        let x = solve(&a, &b);
        let (at, bt) = if dev.is_cpu() {
            (
                Tensor::from_vec(a, &[n, n], dev).unwrap(),
                Tensor::from_vec(b, &[n], dev).unwrap(),
            )
        } else {
            let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
            (
                Tensor::from_vec(a32, &[n, n], dev).unwrap(),
                Tensor::from_vec(b32, &[n], dev).unwrap(),
            )
        };
        (at, bt, x)
    }

    #[test]
    fn cg_with_k_equal_to_dimension_solves_spd_systems() {
        // In exact arithmetic CG solves an n×n SPD system in n iterations. In f64 that
        // holds at κ = 10; at κ = 1e4 with eigenvalues spread over four decades, lost
        // orthogonality delays convergence (Greenbaum 1997): n = 24 needs about 2n
        // iterations (the same happens in a textbook host CG, checked below), while a
        // small system still converges in n.
        for (n, cond, k, tol) in [
            (24, 10.0, 24, 1e-10),
            (6, 1e4, 6, 1e-7),
            (24, 1e4, 72, 1e-10),
        ] {
            let (a, b, want) = system(n, cond, &Device::Cpu);
            let opts = CgOptions {
                max_iters: k,
                ..CgOptions::default()
            };
            let out = conjugate_gradient(matvec_op(&a), &b, &opts).unwrap();
            let err = rel_err(&out.x.to_vec::<f64>().unwrap(), &want);
            assert!(err < tol, "n {n} cond {cond} K {k}: relative error {err:e}");
            assert_eq!(out.iterations, k);
            let host =
                host_cg_iterates(&a.to_vec::<f64>().unwrap(), &b.to_vec::<f64>().unwrap(), k);
            let he = rel_err(&host[k], &want);
            assert!(he < tol, "n {n} cond {cond}: the host reference CG: {he:e}");
        }
    }

    #[test]
    fn cg_past_exact_convergence_keeps_the_solution() {
        // A 2×2 system converges exactly in 2 iterations; later ones see rᵀr = pᵀAp = 0
        // and must not turn the answer into 0/0 = NaN.
        let mut devices = vec![Device::Cpu];
        devices.extend(gpu_or_skip());
        for dev in devices {
            let a = Tensor::from_vec(vec![2.0f32, 0.0, 0.0, 2.0], &[2, 2], &dev).unwrap();
            let b = Tensor::from_vec(vec![2.0f32, -4.0], &[2], &dev).unwrap();
            let opts = CgOptions {
                max_iters: 10,
                ..CgOptions::default()
            };
            let out = conjugate_gradient(matvec_op(&a), &b, &opts).unwrap();
            assert_eq!(out.x.to_vec::<f32>().unwrap(), vec![1.0, -2.0], "{dev}");
            assert_eq!(out.residual_norm, 0.0);
        }
    }

    #[test]
    fn cg_stops_at_tolerance_checking_every_k() {
        let n = 40;
        let (a, b, want) = system(n, 10.0, &Device::Cpu);
        let opts = CgOptions {
            max_iters: 200,
            tol: Some(1e-10),
            check_every: 5,
            damping: 0.0,
        };
        let out = conjugate_gradient(matvec_op(&a), &b, &opts).unwrap();
        assert!(
            out.iterations % 5 == 0 && out.iterations < 200,
            "stopped after {}",
            out.iterations
        );
        assert!(out.residual_norm <= 1e-10);
        assert!(rel_err(&out.x.to_vec::<f64>().unwrap(), &want) < 1e-9);
    }

    /// A plain host CG recording every iterate: x_k after k iterations.
    fn host_cg_iterates(a: &[f64], b: &[f64], k: usize) -> Vec<Vec<f64>> {
        let n = b.len();
        let mv = |v: &[f64]| -> Vec<f64> {
            (0..n)
                .map(|i| (0..n).map(|j| a[i * n + j] * v[j]).sum())
                .collect()
        };
        let dot = |u: &[f64], v: &[f64]| -> f64 { u.iter().zip(v).map(|(x, y)| x * y).sum() };
        let (mut x, mut r, mut p) = (vec![0.0; n], b.to_vec(), b.to_vec());
        let mut out = vec![x.clone()];
        for _ in 0..k {
            let ap = mv(&p);
            let alpha = dot(&r, &r) / dot(&p, &ap);
            let r_new: Vec<f64> = r
                .iter()
                .zip(&ap)
                .map(|(ri, api)| ri - alpha * api)
                .collect();
            x.iter_mut().zip(&p).for_each(|(xi, pi)| *xi += alpha * pi);
            let beta = dot(&r_new, &r_new) / dot(&r, &r);
            p = r_new
                .iter()
                .zip(&p)
                .map(|(ri, pi)| ri + beta * pi)
                .collect();
            r = r_new;
            out.push(x.clone());
        }
        out
    }

    #[test]
    fn cg_returns_the_last_iterate_not_the_one_before() {
        let n = 12;
        let a = spd(n, 100.0, 3);
        let b = oracle_pair(&[n], 4).1;
        let iterates = host_cg_iterates(&a, &b, 6);
        let at = Tensor::from_vec(a, &[n, n], &Device::Cpu).unwrap();
        let bt = Tensor::from_vec(b, &[n], &Device::Cpu).unwrap();
        for k in 1..=6 {
            let opts = CgOptions {
                max_iters: k,
                ..CgOptions::default()
            };
            let got = conjugate_gradient(matvec_op(&at), &bt, &opts)
                .unwrap()
                .x
                .to_vec::<f64>()
                .unwrap();
            assert!(
                rel_err(&got, &iterates[k]) < 1e-12,
                "K = {k} must return x_{k}"
            );
            assert!(
                rel_err(&got, &iterates[k - 1]) > 1e-6,
                "K = {k} returned x_{}",
                k - 1
            );
        }
    }

    #[test]
    fn damping_solves_the_shifted_system() {
        let n = 10;
        let a = spd(n, 10.0, 5);
        let b = oracle_pair(&[n], 6).1;
        let rho = 0.5;
        let shifted: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, v)| if i / n == i % n { v + rho } else { *v })
            .collect();
        let want = solve(&shifted, &b);
        let at = Tensor::from_vec(a, &[n, n], &Device::Cpu).unwrap();
        let bt = Tensor::from_vec(b, &[n], &Device::Cpu).unwrap();
        let opts = CgOptions {
            max_iters: n,
            damping: rho,
            ..CgOptions::default()
        };
        let got = conjugate_gradient(matvec_op(&at), &bt, &opts)
            .unwrap()
            .x
            .to_vec::<f64>()
            .unwrap();
        assert!(rel_err(&got, &want) < 1e-10);
    }

    #[test]
    fn neumann_error_decays_as_predicted() {
        // v_K − A⁻¹b = −(I − ηA)^{K+1} A⁻¹b exactly, so the error is predictable per K.
        let n = 16;
        let a = spd(n, 10.0, 7);
        let b = oracle_pair(&[n], 8).1;
        let xstar = solve(&a, &b);
        let eta = 1.0 / 10.0; // λ_max = 10 ⇒ η < 2/λ_max
        let at = Tensor::from_vec(a.clone(), &[n, n], &Device::Cpu).unwrap();
        let bt = Tensor::from_vec(b, &[n], &Device::Cpu).unwrap();
        let step = |v: &[f64]| -> Vec<f64> {
            (0..n)
                .map(|i| v[i] - eta * (0..n).map(|j| a[i * n + j] * v[j]).sum::<f64>())
                .collect()
        };
        let mut e = step(&xstar);
        let mut last = f64::INFINITY;
        // The reported residual is η‖(I − ηA)^K b‖, the size of the last term added.
        let mut term = oracle_pair(&[n], 8).1;
        for k in 0..40 {
            let out = neumann(matvec_op(&at), &bt, k, eta).unwrap();
            if k > 0 {
                term = step(&term);
            }
            let want_residual = eta * term.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(
                (out.residual_norm - want_residual).abs() <= 1e-12 * want_residual,
                "K = {k}: residual {} vs η‖(I − ηA)^K b‖ = {want_residual}",
                out.residual_norm
            );
            let got = out.x.to_vec::<f64>().unwrap();
            let err: Vec<f64> = got.iter().zip(&xstar).map(|(g, x)| g - x).collect();
            let want: Vec<f64> = e.iter().map(|v| -v).collect();
            assert!(rel_err(&err, &want) < 1e-8, "K = {k}");
            let norm = err.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(norm < last, "error must decrease monotonically");
            last = norm;
            e = step(&e);
        }
        // With η above 2/λ_max the series diverges.
        let bad = neumann(matvec_op(&at), &bt, 60, 0.25).unwrap();
        let err = rel_err(&bad.x.to_vec::<f64>().unwrap(), &xstar);
        assert!(err > 1e3, "η = 0.25 > 2/10 must diverge, error {err}");
    }

    #[test]
    fn a_diverging_fixed_point_names_itself() {
        let a = Tensor::from_vec(vec![4.0f64, 0.0, 0.0, 1.0], &[2, 2], &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![1.0f64, 1.0], &[2], &Device::Cpu).unwrap();
        let e = fixed_point(matvec_op(&a), &b, 400, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fixed_point") && !e.contains("neumann"), "{e}");
        assert!(e.contains("iteration diverged"), "{e}");
    }

    #[test]
    fn fixed_point_equals_neumann_with_one_term_fewer() {
        let n = 8;
        let (a, b, _) = system(n, 10.0, &Device::Cpu);
        let eta = 0.05;
        let k = 7;
        // Independent fixed-point loop on the host.
        let av = a.to_vec::<f64>().unwrap();
        let bv = b.to_vec::<f64>().unwrap();
        let mut u = vec![0.0; n];
        for _ in 0..k {
            u = (0..n)
                .map(|i| u[i] - eta * (0..n).map(|j| av[i * n + j] * u[j]).sum::<f64>() + bv[i])
                .collect();
        }
        let want: Vec<f64> = u.iter().map(|v| eta * v).collect();
        let got = fixed_point(matvec_op(&a), &b, k, eta)
            .unwrap()
            .x
            .to_vec::<f64>()
            .unwrap();
        assert!(rel_err(&got, &want) < 1e-13);
        let via_neumann = neumann(matvec_op(&a), &b, k - 1, eta)
            .unwrap()
            .x
            .to_vec::<f64>()
            .unwrap();
        assert_eq!(got, via_neumann);
    }

    #[test]
    fn bad_options_are_errors() {
        let (a, b, _) = system(4, 10.0, &Device::Cpu);
        let bad = |o: CgOptions| conjugate_gradient(matvec_op(&a), &b, &o).unwrap_err();
        assert!(matches!(
            bad(CgOptions {
                max_iters: 0,
                ..CgOptions::default()
            }),
            Error::InvalidArgument { .. }
        ));
        assert!(matches!(
            bad(CgOptions {
                check_every: 0,
                tol: Some(1e-3),
                ..CgOptions::default()
            }),
            Error::InvalidArgument { .. }
        ));
        for (damping, tol) in [
            (f64::NAN, None),
            (-1e-3, None),
            (0.0, Some(-1e-3)),
            (0.0, Some(f64::NAN)),
        ] {
            let e = bad(CgOptions {
                damping,
                tol,
                ..CgOptions::default()
            });
            assert!(
                matches!(e, Error::InvalidArgument { .. }),
                "damping {damping}, tol {tol:?}: {e}"
            );
        }
        // Zero is a valid tolerance and a valid damping: run all iterations, undamped.
        let opts = CgOptions {
            max_iters: 4,
            tol: Some(0.0),
            damping: 0.0,
            check_every: 1,
        };
        let out = conjugate_gradient(matvec_op(&a), &b, &opts).unwrap();
        assert_eq!(out.iterations, 4);
        assert!(matches!(
            neumann(matvec_op(&a), &b, 3, 0.0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            fixed_point(matvec_op(&a), &b, 0, 0.1),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn gpu_cg_and_neumann_match_the_f64_solution() {
        let Some(gpu) = gpu_or_skip() else { return };
        let n = 37;
        let (a, b, want) = system(n, 10.0, &gpu);
        let opts = CgOptions {
            max_iters: n,
            ..CgOptions::default()
        };
        let out = conjugate_gradient(matvec_op(&a), &b, &opts).unwrap();
        // f32 arithmetic: κ = 10 and n = 37 keep CG's rounding near κ·ε_f32.
        assert!(rel_err(&out.x.to_vec::<f64>().unwrap(), &want) < 1e-4);
        let nm = neumann(matvec_op(&a), &b, 300, 0.1).unwrap();
        assert!(rel_err(&nm.x.to_vec::<f64>().unwrap(), &want) < 1e-4);
    }
}
