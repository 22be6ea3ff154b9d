//! The one error type of blo. Every fallible public function returns [`Result`].

use crate::dtype::DType;

/// Errors returned by blo. Each message says what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands (or an operand and the expected shape) do not fit together.
    #[error("{op}: shapes {lhs:?} and {rhs:?} do not fit together")]
    ShapeMismatch {
        /// The operation that failed.
        op: &'static str,
        /// Shape of the first operand.
        lhs: Vec<usize>,
        /// Shape of the second operand (or the expected shape).
        rhs: Vec<usize>,
    },

    /// Operands live on different devices.
    #[error(
        "{op}: operands live on different devices ({lhs} and {rhs}); move one with Tensor::to_device"
    )]
    DeviceMismatch {
        /// The operation that failed.
        op: &'static str,
        /// Device of the first operand.
        lhs: String,
        /// Device of the second operand.
        rhs: String,
    },

    /// Operands have different element types.
    #[error("{op}: element types differ ({lhs:?} and {rhs:?}); convert one with Tensor::to_dtype")]
    DTypeMismatch {
        /// The operation that failed.
        op: &'static str,
        /// Type of the first operand.
        lhs: DType,
        /// Type of the second operand.
        rhs: DType,
    },

    /// The device cannot hold this element type (the GPU stores f32 only).
    #[error(
        "{op}: {dtype:?} is not supported on {device}; the GPU stores f32, use the CPU device for f64"
    )]
    UnsupportedDType {
        /// The operation that failed.
        op: &'static str,
        /// The unsupported type.
        dtype: DType,
        /// The device.
        device: String,
    },

    /// A buffer would exceed a limit of the adapter.
    #[error(
        "{what}: {bytes} bytes exceeds the adapter's limit {limit_name} = {limit} bytes; split the data or use the CPU device"
    )]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size (bytes, or count where the limit is a count).
        bytes: u64,
        /// The wgpu limit it exceeds.
        limit_name: &'static str,
        /// The adapter's value of that limit.
        limit: u64,
    },

    /// A value passed by the caller is out of its domain (a length, an axis, a step size, NaN in a config).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation that failed.
        op: &'static str,
        /// What is wrong and what is expected.
        msg: String,
    },

    /// No GPU adapter was found (or none matched the requested name).
    #[error("no GPU adapter found{requested}. {hint}")]
    NoAdapter {
        /// What was asked for (empty for any adapter).
        requested: String,
        /// How to get an adapter.
        hint: String,
    },

    /// A custom WGSL kernel (`blo::CustomKernel`) does not parse or validate, does not
    /// follow blo's binding convention, or is given an override constant it does not declare.
    #[error("custom kernel {kernel}: {message}")]
    Shader {
        /// The kernel's name.
        kernel: String,
        /// What is wrong, with naga's diagnostic where it has one.
        message: String,
    },

    /// A custom kernel was dispatched with arguments that do not fit its WGSL: the number
    /// of input or output buffers, the size of the parameter block, or a buffer smaller
    /// than a fixed-size binding.
    #[error("custom kernel {kernel}: {what}: {got}, but its WGSL needs {expected}")]
    KernelArguments {
        /// The kernel's name.
        kernel: String,
        /// What was counted or measured, e.g. `input buffers` or `parameter bytes`.
        what: String,
        /// What the WGSL declares (a count, or bytes).
        expected: u64,
        /// What the dispatch gave.
        got: u64,
    },

    /// A kernel variant was asked for (through `BLO_KERNELS` or
    /// [`crate::GpuContext::force_kernel`]) that blo does not have, or that this adapter
    /// cannot run.
    #[error("kernel choice `{choice}`: {reason}. Choices this adapter runs: {valid}")]
    KernelChoice {
        /// What was asked for, as written.
        choice: String,
        /// What is wrong with it.
        reason: String,
        /// The valid choices on this adapter: `family=variant|variant`, comma-separated.
        valid: String,
    },

    /// The GPU device reported an error (validation, out of memory, device lost, mapping failure).
    #[error("GPU error in {context}: {message}")]
    Gpu {
        /// What blo was doing.
        context: String,
        /// The device's message.
        message: String,
    },
}

/// The result type of blo.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        op,
        msg: msg.into(),
    }
}
