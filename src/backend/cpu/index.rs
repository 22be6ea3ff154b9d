//! The CPU side of the index and layout ops (`ops/index.rs`). Labels are checked here:
//! an invalid one is an [`crate::Error::InvalidArgument`] naming it.

use crate::dtype::Element;
use crate::error::{Result, invalid};

/// The class a CPU label names, or an error saying which label is bad.
pub(crate) fn class_of<T: Element>(
    op: &'static str,
    i: usize,
    label: T,
    classes: usize,
) -> Result<usize> {
    let l = label.f64();
    // `(l as usize) as f64 == l` rather than `fract()`: the same test for values in
    // range, without a libm call per label on baseline x86-64.
    if l >= 0.0 && l < classes as f64 && (l as usize) as f64 == l {
        Ok(l as usize)
    } else {
        Err(invalid(
            op,
            format!(
                "label {i} is {l}; labels must be integers in [0, {classes}) (class indices stored as floats)"
            ),
        ))
    }
}

/// CPU reference of `one_hot`.
pub(crate) fn one_hot_cpu<T: Element>(labels: &[T], classes: usize) -> Result<Vec<T>> {
    let mut y = vec![T::zero(); labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        y[i * classes + class_of("one_hot", i, l, classes)?] = T::one();
    }
    Ok(y)
}

/// CPU reference of `gather`: `x[i, labels[i]]` for each row `i` of `x` (`[n, classes]`).
pub(crate) fn gather_cpu<T: Element>(x: &[T], labels: &[T], classes: usize) -> Result<Vec<T>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| Ok(x[i * classes + class_of("gather", i, l, classes)?]))
        .collect()
}

/// CPU reference: `[batch, rows, cols]` → `[batch, cols, rows]`.
pub(crate) fn transpose_cpu<T: Element>(x: &[T], batch: usize, rows: usize, cols: usize) -> Vec<T> {
    let mut y = super::pool::take(x.len());
    for t in 0..batch {
        let plane = &x[t * rows * cols..(t + 1) * rows * cols];
        for c in 0..cols {
            y.extend((0..rows).map(|r| plane[r * cols + c]));
        }
    }
    y
}

/// A copy of `x` (in a recycled array when there is one).
pub(crate) fn copy_cpu<T: Element>(x: &[T]) -> Vec<T> {
    let mut y = super::pool::take(x.len());
    y.extend_from_slice(x);
    y
}

/// The parts' elements one after another (`total` of them).
pub(crate) fn concat_cpu<'a, T: Element>(
    parts: impl Iterator<Item = &'a [T]>,
    total: usize,
) -> Vec<T> {
    let mut y = super::pool::take(total);
    for p in parts {
        y.extend_from_slice(p);
    }
    y
}
