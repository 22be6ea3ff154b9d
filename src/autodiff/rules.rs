//! Every backward rule of blo, in one table.
//!
//! A rule maps the upstream gradient `g` (shaped like the op's output) to one gradient
//! per input (`None` where the input is not differentiable, e.g. a comparison). Rules
//! are written only with public, recorded tensor ops, so with recording on they are
//! themselves differentiated: that is all second-order autodiff needs.
//!
//! What a rule needs kept from the forward pass besides its inputs, its output, is
//! declared here too ([`keeps_output`] and its per-family halves beside `unary` and
//! `binary`), matched without a wildcard: adding an op forces the decision where its
//! rule is written, and a rule that reads an output it was not given panics naming the
//! op instead of reading another tensor's values.

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::tensor::Tensor;
use crate::tensor::tape::{Op, ScalarKind, record};

type Grads = Vec<Option<Tensor>>;

/// Whether `op`'s backward rule reads the op's output (recording keeps it only then).
pub(crate) fn keeps_output(op: &Op) -> bool {
    match op {
        Op::Unary { op, .. } => unary_keeps_output(*op),
        Op::Binary(op) => binary_keeps_output(*op),
        // y = max: the rule masks the input where it equals y.
        Op::MaxAxis { .. } => true,
        // Both rules are written in terms of the (log-)probabilities y.
        Op::LogSoftmax | Op::Softmax => true,
        Op::Leaf
        | Op::BroadcastTo
        | Op::SumTo
        | Op::Reshape
        | Op::Matmul { .. }
        | Op::Sum
        | Op::Mean
        | Op::SumAxis { .. }
        | Op::MeanAxis { .. }
        | Op::Dot
        | Op::Sqnorm
        | Op::CrossEntropy { .. }
        | Op::CeGrad { .. }
        | Op::Mse
        | Op::Gather { .. }
        | Op::Transpose
        | Op::Concat
        | Op::Slice { .. }
        | Op::Axpby { .. }
        | Op::AxpyRatio { .. } => false,
    }
}

/// The op's output for a rule that reads it. `None` means [`keeps_output`] does not
/// list the op: a bug in this file, not in the caller's data.
fn output<'a>(out: Option<&'a Tensor>, op: &dyn std::fmt::Debug) -> &'a Tensor {
    out.unwrap_or_else(|| {
        panic!(
            "internal error: the backward rule of {op:?} reads the op's output, which was not kept; declare it in autodiff::rules::keeps_output"
        )
    })
}

