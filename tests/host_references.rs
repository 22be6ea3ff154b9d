//! Independent references, written out on the host in f64: the built-in problems'
//! losses, gradients and second derivatives from explicit formulas; RAD, T-RAD, forward
//! mode and one-step from a host unroll; the outer optimizers and HOAG step by step.
//!
//! Nothing on the expected side calls blo's loss, rule, solver or optimizer code: blo
//! computes only the values under test. Where blo's result is compared with itself
//! elsewhere (GPU against CPU, one method against another), these tests are what tie
//! the shared code to its definition.

use blo::bilevel::{
    HoagConfig, Inner, InnerOptimizer, Method, OuterConfig, OuterOptimizer, Problem, WarmStart,
    hoag, hypergradient_from, optimize,
};
use blo::problems::data::{
    CleaningData, Matrix, Split, cleaning_split, synthetic_classification,
    synthetic_regression_pair,
};
use blo::problems::{HyperCleaning, Logistic, Ridge};
use blo::testing::{oracle_pair, rel_err};
use blo::{DType, Device, HvpOperator, Tensor, grad};

const CPU: Device = Device::Cpu;

// ---- small host helpers ------------------------------------------------------------

fn t64(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &CPU).unwrap()
}

fn vals(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(|t| t.to_vec::<f64>().unwrap()).collect()
}

/// Seeded values uniform in [lo, hi).
fn uniform(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    oracle_pair(&[n], seed)
        .1
        .iter()
        .map(|u| lo + (hi - lo) * (u + 1.0) * 0.5)
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// a + s·b
fn axpy(a: &[f64], s: f64, b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + s * y).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Row i of a row-major matrix.
fn row(m: &Matrix, i: usize) -> &[f64] {
    &m.data[i * m.cols..(i + 1) * m.cols]
}

/// Solves A x = b (A n×n row-major, non-singular) by Gaussian elimination with partial
/// pivoting, written here so the reference shares no code with blo's solvers.
fn gauss_solve(a: &[f64], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let mut r = a[i * n..(i + 1) * n].to_vec();
            r.push(b[i]);
            r
        })
        .collect();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&p, &q| m[p][col].abs().total_cmp(&m[q][col].abs()))
            .unwrap();
        m.swap(col, piv);
        let pivot_row = m[col].clone();
        for r in m.iter_mut().skip(col + 1) {
            let f = r[col] / pivot_row[col];
            for (x, p) in r.iter_mut().zip(&pivot_row).skip(col) {
                *x -= f * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| m[r][c] * x[c]).sum();
        x[r] = (m[r][n] - s) / m[r][r];
    }
    x
}

#[track_caller]
fn assert_rel(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let e = rel_err(got, want);
    assert!(
        e <= tol,
        "{what}: relative error {e:e} > {tol:e}\n got {got:?}\nwant {want:?}"
    );
}

// ---- host problems -----------------------------------------------------------------

/// What the host unroll needs of a problem, with w and λ flat: the inner gradient, its
/// Hessian-vector product H v, the mixed product Jᵀa = ∇_λ ⟨∇_w L_in, a⟩, and the outer
/// loss with its w-gradient (the outer losses here do not depend on λ).
trait HostProblem {
    fn loss_in(&self, w: &[f64], lam: &[f64]) -> f64;
    fn grad_in(&self, w: &[f64], lam: &[f64]) -> Vec<f64>;
    fn hvp_in(&self, w: &[f64], lam: &[f64], v: &[f64]) -> Vec<f64>;
    fn mixed_in(&self, w: &[f64], lam: &[f64], a: &[f64]) -> Vec<f64>;
    fn loss_out(&self, w: &[f64]) -> f64;
    fn grad_out(&self, w: &[f64]) -> Vec<f64>;
}

/// Ridge: L_in = ‖Xw − y‖²/(2n) + ½ Σ e^{λ_j} w_j², L_out = ‖X_v w − y_v‖²/(2m).
struct HostRidge {
    x: Matrix,
    y: Vec<f64>,
    xv: Matrix,
    yv: Vec<f64>,
}

impl HostRidge {
    fn synthetic(n: usize, m: usize, d: usize, seed: u64) -> Self {
        let ((x, y), (xv, yv)) = synthetic_regression_pair(n, m, d, 0.5, seed);
        Self { x, y, xv, yv }
    }

    fn blo(&self) -> Ridge {
        Ridge::new(&self.x, &self.y, &self.xv, &self.yv, &CPU, DType::F64).unwrap()
    }

