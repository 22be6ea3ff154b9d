//! The CPU side of the unary ops (`ops/unary.rs`): each op applied to every element.

use super::math::CpuMath;
use super::pool::take;
use crate::backend::UnaryOp;
use crate::dtype::Element;

/// The CPU reference of one element.
pub(crate) fn apply<T: Element>(op: UnaryOp, x: T, a: T, b: T) -> T {
    let zero = T::zero();
    let one = T::one();
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
        UnaryOp::Sigmoid => one / (one + (-x).exp()),
        UnaryOp::Relu => {
            if x > zero {
                x
            } else {
                zero
            }
        }
        UnaryOp::ReluMask => {
            if x > zero {
                one
            } else {
                zero
            }
        }
        UnaryOp::ScaleShift => a * x + b,
        UnaryOp::Sign => {
            if x > zero {
                one
            } else if x < zero {
                -one
            } else {
                zero
            }
        }
        UnaryOp::Recip => one / x,
        // ln(1 + eˣ) = max(x, 0) + ln(1 + e^−|x|): e^−|x| ≤ 1 never overflows, and
        // ln_1p keeps the tail e^−|x| for large |x| (e.g. softplus(−40) ≈ 4.2e−18).
        UnaryOp::Softplus => x.max(zero) + (-x.abs()).exp().ln_1p(),
        UnaryOp::LogSigmoid => x.min(zero) - (-x.abs()).exp().ln_1p(),
    }
}

/// CPU reference: `op` applied to every element.
pub(crate) fn unary_cpu<T: CpuMath>(op: UnaryOp, x: &[T], a: f64, b: f64) -> Vec<T> {
    let (a, b) = (T::of(a), T::of(b));
    // One loop per op (the op is matched once, not per element), so each vectorises.
    fn map<T: Element>(x: &[T], f: impl Fn(T) -> T) -> Vec<T> {
        let mut y = take(x.len());
        y.extend(x.iter().map(|&v| f(v)));
        y
    }
    let one = T::one();
    match op {
        UnaryOp::Exp => {
            let mut y = take(x.len());
            y.extend_from_slice(x);
            T::exp_inplace(&mut y);
            y
        }
        UnaryOp::Sigmoid => {
            let mut y = map(x, |v| -v);
            T::exp_inplace(&mut y);
            y.iter_mut().for_each(|v| *v = one / (one + *v));
            y
        }
        UnaryOp::Neg => map(x, |v| -v),
        UnaryOp::Square => map(x, |v| v * v),
        UnaryOp::Abs => map(x, |v| v.abs()),
        UnaryOp::ScaleShift => map(x, |v| a * v + b),
        UnaryOp::Recip => map(x, |v| one / v),
        UnaryOp::Relu => map(x, |v| if v > T::zero() { v } else { T::zero() }),
        UnaryOp::ReluMask => map(x, |v| if v > T::zero() { one } else { T::zero() }),
        _ => map(x, |v| apply(op, v, a, b)),
    }
}
