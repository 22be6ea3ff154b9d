//! Where a tensor's elements are, and the one place that picks a backend for them.

use super::DType;
use crate::backend::cpu::CpuBuf;
use crate::backend::gpu::GpuBuffer;
use crate::backend::{UnaryOp, cpu, gpu};
use crate::device::Device;
use crate::error::Result;

/// Where a tensor's elements are.
pub(crate) enum Storage {
    F32(CpuBuf<f32>),
    F64(CpuBuf<f64>),
    Gpu(GpuBuffer),
}

impl Storage {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) | Storage::Gpu(_) => DType::F32,
            Storage::F64(_) => DType::F64,
        }
    }

    pub(crate) fn device(&self) -> Device {
        match self {
            Storage::F32(_) | Storage::F64(_) => Device::Cpu,
            Storage::Gpu(b) => Device::Gpu(b.ctx.clone()),
        }
    }
}

// ---- unary -------------------------------------------------------------------------

impl Storage {
    /// `op` applied to each of the `n` elements; `a`, `b` are [`UnaryOp::ScaleShift`]'s.
    pub(crate) fn unary(&self, op: UnaryOp, n: usize, a: f64, b: f64) -> Result<Storage> {
        Ok(match self {
            Storage::F32(v) => Storage::F32(CpuBuf::from(cpu::unary::unary_cpu(op, v, a, b))),
            Storage::F64(v) => Storage::F64(CpuBuf::from(cpu::unary::unary_cpu(op, v, a, b))),
            Storage::Gpu(buf) => Storage::Gpu(gpu::kernels::unary::unary_gpu(
                op, buf, n, a as f32, b as f32,
            )?),
        })
    }
}
