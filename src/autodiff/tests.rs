//! Gradient checks: every backward rule against central finite differences in f64 on
//! the CPU, and second-order products against explicit Hessians.

use super::*;
use crate::Device;
use crate::ops::binary::BinaryOp;
use crate::ops::unary::UnaryOp;
use crate::testing::{assert_close, oracle_pair, rel_err};

const CPU: Device = Device::Cpu;

pub(super) fn t64(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(oracle_pair(shape, seed).1, shape, &CPU).unwrap()
}

pub(super) fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

pub(super) fn with_values(like: &Tensor, v: Vec<f64>) -> Tensor {
    Tensor::from_vec(v, like.shape(), &CPU).unwrap()
}

/// Central finite differences of the scalar `f` with respect to input `i`.
pub(super) fn numeric_grad(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    i: usize,
    h: f64,
) -> Vec<f64> {
    let base = vals(&inputs[i]);
    (0..base.len())
        .map(|j| {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut args = inputs.to_vec();
                args[i] = with_values(&inputs[i], v);
                no_grad(|| f(&args)).unwrap().to_scalar::<f64>().unwrap()
            };
            (eval(h) - eval(-h)) / (2.0 * h)
        })
        .collect()
}

/// Checks reverse-mode gradients of `f` with respect to every input against finite
/// differences, relative error ≤ 1e-6 (central differences with h = 1e-5 err by
/// O(h²·f''') ≈ 1e-10 plus rounding ε/h ≈ 1e-11, far below that).
#[track_caller]
fn check(name: &str, inputs: Vec<Tensor>, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let tracked: Vec<Tensor> = inputs.iter().map(Tensor::requires_grad).collect();
    let loss = f(&tracked).unwrap();
    let wrt: Vec<&Tensor> = tracked.iter().collect();
    let grads = grad(&loss, &wrt, false).unwrap();
    for (i, g) in grads.iter().enumerate() {
        assert_eq!(
            g.shape(),
            inputs[i].shape(),
            "{name}: gradient shape of input {i}"
        );
        let want = numeric_grad(&f, &inputs, i, 1e-5);
        let got = vals(g);
        let err = rel_err(&got, &want);
        assert!(
            err <= 1e-6,
            "{name}: input {i}: relative error {err:e}\n got {got:?}\nwant {want:?}"
        );
    }
}

/// Σ r ⊙ y with a fixed random r, so every output element's gradient matters.
fn weigh(y: Tensor, seed: u64) -> Result<Tensor> {
    let r = t64(y.shape(), seed);
    y.mul(&r)?.sum()
}

#[test]
fn unary_rules() {
    let x = t64(&[3, 5], 1);
    let positive = x.abs().unwrap().scale_shift(1.0, 0.2).unwrap();
    let away_from_zero = x.add(&x.sign().unwrap().scale(0.2).unwrap()).unwrap();
    for op in crate::ops::unary::ALL_UNARY {
        let input = match op {
            UnaryOp::Log | UnaryOp::Sqrt => positive.clone(),
            UnaryOp::Recip | UnaryOp::Abs | UnaryOp::Relu => away_from_zero.clone(),
            _ => x.clone(),
        };
        check(&format!("{op:?}"), vec![input], move |a| {
            let y = if op == UnaryOp::ScaleShift {
                a[0].scale_shift(-1.5, 0.5)?
            } else {
                a[0].unary(op)?
            };
            weigh(y, 7)
        });
    }
}

