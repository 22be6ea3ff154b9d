//! The GPU side of each op family: parameter blocks, kernel declarations (entry points of
//! `shaders/<family>.wgsl`) and dispatch plans, one file per family.

pub(crate) mod binary;
pub(crate) mod fill;
pub(crate) mod index;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod reduce;
pub(crate) mod unary;
pub(crate) mod update;