    /// Xᵀ(X v)/n for X [n, d].
    fn gram(x: &Matrix, v: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; x.cols];
        for i in 0..x.rows {
            let r = dot(row(x, i), v);
            for (o, xij) in out.iter_mut().zip(row(x, i)) {
                *o += xij * r / x.rows as f64;
            }
        }
        out
    }

    /// Xᵀ(X w − y)/n.
    fn fit_grad(x: &Matrix, y: &[f64], w: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; x.cols];
        for (i, yi) in y.iter().enumerate() {
            let r = dot(row(x, i), w) - yi;
            for (o, xij) in out.iter_mut().zip(row(x, i)) {
                *o += xij * r / x.rows as f64;
            }
        }
        out
    }

    fn fit_loss(x: &Matrix, y: &[f64], w: &[f64]) -> f64 {
        (0..x.rows)
            .map(|i| (dot(row(x, i), w) - y[i]).powi(2))
            .sum::<f64>()
            / (2.0 * x.rows as f64)
    }

    /// The implicit hypergradient at w: −e^λ ⊙ w ⊙ H⁻¹ ∇_w L_out(w) with
    /// H = XᵀX/n + diag(e^λ), by an explicit dense solve.
    fn implicit_hypergradient(&self, w: &[f64], lam: &[f64]) -> Vec<f64> {
        let d = w.len();
        let mut h = vec![0.0; d * d];
        for j in 0..d {
            let mut e = vec![0.0; d];
            e[j] = 1.0;
            for (i, v) in self.hvp_in(w, lam, &e).into_iter().enumerate() {
                h[i * d + j] = v;
            }
        }
        let v = gauss_solve(&h, &self.grad_out(w));
        (0..d).map(|j| -lam[j].exp() * w[j] * v[j]).collect()
    }
}

impl HostProblem for HostRidge {
    fn loss_in(&self, w: &[f64], lam: &[f64]) -> f64 {
        let reg: f64 = w.iter().zip(lam).map(|(wj, l)| l.exp() * wj * wj).sum();
        Self::fit_loss(&self.x, &self.y, w) + 0.5 * reg
    }
    fn grad_in(&self, w: &[f64], lam: &[f64]) -> Vec<f64> {
        let g = Self::fit_grad(&self.x, &self.y, w);
        (0..w.len()).map(|j| g[j] + lam[j].exp() * w[j]).collect()
    }
    fn hvp_in(&self, _w: &[f64], lam: &[f64], v: &[f64]) -> Vec<f64> {
        let g = Self::gram(&self.x, v);
        (0..v.len()).map(|j| g[j] + lam[j].exp() * v[j]).collect()
    }
    fn mixed_in(&self, w: &[f64], lam: &[f64], a: &[f64]) -> Vec<f64> {
        (0..w.len()).map(|j| lam[j].exp() * w[j] * a[j]).collect()
    }
    fn loss_out(&self, w: &[f64]) -> f64 {
        Self::fit_loss(&self.xv, &self.yv, w)
    }
    fn grad_out(&self, w: &[f64]) -> Vec<f64> {
        Self::fit_grad(&self.xv, &self.yv, w)
    }
}

/// Hyper-cleaning on a linear classifier, w = [W (d×c, row-major), b (c)]:
/// L_in = (1/n) Σ_i σ(λ_i)·CE(x_i W + b, y_i) + (μ/2)‖W‖² (b not penalised),
/// L_out = (1/m) Σ_i CE(x_i W + b, y_i) on the validation split.
struct HostCleaning {
    data: CleaningData,
    mu: f64,
}

impl HostCleaning {
    fn tiny(mu: f64) -> Self {
        let (x, y) = synthetic_classification(90, 6, 3, 2.0, 5);
        let data = cleaning_split(&x, &y, 3, 30, 30, 0.3, 1).unwrap();
        Self { data, mu }
    }

    fn blo(&self) -> HyperCleaning {
        HyperCleaning::new(&self.data, self.mu, &CPU, DType::F64).unwrap()
    }

    fn dims(&self) -> (usize, usize) {
        (self.data.train.x.cols, self.data.classes)
    }

    /// The w-vector as blo's two tensors.
    fn tensors(&self, w: &[f64]) -> Vec<Tensor> {
        let (d, c) = self.dims();
        vec![t64(&w[..d * c], &[d, c]), t64(&w[d * c..], &[c])]
    }

    /// softmax(x_i W + b) for every row of a split.
    fn probs(&self, s: &Split, w: &[f64]) -> Vec<Vec<f64>> {
        let (d, c) = self.dims();
        (0..s.x.rows)
            .map(|i| {
                let xi = row(&s.x, i);
                let z: Vec<f64> = (0..c)
                    .map(|k| w[d * c + k] + (0..d).map(|j| xi[j] * w[j * c + k]).sum::<f64>())
                    .collect();
                let top = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|v| (v - top).exp()).collect();
                let total: f64 = e.iter().sum();
                e.iter().map(|v| v / total).collect()
            })
            .collect()
    }

    /// Per-example cross-entropies −log p_{i, y_i}.
    fn ces(&self, s: &Split, w: &[f64]) -> Vec<f64> {
        self.probs(s, w)
            .iter()
            .zip(&s.labels)
            .map(|(p, &y)| -p[y].ln())
            .collect()
    }

    /// ∂/∂w of Σ_i coef_i·(logit row i · r_i) for per-row vectors r_i: Xᵀ R and Σ_i r_i,
    /// scaled by coef_i.
    fn pull_back(&self, s: &Split, coef: &[f64], r: &[Vec<f64>]) -> Vec<f64> {
        let (d, c) = self.dims();
        let mut out = vec![0.0; d * c + c];
        for i in 0..s.x.rows {
            let xi = row(&s.x, i);
            for k in 0..c {
                let g = coef[i] * r[i][k];
                for j in 0..d {
                    out[j * c + k] += xi[j] * g;
                }
                out[d * c + k] += g;
            }
        }
        out
    }

    /// p_i − onehot(y_i) for every row.
    fn residuals(&self, s: &Split, w: &[f64]) -> Vec<Vec<f64>> {
        self.probs(s, w)
            .into_iter()
            .zip(&s.labels)
            .map(|(mut p, &y)| {
                p[y] -= 1.0;
                p
            })
            .collect()
    }

    /// Directional change of the logits x_i V + c along v = [V, c].
    fn dlogits(&self, s: &Split, v: &[f64]) -> Vec<Vec<f64>> {
        let (d, c) = self.dims();
        (0..s.x.rows)
            .map(|i| {
                let xi = row(&s.x, i);
                (0..c)
                    .map(|k| v[d * c + k] + (0..d).map(|j| xi[j] * v[j * c + k]).sum::<f64>())
                    .collect()
            })
            .collect()
    }

    fn weights(&self, lam: &[f64]) -> Vec<f64> {
        let n = lam.len() as f64;
        lam.iter().map(|&l| sigmoid(l) / n).collect()
    }

    /// ∂L/∂λ_i = σ'(λ_i)·CE_i / n.
    fn grad_in_lambda(&self, w: &[f64], lam: &[f64]) -> Vec<f64> {
        let n = lam.len() as f64;
        let ce = self.ces(&self.data.train, w);
        lam.iter()
            .zip(&ce)
            .map(|(&l, c)| sigmoid(l) * (1.0 - sigmoid(l)) * c / n)
            .collect()
    }
}

