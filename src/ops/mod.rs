//! The kernel set. One family per file: the public op, its GPU dispatch, its CPU
//! reference and its tests live together; the WGSL is in `shaders/<family>.wgsl`.

pub mod binary;
pub(crate) mod fill;
pub mod matmul;
pub mod unary;