/// softplus and log_sigmoid at extreme and near-zero inputs (where a hand-written stable
/// form built from relu and abs has derivative 0 at 0): first derivatives against finite
/// differences and against sigmoid exactly, second derivatives (a Hessian-vector product
/// through the recorded rule) against finite differences of the gradient.
#[test]
fn softplus_and_log_sigmoid_at_extremes() {
    let xs = vec![-100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0];
    let x = Tensor::from_vec(xs.clone(), &[7], &CPU).unwrap();
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    for op in [UnaryOp::Softplus, UnaryOp::LogSigmoid] {
        check(&format!("{op:?} extremes"), vec![x.clone()], move |a| {
            weigh(a[0].unary(op)?, 3)
        });
        // The exact first derivative, ½ at 0.
        let xt = x.requires_grad();
        let g = vals(&grad(&xt.unary(op).unwrap().sum().unwrap(), &[&xt], false).unwrap()[0]);
        let want: Vec<f64> = xs
            .iter()
            .map(|&v| {
                if op == UnaryOp::Softplus {
                    sig(v)
                } else {
                    sig(-v)
                }
            })
            .collect();
        assert_close(&g, &want, 1e-15, 1e-300, &format!("{op:?}' = sigmoid"));
        assert_eq!(g[3], 0.5, "{op:?}'(0)");
        // Second order: H v of Σ r·f(x) is r·f''(x)·v, against differences of the gradient.
        let r = t64(&[7], 5);
        let v = t64(&[7], 6);
        let gradient = |at: &Tensor, graph: bool| {
            let loss = at.unary(op).unwrap().mul(&r).unwrap().sum().unwrap();
            grad(&loss, &[at], graph).unwrap().remove(0)
        };
        let gt = gradient(&xt, true);
        let hv = vals(&grad(&gt.dot(&v).unwrap(), &[&xt], false).unwrap()[0]);
        let h = 1e-5;
        let shifted = |s: f64| vals(&gradient(&x.axpy(s, &v).unwrap().requires_grad(), false));
        let (up, down) = (shifted(h), shifted(-h));
        let fd: Vec<f64> = up
            .iter()
            .zip(&down)
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect();
        // Central differences of sigmoid: O(h²) truncation and ε/h ≈ 1e-11 rounding.
        assert_close(&hv, &fd, 1e-6, 1e-10, &format!("{op:?}'' (H v)"));
        let (r3, v3) = (vals(&r)[3], vals(&v)[3]);
        let curvature = if op == UnaryOp::Softplus { 0.25 } else { -0.25 };
        assert!(
            (hv[3] - curvature * r3 * v3).abs() < 1e-15,
            "{op:?}''(0) = ±¼, got {}",
            hv[3]
        );
    }
}

#[test]
fn binary_rules_with_broadcasting() {
    let shapes: [(&[usize], &[usize]); 5] = [
        (&[4, 3], &[4, 3]),
        (&[4, 3], &[3]),
        (&[4, 1], &[1, 3]),
        (&[4, 3], &[]),
        (&[2, 1, 3], &[4, 1]),
    ];
    for (sa, sb) in shapes {
        for op in crate::ops::binary::ALL_BINARY {
            let a = t64(sa, 2);
            let mut b = t64(sb, 3);
            if op == BinaryOp::Div {
                b = b.add(&b.sign().unwrap().scale(0.5).unwrap()).unwrap();
            }
            let out_shape = crate::ops::binary::broadcast_shape("t", sa, sb).unwrap();
            check(&format!("{op:?} {sa:?} {sb:?}"), vec![a, b], move |v| {
                let y = v[0].binary(&v[1], op)?;
                assert_eq!(y.shape(), &out_shape[..]);
                weigh(y, 8)
            });
        }
    }
}

#[test]
fn shape_rules() {
    check("reshape", vec![t64(&[2, 6], 1)], |v| {
        weigh(v[0].reshape(&[3, 4])?, 2)
    });
    check("broadcast_to", vec![t64(&[3, 1], 1)], |v| {
        weigh(v[0].broadcast_to(&[2, 3, 4])?, 2)
    });
    check("sum_to", vec![t64(&[2, 3, 4], 1)], |v| {
        weigh(v[0].sum_to(&[3, 1])?, 2)
    });
    check("transpose", vec![t64(&[3, 5], 1)], |v| {
        weigh(v[0].transpose()?, 2)
    });
    check("transpose batched", vec![t64(&[2, 3, 5], 1)], |v| {
        weigh(v[0].transpose()?, 2)
    });
    check(
        "concat",
        vec![t64(&[2, 3], 1), t64(&[4], 2), t64(&[1], 3)],
        |v| weigh(Tensor::concat(&[&v[0], &v[1], &v[2]])?, 4),
    );
    check("slice", vec![t64(&[3, 4], 1)], |v| {
        weigh(v[0].slice(3, 5)?, 2)
    });
    check("split", vec![t64(&[9], 1)], |v| {
        let parts = v[0].split(&[2, 3, 4])?;
        weigh(parts[0].clone(), 2)?.add(&weigh(parts[2].clone(), 3)?)
    });
}

