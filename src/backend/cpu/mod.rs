//! The CPU backend: readable Rust in f32 and f64, with AVX2 / AVX-512 kernels where
//! they pay off and a second core for large passes.

mod buf;
pub(crate) mod math;
pub(crate) mod pool;
pub(crate) mod threads;

pub(crate) use buf::CpuBuf;
pub(crate) mod binary;
pub(crate) mod index;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod reduce;
pub(crate) mod unary;
pub(crate) mod update;