impl HostProblem for HostCleaning {
    fn loss_in(&self, w: &[f64], lam: &[f64]) -> f64 {
        let (d, c) = self.dims();
        let ce = self.ces(&self.data.train, w);
        let weighted: f64 = self.weights(lam).iter().zip(&ce).map(|(a, b)| a * b).sum();
        weighted + 0.5 * self.mu * dot(&w[..d * c], &w[..d * c])
    }

    fn grad_in(&self, w: &[f64], lam: &[f64]) -> Vec<f64> {
        let (d, c) = self.dims();
        let r = self.residuals(&self.data.train, w);
        let mut g = self.pull_back(&self.data.train, &self.weights(lam), &r);
        for j in 0..d * c {
            g[j] += self.mu * w[j];
        }
        g
    }

    /// dP_i = p_i ⊙ dz_i − p_i (p_i · dz_i): the softmax Jacobian applied to the
    /// logits' change, weighted like the gradient, plus μV.
    fn hvp_in(&self, w: &[f64], lam: &[f64], v: &[f64]) -> Vec<f64> {
        let (d, c) = self.dims();
        let p = self.probs(&self.data.train, w);
        let dz = self.dlogits(&self.data.train, v);
        let dp: Vec<Vec<f64>> = p
            .iter()
            .zip(&dz)
            .map(|(pi, dzi)| {
                let s = dot(pi, dzi);
                pi.iter().zip(dzi).map(|(a, b)| a * (b - s)).collect()
            })
            .collect();
        let mut h = self.pull_back(&self.data.train, &self.weights(lam), &dp);
        for j in 0..d * c {
            h[j] += self.mu * v[j];
        }
        h
    }

    /// ∂/∂λ_i ⟨∇_w L_in, a⟩ = σ'(λ_i)/n · (x_i A + a_b) · (p_i − onehot(y_i)).
    fn mixed_in(&self, w: &[f64], lam: &[f64], a: &[f64]) -> Vec<f64> {
        let n = lam.len() as f64;
        let r = self.residuals(&self.data.train, w);
        let da = self.dlogits(&self.data.train, a);
        lam.iter()
            .enumerate()
            .map(|(i, &l)| sigmoid(l) * (1.0 - sigmoid(l)) / n * dot(&da[i], &r[i]))
            .collect()
    }

    fn loss_out(&self, w: &[f64]) -> f64 {
        let ce = self.ces(&self.data.val, w);
        ce.iter().sum::<f64>() / ce.len() as f64
    }

    fn grad_out(&self, w: &[f64]) -> Vec<f64> {
        let m = self.data.val.x.rows;
        let r = self.residuals(&self.data.val, w);
        self.pull_back(&self.data.val, &vec![1.0 / m as f64; m], &r)
    }
}

// ---- the host unroll ---------------------------------------------------------------

#[derive(Clone, Copy)]
enum HostOpt {
    /// w ← w − η∇
    Gd(f64),
    /// m ← μm + ∇; w ← w − ηm (m₀ = 0)
    Momentum(f64, f64),
}

impl HostOpt {
    fn blo(self) -> InnerOptimizer {
        match self {
            HostOpt::Gd(lr) => InnerOptimizer::Gd { lr },
            HostOpt::Momentum(lr, momentum) => InnerOptimizer::Momentum { lr, momentum },
        }
    }
}

/// The states (w_t, m_t), t = 0..=T, of T optimizer steps from w₀.
fn host_trajectory(
    p: &dyn HostProblem,
    w0: &[f64],
    lam: &[f64],
    opt: HostOpt,
    t: usize,
) -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut states = vec![(w0.to_vec(), vec![0.0; w0.len()])];
    for _ in 0..t {
        let (w, m) = states.last().unwrap();
        let g = p.grad_in(w, lam);
        let next = match opt {
            HostOpt::Gd(lr) => (axpy(w, -lr, &g), m.clone()),
            HostOpt::Momentum(lr, mu) => {
                let m = axpy(&g, mu, m);
                (axpy(w, -lr, &m), m)
            }
        };
        states.push(next);
    }
    states
}