/// Gradients of an op's inputs given its output (`out`, present when [`keeps_output`]
/// says so) and the upstream gradient `g`. `needed[i]` says whether input i's gradient
/// is used; rules of ops with several inputs skip the others (returning `None` for them).
pub(crate) fn backward(
    op: &Op,
    inputs: &[Tensor],
    needed: &[bool],
    out: Option<&Tensor>,
    g: &Tensor,
) -> Result<Grads> {
    let y = || output(out, op);
    let x = |i: usize| &inputs[i];
    let need = |i: usize| needed.get(i).copied().unwrap_or(false);
    // Computes input i's gradient only when it is needed.
    let when = |i: usize, f: &dyn Fn() -> Result<Tensor>| -> Result<Option<Tensor>> {
        if need(i) { f().map(Some) } else { Ok(None) }
    };
    Ok(match op {
        Op::Leaf => vec![],
        Op::Unary { op, a } => vec![unary(*op, *a, x(0), out, g)?],
        Op::Binary(op) => binary(*op, x(0), x(1), [need(0), need(1)], out, g)?,
        Op::BroadcastTo => vec![Some(g.sum_to(x(0).shape())?)],
        Op::SumTo => vec![Some(g.broadcast_to(x(0).shape())?)],
        Op::Reshape => vec![Some(g.reshape(x(0).shape())?)],
        Op::Matmul { trans_a, trans_b } => {
            // C = op(A)·op(B) with op = transpose when flagged. Each input's gradient is
            // arranged so that it comes out in the input's stored layout.
            let (a, b) = (x(0), x(1));
            let ga = when(0, &|| {
                let ga = match (*trans_a, *trans_b) {
                    (false, false) => g.matmul_t(b, false, true)?,
                    (false, true) => g.matmul_t(b, false, false)?,
                    (true, false) => b.matmul_t(g, false, true)?,
                    (true, true) => b.matmul_t(g, true, true)?,
                };
                // A matrix shared across a batch collects the gradient of every batch.
                if ga.rank() > a.rank() {
                    ga.sum_axis(0, false)
                } else {
                    Ok(ga)
                }
            })?;
            let gb = when(1, &|| {
                let gb = match (*trans_a, *trans_b) {
                    (false, false) => a.matmul_t(g, true, false)?,
                    (false, true) => g.matmul_t(a, true, false)?,
                    (true, false) => a.matmul_t(g, false, false)?,
                    (true, true) => g.matmul_t(a, true, true)?,
                };
                if gb.rank() > b.rank() {
                    gb.sum_axis(0, false)
                } else {
                    Ok(gb)
                }
            })?;
            vec![ga, gb]
        }
        Op::Sum => vec![Some(g.broadcast_to(x(0).shape())?)],
        Op::Mean => {
            let n = x(0).numel().max(1) as f64;
            vec![Some(g.scale(1.0 / n)?.broadcast_to(x(0).shape())?)]
        }
        Op::SumAxis { axis, keepdim } => vec![Some(unreduce(g, x(0).shape(), *axis, *keepdim)?)],
        Op::MeanAxis { axis, keepdim } => {
            let n = x(0).shape()[*axis].max(1) as f64;
            vec![Some(unreduce(
                &g.scale(1.0 / n)?,
                x(0).shape(),
                *axis,
                *keepdim,
            )?)]
        }
        Op::MaxAxis { axis, keepdim } => {
            // Every element equal to the maximum receives the full gradient; ties have
            // probability zero for continuous inputs, and the mask is a constant.
            let shape = x(0).shape();
            let ymax = unreduce(y(), shape, *axis, *keepdim)?;
            let mask = x(0).detach().eq_mask(&ymax.detach())?;
            vec![Some(unreduce(g, shape, *axis, *keepdim)?.mul(&mask)?)]
        }
        Op::Dot => vec![when(0, &|| x(1).mul(g))?, when(1, &|| x(0).mul(g))?],
        Op::Sqnorm => vec![Some(x(0).mul(g)?.scale(2.0)?)],
        Op::LogSoftmax => {
            // y = z − logsumexp(z): ∂ = g − softmax(z)·Σg along the last axis.
            let y = y();
            let last = y.rank() - 1;
            let softmax = y.exp()?;
            let total = g.sum_axis(last, true)?;
            vec![Some(g.sub(&softmax.mul(&total)?)?)]
        }
        Op::Softmax => {
            // ∂ = y ⊙ (g − Σ(g ⊙ y)) along the last axis.
            let y = y();
            let last = y.rank() - 1;
            let gy = g.mul(y)?;
            vec![Some(gy.sub(&y.mul(&gy.sum_axis(last, true)?)?)?)]
        }
        Op::CrossEntropy { labels, probs } => {
            // L = (1/n) Σ w_i (logsumexp(z_i) − z_{i,y_i}):
            // ∂L/∂z_i = (w_i/n)(softmax(z_i) − onehot(y_i)), ∂L/∂w_i = CE_i / n.
            let z = x(0);
            let (n, c) = (z.shape()[0], z.shape()[1]);
            // Unless the weights' gradient is wanted, the logits' gradient is one op
            // (one dispatch on a GPU instead of the composition below), recorded as
            // `CeGrad` under create_graph so that second order goes through its rule.
            if !need(1) && g.numel() == 1 {
                let w = inputs.get(1);
                let gz = crate::ops::loss::cross_entropy_grad(z, labels, w, probs.as_ref(), g)?;
                return Ok(vec![Some(gz), None]);
            }
            let scale = g.scale(1.0 / n.max(1) as f64)?;
            // The weights' gradient needs log-probabilities; when it is wanted the
            // probabilities are their exp, otherwise one fused softmax.
            let log_p = if need(1) {
                Some(z.log_softmax()?)
            } else {
                None
            };
            let dlogits = || {
                let p = match (&log_p, probs) {
                    (Some(lp), _) => lp.exp()?,
                    // The forward pass's softmax, put on the graph as softmax(z) (which
                    // it is) so that second-order products still see its derivative.
                    (None, Some(p)) => record(Op::Softmax, &[z], p.clone()),
                    (None, None) => z.softmax()?,
                };
                p.sub(&Tensor::one_hot(labels, c)?)
            };
            match inputs.get(1) {
                None => vec![Some(dlogits()?.mul(&scale)?)],
                Some(w) => {
                    let gz = when(0, &|| dlogits()?.mul(&w.reshape(&[n, 1])?.mul(&scale)?))?;
                    let gw = match &log_p {
                        Some(lp) => Some(lp.gather(labels)?.neg()?.mul(&scale)?),
                        None => None,
                    };
                    vec![gz, gw]
                }
            }
        }
        Op::CeGrad { labels } => {
            // y = s ⊙ (p − onehot) with s_i = g·w_i/n, p = softmax(z). For an upstream u:
            // ∂/∂z_i = s_i · p_i ⊙ (u_i − ⟨p_i, u_i⟩) (softmax's symmetric Jacobian), and
            // with r_i = ⟨p_i − onehot_i, u_i⟩: ∂/∂w_i = (g/n)·r_i, ∂/∂g = Σ (w_i/n)·r_i.
            let (z, gz) = (x(0), x(1));
            let w = inputs.get(2);
            let n = z.shape()[0].max(1) as f64;
            let (dz, r) = if crate::tensor::tape::is_grad_enabled() {
                // Differentiated again: the composition, whose ops have rules.
                let c = z.shape()[1];
                let p = z.softmax()?;
                let pu = p.mul(g)?.sum_axis(1, true)?;
                let mut s = gz.scale(1.0 / n)?;
                if let Some(w) = w {
                    s = w.reshape(&[z.shape()[0], 1])?.mul(&s)?;
                }
                let dz = p.mul(&g.sub(&pu)?)?.mul(&s)?;
                let r = p
                    .sub(&Tensor::one_hot(labels, c)?)?
                    .mul(g)?
                    .sum_axis(1, false)?;
                (dz, r)
            } else {
                crate::ops::loss::cross_entropy_grad_vjp_raw(z, labels, w, gz, g)?
            };
            let dg = when(1, &|| match w {
                Some(w) => r.dot(w)?.scale(1.0 / n),
                None => r.sum()?.scale(1.0 / n),
            })?;
            let mut grads = vec![need(0).then_some(dz), dg];
            if w.is_some() {
                grads.push(when(2, &|| r.mul(gz)?.scale(1.0 / n))?);
            }
            grads
        }
        Op::Mse => {
            let n = x(0).numel().max(1) as f64;
            let d = x(0).sub(x(1))?.mul(g)?.scale(2.0 / n)?;
            vec![Some(d.clone()), when(1, &|| d.neg())?]
        }
        Op::Gather { labels } => {
            let c = x(0).shape()[1];
            let rows = g.reshape(&[g.numel(), 1])?;
            vec![Some(Tensor::one_hot(labels, c)?.mul(&rows)?)]
        }
        Op::Transpose => vec![Some(g.transpose()?)],
        Op::Concat => {
            let sizes: Vec<usize> = inputs.iter().map(Tensor::numel).collect();
            g.split(&sizes)?
                .into_iter()
                .zip(inputs)
                .map(|(p, t)| p.reshape(t.shape()).map(Some))
                .collect::<Result<_>>()?
        }
        Op::Slice { start } => {
            let n = x(0).numel();
            let len = g.numel();
            let before = Tensor::zeros(&[*start], &g.device())?;
            let after = Tensor::zeros(&[n - start - len], &g.device())?;
            let before = before.to_dtype(g.dtype())?;
            let after = after.to_dtype(g.dtype())?;
            vec![Some(
                Tensor::concat(&[&before, g, &after])?.reshape(x(0).shape())?,
            )]
        }
        Op::Axpby { a, b } => {
            // out = b·y + a·x; device scalars follow y and x in the inputs.
            let (yv, xv) = (x(0), x(1));
            let mut next = 2;
            let mut scaled = |k: &ScalarKind| -> Result<(Tensor, bool)> {
                Ok(match k {
                    ScalarKind::Host(v) => (g.scale(*v)?, false),
                    ScalarKind::Device => {
                        let s = &inputs[next];
                        next += 1;
                        (g.mul(&s.reshape(&[])?)?, true)
                    }
                })
            };
            let (gx, a_dev) = scaled(a)?;
            let (gy, b_dev) = scaled(b)?;
            let mut out = vec![Some(gy), Some(gx)];
            if a_dev {
                out.push(Some(g.dot(xv)?.reshape(inputs[2].shape())?));
            }
            if b_dev {
                out.push(Some(g.dot(yv)?.reshape(inputs[out.len()].shape())?));
            }
            out
        }
        Op::AxpyRatio { sign } => {
            let (xv, num, den) = (x(1), x(2), x(3));
            let ratio = num.reshape(&[])?.div(&den.reshape(&[])?)?.scale(*sign)?;
            let gx = g.mul(&ratio)?;
            let gdot = g.dot(xv)?.scale(*sign)?;
            let gnum = gdot.div(&den.reshape(&[])?)?;
            let gden = gnum
                .mul(&num.reshape(&[])?)?
                .div(&den.reshape(&[])?)?
                .neg()?;
            vec![
                Some(g.clone()),
                Some(gx),
                Some(gnum.reshape(num.shape())?),
                Some(gden.reshape(den.shape())?),
            ]
        }
    })
}

