//! The CPU side of the losses (`ops/loss.rs`): log-softmax, softmax and cross-entropy
//! over rows, with the exps of all rows in one vectorised slice.

use super::index::class_of;
use super::math::{CpuMath, row_len, with_row_len};
use crate::dtype::Element;
use crate::error::Result;

/// Stable log Σ exp of every row of `c` elements: the row max is subtracted first, so every
/// term is in (0, 1] and the element type keeps ~1e-7 relative accuracy.
fn row_logsumexp<T: CpuMath>(z: &[T], c: usize) -> Vec<T> {
    with_row_len!(c, |C| {
        let (e, maxes) = exp_shifted_rows::<T, C>(z, c);
        e.chunks_exact(row_len::<C>(c))
            .zip(&maxes)
            .map(|(row, &m)| m + row_sum(row).ln())
            .collect()
    })
}

/// exp(z − row max) for every row, with the maxima. The exps of all rows run as one
/// slice (vectorised for f32), not row by row.
#[inline(always)]
fn exp_shifted_rows<T: CpuMath, const C: usize>(z: &[T], c: usize) -> (Vec<T>, Vec<T>) {
    let c = row_len::<C>(c);
    let mut e = z.to_vec();
    let mut maxes = Vec::with_capacity(z.len() / c);
    for row in e.chunks_exact_mut(c) {
        let m = row_max(row);
        row.iter_mut().for_each(|v| *v = *v - m);
        maxes.push(m);
    }
    T::exp_inplace(&mut e);
    (e, maxes)
}

/// Row reductions with four interleaved accumulators: rows are short (ten classes), and
/// one accumulator makes each row a chain of dependent max / add latencies.
fn row_fold<T: Element>(row: &[T], init: T, f: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; 4];
    let quads = row.chunks_exact(4);
    let tail = quads.remainder().iter().fold(init, |a, &v| f(a, v));
    for q in quads {
        for l in 0..4 {
            acc[l] = f(acc[l], q[l]);
        }
    }
    f(f(acc[0], acc[1]), f(f(acc[2], acc[3]), tail))
}

/// A plain comparison (`max` must also order NaNs, which costs). A NaN in a row still
/// comes out of a softmax: it survives the subtraction and the exp into the row's sum.
fn row_max<T: Element>(row: &[T]) -> T {
    row_fold(row, T::neg_infinity(), |m, v| if v > m { v } else { m })
}

fn row_sum<T: Element>(row: &[T]) -> T {
    row_fold(row, T::zero(), |a, v| a + v)
}

/// CPU reference of log-softmax over rows of length `c` (`c > 0`).
pub(crate) fn log_softmax_cpu<T: CpuMath>(z: &[T], c: usize) -> Vec<T> {
    let mut y = Vec::with_capacity(z.len());
    for (row, &lse) in z.chunks_exact(c).zip(&row_logsumexp(z, c)) {
        y.extend(row.iter().map(|&v| v - lse));
    }
    y
}

/// CPU reference of `(1/n) Σ_i w_i (logsumexp(z_i) − z_{i,y_i})` over `n` rows of `c`
/// logits. A label that is not an integer in `0..c` is an error.
pub(crate) fn cross_entropy_cpu<T: CpuMath>(
    z: &[T],
    c: usize,
    labels: &[T],
    weights: Option<&[T]>,
) -> Result<T> {
    ce_from_lse(z, c, labels, weights, &row_logsumexp(z, c))
}

/// The weighted mean of lse_i − z_{i, y_i}, checking every label.
fn ce_from_lse<T: CpuMath>(
    z: &[T],
    c: usize,
    labels: &[T],
    weights: Option<&[T]>,
    lse: &[T],
) -> Result<T> {
    let n = labels.len();
    let mut sum = 0.0f64;
    for (i, row) in z.chunks_exact(c).enumerate() {
        let y = class_of("cross_entropy", i, labels[i], c)?;
        let w = weights.map_or(1.0, |w| w[i].f64());
        sum += w * (lse[i] - row[y]).f64();
    }
    Ok(T::of(sum * (1.0 / n as f64)))
}