/// T-RAD(T, K) by hand: the adjoints of the last K steps, from ∇_w L_out(w_T), with
/// w_{T−K} a constant. K = T is RAD.
fn host_trad(
    p: &dyn HostProblem,
    w0: &[f64],
    lam: &[f64],
    opt: HostOpt,
    t: usize,
    k: usize,
) -> Vec<f64> {
    let states = host_trajectory(p, w0, lam, opt, t);
    let mut hyper = vec![0.0; lam.len()];
    let mut a_w = p.grad_out(&states[t].0);
    let mut a_m = vec![0.0; a_w.len()];
    for s in (t - k..t).rev() {
        let w = &states[s].0;
        match opt {
            // w' = w − η∇L(w, λ)
            HostOpt::Gd(lr) => {
                hyper = axpy(&hyper, -lr, &p.mixed_in(w, lam, &a_w));
                a_w = axpy(&a_w, -lr, &p.hvp_in(w, lam, &a_w));
            }
            // m' = μm + ∇L(w, λ), w' = w − ηm': m' receives a_m and −η·a_w.
            HostOpt::Momentum(lr, mu) => {
                let a_mp = axpy(&a_m, -lr, &a_w);
                hyper = axpy(&hyper, 1.0, &p.mixed_in(w, lam, &a_mp));
                a_w = axpy(&a_w, 1.0, &p.hvp_in(w, lam, &a_mp));
                a_m = a_mp.iter().map(|v| mu * v).collect();
            }
        }
    }
    hyper
}

fn blo_hypergradient(
    p: &dyn Problem,
    w0: &[Tensor],
    lam: &[f64],
    opt: HostOpt,
    t: usize,
    method: Method,
) -> (Vec<f64>, blo::bilevel::Hypergradient) {
    let inner = Inner {
        optimizer: opt.blo(),
        steps: t,
    };
    let h = hypergradient_from(p, &[t64(lam, &[lam.len()])], w0, &inner, &method).unwrap();
    (vals(&h.grad), h)
}

/// RAD, forward mode and T-RAD(K) for K = 1, 2, T−1, T against the host unroll, with a
/// guard that neighbouring K differ by far more than the tolerance (so a sweep over one
/// step too many or too few, step 0 included, cannot pass).
fn check_unrolled(
    name: &str,
    host: &dyn HostProblem,
    p: &dyn Problem,
    w0: &[Tensor],
    lam: &[f64],
    opt: HostOpt,
    t: usize,
) {
    // Both sides are f64 sums of the same terms in different orders: measured ≤ 5.3e-15
    // (forward mode included); 1e-12 leaves room for another summation order.
    let tol = 1e-12;
    let w0h = vals(w0);
    let trad = |k: usize| host_trad(host, &w0h, lam, opt, t, k);
    for k in 1..t {
        let (a, b) = (trad(k), trad(k + 1));
        assert!(
            rel_err(&a, &b) > 1e3 * tol,
            "{name}: T-RAD({k}) and T-RAD({}) must differ for this test to tell them apart",
            k + 1
        );
    }
    let rad = trad(t);
    let (got, h) = blo_hypergradient(p, w0, lam, opt, t, Method::Rad);
    assert_rel(&got, &rad, tol, &format!("{name}: rad"));
    let w_t = &host_trajectory(host, &w0h, lam, opt, t)[t].0;
    assert_rel(&vals(&h.w), w_t, tol, &format!("{name}: w_T"));
    assert_rel(
        &[h.report.outer_loss],
        &[host.loss_out(w_t)],
        tol,
        &format!("{name}: outer loss at w_T"),
    );
    let (got, _) = blo_hypergradient(p, w0, lam, opt, t, Method::Forward);
    assert_rel(&got, &rad, tol, &format!("{name}: forward"));
    for k in [1, 2, t - 1, t] {
        let (got, _) = blo_hypergradient(p, w0, lam, opt, t, Method::Trad { k });
        assert_rel(&got, &trad(k), tol, &format!("{name}: trad(K = {k})"));
    }
}

// ---- the problems against their definitions ----------------------------------------

