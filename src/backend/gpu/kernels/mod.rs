//! The GPU side of each op family: parameter blocks, the family's variants (their entry
//! points of `shaders/<family>.wgsl`, registered in `registry.rs`) and dispatch plans, one
//! file per family (`elementwise.rs` holds the variants of unary, binary and fill).

pub(crate) mod binary;
pub(crate) mod elementwise;
pub(crate) mod fill;
pub(crate) mod index;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod matvec;
pub(crate) mod reduce;
pub(crate) mod unary;
pub(crate) mod update;
