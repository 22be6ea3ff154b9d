//! First and second order of every backward rule, generated from the op table.
//!
//! `cases` matches on every [`OpKind`] with no wildcard, and `op_kinds!` makes every
//! `Op` variant an `OpKind`: an op added to `Op` does not compile until it has cases
//! here. Each case is a scalar f64 function f = R(op(P(x₁), …, P(xₖ))) of its inputs.
//! Its tape gradient is checked against central differences of f; then its
//! Hessian-vector products, taken through the rules' own recorded backward pass,
//! against central differences of that (now checked) tape gradient: along a random
//! direction in all inputs jointly, and along each input alone, so every block
//! ∂²f/∂xⱼ∂xᵢ (diagonal and mixed) is compared on its own.
//!
//! Every input is differentiable. Labels are data inside the op, and the
//! piecewise-constant ops (comparisons, sign, ReLU mask), whose rules return no
//! gradient, multiply a smooth function of the same inputs: what is checked for them
//! is that nothing flows through them, at first or second order, while the smooth
//! factor's derivatives do.
//!
//! P and R use mul, add, sum, sin, square and scale: a broken rule among those fails
//! every case, which is why failures are collected rather than stopping at the first.

use super::tests::{labels, numeric_grad, t64, vals};
use super::*;
use crate::ops::binary::ALL_BINARY;
use crate::ops::binary::BinaryOp;
use crate::ops::unary::ALL_UNARY;
use crate::ops::unary::UnaryOp;
use crate::tensor::tape::{OpKind, ScalarKind, record};
use crate::testing::rel_err;

/// Step and tolerance of every comparison. As in `tests::check`: central differences
/// with h = 1e-5 err by O(h²·f''') ≈ 1e-10 plus rounding ε/h ≈ 1e-11, far below a
/// relative 1e-6. For second order the differenced function is the f64 tape gradient,
/// one derivative higher, with the same bounds.
const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

type Outcome = std::result::Result<(), String>;
type OpFn = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

struct Case {
    name: String,
    inputs: Vec<Tensor>,
    /// The op under test, applied to the pre-mapped inputs.
    op: OpFn,
    /// True for the node the case is about. One of the nodes `op` records must match,
    /// so a case cannot silently test something else.
    records: Box<dyn Fn(&Node) -> bool>,
}

fn case(
    name: impl Into<String>,
    inputs: Vec<Tensor>,
    records: impl Fn(&Node) -> bool + 'static,
    op: impl Fn(&[Tensor]) -> Result<Tensor> + 'static,
) -> Case {
    Case {
        name: name.into(),
        inputs,
        op: Box::new(op),
        records: Box::new(records),
    }
}

/// P(a) = a + 0.3a³, applied to every input. Nonlinear (P'' ≠ 0), so the op reads its
/// inputs as results on the tape rather than as leaves, and gradients leaving a rule
/// are chained through recorded ops at second order as well. Odd and increasing, so it
/// keeps signs, order (no new ties for max/min) and |P(a)| ≥ |a| (domains stay away
/// from zero).
fn pre(a: &Tensor) -> Result<Tensor> {
    a.add(&a.mul(&a.square()?)?.scale(0.3)?)
}

/// R(y) = Σ r ⊙ sin(y) + ½(Σ q ⊙ y)² with fixed random r, q. R'' ≠ 0, so the upstream
/// gradient g = ∇R that reaches the rule depends on the inputs (a rule that detaches g,
/// or uses a stale one, loses Jᵀ R'' J); the rank-one coupling makes the mixed blocks
/// nonzero even for ops that treat their inputs separately (concat, add).
fn readout(y: &Tensor) -> Result<Tensor> {
    let r = t64(y.shape(), 1001);
    let q = t64(y.shape(), 1002);
    let coupled = y.mul(&q)?.sum()?;
    y.sin()?.mul(&r)?.sum()?.add(&coupled.square()?.scale(0.5)?)
}