#[test]
fn matmul_rules() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { t64(&[4, 3], 1) } else { t64(&[3, 4], 1) };
        let b = if tb { t64(&[5, 4], 2) } else { t64(&[4, 5], 2) };
        check(&format!("matmul ta={ta} tb={tb}"), vec![a, b], move |v| {
            weigh(v[0].matmul_t(&v[1], ta, tb)?, 3)
        });
    }
    check(
        "matmul batched",
        vec![t64(&[2, 3, 4], 1), t64(&[2, 4, 5], 2)],
        |v| weigh(v[0].matmul(&v[1])?, 3),
    );
}

#[test]
fn reduction_rules() {
    let x = t64(&[3, 4, 5], 1);
    check("sum", vec![x.clone()], |v| v[0].sum()?.scale(1.7));
    check("mean", vec![x.clone()], |v| v[0].mean()?.scale(1.7));
    for axis in 0..3 {
        for keepdim in [false, true] {
            check(
                &format!("sum_axis {axis} {keepdim}"),
                vec![x.clone()],
                move |v| weigh(v[0].sum_axis(axis, keepdim)?, 2),
            );
            check(
                &format!("mean_axis {axis} {keepdim}"),
                vec![x.clone()],
                move |v| weigh(v[0].mean_axis(axis, keepdim)?, 2),
            );
            check(
                &format!("max_axis {axis} {keepdim}"),
                vec![x.clone()],
                move |v| weigh(v[0].max_axis(axis, keepdim)?, 2),
            );
        }
    }
    check("dot", vec![t64(&[7], 1), t64(&[7], 2)], |v| v[0].dot(&v[1]));
    check("sqnorm", vec![t64(&[2, 7], 1)], |v| v[0].sqnorm());
}

pub(super) fn labels(n: usize, c: usize) -> Tensor {
    Tensor::from_vec(
        (0..n).map(|i| ((i * 7 + 3) % c) as f64).collect::<Vec<_>>(),
        &[n],
        &CPU,
    )
    .unwrap()
}

#[test]
fn loss_rules() {
    let z = t64(&[5, 4], 1).scale(3.0).unwrap();
    check("log_softmax", vec![z.clone()], |v| {
        weigh(v[0].log_softmax()?, 2)
    });
    check("softmax", vec![z.clone()], |v| weigh(v[0].softmax()?, 2));
    let y = labels(5, 4);
    let y2 = y.clone();
    check("cross_entropy", vec![z.clone()], move |v| {
        v[0].cross_entropy(&y2, None)
    });
    let w = t64(&[5], 3).sigmoid().unwrap();
    let y3 = y.clone();
    check("cross_entropy weighted", vec![z.clone(), w], move |v| {
        v[0].cross_entropy(&y3, Some(&v[1]))
    });
    check("mse", vec![t64(&[4, 3], 1), t64(&[4, 3], 2)], |v| {
        v[0].mse(&v[1])
    });
    let y4 = y.clone();
    check("gather", vec![z], move |v| weigh(v[0].gather(&y4)?, 5));
}

#[test]
fn update_rules() {
    check("axpy host", vec![t64(&[6], 1), t64(&[6], 2)], |v| {
        weigh(v[0].axpy(0.7, &v[1])?, 3)
    });
    check("axpby host", vec![t64(&[6], 1), t64(&[6], 2)], |v| {
        weigh(v[0].axpby(-0.3, 0.7, &v[1])?, 3)
    });
    check(
        "axpby device",
        vec![t64(&[6], 1), t64(&[6], 2), t64(&[], 3), t64(&[], 4)],
        |v| weigh(v[0].axpby(&v[3], &v[2], &v[1])?, 3),
    );
    check(
        "axpby device a",
        vec![t64(&[6], 1), t64(&[6], 2), t64(&[], 3)],
        |v| weigh(v[0].axpby(0.4, &v[2], &v[1])?, 3),
    );
    check(
        "axpby device b",
        vec![t64(&[6], 1), t64(&[6], 2), t64(&[], 3)],
        |v| weigh(v[0].axpby(&v[2], 0.4, &v[1])?, 3),
    );
    let den = t64(&[], 5).scale_shift(1.0, 2.0).unwrap();
    check(
        "axpy_ratio",
        vec![t64(&[6], 1), t64(&[6], 2), t64(&[], 3), den],
        |v| weigh(v[0].axpy_ratio(&v[2], &v[3], -1.0, &v[1])?, 3),
    );
}

