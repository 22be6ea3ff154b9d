//! The public tensor ops, one family per file: each op's checks (shapes, dtypes,
//! devices, label ranges), its `Tensor` method and its recording on the tape, with the
//! tests that run it on both backends. The arithmetic is in the backends: the CPU code
//! in `backend/cpu/<family>.rs`, the GPU plans in `backend/gpu/kernels/<family>.rs`
//! with the WGSL in `shaders/<family>.wgsl`, reached through `tensor::Storage`.

pub mod binary;
mod custom;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod reduce;
pub mod shape;
pub mod unary;
pub mod update;
