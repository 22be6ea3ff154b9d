//! The CPU side of the fused updates (`ops/update.rs`).

use crate::backend::{Coef, Coefs};
use crate::dtype::Element;

/// CPU reference: `b·y + a·x` elementwise.
pub(crate) fn update_cpu<T: Element>(y: &[T], x: &[T], a: T, b: T) -> Vec<T> {
    let mut out = super::pool::take(y.len());
    out.extend(y.iter().zip(x).map(|(&y, &x)| b * y + a * x));
    out
}

/// The host values `(a, b)` of `coefs`, reading a device scalar with `value`. A zero
/// denominator makes the ratio 0.
pub(crate) fn host_coefs<S>(coefs: Coefs<'_, S>, value: impl Fn(&S) -> f64) -> (f64, f64) {
    let coef = |c: Coef<'_, S>| match c {
        Coef::Host(v) => v,
        Coef::Device(s) => value(s),
    };
    match coefs {
        Coefs::Linear { b, a } => (coef(a), coef(b)),
        Coefs::Ratio { sign, num, den } => {
            let d = value(den);
            (if d == 0.0 { 0.0 } else { sign * value(num) / d }, 1.0)
        }
    }
}
