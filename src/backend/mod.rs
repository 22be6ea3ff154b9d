//! The backends: where the arithmetic of an op runs.

pub(crate) mod cpu;
pub(crate) mod gpu;
mod op;

pub use op::*;
