//! The CPU side of the binary ops and `broadcast_to` (`ops/binary.rs`, `ops/shape.rs`):
//! NumPy broadcasting, with contiguous loops for row, column and scalar broadcasts.

use super::math::{row_len, with_row_len};
use super::pool::{take, zeros};
use crate::backend::{BinaryOp, broadcast_strides, numel};
use crate::dtype::Element;

/// The CPU reference of one element.
#[inline]
pub(crate) fn apply<T: Element>(op: BinaryOp, a: T, b: T) -> T {
    let mask = |c: bool| if c { T::one() } else { T::zero() };
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Gt => mask(a > b),
        BinaryOp::Ge => mask(a >= b),
        BinaryOp::Lt => mask(a < b),
        BinaryOp::Le => mask(a <= b),
        BinaryOp::Eq => mask(a == b),
    }
}

/// [`binary_cpu`] with the op matched once, outside the element loop, so that each
/// arithmetic op gets its own vectorised loop.
pub(crate) fn binary_cpu_op<T: Element>(
    op: BinaryOp,
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &[usize],
) -> Vec<T> {
    // `apply` with a constant op folds to the one operation, so each arithmetic op gets
    // a loop of its own while `apply` stays the only place that says what an op computes.
    let run = |f: &dyn Fn(T, T) -> T| binary_cpu(f, a, a_shape, b, b_shape, out);
    match op {
        BinaryOp::Add => binary_cpu(
            |u, v| apply(BinaryOp::Add, u, v),
            a,
            a_shape,
            b,
            b_shape,
            out,
        ),
        BinaryOp::Sub => binary_cpu(
            |u, v| apply(BinaryOp::Sub, u, v),
            a,
            a_shape,
            b,
            b_shape,
            out,
        ),
        BinaryOp::Mul => binary_cpu(
            |u, v| apply(BinaryOp::Mul, u, v),
            a,
            a_shape,
            b,
            b_shape,
            out,
        ),
        BinaryOp::Div => binary_cpu(
            |u, v| apply(BinaryOp::Div, u, v),
            a,
            a_shape,
            b,
            b_shape,
            out,
        ),
        _ => run(&|u, v| apply(op, u, v)),
    }
}

/// How an operand's elements map onto the output's, for the CPU's fast paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Same shape as the output.
    Full,
    /// Output element i reads element i % period (a row broadcast down the leading dims).
    Tile(usize),
    /// Output element i reads element i / block (a column broadcast along trailing dims;
    /// a single element is a block of the whole output).
    Repeat(usize),
    /// Output element i reads element (i / block)·inner + i % inner: a row broadcast
    /// inside each outer block, such as a per-task bias [B, 1, C] over [B, N, C].
    BlockTile { block: usize, inner: usize },
}

fn pattern(shape: &[usize], out: &[usize]) -> Option<Pattern> {
    if shape == out {
        return Some(Pattern::Full);
    }
    let n = numel(shape);
    if n == 1 {
        // One value for the whole output (a scalar factor): a single run, not rows of
        // length 1, which walk the output one element per row.
        return Some(Pattern::Repeat(numel(out).max(1)));
    }
    let trimmed: &[usize] = {
        let lead = shape.iter().take_while(|&&d| d == 1).count();
        &shape[lead..]
    };
    if out.ends_with(trimmed) {
        return Some(Pattern::Tile(n.max(1)));
    }
    let mut padded = vec![1; out.len() - shape.len()];
    padded.extend_from_slice(shape);
    let j = padded.iter().zip(out).take_while(|(p, o)| p == o).count();
    if padded[j..].iter().all(|&d| d == 1) {
        return Some(Pattern::Repeat(numel(&out[j..]).max(1)));
    }
    // Equal leading dims, then broadcast ones, then equal trailing dims.
    let l = j + padded[j..].iter().take_while(|&&d| d == 1).count();
    if padded[l..] == out[l..] {
        let inner = numel(&out[l..]);
        if inner > 0 {
            return Some(Pattern::BlockTile {
                block: numel(&out[j..]),
                inner,
            });
        }
    }
    None
}

// Explicit row loops rather than `flat_map(..).collect()`: a flattened iterator has no
// exact length, so it neither preallocates nor vectorises. Rows are often short (a bias
// over ten classes), so they are walked with a compile-time length when it is small
// (`with_row_len`).

/// f(full[i], row[i % row.len()]) for every element of `full`.
fn tile_rows<T: Element>(full: &[T], row: &[T], f: &impl Fn(T, T) -> T) -> Vec<T> {
    let mut y = zeros(full.len());
    tile_rows_into(&mut y, full, row, f);
    y
}

fn tile_rows_into<T: Element>(y: &mut [T], full: &[T], row: &[T], f: &impl Fn(T, T) -> T) {
    with_row_len!(row.len(), |C| {
        let len = row_len::<C>(row.len());
        let row = &row[..len];
        for (yr, fr) in y.chunks_exact_mut(len).zip(full.chunks_exact(len)) {
            for j in 0..len {
                yr[j] = f(fr[j], row[j]);
            }
        }
    });
}

