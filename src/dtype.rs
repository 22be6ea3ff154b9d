//! Element types: [`DType`] names one, [`Element`] is the Rust type the CPU backend
//! computes in. They sit below everything else (errors name a dtype, both backends
//! compute in one).

use std::fmt;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: every device.
    F32,
    /// 64-bit float: the CPU device only (oracles, gradient checks).
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// A floating-point element type the CPU backend computes in.
pub trait Element:
    num_traits::Float + num_traits::FromPrimitive + bytemuck::Pod + Send + Sync + fmt::Debug + 'static
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Converts to f64 (exact).
    fn f64(self) -> f64;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        f64::from(self)
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}
