//! The gradient and second-order checks: backward rules, HVPs and mixed products.

use super::kernels::flag;
use super::*;

pub(super) fn gradient_checks(v: &mut Vec<Check>) {
    let k = KERNEL_TOL;
    let shape = [7, 37];
    for op in ALL_UNARY {
        v.push(Check::new(
            format!("grad/unary/{}", lower(op)),
            k,
            vec![unary_input(op, &shape, 31), u(&shape, 32)],
            move |t| {
                let x = t[0].requires_grad();
                grads(&project(&apply_unary(&x, op)?, &t[1])?, &[&x])
            },
        ));
    }
    for op in ALL_BINARY.into_iter().filter(|&op| !is_comparison(op)) {
        let b = if op == BinaryOp::Div {
            Range(vec![17], 34, 0.5, 1.5)
        } else {
            u(&[17], 34)
        };
        // b broadcasts along the rows, so its gradient goes through sum_to.
        v.push(Check::new(
            format!("grad/binary/{}", lower(op)),
            k,
            vec![u(&[31, 17], 33), b, u(&[31, 17], 35)],
            move |t| {
                let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
                grads(&project(&a.binary(&b, op)?, &t[2])?, &[&a, &b])
            },
        ));
    }
    let (m, kk, n) = (13, 17, 11);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = if ta { [kk, m] } else { [m, kk] };
        let b = if tb { [n, kk] } else { [kk, n] };
        v.push(Check::new(
            format!("grad/matmul/{}{}", flag(ta), flag(tb)),
            k,
            vec![u(&a, 36), u(&b, 37), u(&[m, n], 38)],
            move |t| {
                let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
                grads(&project(&a.matmul_t(&b, ta, tb)?, &t[2])?, &[&a, &b])
            },
        ));
    }
    v.push(Check::new(
        "grad/matmul/batched_shared_rhs",
        k,
        vec![u(&[3, m, kk], 39), u(&[kk, n], 40), u(&[3, m, n], 41)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            grads(&project(&a.matmul(&b)?, &t[2])?, &[&a, &b])
        },
    ));

    type Reduction = fn(&Tensor) -> Result<Tensor>;
    let reductions: [(&str, Reduction, Vec<usize>); 7] = [
        ("sum", |x| x.sum()?.square(), vec![]),
        ("mean", |x| x.mean()?.square(), vec![]),
        ("sqnorm", |x| x.sqnorm()?.sqrt(), vec![]),
        ("sum_axis", |x| x.sum_axis(0, false), vec![17]),
        ("mean_axis", |x| x.mean_axis(1, true), vec![31, 1]),
        ("max_axis", |x| x.max_axis(1, false), vec![31]),
        ("log_softmax", |x| x.log_softmax(), vec![31, 17]),
    ];
    for (name, f, out) in reductions {
        let family = if name == "log_softmax" {
            "loss"
        } else {
            "reduce"
        };
        v.push(Check::new(
            format!("grad/{family}/{name}"),
            k,
            vec![u(&[31, 17], 42), u(&out, 43)],
            move |t| {
                let x = t[0].requires_grad();
                let y = f(&x)?;
                let loss = if y.rank() == 0 {
                    y
                } else {
                    project(&y, &t[1])?
                };
                grads(&loss, &[&x])
            },
        ));
    }
    v.push(Check::new(
        "grad/reduce/dot",
        k,
        vec![u(&[257], 44), u(&[257], 45)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            grads(&a.dot(&b)?.square()?, &[&a, &b])
        },
    ));
    let (ln, lc) = (23, 7);
    v.push(Check::new(
        "grad/loss/cross_entropy_weighted",
        k,
        vec![u(&[ln, lc], 46), labels(ln, lc), u(&[ln], 47)],
        |t| {
            let (z, w) = (t[0].requires_grad(), t[2].requires_grad());
            grads(&z.cross_entropy(&t[1], Some(&w))?, &[&z, &w])
        },
    ));
    v.push(Check::new(
        "grad/loss/cross_entropy",
        k,
        vec![u(&[ln, lc], 46), labels(ln, lc)],
        |t| {
            let z = t[0].requires_grad();
            grads(&z.cross_entropy(&t[1], None)?, &[&z])
        },
    ));
    v.push(Check::new(
        "grad/loss/mse",
        k,
        vec![u(&[257], 48), u(&[257], 49)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            grads(&a.mse(&b)?, &[&a, &b])
        },
    ));
    v.push(Check::new(
        "grad/index/gather",
        k,
        vec![u(&[ln, lc], 50), labels(ln, lc), u(&[ln], 51)],
        |t| {
            let z = t[0].requires_grad();
            grads(&project(&z.gather(&t[1])?, &t[2])?, &[&z])
        },
    ));
    v.push(Check::new(
        "grad/index/transpose",
        k,
        vec![u(&[3, 13, 11], 52), u(&[3, 11, 13], 53)],
        |t| {
            let x = t[0].requires_grad();
            grads(&project(&x.transpose()?, &t[1])?, &[&x])
        },
    ));
    v.push(Check::new(
        "grad/index/concat_split_slice",
        k,
        vec![u(&[7, 3], 54), u(&[11], 55), u(&[32], 56)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            let c = Tensor::concat(&[&a, &b])?;
            let parts = c.split(&[5, 27])?;
            let y = Tensor::concat(&[&parts[1], &c.slice(3, 5)?])?;
            grads(&project(&y, &t[2])?, &[&a, &b])
        },
    ));
    v.push(Check::new(
        "grad/shape/broadcast_to_sum_to",
        k,
        vec![u(&[1, 17], 57), u(&[31, 1], 58), u(&[17], 59)],
        |t| {
            let (a, b) = (t[0].requires_grad(), t[1].requires_grad());
            let y = a.broadcast_to(&[31, 17])?.mul(&b)?.sum_to(&[17])?;
            grads(&project(&y, &t[2])?, &[&a, &b])
        },
    ));
    v.push(Check::new(
        "grad/update/axpby_axpy_ratio",
        k,
        vec![
            u(&[257], 60),
            u(&[257], 61),
            u(&[], 62),
            Range(vec![], 63, 0.5, 1.5),
            u(&[257], 64),
        ],
        |t| {
            let x: Vec<Tensor> = t[..4].iter().map(Tensor::requires_grad).collect();
            let y = x[0].axpby(&x[2], &x[3], &x[1])?;
            let z = y.axpy_ratio(&x[2], &x[3], -1.0, &x[0])?;
            grads(&project(&z, &t[4])?, &[&x[0], &x[1], &x[2], &x[3]])
        },
    ));
}