/// f(full[i], per_row[i / k]) for every element of `full`.
fn repeat_rows<T: Element>(full: &[T], per_row: &[T], k: usize, f: &impl Fn(T, T) -> T) -> Vec<T> {
    let mut y = zeros(full.len());
    with_row_len!(k, |C| {
        let len = row_len::<C>(k);
        for ((yr, fr), &v) in y
            .chunks_exact_mut(len)
            .zip(full.chunks_exact(len))
            .zip(per_row)
        {
            for j in 0..len {
                yr[j] = f(fr[j], v);
            }
        }
    });
    y
}

/// f(full[i], rows[(i / block)·inner + i % inner]): [`tile_rows`] within each block.
fn block_tile_rows<T: Element>(
    full: &[T],
    rows: &[T],
    block: usize,
    inner: usize,
    f: &impl Fn(T, T) -> T,
) -> Vec<T> {
    let mut y = zeros(full.len());
    for ((yb, fb), row) in y
        .chunks_exact_mut(block)
        .zip(full.chunks_exact(block))
        .zip(rows.chunks_exact(inner))
    {
        tile_rows_into(yb, fb, row, f);
    }
    y
}

/// CPU reference with general broadcasting. Row, column and scalar broadcasts (bias
/// adds, per-row weights) take contiguous loops; other patterns walk an odometer.
pub(crate) fn binary_cpu<T: Element>(
    f: impl Fn(T, T) -> T,
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out: &[usize],
) -> Vec<T> {
    let n = numel(out);
    match (pattern(a_shape, out), pattern(b_shape, out)) {
        (Some(Pattern::Full), Some(Pattern::Full)) => {
            let mut y = take(n);
            y.extend(a.iter().zip(b).map(|(&x, &y)| f(x, y)));
            return y;
        }
        // The mirrored patterns swap the operands (and the arguments of `f`). `pattern`
        // makes a period or block a whole trailing part of the output (at least 1), so it
        // divides `n`; only an empty output, whose tiled operand may be empty too, must
        // stay out of `tile_rows`.
        (Some(Pattern::Full), Some(Pattern::Tile(p))) if n > 0 => {
            return tile_rows(a, &b[..p], &f);
        }
        (Some(Pattern::Tile(p)), Some(Pattern::Full)) if n > 0 => {
            return tile_rows(b, &a[..p], &|x, y| f(y, x));
        }
        (Some(Pattern::Full), Some(Pattern::Repeat(k))) => {
            return repeat_rows(a, b, k, &f);
        }
        (Some(Pattern::Repeat(k)), Some(Pattern::Full)) => {
            return repeat_rows(b, a, k, &|x, y| f(y, x));
        }
        (Some(Pattern::Full), Some(Pattern::BlockTile { block, inner })) if n > 0 => {
            return block_tile_rows(a, b, block, inner, &f);
        }
        (Some(Pattern::BlockTile { block, inner }), Some(Pattern::Full)) if n > 0 => {
            return block_tile_rows(b, a, block, inner, &|x, y| f(y, x));
        }
        _ => {}
    }
    let sa = broadcast_strides(a_shape, out);
    let sb = broadcast_strides(b_shape, out);
    let mut idx = vec![0usize; out.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut y = take(n);
    for _ in 0..n {
        y.push(f(a[ia], b[ib]));
        // Odometer increment of the output index, carrying the operand offsets along.
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < out[d] {
                break;
            }
            ia -= sa[d] * out[d];
            ib -= sb[d] * out[d];
            idx[d] = 0;
        }
    }
    y
}

/// `x` copied out to the broadcast shape `out`: whole rows or runs of one value where
/// the pattern allows, the general odometer otherwise.
pub(crate) fn broadcast_cpu<T: Element>(x: &[T], x_shape: &[usize], out: &[usize]) -> Vec<T> {
    let n = numel(out);
    match pattern(x_shape, out) {
        Some(Pattern::Full) => {
            let mut y = take(n);
            y.extend_from_slice(x);
            y
        }
        Some(Pattern::Tile(p)) if p == x.len() && p > 0 => {
            let mut y = take(n);
            while y.len() < n {
                y.extend_from_slice(x);
            }
            y
        }
        Some(Pattern::Repeat(k)) if k > 0 => {
            let mut y = take(n);
            for &v in x.iter().take(n / k) {
                y.resize(y.len() + k, v);
            }
            y
        }
        Some(Pattern::BlockTile { block, inner }) if n > 0 => {
            let mut y = take(n);
            for row in x.chunks_exact(inner).take(n / block) {
                for _ in 0..block / inner {
                    y.extend_from_slice(row);
                }
            }
            y
        }
        _ => binary_cpu(|u, _| u, x, x_shape, x, x_shape, out),
    }
}
