//! The kernel set. One family per file: the public op, its GPU dispatch, its CPU
//! reference and its tests live together; the WGSL is in `shaders/<family>.wgsl`.

pub mod binary;
mod custom;
pub mod index;
pub mod loss;
pub mod matmul;
#[cfg(target_arch = "x86_64")]
mod matmul_x86;
pub mod reduce;
pub mod shape;
pub mod unary;
pub mod update;