/// A rule reading an output that recording did not keep must not read another tensor
/// in its place (the gradient's storage, once): it panics and names the op.
#[test]
#[should_panic(expected = "keeps_output")]
fn a_rule_reading_an_output_that_was_not_kept_panics() {
    let x = t64(&[3], 1);
    let g = t64(&[3], 2);
    let exp = Op::Unary {
        op: UnaryOp::Exp,
        a: 0.0,
    };
    assert!(rules::keeps_output(&exp));
    let _ = rules::backward(&exp, &[x], &[true], None, &g);
}

#[test]
fn gradient_of_unused_input_is_zero_and_untracked_wrt_is_an_error() {
    let a = t64(&[3], 1).requires_grad();
    let b = t64(&[2], 2).requires_grad();
    let loss = a.sqnorm().unwrap();
    let g = grad(&loss, &[&a, &b], false).unwrap();
    assert_eq!(vals(&g[1]), vec![0.0, 0.0]);
    let c = t64(&[2], 3);
    assert!(matches!(
        grad(&loss, &[&c], false),
        Err(crate::Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        grad(&a.mul(&a).unwrap(), &[&a], false),
        Err(crate::Error::InvalidArgument { .. })
    ));
}

#[test]
fn shared_subexpressions_accumulate() {
    // L = Σ (x·x + x) ⇒ ∂L/∂x = 2x + 1; x is used three times.
    let x = t64(&[5], 1).requires_grad();
    let loss = x.mul(&x).unwrap().add(&x).unwrap().sum().unwrap();
    let g = grad(&loss, &[&x], false).unwrap().remove(0);
    let want: Vec<f64> = vals(&x).iter().map(|v| 2.0 * v + 1.0).collect();
    assert_close(&vals(&g), &want, 1e-15, 1e-15, "accumulation");
}

#[test]
fn a_long_chain_neither_overflows_the_stack_nor_leaks() {
    let x = t64(&[4], 1).requires_grad();
    let mut y = x.clone();
    for _ in 0..20_000 {
        y = y.scale_shift(1.0, 1e-4).unwrap();
    }
    let g = grad(&y.sum().unwrap(), &[&x], false).unwrap().remove(0);
    assert_eq!(vals(&g), vec![1.0; 4]);
    drop(y); // dropping 20,000 nodes iteratively
}

// ---------- second order ----------

/// Explicit Hessian of the scalar f(w) by central differences of the f64 gradient.
fn fd_hessian(f: &dyn Fn(&Tensor) -> Result<Tensor>, w: &Tensor) -> Vec<Vec<f64>> {
    let n = w.numel();
    let base = vals(w);
    let grad_at = |v: Vec<f64>| {
        let wt = with_values(w, v).requires_grad();
        vals(&grad(&f(&wt).unwrap(), &[&wt], false).unwrap()[0])
    };
    let h = 1e-5;
    (0..n)
        .map(|j| {
            let (mut p, mut m) = (base.clone(), base.clone());
            p[j] += h;
            m[j] -= h;
            let (gp, gm) = (grad_at(p), grad_at(m));
            gp.iter()
                .zip(&gm)
                .map(|(a, b)| (a - b) / (2.0 * h))
                .collect()
        })
        .collect() // column j
}

fn mat_vec(cols: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    let rows = cols[0].len();
    (0..rows)
        .map(|i| cols.iter().zip(v).map(|(c, x)| c[i] * x).sum())
        .collect()
}

#[track_caller]
fn check_hvp(name: &str, f: impl Fn(&Tensor) -> Result<Tensor>, w: Tensor) {
    let h = fd_hessian(&f, &w);
    let v = t64(w.shape(), 99);
    let wt = w.requires_grad();
    let got = vals(&hvp(&f(&wt).unwrap(), &wt, &v).unwrap());
    let want = mat_vec(&h, &vals(&v));
    let err = rel_err(&got, &want);
    assert!(err <= 1e-6, "{name}: HVP relative error {err:e}");
}

#[test]
fn hvp_of_a_quadratic_is_its_matrix() {
    // L = ½ wᵀ A w + bᵀ w with A = MᵀM + I ⇒ H = A exactly.
    let m = t64(&[6, 6], 1);
    let a = m
        .matmul_t(&m, true, false)
        .unwrap()
        .add(&Tensor::from_vec(eye(6), &[6, 6], &CPU).unwrap())
        .unwrap();
    let b = t64(&[6], 2);
    let f = |w: &Tensor| -> Result<Tensor> {
        let aw = a.matmul(&w.reshape(&[6, 1])?)?.reshape(&[6])?;
        w.dot(&aw)?.scale(0.5)?.add(&w.dot(&b)?)
    };
    let w = t64(&[6], 3).requires_grad();
    let v = t64(&[6], 4);
    let got = vals(&hvp(&f(&w).unwrap(), &w, &v).unwrap());
    let want = vals(&a.matmul(&v.reshape(&[6, 1]).unwrap()).unwrap());
    assert_close(&got, &want, 1e-12, 1e-12, "quadratic HVP");
}

fn eye(n: usize) -> Vec<f64> {
    (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect()
}

/// Least squares with per-feature L2 weights exp(λ): the ridge inner loss.
fn ridge_loss(x: &Tensor, y: &Tensor, w: &Tensor, lambda: &Tensor) -> Result<Tensor> {
    let n = x.shape()[0] as f64;
    let d = w.numel();
    let r = x
        .matmul(&w.reshape(&[d, 1])?)?
        .reshape(&[x.shape()[0]])?
        .sub(y)?;
    let fit = r.sqnorm()?.scale(0.5 / n)?;
    let reg = lambda.exp()?.mul(&w.square()?)?.sum()?.scale(0.5)?;
    fit.add(&reg)
}

#[test]
fn ridge_hvp_and_mixed_products_match_closed_forms() {
    let (n, d) = (9, 4);
    let x = t64(&[n, d], 1);
    let y = t64(&[n], 2);
    let w = t64(&[d], 3).requires_grad();
    let lam = t64(&[d], 4).requires_grad();
    let loss = ridge_loss(&x, &y, &w, &lam).unwrap();
    let v = t64(&[d], 5);
    // H = XᵀX/n + diag(exp λ)
    let xtx = x
        .matmul_t(&x, true, false)
        .unwrap()
        .scale(1.0 / n as f64)
        .unwrap();
    let want_h = vals(&xtx.matmul(&v.reshape(&[d, 1]).unwrap()).unwrap())
        .iter()
        .zip(vals(&lam).iter().zip(vals(&v)))
        .map(|(hv, (l, vi))| hv + l.exp() * vi)
        .collect::<Vec<_>>();
    assert_close(
        &vals(&hvp(&loss, &w, &v).unwrap()),
        &want_h,
        1e-12,
        1e-12,
        "ridge HVP",
    );
    // ∂²L/∂λ_j∂w_k = δ_jk exp(λ_j) w_j, symmetric in the sense mixed(v) = mixed_t(v).
    let want_m: Vec<f64> = vals(&lam)
        .iter()
        .zip(vals(&w))
        .zip(vals(&v))
        .map(|((l, wi), vi)| l.exp() * wi * vi)
        .collect();
    let got_m = vals(&mixed(&loss, &[&w], &[&lam], &[&v]).unwrap()[0]);
    assert_close(&got_m, &want_m, 1e-12, 1e-12, "ridge mixed");
    let got_t = vals(&mixed_t(&loss, &[&w], &[&lam], &[&v]).unwrap()[0]);
    assert_close(&got_t, &want_m, 1e-12, 1e-12, "ridge mixed_t");
}

/// Explicit mixed block ∂²L/∂λ∂w as columns over w (FD of ∇_λ L in w).
fn fd_mixed(
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    w: &Tensor,
    lam: &Tensor,
) -> Vec<Vec<f64>> {
    let base = vals(w);
    let h = 1e-5;
    let grad_lam = |wv: Vec<f64>| {
        let wt = with_values(w, wv);
        let lt = lam.detach().requires_grad();
        vals(&grad(&f(&wt, &lt).unwrap(), &[&lt], false).unwrap()[0])
    };
    (0..base.len())
        .map(|j| {
            let (mut p, mut m) = (base.clone(), base.clone());
            p[j] += h;
            m[j] -= h;
            grad_lam(p)
                .iter()
                .zip(grad_lam(m))
                .map(|(a, b)| (a - b) / (2.0 * h))
                .collect()
        })
        .collect() // column j (over w), rows over λ
}

fn transpose_cols(cols: &[Vec<f64>]) -> Vec<Vec<f64>> {
    (0..cols[0].len())
        .map(|i| cols.iter().map(|c| c[i]).collect())
        .collect()
}

#[test]
fn weighted_softmax_regression_second_order() {
    // L(W, λ) = (1/n) Σ sigmoid(λ_i) CE(x_i W, y_i): the hyper-cleaning inner loss.
    let (n, d, c) = (6, 3, 4);
    let x = t64(&[n, d], 1);
    let y = labels(n, c);
    let f = move |w: &Tensor, lam: &Tensor| -> Result<Tensor> {
        x.matmul(&w.reshape(&[d, c])?)?
            .cross_entropy(&y, Some(&lam.sigmoid()?))
    };
    let w = t64(&[d * c], 2);
    let lam = t64(&[n], 3);
    let lam_c = lam.clone();
    let f2 = f.clone();
    check_hvp("softmax regression", move |w| f2(w, &lam_c), w.clone());
    check_mixed("softmax regression", &f, &w, &lam);
}

#[track_caller]
fn check_mixed(
    name: &str,
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    w: &Tensor,
    lam: &Tensor,
) {
    let cols = fd_mixed(f, w, lam); // J as columns over w: J[:, j] = ∂(∇_λ L)/∂w_j
    let (wt, lt) = (w.requires_grad(), lam.requires_grad());
    let loss = f(&wt, &lt).unwrap();
    let v = t64(w.shape(), 41);
    let got = vals(&mixed(&loss, &[&wt], &[&lt], &[&v]).unwrap()[0]);
    let want = mat_vec(&cols, &vals(&v));
    let err = rel_err(&got, &want);
    assert!(err <= 1e-6, "{name}: mixed relative error {err:e}");
    let u = t64(lam.shape(), 42);
    let got_t = vals(&mixed_t(&loss, &[&wt], &[&lt], &[&u]).unwrap()[0]);
    let want_t = mat_vec(&transpose_cols(&cols), &vals(&u));
    let err = rel_err(&got_t, &want_t);
    assert!(err <= 1e-6, "{name}: mixed_t relative error {err:e}");
}

fn mlp(x: &Tensor, w: &Tensor, sizes: (usize, usize, usize), relu: bool) -> Result<Tensor> {
    let (d, h, c) = sizes;
    let p = w.split(&[d * h, h, h * c, c])?;
    let z1 = x.matmul(&p[0].reshape(&[d, h])?)?.add(&p[1])?;
    let a1 = if relu { z1.relu()? } else { z1.tanh()? };
    a1.matmul(&p[2].reshape(&[h, c])?)?.add(&p[3])
}

#[test]
fn mlp_hvp_and_mixed_tanh_and_relu() {
    let (n, d, h, c) = (5, 3, 4, 3);
    let x = t64(&[n, d], 1);
    let y = labels(n, c);
    for relu in [false, true] {
        let nparams = d * h + h + h * c + c;
        let w = t64(&[nparams], 2);
        let (x2, y2) = (x.clone(), y.clone());
        let f = move |w: &Tensor| mlp(&x2, w, (d, h, c), relu)?.cross_entropy(&y2, None);
        check_hvp(&format!("mlp relu={relu}"), f, w.clone());
        // λ: per-example weights through exp, so the mixed block is dense.
        let (x3, y3) = (x.clone(), y.clone());
        let g = move |w: &Tensor, lam: &Tensor| {
            mlp(&x3, w, (d, h, c), relu)?.cross_entropy(&y3, Some(&lam.exp()?))
        };
        check_mixed(&format!("mlp relu={relu}"), &g, &w, &t64(&[n], 3));
    }
}

#[test]
fn hvp_operator_reuses_one_gradient_graph() {
    let (n, d) = (9, 4);
    let (x, y) = (t64(&[n, d], 1), t64(&[n], 2));
    let w = t64(&[d], 3).requires_grad();
    let lam = t64(&[d], 4);
    let loss = ridge_loss(&x, &y, &w, &lam).unwrap();
    let op = HvpOperator::new(&loss, &[&w]).unwrap();
    for seed in 0..3 {
        let v = t64(&[d], 10 + seed);
        assert_close(
            &vals(&op.hvp1(&v).unwrap()),
            &vals(&hvp(&loss, &w, &v).unwrap()),
            1e-14,
            1e-14,
            "operator",
        );
    }
    // Products work inside no_grad too: the operator turns recording on itself.
    let v = t64(&[d], 20);
    let inside = no_grad(|| op.hvp1(&v)).unwrap();
    assert_close(
        &vals(&inside),
        &vals(&op.hvp1(&v).unwrap()),
        0.0,
        0.0,
        "no_grad",
    );
}

/// Recording keeps an op's output only where its rule reads it: anything more is memory
/// held for as long as the graph lives (RAD holds a step's graph per reverse step).
#[test]
fn only_ops_whose_rule_reads_the_output_keep_it() {
    let x = t64(&[3, 4], 1).requires_grad();
    let kept = |t: Result<Tensor>| t.unwrap().node.as_ref().unwrap().out.is_some();
    assert!(kept(x.exp()));
    assert!(kept(x.square().and_then(|s| s.sqrt())));
    assert!(kept(x.div(&x.exp().unwrap())));
    assert!(kept(x.softmax()));
    assert!(!kept(x.sin()));
    assert!(!kept(x.square()));
    assert!(!kept(x.add(&x)));
    assert!(!kept(x.mul(&x)));
    assert!(!kept(x.matmul_t(&x, false, true)));
    assert!(!kept(x.sum()));
}

/// `vjp_many` equals `grad` of Σ_j ⟨seed_j, output_j⟩ taken the long way: for outputs
/// that share a subgraph, the same output given twice (its seeds add up), and an output
/// off the graph (it contributes nothing); mismatched seeds are clear errors.
#[test]
fn vjp_many_equals_the_gradient_of_the_seeded_sum() {
    let (x, y) = (
        t64(&[3, 4], 1).requires_grad(),
        t64(&[4], 2).requires_grad(),
    );
    let shared = x.mul(&y).unwrap().tanh().unwrap();
    let a = shared.sum_axis(1, false).unwrap();
    let b = shared.mul(&x).unwrap();
    let constant = t64(&[2], 3);
    let (sa, sb, sb2, sc) = (t64(&[3], 4), t64(&[3, 4], 5), t64(&[3, 4], 6), t64(&[2], 7));
    let got = vjp_many(
        &[&a, &b, &constant, &b],
        &[&sa, &sb, &sc, &sb2],
        &[&x, &y],
        false,
    )
    .unwrap();
    let total = a
        .dot(&sa)
        .unwrap()
        .add(&b.dot(&sb.add(&sb2).unwrap()).unwrap())
        .unwrap();
    let want = grad(&total, &[&x, &y], false).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert_close(&vals(g), &vals(w), 1e-13, 1e-15, "vjp_many");
    }
    assert!(
        vals(&got[1]).iter().any(|v| v.abs() > 1e-3),
        "a gradient that is not trivially zero"
    );
    let count = vjp_many(&[&a, &b], &[&sa], &[&x], false).unwrap_err();
    assert!(count.to_string().contains("one seed per output"), "{count}");
    let shape = vjp_many(&[&a], &[&sb], &[&x], false).unwrap_err();
    assert!(
        matches!(shape, crate::Error::ShapeMismatch { .. }),
        "{shape}"
    );
}