#[test]
fn hyper_cleaning_losses_gradients_and_second_derivatives_match_explicit_softmax_formulas() {
    let host = HostCleaning::tiny(0.05);
    let p = host.blo();
    let (d, c) = host.dims();
    let n = host.data.train.x.rows;
    // A nonzero bias, so a penalty on b (which the problem does not have) would show.
    let w = uniform(d * c + c, 1, -1.0, 1.0);
    let lam = uniform(n, 2, -2.0, 2.0);
    let (v, a) = (
        uniform(d * c + c, 3, -1.0, 1.0),
        uniform(d * c + c, 4, -1.0, 1.0),
    );
    let wt: Vec<Tensor> = host.tensors(&w).iter().map(Tensor::requires_grad).collect();
    let lt = t64(&lam, &[n]).requires_grad();
    let loss = p.inner_loss(&wt, std::slice::from_ref(&lt)).unwrap();
    // Same formulas, f64, a few hundred terms: rounding differences of ~1e-16.
    let tol = 1e-12;
    assert_rel(
        &[loss.to_scalar::<f64>().unwrap()],
        &[host.loss_in(&w, &lam)],
        tol,
        "L_in",
    );
    let g = grad(&loss, &[&wt[0], &wt[1], &lt], false).unwrap();
    assert_rel(&vals(&g[..2]), &host.grad_in(&w, &lam), tol, "∇_w L_in");
    assert_rel(
        &vals(&g[2..]),
        &host.grad_in_lambda(&w, &lam),
        tol,
        "∇_λ L_in",
    );
    let op = HvpOperator::new(&loss, &[&wt[0], &wt[1]]).unwrap();
    let vt = host.tensors(&v);
    let hv = op.hvp(&[&vt[0], &vt[1]]).unwrap();
    assert_rel(&vals(&hv), &host.hvp_in(&w, &lam, &v), tol, "H v");
    let at = host.tensors(&a);
    let ja = op.mixed(&[&lt], &[&at[0], &at[1]]).unwrap();
    assert_rel(&vals(&ja), &host.mixed_in(&w, &lam, &a), tol, "Jᵀa");

    let loss = p.outer_loss(&wt, std::slice::from_ref(&lt)).unwrap();
    assert_rel(
        &[loss.to_scalar::<f64>().unwrap()],
        &[host.loss_out(&w)],
        tol,
        "L_out",
    );
    let g = grad(&loss, &[&wt[0], &wt[1], &lt], false).unwrap();
    assert_rel(&vals(&g[..2]), &host.grad_out(&w), tol, "∇_w L_out");
    assert!(vals(&g[2..]).iter().all(|&x| x == 0.0), "L_out has no λ");
}

#[test]
fn logistic_loss_matches_its_definition() {
    let (x, y) = synthetic_classification(40, 4, 3, 1.5, 2);
    let idx: Vec<usize> = (0..40).collect();
    let split = |r: std::ops::Range<usize>| Split {
        x: x.select_rows(&idx[r.clone()]),
        labels: y[r].to_vec(),
    };
    let (train, val) = (split(0..25), split(25..40));
    let (d, c) = (4, 3);
    let w = uniform(d * c + c, 5, -1.0, 1.0);
    let cleaning = HostCleaning {
        data: CleaningData {
            train: train.clone(),
            corrupted: vec![false; 25],
            val: val.clone(),
            test: val.clone(),
            classes: c,
        },
        mu: 0.0,
    };
    let mean_ce = |s: &Split| {
        let ce = cleaning.ces(s, &w);
        ce.iter().sum::<f64>() / ce.len() as f64
    };
    for per_feature in [false, true] {
        let p = Logistic::new(&train, &val, c, per_feature, &CPU, DType::F64).unwrap();
        let lam = if per_feature {
            uniform(d, 6, -1.0, 1.0)
        } else {
            vec![0.3]
        };
        let strength = |j: usize| lam[if per_feature { j } else { 0 }].exp();
        // ½ Σ_j e^{λ_j} ‖W_j,:‖² and its λ-gradient.
        let row_sq = |j: usize| dot(&w[j * c..(j + 1) * c], &w[j * c..(j + 1) * c]);
        let reg: f64 = (0..d).map(|j| 0.5 * strength(j) * row_sq(j)).sum();
        let mut want_gl = vec![0.0; lam.len()];
        for j in 0..d {
            want_gl[if per_feature { j } else { 0 }] += 0.5 * strength(j) * row_sq(j);
        }
        let wt: Vec<Tensor> = cleaning
            .tensors(&w)
            .iter()
            .map(Tensor::requires_grad)
            .collect();
        let lt = t64(&lam, &[lam.len()]).requires_grad();
        let loss = p.inner_loss(&wt, std::slice::from_ref(&lt)).unwrap();
        let what = format!("per_feature = {per_feature}");
        assert_rel(
            &[loss.to_scalar::<f64>().unwrap()],
            &[mean_ce(&train) + reg],
            1e-12,
            &format!("{what}: L_in"),
        );
        let gl = grad(&loss, &[&lt], false).unwrap();
        assert_rel(&vals(&gl), &want_gl, 1e-12, &format!("{what}: ∇_λ L_in"));
        let out = p.outer_loss(&wt, std::slice::from_ref(&lt)).unwrap();
        assert_rel(
            &[out.to_scalar::<f64>().unwrap()],
            &[mean_ce(&val)],
            1e-12,
            &format!("{what}: L_out"),
        );
    }
}

#[test]
fn ridge_losses_and_derivatives_match_their_definition() {
    let host = HostRidge::synthetic(23, 17, 5, 4);
    let p = host.blo();
    let (w, lam, v) = (
        uniform(5, 7, -1.0, 1.0),
        uniform(5, 8, -1.0, 1.0),
        uniform(5, 9, -1.0, 1.0),
    );
    let wt = t64(&w, &[5]).requires_grad();
    let lt = t64(&lam, &[5]).requires_grad();
    let loss = p
        .inner_loss(std::slice::from_ref(&wt), std::slice::from_ref(&lt))
        .unwrap();
    assert_rel(
        &[loss.to_scalar::<f64>().unwrap()],
        &[host.loss_in(&w, &lam)],
        1e-12,
        "L_in",
    );
    let op = HvpOperator::new(&loss, &[&wt]).unwrap();
    assert_rel(
        &vals(&op.gradient()),
        &host.grad_in(&w, &lam),
        1e-12,
        "∇_w L_in",
    );
    let vt = t64(&v, &[5]);
    assert_rel(
        &vals(&op.hvp(&[&vt]).unwrap()),
        &host.hvp_in(&w, &lam, &v),
        1e-12,
        "H v",
    );
    assert_rel(
        &vals(&op.mixed(&[&lt], &[&vt]).unwrap()),
        &host.mixed_in(&w, &lam, &v),
        1e-12,
        "Jᵀv",
    );
    let out = p
        .outer_loss(std::slice::from_ref(&wt), std::slice::from_ref(&lt))
        .unwrap();
    assert_rel(
        &[out.to_scalar::<f64>().unwrap()],
        &[host.loss_out(&w)],
        1e-12,
        "L_out",
    );
}

