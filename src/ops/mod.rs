//! The kernel set. One family per file: the public op, its GPU dispatch, its CPU
//! reference and its tests live together; the WGSL is in `shaders/<family>.wgsl`.

pub mod binary;
pub(crate) mod fill;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod reduce;
pub mod shape;
pub mod unary;
pub mod update;
