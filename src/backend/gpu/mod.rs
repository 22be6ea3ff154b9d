//! The GPU backend: a wgpu device with blo's execution machinery (`context`: the
//! pending command stream and dispatch; `pool`: pooled buffers; `pipeline`: cached
//! modules and pipelines), the WGSL files and their composition (`shaders`, with the op
//! codes shared with Rust in `codes`), the kernel registry (`registry`: each family's
//! variants and which one runs), custom kernels, and one file of kernel plans per op
//! family (`kernels/<family>.rs`, beside `shaders/<family>.wgsl`).

mod codes;
mod context;
mod custom;
pub(crate) mod fusion;
pub(crate) mod kernels;
mod pipeline;
mod pool;
mod profile;
mod registry;
pub mod shaders;
mod tune;

pub use context::{AdapterInfo, GpuContext};
pub use custom::CustomKernel;
pub(crate) use pipeline::Kernel;
pub(crate) use pool::GpuBuffer;
pub use pool::MemoryStats;
pub use profile::{GpuProfile, KernelTime};
pub use registry::KernelVariant;
pub use tune::{TuneMode, TuneResult};