// ---- unrolled methods where step 0 matters -----------------------------------------

#[test]
fn unrolled_methods_match_a_host_unroll_on_hyper_cleaning() {
    let host = HostCleaning::tiny(0.05);
    let p = host.blo();
    let (d, c) = host.dims();
    let lam = uniform(host.data.train.x.rows, 11, -2.0, 2.0);
    // From w₀ = 0 (the problem's own start) and from a random w₀. At W = 0 the
    // probabilities are uniform, so ∂Φ/∂λ at step 0 is not zero here, unlike ridge.
    let starts = [
        p.init_w().unwrap(),
        host.tensors(&uniform(d * c + c, 12, -0.5, 0.5)),
    ];
    for (i, w0) in starts.iter().enumerate() {
        for opt in [HostOpt::Gd(1.0), HostOpt::Momentum(0.5, 0.6)] {
            let name = format!("hyper-cleaning start {i} {:?}", opt.blo());
            check_unrolled(&name, &host, &p, w0, &lam, opt, 6);
        }
    }
}

#[test]
fn unrolled_methods_match_a_host_unroll_on_ridge_from_a_random_start() {
    let host = HostRidge::synthetic(40, 30, 5, 3);
    let p = host.blo();
    let lam = uniform(5, 13, -1.0, 1.0);
    let w0 = vec![t64(&uniform(5, 14, -1.0, 1.0), &[5])];
    for opt in [HostOpt::Gd(0.15), HostOpt::Momentum(0.1, 0.7)] {
        let name = format!("ridge {:?}", opt.blo());
        check_unrolled(&name, &host, &p, &w0, &lam, opt, 9);
    }
}

/// RAD against central differences of the host's unrolled outer loss
/// F(λ) = L_out(w_T(λ)), on hyper-cleaning from w₀ = 0.
#[test]
fn rad_matches_finite_differences_of_the_host_unroll_on_hyper_cleaning() {
    let host = HostCleaning::tiny(0.05);
    let p = host.blo();
    let n = host.data.train.x.rows;
    let lam = uniform(n, 15, -2.0, 2.0);
    let w0 = p.init_w().unwrap();
    let w0h = vals(&w0);
    let (opt, t) = (HostOpt::Gd(1.0), 8);
    let f = |l: &[f64]| host.loss_out(&host_trajectory(&host, &w0h, l, opt, t)[t].0);
    let h = 1e-5;
    let fd: Vec<f64> = (0..n)
        .map(|i| {
            let (mut a, mut b) = (lam.clone(), lam.clone());
            a[i] += h;
            b[i] -= h;
            (f(&a) - f(&b)) / (2.0 * h)
        })
        .collect();
    let (got, _) = blo_hypergradient(&p, &w0, &lam, opt, t, Method::Rad);
    // Central differences: O(h²) truncation ≈ 1e-10 and rounding ε·|F|/h ≈ 1e-11.
    assert_rel(&got, &fd, 1e-6, "rad vs finite differences");
}

// ---- one-step ----------------------------------------------------------------------

#[test]
fn one_step_matches_its_definition_and_trad_with_one_step() {
    let host = HostCleaning::tiny(0.05);
    let p = host.blo();
    let lam = uniform(host.data.train.x.rows, 16, -2.0, 2.0);
    let w0 = p.init_w().unwrap();
    let (t, lr, xi) = (5, 1.0, 0.4);
    let w_t = host_trajectory(&host, &vals(&w0), &lam, HostOpt::Gd(lr), t)[t]
        .0
        .clone();
    // w' = w_T − ξ ∇_w L_in(w_T); h = ∇_λ L_out(w') − ξ J(w_T) ∇_w L_out(w'), and the
    // outer loss has no λ.
    let w_virtual = axpy(&w_t, -xi, &host.grad_in(&w_t, &lam));
    let u = host.grad_out(&w_virtual);
    let want: Vec<f64> = host
        .mixed_in(&w_t, &lam, &u)
        .iter()
        .map(|v| -xi * v)
        .collect();
    let (exact, h) = blo_hypergradient(
        &p,
        &w0,
        &lam,
        HostOpt::Gd(lr),
        t,
        Method::OneStep { xi, exact: true },
    );
    // f64 on both sides; measured ≤ 4.2e-16.
    assert_rel(&exact, &want, 1e-12, "one_step exact");
    assert_rel(&vals(&h.w), &w_virtual, 1e-12, "one_step's w'");
    assert_rel(
        &[h.report.outer_loss],
        &[host.loss_out(&w_virtual)],
        1e-12,
        "one_step's L_out(w')",
    );
    let (fd, _) = blo_hypergradient(
        &p,
        &w0,
        &lam,
        HostOpt::Gd(lr),
        t,
        Method::OneStep { xi, exact: false },
    );
    // DARTS's central difference with a step of norm 0.01 in w: O(0.01²) truncation of a
    // smooth softmax loss: measured 4.8e-5 here, so 2e-4; a wrong sign or factor would
    // be off by O(1).
    assert_rel(&fd, &want, 2e-4, "one_step finite difference");
    // With the inner step size equal to ξ, one more inner step differentiated alone is
    // the same computation: T-RAD(T + 1, K = 1) = one_step(ξ) at w_T.
    let (trad1, _) =
        blo_hypergradient(&p, &w0, &lam, HostOpt::Gd(xi), t + 1, Method::Trad { k: 1 });
    let (one, _) = blo_hypergradient(
        &p,
        &w0,
        &lam,
        HostOpt::Gd(xi),
        t,
        Method::OneStep { xi, exact: true },
    );
    assert_rel(
        &one,
        &trad1,
        1e-12,
        "one_step(ξ) vs trad(T + 1, K = 1) with η = ξ",
    );
}