/// The nodes recorded on the way from the (pre-mapped) `inputs` to `y`.
fn recorded_between(y: &Tensor, inputs: &[Tensor]) -> Vec<Arc<Node>> {
    let stop: IdSet = inputs.iter().map(node_id).collect();
    let mut seen = IdSet::default();
    let mut stack: Vec<Arc<Node>> = y.node.iter().cloned().collect();
    let mut found = Vec::new();
    while let Some(node) = stack.pop() {
        if stop.contains(&node.id) || !seen.insert(node.id) {
            continue;
        }
        stack.extend(node.inputs.iter().filter_map(|t| t.node.clone()));
        found.push(node);
    }
    found
}

fn compare(what: &str, got: &[f64], want: &[f64]) -> Outcome {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
    }
    let err = rel_err(got, want);
    if err <= TOL {
        Ok(())
    } else {
        Err(format!(
            "{what}: relative error {err:e}\n   got {got:?}\n  want {want:?}"
        ))
    }
}

fn check_case(case: &Case) -> Outcome {
    let fail = |e: crate::Error| e.to_string();
    let f = |v: &[Tensor]| -> Result<Tensor> {
        let p = v.iter().map(pre).collect::<Result<Vec<_>>>()?;
        readout(&(case.op)(&p)?)
    };
    let tracked: Vec<Tensor> = case.inputs.iter().map(Tensor::requires_grad).collect();
    let wrt: Vec<&Tensor> = tracked.iter().collect();
    let p = tracked
        .iter()
        .map(pre)
        .collect::<Result<Vec<_>>>()
        .map_err(fail)?;
    let y = (case.op)(&p).map_err(fail)?;
    let recorded = recorded_between(&y, &p);
    if !recorded.iter().any(|n| (case.records)(n)) {
        let ops: Vec<_> = recorded.iter().map(|n| n.op.clone()).collect();
        return Err(format!("records no node of its op; recorded {ops:?}"));
    }
    let loss = readout(&y).map_err(fail)?;

    let grads = grad(&loss, &wrt, false).map_err(fail)?;
    for (i, g) in grads.iter().enumerate() {
        let want = numeric_grad(&f, &case.inputs, i, H);
        compare(&format!("∂f/∂x{i}"), &vals(g), &want)?;
    }

    let hessian = HvpOperator::new(&loss, &wrt).map_err(fail)?;
    let grad_at = |step: f64, d: &[Tensor]| -> Result<Vec<Vec<f64>>> {
        let moved: Vec<Tensor> = case
            .inputs
            .iter()
            .zip(d)
            .map(|(x, d)| Ok(x.add(&d.scale(step)?)?.requires_grad()))
            .collect::<Result<_>>()?;
        let loss = f(&moved)?;
        let g = grad(&loss, &moved.iter().collect::<Vec<_>>(), false)?;
        Ok(g.iter().map(vals).collect())
    };
    let k = case.inputs.len();
    let mut directions: Vec<(String, Vec<Tensor>)> = vec![(
        "joint".into(),
        case.inputs
            .iter()
            .enumerate()
            .map(|(i, x)| t64(x.shape(), 500 + i as u64))
            .collect(),
    )];
    for i in 0..k {
        let d = case
            .inputs
            .iter()
            .enumerate()
            .map(|(j, x)| {
                if j == i {
                    Ok(t64(x.shape(), 600 + i as u64))
                } else {
                    x.zeros_like()
                }
            })
            .collect::<Result<_>>()
            .map_err(fail)?;
        directions.push((format!("along x{i}"), d));
    }
    for (label, d) in directions {
        let got = hessian.hvp(&d.iter().collect::<Vec<_>>()).map_err(fail)?;
        let plus = grad_at(H, &d).map_err(fail)?;
        let minus = grad_at(-H, &d).map_err(fail)?;
        for j in 0..k {
            let want: Vec<f64> = plus[j]
                .iter()
                .zip(&minus[j])
                .map(|(p, m)| (p - m) / (2.0 * H))
                .collect();
            compare(&format!("H·v {label}, block x{j}"), &vals(&got[j]), &want)?;
        }
    }
    Ok(())
}

