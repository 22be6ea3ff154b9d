//! [`Scalar`], the coefficient of a fused update (`ops/update.rs`). It is defined here,
//! in the tensor layer, because the tape (`tape.rs`) records how each coefficient was
//! given; `blo::Scalar` and `blo::ops::update::Scalar` re-export it.

use super::Tensor;

/// A coefficient of a fused update: a host number or a one-element tensor on the
/// device of the tensors it scales (read there, without a readback).
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    /// A value known on the host, passed to the kernel in its parameter block.
    Host(f64),
    /// A one-element tensor (any rank, usually 0-d) on the same device and with the same
    /// dtype as the operands.
    Device(&'a Tensor),
}

impl From<f64> for Scalar<'_> {
    fn from(v: f64) -> Self {
        Scalar::Host(v)
    }
}

impl From<f32> for Scalar<'_> {
    fn from(v: f32) -> Self {
        Scalar::Host(f64::from(v))
    }
}

impl<'a> From<&'a Tensor> for Scalar<'a> {
    fn from(t: &'a Tensor) -> Self {
        Scalar::Device(t)
    }
}