// ---- outer optimizers and HOAG -----------------------------------------------------

/// L_out(λ) = ½ Σ c_i (λ_i − a_i)², with a dummy inner problem ½‖w‖² that λ does not
/// enter: every method's hypergradient is exactly c ⊙ (λ − a).
struct Bowl {
    a: Vec<f64>,
    c: Vec<f64>,
}

impl Bowl {
    fn new() -> Self {
        // Curvatures over three orders of magnitude, so Adam's per-coordinate scaling
        // and SGD's shared step give visibly different paths.
        Self {
            a: vec![1.0, -2.0, 0.5, 3.0],
            c: vec![0.05, 0.5, 5.0, 50.0],
        }
    }
    fn loss(&self, lam: &[f64]) -> f64 {
        (0..lam.len())
            .map(|i| 0.5 * self.c[i] * (lam[i] - self.a[i]).powi(2))
            .sum()
    }
    fn grad(&self, lam: &[f64]) -> Vec<f64> {
        (0..lam.len())
            .map(|i| self.c[i] * (lam[i] - self.a[i]))
            .collect()
    }
}

impl Problem for Bowl {
    fn init_w(&self) -> blo::Result<Vec<Tensor>> {
        Ok(vec![t64(&[0.5], &[1])])
    }
    fn lambda_shapes(&self) -> Vec<Vec<usize>> {
        vec![vec![self.a.len()]]
    }
    fn inner_loss(&self, w: &[Tensor], _lambda: &[Tensor]) -> blo::Result<Tensor> {
        w[0].sqnorm()?.scale(0.5)
    }
    fn outer_loss(&self, _w: &[Tensor], lambda: &[Tensor]) -> blo::Result<Tensor> {
        let n = self.a.len();
        lambda[0]
            .sub(&t64(&self.a, &[n]))?
            .square()?
            .mul(&t64(&self.c, &[n]))?
            .sum()?
            .scale(0.5)
    }
}

#[test]
fn sgd_and_adam_follow_their_update_rules_step_by_step() {
    let bowl = Bowl::new();
    let lam0 = vec![0.0, 0.0, 0.0, 0.0];
    let steps = 12;
    let (beta1, beta2, eps) = (0.8, 0.95, 1e-3);
    for optimizer in [
        OuterOptimizer::Sgd { lr: 0.03 },
        OuterOptimizer::Adam {
            lr: 0.2,
            beta1,
            beta2,
            eps,
        },
    ] {
        // The host path λ_0..λ_steps.
        let mut path = vec![lam0.clone()];
        let (mut m, mut v) = (vec![0.0; 4], vec![0.0; 4]);
        for t in 1..=steps as i32 {
            let lam = path.last().unwrap().clone();
            let g = bowl.grad(&lam);
            let next: Vec<f64> = match optimizer {
                OuterOptimizer::Sgd { lr } => axpy(&lam, -lr, &g),
                OuterOptimizer::Adam { lr, .. } => (0..4)
                    .map(|i| {
                        m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                        v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
                        let m_hat = m[i] / (1.0 - beta1.powi(t));
                        let v_hat = v[i] / (1.0 - beta2.powi(t));
                        lam[i] - lr * m_hat / (v_hat.sqrt() + eps)
                    })
                    .collect(),
            };
            path.push(next);
        }
        let config = OuterConfig {
            steps,
            optimizer,
            warm_start: WarmStart::Warm,
        };
        let inner = Inner {
            optimizer: InnerOptimizer::Gd { lr: 0.1 },
            steps: 2,
        };
        let trace = optimize(&bowl, &[t64(&lam0, &[4])], &inner, &Method::Rad, &config).unwrap();
        assert_eq!(trace.steps.len(), steps + 1);
        // Step k reports the loss and hypergradient norm at λ_k: that pins λ_k down
        // step by step, before any error could be averaged away.
        for (k, s) in trace.steps.iter().enumerate() {
            let what = format!("{optimizer:?} step {k}");
            assert_rel(&[s.outer_loss], &[bowl.loss(&path[k])], 1e-12, &what);
            assert_rel(
                &[s.hypergrad_norm],
                &[norm(&bowl.grad(&path[k]))],
                1e-12,
                &what,
            );
        }
        assert_rel(
            &vals(&trace.lambda),
            &path[steps],
            1e-12,
            &format!("{optimizer:?}: final λ"),
        );
    }
}