#[test]
fn every_rule_first_and_second_order() {
    let mut failures = Vec::new();
    let mut count = 0;
    for &kind in OpKind::ALL {
        let cases = cases(kind);
        assert!(
            kind == OpKind::Leaf || !cases.is_empty(),
            "{kind:?} has no cases"
        );
        for c in &cases {
            count += 1;
            if let Err(e) = check_case(c) {
                failures.push(format!("{kind:?} / {}: {e}", c.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Uniform in ±[0.2, 1.2]: away from the kinks and poles at zero.
fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let x = t64(shape, seed);
    x.add(&x.sign().unwrap().scale(0.2).unwrap()).unwrap()
}

/// Uniform in [0.2, 1.2].
fn positive(shape: &[usize], seed: u64) -> Tensor {
    t64(shape, seed)
        .abs()
        .unwrap()
        .scale_shift(1.0, 0.2)
        .unwrap()
}

/// Every case of one op kind. No wildcard: a new kind needs its cases here.
fn cases(kind: OpKind) -> Vec<Case> {
    let of_kind = move |n: &Node| n.op.kind() == kind;
    let shapes = |list: &[(&'static [usize], &'static [usize])]| list.to_vec();
    match kind {
        // No rule: the inputs of every case are leaves.
        OpKind::Leaf => vec![],
        OpKind::Unary => ALL_UNARY.into_iter().map(unary_case).collect(),
        OpKind::Binary => ALL_BINARY.into_iter().flat_map(binary_cases).collect(),
        OpKind::BroadcastTo => shapes(&[(&[3, 1], &[2, 3, 4]), (&[4], &[3, 4]), (&[], &[2, 3])])
            .into_iter()
            .map(|(from, to)| {
                let name = format!("broadcast_to {from:?} -> {to:?}");
                case(name, vec![t64(from, 31)], of_kind, move |v| {
                    v[0].broadcast_to(to)
                })
            })
            .collect(),
        OpKind::SumTo => shapes(&[(&[2, 3, 4], &[3, 1]), (&[3, 4], &[4]), (&[2, 3], &[])])
            .into_iter()
            .map(|(from, to)| {
                let name = format!("sum_to {from:?} -> {to:?}");
                case(name, vec![t64(from, 32)], of_kind, move |v| v[0].sum_to(to))
            })
            .collect(),
        OpKind::Reshape => shapes(&[(&[2, 6], &[3, 4]), (&[2, 6], &[12])])
            .into_iter()
            .map(|(from, to)| {
                let name = format!("reshape {from:?} -> {to:?}");
                case(name, vec![t64(from, 33)], of_kind, move |v| {
                    v[0].reshape(to)
                })
            })
            .collect(),
        OpKind::Matmul => matmul_cases(),
        OpKind::Sum => vec![case("sum", vec![t64(&[3, 4], 34)], of_kind, |v| v[0].sum())],
        OpKind::Mean => vec![case("mean", vec![t64(&[3, 4], 35)], of_kind, |v| {
            v[0].mean()
        })],
        OpKind::SumAxis => axis_cases(kind, Tensor::sum_axis),
        OpKind::MeanAxis => axis_cases(kind, Tensor::mean_axis),
        OpKind::MaxAxis => axis_cases(kind, Tensor::max_axis),
        OpKind::Dot => vec![case(
            "dot",
            vec![t64(&[7], 37), t64(&[7], 38)],
            of_kind,
            |v| v[0].dot(&v[1]),
        )],
        OpKind::Sqnorm => vec![case("sqnorm", vec![t64(&[2, 7], 39)], of_kind, |v| {
            v[0].sqnorm()
        })],
        OpKind::LogSoftmax => [&[3usize, 4][..], &[2, 3, 4]]
            .into_iter()
            .map(|s| {
                let name = format!("log_softmax {s:?}");
                case(name, vec![logits(s)], of_kind, |v| v[0].log_softmax())
            })
            .collect(),
        OpKind::Softmax => [&[3usize, 4][..], &[2, 3, 4]]
            .into_iter()
            .map(|s| {
                let name = format!("softmax {s:?}");
                case(name, vec![logits(s)], of_kind, |v| v[0].softmax())
            })
            .collect(),
        OpKind::CrossEntropy => cross_entropy_cases(),
        OpKind::CeGrad => ce_grad_cases(),
        OpKind::Mse => vec![case(
            "mse",
            vec![t64(&[4, 3], 40), t64(&[4, 3], 41)],
            of_kind,
            |v| v[0].mse(&v[1]),
        )],
        OpKind::Gather => {
            let y = labels(5, 4);
            vec![case("gather", vec![logits(&[5, 4])], of_kind, move |v| {
                v[0].gather(&y)
            })]
        }
        OpKind::Transpose => [&[3usize, 5][..], &[2, 3, 5]]
            .into_iter()
            .map(|s| {
                let name = format!("transpose {s:?}");
                case(name, vec![t64(s, 42)], of_kind, |v| v[0].transpose())
            })
            .collect(),
        OpKind::Concat => vec![case(
            "concat",
            vec![t64(&[2, 3], 43), t64(&[4], 44), t64(&[1], 45)],
            of_kind,
            |v| Tensor::concat(&[&v[0], &v[1], &v[2]]),
        )],
        OpKind::Slice => vec![
            case("slice", vec![t64(&[3, 4], 46)], of_kind, |v| {
                v[0].slice(3, 5)
            }),
            case(
                "split (its last piece)",
                vec![t64(&[9], 47)],
                |n| matches!(n.op, Op::Slice { start: 5 }),
                |v| Ok(v[0].split(&[2, 3, 4])?.remove(2)),
            ),
        ],
        OpKind::Axpby => axpby_cases(),
        OpKind::AxpyRatio => {
            // den ∈ ±[1, 2]: well away from the pole (and the kernel's 0/0 guard).
            let den = |shape: &[usize], seed| {
                let d = away_from_zero(shape, seed);
                d.add(&d.sign().unwrap().scale(0.8).unwrap()).unwrap()
            };
            vec![
                case(
                    "axpy_ratio sign=-1",
                    vec![t64(&[6], 48), t64(&[6], 49), t64(&[], 50), den(&[], 51)],
                    of_kind,
                    |v| v[0].axpy_ratio(&v[2], &v[3], -1.0, &v[1]),
                ),
                case(
                    "axpy_ratio sign=+1, [1]-shaped num and den",
                    vec![t64(&[6], 52), t64(&[6], 53), t64(&[1], 54), den(&[1], 55)],
                    of_kind,
                    |v| v[0].axpy_ratio(&v[2], &v[3], 1.0, &v[1]),
                ),
            ]
        }
    }
}

type AxisReduce = fn(&Tensor, usize, bool) -> Result<Tensor>;

fn axis_cases(kind: OpKind, reduce: AxisReduce) -> Vec<Case> {
    let mut out = Vec::new();
    for axis in 0..3 {
        for keepdim in [false, true] {
            let records = move |n: &Node| {
                n.op.kind() == kind
                    && match n.op {
                        Op::SumAxis {
                            axis: a,
                            keepdim: k,
                        }
                        | Op::MeanAxis {
                            axis: a,
                            keepdim: k,
                        }
                        | Op::MaxAxis {
                            axis: a,
                            keepdim: k,
                        } => (a, k) == (axis, keepdim),
                        _ => false,
                    }
            };
            let name = format!("axis={axis} keepdim={keepdim}");
            out.push(case(name, vec![t64(&[2, 3, 4], 36)], records, move |v| {
                reduce(&v[0], axis, keepdim)
            }));
        }
    }
    out
}

/// Logits of moderate size, so softmax is neither flat nor saturated.
fn logits(shape: &[usize]) -> Tensor {
    t64(shape, 60).scale(1.5).unwrap()
}

fn unary_case(u: UnaryOp) -> Case {
    let shape = [3, 5];
    // Piecewise-constant ops have no rule (zero derivative almost everywhere); they are
    // multiplied by sin(x), so the check is that nothing flows through them while the
    // other factor's first and second derivatives do.
    let (input, piecewise_constant) = match u {
        UnaryOp::Log | UnaryOp::Sqrt => (positive(&shape, 11), false),
        UnaryOp::Recip | UnaryOp::Abs | UnaryOp::Relu => (away_from_zero(&shape, 12), false),
        UnaryOp::ReluMask | UnaryOp::Sign => (away_from_zero(&shape, 13), true),
        UnaryOp::Neg
        | UnaryOp::Exp
        | UnaryOp::Square
        | UnaryOp::Sin
        | UnaryOp::Cos
        | UnaryOp::Tanh
        | UnaryOp::Sigmoid
        | UnaryOp::Softplus
        | UnaryOp::LogSigmoid
        | UnaryOp::ScaleShift => (t64(&shape, 14), false),
    };
    let records = move |n: &Node| matches!(n.op, Op::Unary { op, .. } if op == u);
    case(format!("{u:?}"), vec![input], records, move |v| {
        // `unary(ScaleShift)` is the identity, which would not see a rule that drops `a`.
        let y = match u {
            UnaryOp::ScaleShift => v[0].scale_shift(-1.5, 0.5)?,
            _ => v[0].unary(u)?,
        };
        if piecewise_constant {
            y.mul(&v[0].sin()?)
        } else {
            Ok(y)
        }
    })
}

fn binary_cases(op: BinaryOp) -> Vec<Case> {
    // Comparisons have no rule; like the piecewise-constant unary ops they scale a
    // smooth function of both inputs (shifted by 0.5, so that Eq's all-zero result
    // does not zero f).
    let piecewise_constant = match op {
        BinaryOp::Add
        | BinaryOp::Sub
        | BinaryOp::Mul
        | BinaryOp::Div
        | BinaryOp::Max
        | BinaryOp::Min => false,
        BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq => true,
    };
    let pairs: [(&[usize], &[usize]); 3] =
        [(&[3, 4], &[3, 4]), (&[2, 1, 3], &[4, 1]), (&[4, 3], &[])];
    pairs
        .into_iter()
        .map(|(sa, sb)| {
            let a = t64(sa, 21);
            let b = match op {
                BinaryOp::Div => away_from_zero(sb, 22),
                _ => t64(sb, 22),
            };
            let records = move |n: &Node| matches!(n.op, Op::Binary(o) if o == op);
            case(
                format!("{op:?} {sa:?} {sb:?}"),
                vec![a, b],
                records,
                move |v| {
                    let y = v[0].binary(&v[1], op)?;
                    if piecewise_constant {
                        y.scale_shift(1.0, 0.5)?.mul(&v[0].mul(&v[1])?.sin()?)
                    } else {
                        Ok(y)
                    }
                },
            )
        })
        .collect()
}

fn matmul_cases() -> Vec<Case> {
    let (m, k, n, batch) = (3, 4, 2, 2);
    let mut out = Vec::new();
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = if ta { vec![k, m] } else { vec![m, k] };
        let b = if tb { vec![n, k] } else { vec![k, n] };
        let batched = |s: &[usize]| [&[batch][..], s].concat();
        let layouts = [
            ("", a.clone(), b.clone()),
            (" batched", batched(&a), batched(&b)),
            (" shared rhs", batched(&a), b.clone()),
            (" shared lhs", a.clone(), batched(&b)),
        ];
        for (label, sa, sb) in layouts {
            let records = move |n: &Node| matches!(n.op, Op::Matmul { trans_a, trans_b } if trans_a == ta && trans_b == tb);
            out.push(case(
                format!("matmul{label} ta={ta} tb={tb}"),
                vec![t64(&sa, 23), t64(&sb, 24)],
                records,
                move |v| v[0].matmul_t(&v[1], ta, tb),
            ));
        }
    }
    out
}

/// Every branch of the rule: the CPU forward pass caches softmax(z) in the node (used
/// unless the weights' gradient is wanted, which needs log-probabilities); the GPU's
/// caches nothing, so the rule recomputes softmax(z) (built here by recording the node
/// by hand with `probs: None`).
fn cross_entropy_cases() -> Vec<Case> {
    let (n, c) = (5, 4);
    let z = logits(&[n, c]);
    let w = t64(&[n], 61);
    let (y1, y2, y3, y4) = (labels(n, c), labels(n, c), labels(n, c), labels(n, c));
    let cached = |inputs: usize| {
        move |node: &Node| {
            matches!(node.op, Op::CrossEntropy { probs: Some(_), .. })
                && node.inputs.len() == inputs
        }
    };
    let const_w = w.clone();
    vec![
        case("cross_entropy", vec![z.clone()], cached(1), move |v| {
            v[0].cross_entropy(&y1, None)
        }),
        case(
            "cross_entropy with differentiable weights",
            vec![z.clone(), w],
            cached(2),
            move |v| v[0].cross_entropy(&y2, Some(&v[1])),
        ),
        case(
            "cross_entropy with constant weights",
            vec![z.clone()],
            cached(2),
            move |v| v[0].cross_entropy(&y3, Some(&const_w)),
        ),
        case(
            "cross_entropy without cached probs (the GPU's node)",
            vec![z],
            |node| matches!(node.op, Op::CrossEntropy { probs: None, .. }),
            move |v| {
                let out = v[0].detach().cross_entropy(&y4, None)?;
                let op = Op::CrossEntropy {
                    labels: y4.clone(),
                    probs: None,
                };
                Ok(record(op, &[&v[0]], out))
            },
        ),
    ]
}

/// The cross-entropy's gradient as one op (what its rule records unless the weights'
/// gradient is wanted): every input differentiable, weighted or not. First order runs
/// the fused vector–Jacobian product, second order the rule's composition.
fn ce_grad_cases() -> Vec<Case> {
    let (n, c) = (5, 4);
    let z = logits(&[n, c]);
    let (y1, y2) = (labels(n, c), labels(n, c));
    let of = |node: &Node| matches!(node.op, Op::CeGrad { .. });
    vec![
        case(
            "ce_grad with weights and upstream gradient",
            vec![z.clone(), t64(&[n], 62), t64(&[], 63)],
            of,
            move |v| crate::ops::loss::cross_entropy_grad(&v[0], &y1, Some(&v[1]), None, &v[2]),
        ),
        case("ce_grad", vec![z, t64(&[], 64)], of, move |v| {
            crate::ops::loss::cross_entropy_grad(&v[0], &y2, None, None, &v[1])
        }),
    ]
}

fn axpby_cases() -> Vec<Case> {
    let vecs = || vec![t64(&[6], 56), t64(&[6], 57)];
    let with_scalars = |k: u64| {
        let mut v = vecs();
        v.extend((0..k).map(|i| t64(&[], 58 + i)));
        v
    };
    let host = |n: &Node| {
        matches!(
            n.op,
            Op::Axpby {
                a: ScalarKind::Host(_),
                b: ScalarKind::Host(_)
            }
        )
    };
    vec![
        case("axpy host", vecs(), host, |v| v[0].axpy(0.7, &v[1])),
        case("axpby host", vecs(), host, |v| v[0].axpby(-0.3, 0.7, &v[1])),
        case(
            "axpby device a and b",
            with_scalars(2),
            |n| {
                matches!(
                    n.op,
                    Op::Axpby {
                        a: ScalarKind::Device,
                        b: ScalarKind::Device
                    }
                )
            },
            |v| v[0].axpby(&v[3], &v[2], &v[1]),
        ),
        case(
            "axpby device a",
            with_scalars(1),
            |n| {
                matches!(
                    n.op,
                    Op::Axpby {
                        a: ScalarKind::Device,
                        b: ScalarKind::Host(_)
                    }
                )
            },
            |v| v[0].axpby(0.4, &v[2], &v[1]),
        ),
        case(
            "axpby device b",
            with_scalars(1),
            |n| {
                matches!(
                    n.op,
                    Op::Axpby {
                        a: ScalarKind::Host(_),
                        b: ScalarKind::Device
                    }
                )
            },
            |v| v[0].axpby(&v[2], 0.4, &v[1]),
        ),
    ]
}
