//! Where a tensor's elements are, and the one place that picks a backend for them.

use super::DType;
use crate::backend::cpu::CpuBuf;
use crate::backend::gpu::GpuBuffer;
use crate::device::Device;

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