/// HOAG on ridge against a host HOAG: at outer step k, GD warm-started from the last
/// w until ‖∇_w L_in‖ ≤ ε_k (checked every `check_every` steps), the implicit
/// hypergradient at that w, λ ← λ − lr·h, with ε_k = ε₀·decay^k. The number of inner
/// steps per outer step follows the tolerance schedule exactly.
#[test]
fn hoag_follows_its_tolerance_schedule() {
    let d = 5;
    let config = HoagConfig {
        outer_steps: 8,
        lr: 0.5,
        eps0: 1e-2,
        decay: 0.5,
        inner: InnerOptimizer::Gd { lr: 0.2 },
        max_inner_steps: 10_000,
        // d iterations: CG in f64 then solves H v = g to rounding, before its first
        // tolerance check (every 10 iterations), so the host's dense solve is the
        // same hypergradient.
        max_cg_iters: d,
        check_every: 3,
    };
    // The schedule matters here: later outer steps need more inner steps.
    let counts = check_hoag(&config);
    assert!(
        counts.iter().skip(1).any(|&c| c > counts[1]),
        "inner steps per outer step {counts:?} should grow as ε_k shrinks"
    );
    // With a cap of 7 that is not a multiple of the check period (bursts of 3, 3, 1),
    // the later outer steps stop at the cap.
    let capped = HoagConfig {
        max_inner_steps: 7,
        ..config
    };
    let counts = check_hoag(&capped);
    assert!(
        counts.iter().all(|&c| c <= 7) && counts.last() == Some(&7),
        "{counts:?}"
    );
}

/// Runs HOAG and the host HOAG on ridge d = 5 and compares them step by step; returns
/// the inner steps of each outer step.
fn check_hoag(config: &HoagConfig) -> Vec<usize> {
    let host = HostRidge::synthetic(40, 30, 5, 3);
    let p = host.blo();
    let d = 5;
    let lam0 = uniform(d, 17, -1.0, 0.0);
    let trace = hoag(&p, &[t64(&lam0, &[d])], config).unwrap();

    let mut lam = lam0.clone();
    let mut w = vec![0.0; d];
    for k in 0..=config.outer_steps {
        let eps = config.eps0 * config.decay.powi(k as i32);
        let mut taken = 0;
        loop {
            let burst = config.check_every.min(config.max_inner_steps - taken);
            for _ in 0..burst {
                w = axpy(&w, -0.2, &host.grad_in(&w, &lam));
            }
            taken += burst;
            if norm(&host.grad_in(&w, &lam)) <= eps || taken >= config.max_inner_steps {
                break;
            }
        }
        let s = &trace.steps[k];
        assert_eq!(
            s.report.inner_steps, taken,
            "outer step {k}: inner steps to reach ε_k = {eps:e}"
        );
        assert_rel(
            &[s.outer_loss],
            &[host.loss_out(&w)],
            1e-12,
            &format!("outer step {k}: L_out"),
        );
        let h = host.implicit_hypergradient(&w, &lam);
        if k < config.outer_steps {
            lam = axpy(&lam, -config.lr, &h);
        }
    }
    assert_eq!(trace.steps.len(), config.outer_steps + 1);
    // Measured: equal to the last bit; the CG solve and the dense solve round differently.
    assert_rel(&vals(&trace.lambda), &lam, 1e-12, "final λ");
    trace.steps.iter().map(|s| s.report.inner_steps).collect()
}

/// HOAG's CG solves to the same schedule: every outer step's reported residual is
/// within ε_k, on a ridge problem where CG needs tens of iterations to get there.
#[test]
fn hoag_solves_each_linear_system_to_its_tolerance() {
    let host = HostRidge::synthetic(60, 30, 40, 6);
    let p = host.blo();
    let d = 40;
    let config = HoagConfig {
        outer_steps: 5,
        lr: 0.1,
        eps0: 1e-2,
        decay: 0.3,
        inner: InnerOptimizer::Gd { lr: 0.2 },
        max_inner_steps: 20_000,
        max_cg_iters: 500,
        check_every: 10,
    };
    // e^λ ≈ 0.05: H's condition number is in the tens, so CG converges over tens of
    // iterations and the tolerance decides when it stops.
    let trace = hoag(&p, &[t64(&vec![-3.0; d], &[d])], &config).unwrap();
    let mut iters = Vec::new();
    for (k, s) in trace.steps.iter().enumerate() {
        let eps = config.eps0 * config.decay.powi(k as i32);
        let r = s.report.residual.expect("CG reports its residual");
        assert!(
            r <= eps,
            "outer step {k}: CG residual {r:e} > ε_k = {eps:e}"
        );
        assert!(s.report.solver_iterations < config.max_cg_iters);
        iters.push(s.report.solver_iterations);
    }
    assert!(
        iters.last() > iters.first(),
        "CG iterations {iters:?} should grow as ε_k shrinks"
    );
}
