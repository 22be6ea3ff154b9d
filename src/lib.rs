//! # blo: bilevel optimization on any GPU
//!
//! blo computes hypergradients `d L_out(w*(λ)) / dλ` and runs gradient-based bilevel
//! optimization on any GPU through wgpu and hand-written WGSL kernels, with a CPU
//! reference backend (f32 and f64) that every test uses as its oracle.
//!
//! ```
//! use blo::{Device, Tensor};
//! # fn main() -> blo::Result<()> {
//! let dev = Device::cpu(); // or Device::gpu()?, or Device::best_available().device
//! let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3], &dev)?;
//! let y = x.square()?.add(&Tensor::scalar(1.0, &dev)?)?;
//! assert_eq!(y.to_vec::<f32>()?, vec![2.0, 5.0, 10.0]);
//! # Ok(()) }
//! ```
//!
//! Features: `config` adds `blo::experiment` (experiment files in TOML, as `blo run` reads
//! them); `cli` (default) builds the `blo` command and enables `config`. A program that
//! embeds blo can turn both off (`default-features = false`): the library itself needs
//! neither a TOML parser nor a command-line parser. Kernels blo does not ship run
//! through [`CustomKernel`].
//!
//! The modules form layers that import only downward, lowest first: `dtype` and `error`;
//! `device` with the backends; `tensor` (including the recording half of autodiff's tape);
//! `ops`; `autodiff`; `solvers`; `bilevel` and `meta` (meta-learning, built on bilevel's
//! inner trajectories); `problems`; `experiment`; the test helpers
//! `check` and `testing`; and the `blo` command on top. `tests/layering.rs` checks it.

#![warn(missing_docs)]

pub mod autodiff;
mod backend;
pub mod bilevel;
pub mod check;
pub mod device;
mod dtype;
pub mod error;
#[cfg(feature = "config")]
pub mod experiment;
pub mod meta;
pub mod ops;
pub mod problems;
pub use backend::gpu::shaders;
pub mod solvers;
pub mod tensor;
#[doc(hidden)]
pub mod testing;

pub use autodiff::{HvpOperator, grad, hvp, mixed, mixed_t, no_grad, vjp, vjp_many};
pub use device::{
    AdapterInfo, CustomKernel, Device, DeviceChoice, DeviceSpec, GpuContext, GpuProfile,
    KernelTime, MemoryStats, TuneMode, TuneResult,
};
pub use error::{Error, Result};
pub use ops::binary::BinaryOp;
pub use ops::unary::UnaryOp;
pub use ops::update::Scalar;
pub use tensor::{DType, Element, Tensor};

/// Compiles and runs the Rust examples in README.md as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