/// The unary rules that are written in terms of y = f(x).
fn unary_keeps_output(op: UnaryOp) -> bool {
    match op {
        UnaryOp::Exp | UnaryOp::Sqrt | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Recip => true,
        UnaryOp::Neg
        | UnaryOp::Log
        | UnaryOp::Square
        | UnaryOp::Abs
        | UnaryOp::Sin
        | UnaryOp::Cos
        | UnaryOp::Relu
        | UnaryOp::ScaleShift
        | UnaryOp::ReluMask
        | UnaryOp::Sign
        | UnaryOp::Softplus
        | UnaryOp::LogSigmoid => false,
    }
}

fn unary(
    op: UnaryOp,
    a: f64,
    x: &Tensor,
    out: Option<&Tensor>,
    g: &Tensor,
) -> Result<Option<Tensor>> {
    let y = || output(out, &op);
    Ok(Some(match op {
        UnaryOp::Neg => g.neg()?,
        UnaryOp::Exp => g.mul(y())?,
        UnaryOp::Log => g.div(x)?,
        UnaryOp::Sqrt => g.div(y())?.scale(0.5)?,
        UnaryOp::Square => g.mul(x)?.scale(2.0)?,
        UnaryOp::Abs => g.mul(&x.sign()?)?,
        UnaryOp::Sin => g.mul(&x.cos()?)?,
        UnaryOp::Cos => g.mul(&x.sin()?)?.neg()?,
        UnaryOp::Tanh => g.mul(&y().square()?.scale_shift(-1.0, 1.0)?)?,
        UnaryOp::Sigmoid => g.mul(&y().mul(&y().scale_shift(-1.0, 1.0)?)?)?,
        UnaryOp::Relu => g.mul(&x.relu_mask()?)?,
        UnaryOp::ScaleShift => g.scale(a)?,
        UnaryOp::Recip => g.mul(&y().square()?)?.neg()?,
        // Written with sigmoid, not from the stable forward's max/|x| pieces, so the
        // derivative is right at x = 0 too (sigmoid(0) = ½) and differentiable again.
        UnaryOp::Softplus => g.mul(&x.sigmoid()?)?,
        UnaryOp::LogSigmoid => g.mul(&x.neg()?.sigmoid()?)?,
        // Piecewise-constant functions: zero derivative almost everywhere.
        UnaryOp::ReluMask | UnaryOp::Sign => return Ok(None),
    }))
}

