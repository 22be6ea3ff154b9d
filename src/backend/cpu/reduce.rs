//! The CPU side of the reductions (`ops/reduce.rs`), accumulated in f64 for both dtypes.

use crate::backend::{AxisOp, FullOp};
use crate::dtype::Element;

/// CPU reference of a full reduction, accumulated in f64 (four interleaved
/// accumulators, so the loop pipelines), times `scale`.
pub(crate) fn full_cpu<T: Element>(op: FullOp, a: &[T], b: &[T], scale: f64) -> T {
    // The op is matched once, outside the loop, so each arm vectorises.
    let total = match op {
        FullOp::Sum => sum_f64(a, b, |u, _| u),
        FullOp::SumSq => sum_f64(a, b, |u, _| u * u),
        FullOp::Dot => sum_f64(a, b, |u, v| u * v),
        FullOp::SqDiff => sum_f64(a, b, |u, v| (u - v) * (u - v)),
    };
    T::of(total * scale)
}

/// Σ term(a_i, b_i) in f64 with eight interleaved accumulators (a single accumulator
/// is a serial chain of dependent adds). `b` may be shorter than `a` when `term`
/// ignores it.
#[inline(always)]
fn sum_f64<T: Element>(a: &[T], b: &[T], term: impl Fn(f64, f64) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let whole = a.len() / LANES * LANES;
    let pair = |i: usize| term(a[i].f64(), b.get(i).map_or(0.0, |v| v.f64()));
    if b.len() >= a.len() {
        for (ca, cb) in a[..whole].chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += term(ca[l].f64(), cb[l].f64());
            }
        }
    } else {
        for ca in a[..whole].chunks_exact(LANES) {
            for l in 0..LANES {
                acc[l] += term(ca[l].f64(), 0.0);
            }
        }
    }
    let tail: f64 = (whole..a.len()).map(pair).sum();
    let half = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    ((half[0] + half[1]) + (half[2] + half[3])) + tail
}

/// CPU reference of a reduction over the middle axis of `x` viewed as
/// `[outer, len, inner]`; sums are multiplied by `scale`. Max propagates NaN.
pub(crate) fn axis_cpu<T: Element>(
    op: AxisOp,
    x: &[T],
    outer: usize,
    len: usize,
    inner: usize,
    scale: f64,
) -> Vec<T> {
    if inner == 1 && op == AxisOp::Sum {
        // Rows: long ones take the interleaved accumulators of `full_cpu`; short ones
        // (a classifier's ten logits) a plain loop, whose chains overlap across rows.
        return x
            .chunks_exact(len.max(1))
            .take(outer)
            .map(|row| {
                if len >= 64 {
                    full_cpu::<T>(FullOp::Sum, row, row, scale)
                } else {
                    T::of(row.iter().fold(0.0, |s, v| s + v.f64()) * scale)
                }
            })
            .collect();
    }
    let mut out = Vec::with_capacity(outer * inner);
    let mut acc = vec![0.0f64; inner];
    for o in 0..outer {
        let init = match op {
            AxisOp::Sum => 0.0,
            AxisOp::Max => f64::NEG_INFINITY,
        };
        acc.fill(init);
        for k in 0..len {
            let row = &x[(o * len + k) * inner..][..inner];
            for (s, v) in acc.iter_mut().zip(row) {
                let v = v.f64();
                match op {
                    AxisOp::Sum => *s += v,
                    AxisOp::Max => {
                        if v > *s || v.is_nan() {
                            *s = v
                        }
                    }
                }
            }
        }
        out.extend(acc.iter().map(|&s| match op {
            AxisOp::Sum => T::of(s * scale),
            AxisOp::Max => T::of(s),
        }));
    }
    out
}
