//! Naive host definitions of the kernels, in f64, for the references of the kernel
//! checks: loops over row-major indices written from each op's documented definition.
//! Nothing here calls into blo (no tensors, no ops, no CPU backend helpers), so a
//! reference cannot share a bug with the code it checks. Speed does not matter here;
//! being obviously right does.

use crate::ops::binary::BinaryOp;
use crate::ops::unary::UnaryOp;

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The row-major multi-index of flat index `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// The flat offset of the element of an operand of `shape` that the output element
/// at multi-index `idx` reads under NumPy broadcasting: dims aligned at the right,
/// index 0 along the operand's extent-1 dims.
fn broadcast_offset(idx: &[usize], shape: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    let mut offset = 0;
    for (d, &extent) in shape.iter().enumerate() {
        let i = if extent == 1 { 0 } else { idx[lead + d] };
        offset = offset * extent + i;
    }
    offset
}

/// The NumPy broadcast of two shapes that broadcast.
fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], d: usize| {
        if d + s.len() >= rank {
            s[d + s.len() - rank]
        } else {
            1
        }
    };
    (0..rank)
        .map(|d| if at(a, d) == 1 { at(b, d) } else { at(a, d) })
        .collect()
}

/// f(a, b) elementwise with broadcasting.
pub fn elementwise(
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> Vec<f64> {
    let out = broadcast_shape(sa, sb);
    (0..numel(&out))
        .map(|i| {
            let idx = unravel(i, &out);
            f(a[broadcast_offset(&idx, sa)], b[broadcast_offset(&idx, sb)])
        })
        .collect()
}

/// `x` of `shape` broadcast to `out`.
pub fn broadcast_to(x: &[f64], shape: &[usize], out: &[usize]) -> Vec<f64> {
    (0..numel(out))
        .map(|i| x[broadcast_offset(&unravel(i, out), shape)])
        .collect()
}

/// `x` of `shape` summed down to `target`: every element added into the one of
/// `target` that would broadcast back onto it.
pub fn sum_to(x: &[f64], shape: &[usize], target: &[usize]) -> Vec<f64> {
    let mut y = vec![0.0; numel(target)];
    for (i, &v) in x.iter().enumerate() {
        y[broadcast_offset(&unravel(i, shape), target)] += v;
    }
    y
}

/// The unary ops of the `unary/` checks (scale_shift with the checks' constants).
pub fn unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Square => x * x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        UnaryOp::ReluMask => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        UnaryOp::ScaleShift => super::SCALE_SHIFT.0 * x + super::SCALE_SHIFT.1,
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Recip => 1.0 / x,
        // The textbook forms (the checks' inputs are moderate), not blo's stable ones.
        UnaryOp::Softplus => (1.0 + x.exp()).ln(),
        UnaryOp::LogSigmoid => -(1.0 + (-x).exp()).ln(),
    }
}

pub fn binary(op: BinaryOp, a: f64, b: f64) -> f64 {
    let mask = |c: bool| if c { 1.0 } else { 0.0 };
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => {
            if a > b {
                a
            } else {
                b
            }
        }
        BinaryOp::Min => {
            if a < b {
                a
            } else {
                b
            }
        }
        BinaryOp::Gt => mask(a > b),
        BinaryOp::Ge => mask(a >= b),
        BinaryOp::Lt => mask(a < b),
        BinaryOp::Le => mask(a <= b),
        BinaryOp::Eq => mask(a == b),
    }
}

/// op(a)·op(b) for stored shapes `sa`, `sb` (rank 2, or rank 3 with a batch dim; a
/// rank-2 operand next to a rank-3 one is shared), as a triple loop per batch entry.
pub fn matmul(a: &[f64], sa: &[usize], b: &[f64], sb: &[usize], ta: bool, tb: bool) -> Vec<f64> {
    let batch = if sa.len() == 3 { sa[0] } else { sb[0] };
    let batch = if sa.len() == 3 || sb.len() == 3 {
        batch
    } else {
        1
    };
    let (ar, ac) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (br, bc) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let n = if tb { br } else { bc };
    let a_at = |t: usize, i: usize, p: usize| {
        let base = if sa.len() == 3 { t * ar * ac } else { 0 };
        if ta {
            a[base + p * ac + i]
        } else {
            a[base + i * ac + p]
        }
    };
    let b_at = |t: usize, p: usize, j: usize| {
        let base = if sb.len() == 3 { t * br * bc } else { 0 };
        if tb {
            b[base + j * bc + p]
        } else {
            b[base + p * bc + j]
        }
    };
    let mut c = Vec::with_capacity(batch * m * n);
    for t in 0..batch {
        for i in 0..m {
            for j in 0..n {
                c.push((0..k).map(|p| a_at(t, i, p) * b_at(t, p, j)).sum());
            }
        }
    }
    c
}

pub fn sum(x: &[f64]) -> f64 {
    x.iter().sum()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| p * q).sum()
}

pub fn mse(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f64>() / a.len() as f64
}

#[derive(Clone, Copy)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
}

/// `x` of `shape` reduced along `axis`: every element goes to the output element
/// whose multi-index is its own without `axis`.
pub fn reduce_axis(x: &[f64], shape: &[usize], axis: usize, op: Reduce) -> Vec<f64> {
    let mut out_shape = shape.to_vec();
    out_shape.remove(axis);
    let init = match op {
        Reduce::Max => f64::NEG_INFINITY,
        _ => 0.0,
    };
    let mut y = vec![init; numel(&out_shape)];
    for (i, &v) in x.iter().enumerate() {
        let mut idx = unravel(i, shape);
        idx.remove(axis);
        let o = idx
            .iter()
            .zip(&out_shape)
            .fold(0, |off, (&j, &e)| off * e + j);
        match op {
            Reduce::Max => {
                if v > y[o] {
                    y[o] = v;
                }
            }
            _ => y[o] += v,
        }
    }
    if let Reduce::Mean = op {
        for v in &mut y {
            *v /= shape[axis] as f64;
        }
    }
    y
}

/// ln Σ_j exp(z_j) of one row, shifted by its maximum so that exp cannot overflow.
fn logsumexp(row: &[f64]) -> f64 {
    let m = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// z_ij − logsumexp(z_i) for rows of `c` classes.
pub fn log_softmax(z: &[f64], c: usize) -> Vec<f64> {
    z.chunks(c)
        .flat_map(|row| {
            let l = logsumexp(row);
            row.iter().map(move |v| v - l)
        })
        .collect()
}

/// exp(z_ij) / Σ_j exp(z_ij) for rows of `c` classes.
pub fn softmax(z: &[f64], c: usize) -> Vec<f64> {
    z.chunks(c)
        .flat_map(|row| {
            let total: f64 = row.iter().map(|v| v.exp()).sum();
            row.iter().map(move |v| v.exp() / total)
        })
        .collect()
}

/// (1/n) Σ_i w_i (logsumexp(z_i) − z_{i, y_i}), with w_i = 1 without weights.
pub fn cross_entropy(z: &[f64], labels: &[f64], weights: Option<&[f64]>, c: usize) -> f64 {
    let n = labels.len();
    let mut total = 0.0;
    for i in 0..n {
        let row = &z[i * c..(i + 1) * c];
        let w = weights.map_or(1.0, |w| w[i]);
        total += w * (logsumexp(row) - row[labels[i] as usize]);
    }
    total / n as f64
}

/// g · (w_i/n) · (softmax(z_i) − onehot(y_i)): the cross-entropy's gradient with
/// respect to the logits times an upstream gradient g.
pub fn cross_entropy_grad(
    z: &[f64],
    labels: &[f64],
    weights: Option<&[f64]>,
    g: f64,
    c: usize,
) -> Vec<f64> {
    let n = labels.len();
    let mut d = softmax(z, c);
    for i in 0..n {
        let s = g * weights.map_or(1.0, |w| w[i]) / n as f64;
        for j in 0..c {
            let hot = if j == labels[i] as usize { 1.0 } else { 0.0 };
            d[i * c + j] = s * (d[i * c + j] - hot);
        }
    }
    d
}

/// The vector–Jacobian product of [`cross_entropy_grad`] with u: with p = softmax(z),
/// s_i = g·w_i/n: (s_i·p_i ⊙ (u_i − ⟨p_i, u_i⟩), r_i = ⟨p_i, u_i⟩ − u_{i, y_i}).
pub fn cross_entropy_grad_vjp(
    z: &[f64],
    labels: &[f64],
    weights: Option<&[f64]>,
    g: f64,
    u: &[f64],
    c: usize,
) -> (Vec<f64>, Vec<f64>) {
    let n = labels.len();
    let p = softmax(z, c);
    let mut dz = vec![0.0; z.len()];
    let mut r = vec![0.0; n];
    for i in 0..n {
        let s = g * weights.map_or(1.0, |w| w[i]) / n as f64;
        let pu: f64 = (0..c).map(|j| p[i * c + j] * u[i * c + j]).sum();
        r[i] = pu - u[i * c + labels[i] as usize];
        for j in 0..c {
            dz[i * c + j] = s * p[i * c + j] * (u[i * c + j] - pu);
        }
    }
    (dz, r)
}

/// The last two dims of stacked [m, n] matrices swapped.
pub fn transpose(x: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for t in 0..x.len() / (m * n) {
        for i in 0..m {
            for j in 0..n {
                y[t * m * n + j * m + i] = x[t * m * n + i * n + j];
            }
        }
    }
    y
}