/// The binary rules that are written in terms of y = f(a, b).
fn binary_keeps_output(op: BinaryOp) -> bool {
    match op {
        BinaryOp::Div => true,
        BinaryOp::Add
        | BinaryOp::Sub
        | BinaryOp::Mul
        | BinaryOp::Max
        | BinaryOp::Min
        | BinaryOp::Gt
        | BinaryOp::Ge
        | BinaryOp::Lt
        | BinaryOp::Le
        | BinaryOp::Eq => false,
    }
}

fn binary(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    need: [bool; 2],
    out: Option<&Tensor>,
    g: &Tensor,
) -> Result<Grads> {
    let y = || output(out, &op);
    let (sa, sb) = (a.shape(), b.shape());
    let when = |i: usize, f: &dyn Fn() -> Result<Tensor>| -> Result<Option<Tensor>> {
        if need[i] { f().map(Some) } else { Ok(None) }
    };
    Ok(match op {
        BinaryOp::Add => vec![when(0, &|| g.sum_to(sa))?, when(1, &|| g.sum_to(sb))?],
        BinaryOp::Sub => vec![
            when(0, &|| g.sum_to(sa))?,
            when(1, &|| g.sum_to(sb)?.neg())?,
        ],
        BinaryOp::Mul => vec![
            when(0, &|| g.mul(b)?.sum_to(sa))?,
            when(1, &|| g.mul(a)?.sum_to(sb))?,
        ],
        BinaryOp::Div => {
            let ga = g.div(b)?;
            let gb = when(1, &|| ga.mul(y())?.neg()?.sum_to(sb))?;
            vec![when(0, &|| ga.sum_to(sa))?, gb]
        }
        // The larger (smaller) operand takes the gradient; ties go to `a`.
        BinaryOp::Max => {
            let ma = a.detach().ge(&b.detach())?;
            let mb = ma.scale_shift(-1.0, 1.0)?;
            vec![Some(g.mul(&ma)?.sum_to(sa)?), Some(g.mul(&mb)?.sum_to(sb)?)]
        }
        BinaryOp::Min => {
            let ma = a.detach().le(&b.detach())?;
            let mb = ma.scale_shift(-1.0, 1.0)?;
            vec![Some(g.mul(&ma)?.sum_to(sa)?), Some(g.mul(&mb)?.sum_to(sb)?)]
        }
        BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq => {
            vec![None, None]
        }
    })
}

/// Brings a gradient of a reduction along `axis` back to the input's shape.
fn unreduce(g: &Tensor, shape: &[usize], axis: usize, keepdim: bool) -> Result<Tensor> {
    let g = if keepdim {
        g.clone()
    } else {
        let mut kept = shape.to_vec();
        kept[axis] = 1;
        g.reshape(&kept)?
    };
    g.broadcast_to(shape)
}