/// CPU reference of softmax over rows of length `c` (`c > 0`): exp(z − max) / Σ, with
/// the exps of all rows in one slice.
pub(crate) fn softmax_cpu<T: CpuMath>(z: &[T], c: usize) -> Vec<T> {
    with_row_len!(c, |C| {
        let (mut e, _) = exp_shifted_rows::<T, C>(z, c);
        for row in e.chunks_exact_mut(row_len::<C>(c)) {
            let inv = T::one() / row_sum(row);
            row.iter_mut().for_each(|v| *v = *v * inv);
        }
        e
    })
}

/// The loss of [`cross_entropy_cpu`] and softmax(z), from one pass of exps.
pub(crate) fn ce_probs_cpu<T: CpuMath>(
    z: &[T],
    c: usize,
    labels: &[T],
    weights: Option<&[T]>,
) -> Result<(T, Vec<T>)> {
    with_row_len!(c, |C| {
        let len = row_len::<C>(c);
        let (mut e, maxes) = exp_shifted_rows::<T, C>(z, c);
        let mut lse = Vec::with_capacity(maxes.len());
        for (row, &m) in e.chunks_exact_mut(len).zip(&maxes) {
            let s = row_sum(row);
            lse.push(m + s.ln());
            let inv = T::one() / s;
            row.iter_mut().for_each(|v| *v = *v * inv);
        }
        Ok((ce_from_lse(z, c, labels, weights, &lse)?, e))
    })
}

/// CPU reference of the cross-entropy's gradient with respect to the logits, times the
/// upstream gradient `g`: `g · (w_i/n) · (softmax(z_i) − onehot(y_i))`. `probs` is
/// softmax(z) when the caller has it (the forward pass computed it). A label that is
/// not an integer in `0..c` is an error.
pub(crate) fn ce_grad_cpu<T: CpuMath>(
    z: &[T],
    c: usize,
    labels: &[T],
    weights: Option<&[T]>,
    probs: Option<&[T]>,
    g: T,
) -> Result<Vec<T>> {
    let mut d = match probs {
        Some(p) => p.to_vec(),
        None => softmax_cpu(z, c),
    };
    let n = labels.len();
    let scale = g * T::of(1.0 / n.max(1) as f64);
    for (i, row) in d.chunks_exact_mut(c).enumerate() {
        let y = class_of("cross_entropy", i, labels[i], c)?;
        row[y] = row[y] - T::one();
        let s = weights.map_or(scale, |w| scale * w[i]);
        row.iter_mut().for_each(|v| *v = *v * s);
    }
    Ok(d)
}

/// CPU reference of the cross-entropy gradient's vector–Jacobian product with `u`: with
/// p = softmax(z), s_i = g·w_i/n and r_i = ⟨p_i − onehot_i, u_i⟩, returns
/// (s_i·p_i ⊙ (u_i − ⟨p_i, u_i⟩), r). A label that is not an integer in `0..c` is an
/// error.
pub(crate) fn ce_grad_vjp_cpu<T: CpuMath>(
    z: &[T],
    c: usize,
    labels: &[T],
    weights: Option<&[T]>,
    g: T,
    u: &[T],
) -> Result<(Vec<T>, Vec<T>)> {
    let mut d = softmax_cpu(z, c);
    let n = labels.len();
    let scale = g * T::of(1.0 / n.max(1) as f64);
    let mut r = Vec::with_capacity(n);
    for (i, (row, ui)) in d.chunks_exact_mut(c).zip(u.chunks_exact(c)).enumerate() {
        let y = class_of("cross_entropy", i, labels[i], c)?;
        let pu = row.iter().zip(ui).fold(T::zero(), |a, (&p, &v)| a + p * v);
        r.push(pu - ui[y]);
        let s = weights.map_or(scale, |w| scale * w[i]);
        for (p, &v) in row.iter_mut().zip(ui) {
            *p = s * *p * (v - pu);
        }
    }
    Ok((d, r))
}