/// A tanh MLP d-h-c on n samples with cross-entropy, over flat parameters w.
fn mlp_loss(x: &Tensor, labels: &Tensor, w: &Tensor, dims: [usize; 3]) -> Result<Tensor> {
    let [d, h, c] = dims;
    let p = w.split(&[d * h, h, h * c, c])?;
    let a = x.matmul(&p[0].reshape(&[d, h])?)?.add(&p[1])?.tanh()?;
    a.matmul(&p[2].reshape(&[h, c])?)?
        .add(&p[3])?
        .cross_entropy(labels, None)
}

/// Hyper-cleaning's inner loss on a linear classifier: weights sigmoid(λ) per example,
/// plus (μ/2)‖W‖².
fn weighted_ce(
    x: &Tensor,
    labels: &Tensor,
    wm: &Tensor,
    b: &Tensor,
    lambda: &Tensor,
    mu: f64,
) -> Result<Tensor> {
    x.matmul(wm)?
        .add(b)?
        .cross_entropy(labels, Some(&lambda.sigmoid()?))?
        .add(&wm.sqnorm()?.scale(0.5 * mu)?)
}

pub(super) fn second_order_checks(v: &mut Vec<Check>) {
    let k = KERNEL_TOL;
    let (n, d, h, c) = (20, 6, 5, 3);
    let params = d * h + h + h * c + c;
    v.push(Check::new(
        "hvp/mlp",
        k,
        vec![
            u(&[n, d], 70),
            labels(n, c),
            u(&[params], 71),
            u(&[params], 72),
        ],
        move |t| {
            let w = t[2].requires_grad();
            let loss = mlp_loss(&t[0], &t[1], &w, [d, h, c])?;
            Ok(vec![HvpOperator::new(&loss, &[&w])?.hvp1(&t[3])?])
        },
    ));
    let cls = move || {
        vec![
            u(&[n, d], 73),
            labels(n, c),
            u(&[d, c], 74),
            u(&[c], 75),
            u(&[n], 76),
        ]
    };
    v.push(Check::new(
        "mixed/weighted_cross_entropy",
        k,
        [cls(), vec![u(&[d, c], 77), u(&[c], 78)]].concat(),
        |t| {
            let (wm, b, l) = (
                t[2].requires_grad(),
                t[3].requires_grad(),
                t[4].requires_grad(),
            );
            let loss = weighted_ce(&t[0], &t[1], &wm, &b, &l, 0.1)?;
            mixed(&loss, &[&wm, &b], &[&l], &[&t[5], &t[6]])
        },
    ));
    v.push(Check::new(
        "mixed_t/weighted_cross_entropy",
        k,
        [cls(), vec![u(&[n], 79)]].concat(),
        |t| {
            let (wm, b, l) = (
                t[2].requires_grad(),
                t[3].requires_grad(),
                t[4].requires_grad(),
            );
            let loss = weighted_ce(&t[0], &t[1], &wm, &b, &l, 0.1)?;
            mixed_t(&loss, &[&wm, &b], &[&l], &[&t[5]])
        },
    ));
    // The solvers on the Hessian of an L2-regularised softmax regression (μ = 0.5, so
    // its condition number is small and ten iterations converge well in f32).
    type Solver = fn(&HvpOperator, &Tensor) -> Result<Tensor>;
    let solvers: [(&str, Solver); 3] = [
        ("solver/cg", |op, b| {
            let opts = CgOptions {
                max_iters: 10,
                ..CgOptions::default()
            };
            Ok(conjugate_gradient(|p| op.hvp1(p), b, &opts)?.x)
        }),
        ("solver/neumann", |op, b| {
            Ok(neumann(|p| op.hvp1(p), b, 10, 0.5)?.x)
        }),
        ("solver/fixed_point", |op, b| {
            Ok(fixed_point(|p| op.hvp1(p), b, 10, 0.5)?.x)
        }),
    ];
    for (name, solve) in solvers {
        v.push(Check::new(
            name,
            k,
            [cls(), vec![u(&[d * c], 80)]].concat(),
            move |t| {
                let w = t[2].reshape(&[d * c])?.requires_grad();
                let loss = weighted_ce(&t[0], &t[1], &w.reshape(&[d, c])?, &t[3], &t[4], 0.5)?;
                let op = HvpOperator::new(&loss, &[&w])?;
                Ok(vec![solve(&op, &t[5])?])
            },
        ));
    }
}
